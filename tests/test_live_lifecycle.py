"""Lifecycle against real server processes: crashes, restarts, commands from outside."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import websockets

from tests.servers import ROOT, Database, LiveServer

pytestmark = pytest.mark.server

INTERVAL, EXPIRY = 0.5, 2.0


@pytest.fixture
def database():
    # The embedded default on purpose (REDIS_URL empty even when the suite
    # runs on Redis): these tests are about one process and its in-memory layer.
    return Database.sqlite(
        IDENTITY_HEARTBEAT_INTERVAL=str(INTERVAL),
        IDENTITY_HEARTBEAT_EXPIRY=str(EXPIRY),
        REDIS_URL="",
    )


@pytest.fixture
def server(database):
    live = LiveServer(database.env).start()
    yield live
    live.stop()


def staff_token(server: LiveServer, database: Database) -> str:
    return server.tokens("operator", database.passwords["operator"])["access"]


async def authed(server: LiveServer, database: Database, username: str):
    access = server.tokens(username, database.passwords[username])["access"]
    ws = await websockets.connect(server.ws)
    await ws.send(json.dumps({"action": "auth", "payload": access}))
    reply = json.loads(await ws.recv())
    assert reply["payload"]["registered"] is True, reply
    return ws


def online(server: LiveServer, token: str) -> dict[str, int]:
    status, body = server.request("GET", "/api/online/", token=token)
    assert status == 200, body
    return {u["username"]: u["connections"] for u in body["users"]}


def wait_until(condition, limit: float) -> float:
    """Poll a condition the server exposes no event for; seconds it took."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < limit, "condition not met in time"
        time.sleep(0.1)
    return time.monotonic() - start


async def test_a_sigkilled_process_leaves_no_ghost_after_the_bound(server, database):
    ws = await authed(server, database, "alice")
    assert online(server, staff_token(server, database)) == {"alice": 1}
    server.stop(signal.SIGKILL)
    killed_at = time.monotonic()
    server.start()  # a new process on the same port and database
    token = staff_token(server, database)
    wait_until(lambda: online(server, token) == {}, limit=EXPIRY + INTERVAL + 5)
    # Stale rows stop counting at EXPIRY after the last heartbeat, at the latest.
    assert time.monotonic() - killed_at <= EXPIRY + INTERVAL + 5
    await ws.close()
    fresh = await authed(server, database, "alice")
    assert online(server, token) == {"alice": 1}
    await fresh.close()


async def test_a_command_in_another_process_says_it_cannot_reach_in_memory_sockets(
    server, database
):
    ws = await authed(server, database, "alice")
    result = subprocess.run(
        [sys.executable, "manage.py", "disconnect", "alice"],
        cwd=ROOT,
        env=database.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "in-memory channel layer cannot reach" in result.stderr
    assert "REDIS_URL" in result.stderr
    await ws.send(json.dumps({"action": "whoami"}))
    assert json.loads(await ws.recv())["payload"]["user"]["username"] == "alice"
    await ws.close()


async def test_the_staff_api_kicks_over_a_real_socket(server, database):
    ws = await authed(server, database, "alice")
    status, body = server.post("/api/users/alice/disconnect/", None, staff_token(server, database))
    assert (status, body) == (200, {"username": "alice", "connections": 1})
    push = json.loads(await ws.recv())
    assert push == {"action": "disconnect", "payload": {"reason": "kicked", "reconnect": False}}
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await ws.recv()
    assert closed.value.rcvd.code == 4403
