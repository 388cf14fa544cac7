"""However a socket's handler ends, its registry row and groups go with it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import pytest
import websockets
from channels.layers import InMemoryChannelLayer, get_channel_layer

from identity import consumers, logs, push, registry
from identity.routing import websocket_application
from tests.conftest import access_for, adb, open_client
from tests.servers import Database, LiveServer, manage

pytestmark = pytest.mark.django_db(transaction=True)


async def test_a_cancelled_socket_leaves_the_registry_and_its_groups(alice):
    _, client = await open_client()
    assert (await client.auth(access_for(alice)))["registered"] is True
    assert [u.username for u in await adb(registry.online_users)()] == ["alice"]
    client.communicator.future.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await client.communicator.future
    assert await adb(registry.online_users)() == []
    assert not members(get_channel_layer(), push.user_group(alice.pk))


def members(layer, group: str) -> set[str]:
    """A group's channels in this process (channels-redis keeps them per event loop)."""
    if isinstance(layer, InMemoryChannelLayer):
        return set(layer.groups.get(group, ()))
    inner = layer._get_layer()
    return set(inner.groups.get(inner._get_group_channel_name(group), ()))


class BrokenConnection:
    """An ASGI server whose connection resets once the socket is authenticated."""

    def __init__(self, token: str) -> None:
        self.incoming: asyncio.Queue[dict] = asyncio.Queue()
        for message in (
            {"type": "websocket.connect"},
            {"type": "websocket.receive", "text": f'{{"action": "auth", "payload": "{token}"}}'},
            {"type": "websocket.receive", "text": '{"action": "ping"}'},
        ):
            self.incoming.put_nowait(message)
        self.sent: list[dict] = []
        self.attempted: list[dict] = []

    async def receive(self) -> dict:
        return await self.incoming.get()

    async def send(self, message: dict) -> None:
        self.attempted.append(message)
        if len(self.sent) == 2:  # accept, the auth reply, then the reset
            if len(self.attempted) == 3:  # as uvicorn: one disconnect, every send fails
                self.incoming.put_nowait({"type": "websocket.disconnect", "code": 1006})
            raise ConnectionResetError("reset by peer")
        self.sent.append(message)


async def test_a_send_that_fails_ends_the_socket_quietly_and_leaves_the_registry(
    alice, bob, connect, caplog
):
    watcher = await connect(access_for(bob))
    await watcher.request("presence")
    server = BrokenConnection(access_for(alice))
    scope = {"type": "websocket", "path": "/ws/", "headers": [], "client": ("127.0.0.1", 1)}
    logs.reset()
    with caplog.at_level(logging.WARNING, logger="identity"):
        await asyncio.wait_for(websocket_application(scope, server.receive, server.send), 3)
    assert server.sent[1]["text"].count('"registered":true') == 1
    # What ends a socket whose server refused a frame and kept the connection;
    # harmless here, where the connection is gone.
    assert server.attempted[-1] == {"type": "websocket.close", "code": 1011}
    assert [u.username for u in await adb(registry.online_users)()] == ["bob"]
    assert [(await watcher.receive())["payload"]["event"] for _ in range(2)] == [
        "online",
        "offline",
    ]
    lost = [r for r in caplog.records if "lost while sending" in r.getMessage()]
    assert len(lost) == 1 and lost[0].exc_info is None  # one line, no traceback


async def test_pushes_dropped_past_the_backlog_are_logged_once_a_while(
    alice, connect, caplog, monkeypatch
):
    release = asyncio.Event()

    async def stalled():  # `presence` holds the socket while the pushes pile up
        await release.wait()
        return []

    monkeypatch.setattr(push, "online_users", stalled)
    client = await connect(access_for(alice))
    await client.send("presence")
    logs.reset()
    with caplog.at_level(logging.WARNING, logger="identity"):
        for n in range(consumers.EVENT_BACKLOG + 30):
            await push.send_to_user(alice.pk, "direct", {"n": n})
        # Through Redis the pushes arrive a moment later: wait for the first drop.
        for _ in range(100):
            if dropped_lines(caplog):
                break
            await asyncio.sleep(0.05)
        release.set()
        for _ in range(consumers.EVENT_BACKLOG + 1):
            await client.receive()  # the presence reply and the backlog, nothing more
    await client.assert_silent()
    assert len(dropped_lines(caplog)) == 1  # 30 dropped, one line (logs.THROTTLE_INTERVAL)


def dropped_lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "was dropped" in r.getMessage()]


@pytest.mark.server
@pytest.mark.parametrize("kind", ["daphne", "uvicorn"])
async def test_a_server_shutdown_leaves_no_registry_row(kind):
    env = {"REDIS_URL": ""}
    command = None
    if kind == "uvicorn":
        env.update(DJANGO_DEBUG="0", DJANGO_HTTPS="0", DJANGO_SECRET_KEY="s" * 50)
        command = ["manage.py", "serve", "--workers", "1"]
    database = Database.sqlite(**env)
    server = LiveServer(database.env, command).start()
    try:
        access = server.tokens("alice", database.passwords["alice"])["access"]
        ws = await websockets.connect(server.ws)
        await ws.send(f'{{"action": "auth", "payload": "{access}"}}')
        assert '"registered":true' in await ws.recv()
        # Killed after the timeout, a server runs no atexit: it ignored the signal
        # (tests.servers.with_default_sigint) or a loaded machine needed longer.
        server.stop(signal.SIGTERM if kind == "uvicorn" else signal.SIGINT, timeout=30)
        assert server.process is not None
        assert server.process.returncode != -signal.SIGKILL, server.output()
        with contextlib.suppress(websockets.ConnectionClosed):
            await ws.recv()
    finally:
        server.stop()
    online = manage(database.env, "online").strip()
    assert online == "Nobody is online.", server.output()
