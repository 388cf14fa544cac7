"""Frames the server cannot write: an answer becomes `server_error`, else the socket ends.

Daphne (`runserver`) refuses a frame over IDENTITY_MAX_FRAME_BYTES and keeps
the connection open, so no `websocket.disconnect` ever follows: a socket that
waited for one stayed open, silent and online for good.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.live_sockets import LiveSocket, ServerClosed, prepare
from tests.servers import Database, LiveServer

pytestmark = [pytest.mark.server, pytest.mark.usefixtures("closes_live_sockets")]

# 64,000 bytes of `1e5`, which orjson writes back as `100000.0`: a pong of 144,000.
GROWS_WHEN_ENCODED = "[" + ",".join(["1e5"] * 16_000) + "]"
PRODUCTION = {"DJANGO_DEBUG": "0", "DJANGO_HTTPS": "0", "DJANGO_SECRET_KEY": "s" * 50}


def start(command: list[str] | None = None, **env: str) -> LiveServer:
    """A server with the test actions (tests/realtime_example.py) and a token per demo user."""
    database = Database.sqlite(
        DJANGO_SETTINGS_MODULE="tests.settings_with_test_topics", REDIS_URL="", **env
    )
    server = LiveServer(database.env, command).start()
    server.tokens_by_user = prepare(database.env, "")
    return server


@pytest.fixture(scope="module")
def daphne() -> Iterator[LiveServer]:
    server = start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def uvicorn() -> Iterator[LiveServer]:
    server = start(["manage.py", "serve", "--workers", "1"], **PRODUCTION)
    yield server
    server.stop()


async def socket(server: LiveServer, username: str) -> LiveSocket:
    return await LiveSocket.open(server, server.tokens_by_user[username])


def is_presence(event: str, username: str) -> Callable[[dict[str, Any]], bool]:
    """A frame test: the `presence` push of USERNAME's EVENT (online/offline)."""
    return lambda frame: (
        frame["action"] == "presence"
        and "ref" not in frame
        and frame["payload"]["event"] == event
        and frame["payload"]["user"]["username"] == username
    )


async def online(sock: LiveSocket) -> list[str]:
    """Who is online, by the registry (and SOCK watches presence from now on)."""
    reply = await sock.request("presence")
    return [user["username"] for user in reply["payload"]["users"]]


async def test_a_push_daphne_will_not_write_closes_the_socket_with_1011_and_it_goes_offline(
    daphne,
):
    watcher = await socket(daphne, "bob")
    assert await online(watcher) == ["bob"]
    alice = await socket(daphne, "alice")
    await watcher.until(is_presence("online", "alice"))
    reply = await alice.request("test.push_huge")
    assert reply["payload"] == "pushed"
    with pytest.raises(ServerClosed):
        await alice.next()
    assert alice.close_code == 1011  # a server error: reconnect with backoff
    await watcher.until(is_presence("offline", "alice"))
    assert await online(watcher) == ["bob"]


async def test_an_answer_daphne_will_not_write_is_a_server_error_and_the_socket_lives_on(daphne):
    alice = await socket(daphne, "alice")
    await alice.ws.send('{"action": "ping", "ref": "big", "payload": ' + GROWS_WHEN_ENCODED + "}")
    error = await alice.next()
    assert error["action"] == "error" and error["ref"] == "big", error
    assert error["payload"]["code"] == "server_error"
    assert (await alice.request("ping", "after"))["payload"] == "after"
    assert await online(alice) == ["alice"]


@pytest.mark.parametrize(
    ("kind", "logged"),
    [
        ("daphne", "WebSocket DISCONNECT"),  # daphne drops a frame to a closed connection
        ("uvicorn", "lost while sending: ClientDisconnected()"),  # uvicorn raises: `lose`
    ],
)
async def test_an_answer_to_a_client_gone_meanwhile_ends_its_socket(kind, logged, request):
    server = request.getfixturevalue(kind)
    watcher = await socket(server, "bob")
    await online(watcher)
    alice = await socket(server, "alice")
    await watcher.until(is_presence("online", "alice"))
    await alice.send("test.wait", 1, ref="w")
    alice.ws.transport.abort()  # gone while the answer is being made
    await watcher.until(is_presence("offline", "alice"))
    assert await online(watcher) == ["bob"]
    assert logged in server.output()
    assert "Traceback" not in server.output()
