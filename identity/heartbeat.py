"""The per-process heartbeat that keeps the connection registry honest.

One task per event loop (a server process has one) refreshes this process's
heartbeat every IDENTITY_HEARTBEAT_INTERVAL seconds and purges processes whose
heartbeat is older than IDENTITY_HEARTBEAT_EXPIRY, pushing `offline` for users
who went with them. Idle sockets cost nothing here: it is one query per
interval per process, whatever the number of sockets.

On the in-memory channel layer a second task polls the database every
IDENTITY_WITHDRAWAL_POLL seconds for withdrawal requests and relayed topic
events and re-checks addressed to this process (identity.relay): a command, a
shell or another process cannot reach its sockets otherwise. Two indexed
queries per poll; it carries each request out through this process's layer and
records how many sockets closed.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import weakref
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from channels.db import DatabaseSyncToAsync, database_sync_to_async
from channels.layers import get_channel_layer
from django.db import connection

from identity import conf, counters, metrics, push, registry, relay
from identity.layers import in_process
from identity.models import WithdrawalRequest
from identity.protocol import Reason

logger = logging.getLogger(__name__)

_tasks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[None]] = (
    weakref.WeakKeyDictionary()
)
_pollers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[None]] = (
    weakref.WeakKeyDictionary()
)


# The heartbeat's own thread (and so its own database connection): on the
# sockets' database thread it waited behind every queued `auth`, and in a
# reconnect storm of thousands it came late enough for the other processes to
# take this one for dead and purge its live sockets (the soak, docs/deploy.md).
_beat_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="identity-heartbeat")


def on_beat_thread(func: Callable[[], Any]) -> Callable[[], Coroutine[Any, Any, Any]]:
    """FUNC to await on the heartbeat's thread, stale connections closed around it.

    Not on SQLite: it takes one writer at a time, and a project's settings may
    not wait for the lock (config.settings does), so a second writing thread
    would fail `auth`s with "database is locked" (tests/test_wheel.py's project
    did). SQLite means one process: no other process to take this one for dead.
    """
    if connection.vendor == "sqlite":
        return database_sync_to_async(func)
    return DatabaseSyncToAsync(func, thread_sensitive=False, executor=_beat_thread)


def ensure_running() -> None:
    """Start the heartbeat on the running loop unless it is already running.

    IDENTITY_HEARTBEAT_INTERVAL = 0 turns it off (tests drive `beat_once` themselves).
    """
    loop = asyncio.get_running_loop()
    if loop in _tasks and loop in _pollers and not (_tasks[loop].done() or _pollers[loop].done()):
        return  # the common case, once per connect: both already running
    if conf.heartbeat_interval() > 0:
        if not _tasks:
            # Not every server gives its sockets a chance to leave when it
            # stops (daphne exits without resuming them), so the process
            # itself retires its sockets as it exits.
            atexit.register(_retire)
        _start(_tasks, loop, _beat_forever, "identity-heartbeat")
    if conf.withdrawal_poll() > 0 and in_process(get_channel_layer()):
        _start(_pollers, loop, _poll_forever, "identity-withdrawal-poll")


def _start(
    tasks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[None]],
    loop: asyncio.AbstractEventLoop,
    run: Callable[[], Coroutine[Any, Any, None]],
    name: str,
) -> None:
    task = tasks.get(loop)
    if task is None or task.done():
        tasks[loop] = loop.create_task(run(), name=name)


def _retire() -> None:
    try:
        counters.flush()
    except Exception:
        logger.warning("could not flush the connect counters", exc_info=True)
    try:
        registry.retire()
    except Exception:
        logger.warning("could not retire this process's sockets", exc_info=True)


async def _beat_forever() -> None:
    while True:
        await beat_once()
        await asyncio.sleep(conf.heartbeat_interval())


async def beat_once() -> None:
    """One heartbeat: vouch for this process, purge dead ones, push their `offline`.

    Also adds this process's connect and auth-failure counts to the database
    (identity.counters), and its frame counts to the metrics (identity.metrics).
    """
    metrics.publish()
    try:
        # Before the heartbeat's purge of dead processes, which would take
        # their topic rows without a `leave`.
        left = await on_beat_thread(registry.purge_dead_members)()
        gone = await on_beat_thread(registry.heartbeat)()
        await on_beat_thread(relay.purge_stale)()
    except Exception:
        # A database outage must not kill the loop; the next beat retries.
        logger.warning("identity heartbeat failed", exc_info=True)
        return
    try:
        await on_beat_thread(counters.flush)()
    except Exception:
        logger.warning("could not flush the connect counters", exc_info=True)
    for user_id, username, topic in left:
        try:
            await push.push_members(topic, "leave", user_id, username)
        except Exception:
            logger.warning("could not push leave of %s for user %s", topic, user_id, exc_info=True)
    for user_id, username, version in gone:
        try:
            await push.push_presence("offline", user_id, username, version)
        except Exception:
            logger.warning("could not push offline for user %s", user_id, exc_info=True)


async def _poll_forever() -> None:
    while True:
        await poll_once()
        await asyncio.sleep(conf.withdrawal_poll())


async def poll_once() -> int:
    """Carry out the requests and relayed events addressed to this process; how many."""
    try:
        requests, events = await database_sync_to_async(_claim)(registry.SERVER_ID)
    except Exception:
        logger.warning("identity withdrawal poll failed", exc_info=True)
        return 0
    layer = get_channel_layer()
    for group, message in events:  # in order: events from one process stay in order
        try:
            await layer.group_send(group, message)
        except Exception:
            # Claimed already (deleted): it is lost, but the ones after it, and
            # the poller, must not be.
            logger.warning(
                "could not send a relayed %r to %s", message.get("type"), group, exc_info=True
            )
    await asyncio.gather(*(_carry_out(request) for request in requests))
    return len(requests) + len(events)


def _claim(server_id: str) -> tuple[list[WithdrawalRequest], list[tuple[str, dict[str, Any]]]]:
    return relay.claim(server_id), relay.claim_events(server_id)


async def _carry_out(request: WithdrawalRequest) -> None:
    reason = Reason(request.reason)
    target = request.channel_name or push.user_group(request.user_id)
    closed = 0
    try:
        closed = await push.withdraw_here(
            target, reason, request.sockets, group=not request.channel_name
        )
        if closed and request.offline_username:
            await push.push_presence("offline", request.user_id, request.offline_username)
    except Exception:
        logger.exception("withdrawal request %s failed", request.pk)
    try:
        await database_sync_to_async(relay.finish)(request.pk, closed)
    except Exception:
        logger.warning("could not record withdrawal request %s", request.pk, exc_info=True)
