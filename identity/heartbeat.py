"""The per-process heartbeat that keeps the connection registry honest.

One task per event loop (a server process has one) refreshes this process's
heartbeat every IDENTITY_HEARTBEAT_INTERVAL seconds and purges processes whose
heartbeat is older than IDENTITY_HEARTBEAT_EXPIRY, pushing `offline` for users
who went with them. Idle sockets cost nothing here: it is one query per
interval per process, whatever the number of sockets.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import weakref

from channels.db import database_sync_to_async

from identity import conf, push, registry

logger = logging.getLogger(__name__)

_tasks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[None]] = (
    weakref.WeakKeyDictionary()
)


def ensure_running() -> None:
    """Start the heartbeat on the running loop unless it is already running.

    IDENTITY_HEARTBEAT_INTERVAL = 0 turns it off (tests drive `beat_once` themselves).
    """
    if conf.heartbeat_interval() <= 0:
        return
    loop = asyncio.get_running_loop()
    task = _tasks.get(loop)
    if task is None or task.done():
        if not _tasks:
            # Not every server gives its sockets a chance to leave when it
            # stops (daphne exits without resuming them), so the process
            # itself retires its sockets as it exits.
            atexit.register(_retire)
        _tasks[loop] = loop.create_task(_beat_forever(), name="identity-heartbeat")


def _retire() -> None:
    try:
        registry.retire()
    except Exception:
        logger.warning("could not retire this process's sockets", exc_info=True)


async def _beat_forever() -> None:
    while True:
        await beat_once()
        await asyncio.sleep(conf.heartbeat_interval())


async def beat_once() -> None:
    """One heartbeat: vouch for this process, purge dead ones, push their `offline`."""
    try:
        gone = await database_sync_to_async(registry.heartbeat)()
    except Exception:
        # A database outage must not kill the loop; the next beat retries.
        logger.warning("identity heartbeat failed", exc_info=True)
        return
    for user_id, username in gone:
        try:
            await push.push_presence("offline", user_id, username)
        except Exception:
            logger.warning("could not push offline for user %s", user_id, exc_info=True)
