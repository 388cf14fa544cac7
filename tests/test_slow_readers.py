"""Clients that stop reading, and connections reset mid-send, under uvicorn and daphne.

Each test runs against both supported servers as real processes. The slow
client has a tiny receive buffer and no compression, so the server's writes
back up after a few hundred kilobytes instead of the kernel's megabytes.
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

from tests.servers import Database, LiveServer

pytestmark = pytest.mark.server

BIG = 50_000  # characters in a ping: its pong alone fills a paused transport's buffer


@pytest.fixture(params=["uvicorn", "daphne"])
def served(request):
    env = {"IDENTITY_RATE_LIMIT": "0", "IDENTITY_MAX_CONNECTIONS_PER_USER": "1", "REDIS_URL": ""}
    command = None
    if request.param == "uvicorn":
        env.update(DJANGO_DEBUG="0", DJANGO_HTTPS="0", DJANGO_SECRET_KEY=secrets.token_urlsafe(50))
        command = ["manage.py", "serve", "--workers", "1"]
    database = Database.sqlite(**env)
    server = LiveServer(database.env, command).start()
    yield server, database
    server.stop()
    # Sends that fail on a closed or reset connection are one throttled line each kind.
    assert "Traceback" not in server.output()


async def authed(served, username: str, slow: bool = False):
    """An authenticated client; a slow one reads nothing until the test says so."""
    server, database = served
    access = server.tokens(username, database.passwords[username])["access"]
    if slow:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        # Small on the way out too: its own sends then block soon after the server's.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        ws = await websockets.connect(server.ws, sock=sock, max_queue=4, compression=None)
    else:
        ws = await websockets.connect(server.ws)
    await ws.send(json.dumps({"action": "auth", "payload": access}))
    reply = json.loads(await ws.recv())
    assert reply["payload"]["registered"] is True, reply
    return ws


def online(served) -> dict[str, int]:
    server, database = served
    token = server.tokens("operator", database.passwords["operator"])["access"]
    status, body = server.request("GET", "/api/online/", token=token)
    assert status == 200, body
    return {u["username"]: u["connections"] for u in body["users"]}


async def wait_until(condition, limit: float = 5.0) -> None:
    """Poll what the server exposes no event for (its registry, over HTTP).

    In a thread, so the test's own event loop goes on (and closes what it aborts).
    """

    def poll() -> None:
        deadline = time.monotonic() + limit
        while not condition():
            assert time.monotonic() < deadline, "condition not met in time"
            time.sleep(0.1)

    await asyncio.to_thread(poll)


async def read_to_close(ws) -> tuple[list[dict], int]:
    """Every frame the client had not read, and the close code."""
    frames = []
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            frames.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
    return frames, closed.value.rcvd.code


def noise(length: int) -> str:
    """Text that compresses badly, at three UTF-8 bytes a character."""
    return "".join(chr(0x4E00 + secrets.randbelow(0x5000)) for _ in range(length))


STALL_LIMIT = 400  # pings: 20 MB, several times what the buffers on the way can hold


async def stall_with_pings(ws) -> int:
    """Send big pings without reading until the server stops taking them; how many went."""
    sent = 0
    for n in range(STALL_LIMIT):
        payload = {"action": "ping", "payload": secrets.token_urlsafe(BIG)[:BIG], "ref": n}
        try:
            await asyncio.wait_for(ws.send(json.dumps(payload)), 1)
        except TimeoutError:
            break
        sent += 1
    return sent


async def test_a_client_that_stops_reading_is_closed_4408_and_leaves_presence(served):
    slow = await authed(served, "alice", slow=True)
    bob = await authed(served, "bob")
    sent = 600
    for _n in range(sent):
        text = noise(4000)
        await bob.send(json.dumps({"action": "send", "payload": {"to": "alice", "text": text}}))
        assert json.loads(await bob.recv())["payload"]["to"] == "alice"
    await wait_until(lambda: "alice" not in online(served))
    frames, code = await read_to_close(slow)
    directs = [f for f in frames if f["action"] == "direct"]
    assert len(directs) < sent  # what piled up past the bound was never written
    assert frames[-1] == {
        "action": "disconnect",
        "payload": {"reason": "slow_reader", "reconnect": False},
    }
    assert code == 4408
    await bob.close()


async def test_a_reset_while_the_server_is_blocked_writing_leaves_no_ghost(served):
    slow = await authed(served, "alice", slow=True)
    # The server stopped reading: it is blocked writing pongs nobody reads.
    assert await stall_with_pings(slow) < STALL_LIMIT
    assert online(served) == {"alice": 1}
    raw = slow.transport.get_extra_info("socket")
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    slow.transport.abort()  # RST, not a closing handshake
    await wait_until(lambda: "alice" not in online(served))
    # The connection limit (1) counts no ghost: she signs straight back in.
    again = await authed(served, "alice")
    await again.close()


async def test_a_revoke_reaches_a_blocked_socket_ahead_of_its_queued_pushes(served):
    server, database = served
    slow = await authed(served, "alice", slow=True)
    bob = await authed(served, "bob")
    await stall_with_pings(slow)
    for n in range(30):  # below the backlog: queued, not yet a slow reader
        await bob.send(json.dumps({"action": "send", "payload": {"to": "alice", "text": str(n)}}))
        assert json.loads(await bob.recv())["payload"]["online"] is True
    token = server.tokens("operator", database.passwords["operator"])["access"]
    status, body = server.post("/api/users/alice/revoke/", None, token)
    assert (status, body) == (200, {"username": "alice", "connections": 1})
    await wait_until(lambda: "alice" not in online(served), limit=2)
    frames, code = await read_to_close(slow)
    assert [f for f in frames if f["action"] == "direct"] == []  # dropped, not delivered
    assert frames[-1] == {
        "action": "disconnect",
        "payload": {"reason": "token_revoked", "reconnect": False},
    }
    assert code == 4403
    await bob.close()
