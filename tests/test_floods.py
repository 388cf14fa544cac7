"""Anonymous floods and slow handshakes, against real servers (daphne and uvicorn).

Each test connects from its own loopback address (127.0.0.x), so the
per-address counts of one server process do not mix between tests.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import struct
import time

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.servers import Database, LiveServer

pytestmark = pytest.mark.server

LIMITS = {
    "IDENTITY_MAX_ANONYMOUS_PER_ADDRESS": "3",
    "IDENTITY_HANDSHAKE_RATE": "2",
    "IDENTITY_HANDSHAKE_BURST": "12",
    "IDENTITY_HANDSHAKE_TIMEOUT": "1",
    "IDENTITY_AUTH_TIMEOUT": "5",
}
PRODUCTION = {
    "DJANGO_DEBUG": "0",
    "DJANGO_HTTPS": "0",
    "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
}
COMMANDS = {"daphne": None, "uvicorn": ["manage.py", "serve", "--workers", "1"]}
ANSWER_WITHIN = 4.0  # seconds a refused or timed-out connection may wait for its answer


@pytest.fixture(scope="module", params=["daphne", "uvicorn"])
def server(request):
    extra = PRODUCTION if request.param == "uvicorn" else {}
    database = Database.sqlite(**LIMITS, **extra)
    live = LiveServer(database.env, COMMANDS[request.param]).start()
    live.kind, live.passwords = request.param, database.passwords
    yield live
    live.stop()


def connect(server, source: str, **kwargs):
    return websockets.connect(server.ws, local_addr=(source, 0), ping_interval=None, **kwargs)


async def connect_once_counted_out(server, source: str):
    """Connect as soon as the server has counted a closed socket out.

    The server counts a socket out when its handler returns, a moment after
    the client sees the close; it exposes no event for that, so this retries
    (at a pace the handshake rate allows) for a bounded time.
    """
    deadline = time.monotonic() + ANSWER_WITHIN
    while True:
        try:
            return await connect(server, source)
        except InvalidStatus:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def refused(server, source: str) -> InvalidStatus:
    with pytest.raises(InvalidStatus) as refusal:
        await connect(server, source)
    return refusal.value


async def auth(ws, token: str) -> dict:
    await ws.send(json.dumps({"action": "auth", "payload": token}))
    return json.loads(await ws.recv())["payload"]


async def test_an_address_holds_at_most_the_anonymous_cap(server):
    source = "127.0.0.2"
    sockets = [await connect(server, source) for _ in range(3)]
    refusal = await refused(server, source)
    assert refusal.response.status_code == 429
    if server.kind == "uvicorn":  # daphne's handshake refusal carries no headers or body
        assert refusal.response.headers["Retry-After"] == "1"
        assert json.loads(refusal.response.body)["code"] == "too_many_anonymous"
    # Another address is not affected.
    other = await connect(server, "127.0.0.12")
    await other.close()
    for ws in sockets:
        await ws.close()


async def test_an_authenticated_socket_stops_counting_and_counts_again_after_logout(server):
    source = "127.0.0.3"
    token = server.tokens("alice", server.passwords["alice"])["access"]
    sockets = [await connect(server, source) for _ in range(3)]
    assert (await auth(sockets[0], token))["registered"] is True
    sockets.append(await connect(server, source))  # room for one more anonymous socket
    await refused(server, source)
    await sockets[0].send(json.dumps({"action": "logout"}))
    assert json.loads(await sockets[0].recv())["payload"] == {"registered": False}
    await sockets[1].close()  # 3 anonymous again (the logged-out one counts): still full
    await refused(server, source)
    await sockets[2].close()
    sockets.append(await connect_once_counted_out(server, source))
    for ws in sockets:
        await ws.close()


def reset(port: int, source: str) -> None:
    """Open a connection and reset it (RST, no close frame) right after the handshake."""
    sock = socket.create_connection(("127.0.0.1", port), source_address=(source, 0))
    sock.sendall(
        b"GET /ws/ HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    sock.settimeout(ANSWER_WITHIN)
    assert sock.recv(1024).startswith(b"HTTP/1.1 101")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def test_sockets_that_end_in_any_way_stop_counting(server):
    source = "127.0.0.4"
    # A normal close, a reset, an auth timeout (4401), twice over: the count
    # stays at zero or the second round would be refused.
    for _ in range(2):
        ws = await connect(server, source)
        await ws.close()
        await asyncio.to_thread(reset, server.port, source)
        timed_out = await connect(server, source)
        with pytest.raises(ConnectionClosed):
            while True:
                await asyncio.wait_for(timed_out.recv(), 10)
        assert timed_out.close_code == 4401
    await asyncio.sleep(0.5)  # the server notices the reset
    sockets = [await connect(server, source) for _ in range(3)]
    for ws in sockets:
        await ws.close()


async def test_an_address_is_limited_in_handshakes_per_second(server):
    source = "127.0.0.5"
    for _ in range(12):  # the burst
        ws = await connect(server, source)
        await ws.close()
    refusal = await refused(server, source)
    assert refusal.response.status_code == 429
    if server.kind == "uvicorn":
        assert json.loads(refusal.response.body)["code"] == "handshake_rate"
        assert int(refusal.response.headers["Retry-After"]) >= 1
    await asyncio.sleep(0.6)  # 2 per second: a token is back
    ws = await connect(server, source)
    await ws.close()


def held(port: int, request: bytes) -> tuple[float, bytes]:
    """Send `request`; seconds until the server closed the connection, and its answer."""
    sock = socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.6", 0))
    sock.settimeout(ANSWER_WITHIN + 1)
    started, answer = time.monotonic(), b""
    try:
        sock.sendall(request)
        while chunk := sock.recv(65536):
            answer += chunk
    except (TimeoutError, ConnectionResetError, BrokenPipeError):
        pass
    finally:
        sock.close()
    return time.monotonic() - started, answer


def test_an_incomplete_handshake_gets_408_within_the_timeout(server):
    seconds, answer = held(server.port, b"GET /ws/ HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: web")
    assert seconds < ANSWER_WITHIN
    assert answer.startswith(b"HTTP/1.1 408")


def test_a_60_kb_header_is_refused_at_once(server):
    request = (
        b"GET /ws/ HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"X-Big: " + b"a" * 60000 + b"\r\n\r\n"
    )
    seconds, answer = held(server.port, request)
    assert seconds < 1  # well before the handshake timeout
    if server.kind == "uvicorn":
        assert answer.startswith(b"HTTP/1.1 431")
    else:  # twisted drops a line past 16 KiB without an answer
        assert not answer.startswith(b"HTTP/1.1 101")


def test_a_10_kb_header_line_is_refused_at_once_by_uvicorn(server):
    if server.kind != "uvicorn":
        pytest.skip("daphne accepts header lines up to twisted's 16 KiB")
    # Under the total bound, over the websockets library's line limit.
    request = (
        b"GET /ws/ HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"X-Big: " + b"a" * 10000 + b"\r\n\r\n"
    )
    seconds, answer = held(server.port, request)
    assert seconds < 1
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large")


def test_refused_handshakes_log_no_errors(server):
    # Runs after the refusals above: one log line per refusal would be a log
    # flood under a connection flood (uvicorn logged a false ERROR for each).
    output = server.output()
    assert "ERROR" not in output
    assert "Traceback" not in output
