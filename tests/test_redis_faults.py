"""Redis stopped and started under open sockets (a Redis server of the test's own)."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.servers import Database, LiveServer
from tests.services import RedisServer, postgres_database
from tests.test_scale import Socket, access, open_socket

pytestmark = [pytest.mark.server, pytest.mark.services]


@pytest.fixture
def redis_server():
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fault_cluster(redis_server):
    with postgres_database() as database_url:
        env_db = Database({**_env(redis_server.url), "DATABASE_URL": database_url})
        servers = [LiveServer(env_db.env).start(), LiveServer(env_db.env).start()]
        try:
            yield env_db, servers, redis_server
        finally:
            for server in servers:
                server.stop()


def _env(redis_url: str) -> dict[str, str]:
    from tests.servers import base_env

    return base_env(REDIS_URL=redis_url, IDENTITY_HEARTBEAT_INTERVAL="0.5")


def health(server: LiveServer) -> int:
    status, _ = server.request("GET", "/healthz")
    return status


def wait_for(condition, limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"not {what} within {limit}s"
        time.sleep(0.1)  # polling an HTTP endpoint: there is no event to await


async def delivered(sender: Socket, receiver: Socket, limit: float = 15.0) -> float:
    """Send until the receiver gets one (pub/sub re-subscribes on its own time)."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        reply = await sender.request("send", {"to": "bob", "text": "after"})
        if reply["action"] == "send":
            try:
                push = await receiver.recv(timeout=1.0)
            except TimeoutError:
                continue
            assert push["action"] == "direct"
            return time.monotonic() - started
        assert reply["payload"]["code"] == "service_unavailable"
        await asyncio.sleep(0.2)
    raise AssertionError("no direct delivery after Redis came back")


async def test_redis_restart_is_survived_by_open_sockets(fault_cluster):
    database, (p1, p2), redis_server = fault_cluster
    alice = await open_socket(p1, access(p1, database, "alice"))
    bob = await open_socket(p2, access(p2, database, "bob"))
    assert health(p1) == 200

    redis_server.stop()
    wait_for(lambda: health(p1) == 503, 10, "503 while Redis is down")
    started = time.monotonic()
    reply = await alice.request("send", {"to": "bob", "text": "while down"})
    assert reply["action"] == "error"
    assert reply["payload"]["code"] == "service_unavailable"
    assert time.monotonic() - started < 5  # a clear error, not a hang
    staff = access(p1, database, "operator")
    status, body = p1.post("/api/users/bob/disconnect/", None, staff)
    assert status == 503 and body["code"] == "layer_unreachable"
    # What does not need Redis keeps working on the open sockets.
    assert (await bob.request("ping", 1))["action"] == "pong"
    assert (await alice.request("message", "hi"))["payload"]["text"] == "hi"

    redis_server.start()
    wait_for(lambda: health(p1) == 200 and health(p2) == 200, 15, "200 once Redis is back")
    await delivered(alice, bob)
    # Kicks reach the open socket again, across processes.
    status, body = p1.post("/api/users/bob/disconnect/", None, staff)
    assert status == 200 and body["connections"] == 1
    assert (await bob.recv())["payload"]["reason"] == "kicked"
    assert await bob.closed_code() == 4403
    # New sockets authenticate again, and nothing crashed either server.
    fresh = await open_socket(p2, access(p2, database, "bob"))
    await fresh.close()
    await alice.close()
    for server in (p1, p2):
        assert server.process.poll() is None
        assert "Exception inside application" not in server.output()
