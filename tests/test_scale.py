"""Scale-out: two server processes sharing PostgreSQL and Redis (issue "Scale out").

Real services of this machine: PostgreSQL 127.0.0.1:5432 (a fresh database per
module) and Redis 127.0.0.1:6379 (a unique channel prefix per module).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import subprocess
import sys
import time

import pytest
import websockets

from tests.servers import ROOT, Database, LiveServer, base_env, manage
from tests.services import postgres_database, require_redis

pytestmark = [pytest.mark.server, pytest.mark.services]

WITHDRAWAL_BOUND = 1.0  # seconds: PROTOCOL.md's "within one second"
INTERVAL, EXPIRY = 0.5, 2.0
EXTRA_USERS = ["carol", "dave", "erin", "frank"]


@pytest.fixture(scope="module")
def cluster():
    redis_url = require_redis()
    with postgres_database() as database_url:
        env = base_env(
            DATABASE_URL=database_url,
            REDIS_URL=redis_url,
            IDENTITY_REDIS_PREFIX=f"test{secrets.token_hex(4)}",
            IDENTITY_HEARTBEAT_INTERVAL=str(INTERVAL),
            IDENTITY_HEARTBEAT_EXPIRY=str(EXPIRY),
            IDENTITY_MAX_CONNECTIONS_PER_USER="2",
        )
        database = Database(env)
        script = "from django.contrib.auth.models import User\n" + "".join(
            f"User.objects.create_user({name!r}, password='pw-{name}-1234')\n"
            for name in EXTRA_USERS
        )
        manage(env, "shell", "-c", script)
        database.passwords.update({name: f"pw-{name}-1234" for name in EXTRA_USERS})
        servers = [LiveServer(env).start(), LiveServer(env).start()]
        try:
            yield database, servers
        finally:
            for server in servers:
                server.stop()


class Socket:
    def __init__(self, ws) -> None:
        self.ws = ws

    async def send(self, action: str, payload=None) -> None:
        await self.ws.send(json.dumps({"action": action, "payload": payload}))

    async def recv(self, timeout: float = 3.0) -> dict:
        return json.loads(await asyncio.wait_for(self.ws.recv(), timeout))

    async def request(self, action: str, payload=None) -> dict:
        await self.send(action, payload)
        return await self.recv()

    async def closed_code(self, timeout: float = 3.0) -> int:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await self.recv(timeout)
        # No close frame at all (the process died): 1006, as browsers report it.
        return closed.value.rcvd.code if closed.value.rcvd else 1006

    async def close(self) -> None:
        await self.ws.close()


def access(server: LiveServer, database: Database, username: str) -> str:
    return server.tokens(username, database.passwords[username])["access"]


async def open_socket(server: LiveServer, token: str | None = None) -> Socket:
    sock = Socket(await websockets.connect(server.ws))
    if token is not None:
        reply = await sock.request("auth", token)
        assert reply["payload"]["registered"] is True, reply
    return sock


async def signed_in(server, database, username) -> Socket:
    return await open_socket(server, access(server, database, username))


async def assert_withdrawn_within(sock: Socket, reason: str, started: float) -> None:
    push = await sock.recv()
    assert push["payload"] == {"reason": reason, "reconnect": False}
    assert await sock.closed_code() == 4403
    assert time.monotonic() - started <= WITHDRAWAL_BOUND


async def test_send_on_one_process_reaches_every_socket_on_both(cluster):
    database, (p1, p2) = cluster
    alice = await signed_in(p1, database, "alice")
    bob1 = await signed_in(p1, database, "bob")
    bob2 = await signed_in(p2, database, "bob")
    reply = await alice.request("send", {"to": "bob", "text": "across"})
    assert reply["payload"] == {"to": "bob", "online": True}
    for sock in (bob1, bob2):
        push = await sock.recv()
        assert push["action"] == "direct"
        assert push["payload"]["text"] == "across"
        assert push["payload"]["from"]["username"] == "alice"
    for sock in (alice, bob1, bob2):
        await sock.close()


async def test_presence_lists_the_sockets_of_both_processes(cluster):
    database, (p1, p2) = cluster
    watcher = await signed_in(p1, database, "alice")
    carol1 = await signed_in(p1, database, "carol")
    carol2 = await signed_in(p2, database, "carol")
    users = (await watcher.request("presence"))["payload"]["users"]
    assert {u["username"]: u["connections"] for u in users} == {"alice": 1, "carol": 2}
    await carol2.close()
    await carol1.close()
    push = await watcher.recv()
    assert push["payload"] == {"event": "offline", "user": push["payload"]["user"]}
    assert push["payload"]["user"]["username"] == "carol"
    await watcher.close()


async def test_the_connection_limit_holds_across_processes(cluster):
    database, (p1, p2) = cluster
    first = await signed_in(p1, database, "dave")
    second = await signed_in(p2, database, "dave")
    third = await open_socket(p1)
    reply = await third.request("auth", access(p1, database, "dave"))
    assert reply["payload"]["error"]["code"] == "connection_limit"
    for sock in (first, second, third):
        await sock.close()


async def test_a_kick_through_process_1s_api_closes_sockets_on_process_2(cluster):
    database, (p1, p2) = cluster
    bob = await signed_in(p2, database, "bob")
    staff = access(p1, database, "operator")
    started = time.monotonic()
    status, body = p1.post("/api/users/bob/disconnect/", None, staff)
    assert (status, body) == (200, {"username": "bob", "connections": 1})
    await assert_withdrawn_within(bob, "kicked", started)


async def test_revoke_from_a_management_command_in_a_third_process(cluster):
    database, (_p1, p2) = cluster
    erin = await signed_in(p2, database, "erin")
    command = [sys.executable, "manage.py", "revoke", "erin"]
    started = time.monotonic()
    result = subprocess.run(
        command, cwd=ROOT, env=database.env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "1 socket closed for erin." in result.stdout
    push = await erin.recv()
    assert push["payload"] == {"reason": "token_revoked", "reconnect": False}
    assert await erin.closed_code() == 4403
    # The command's own start-up (Django, the database) is in `started`; the
    # withdrawal itself is bounded by the kick test above.
    assert time.monotonic() - started < 30


async def test_deactivation_in_a_third_process_closes_sockets_on_both(cluster):
    database, (p1, p2) = cluster
    token = access(p1, database, "frank")
    frank1 = await open_socket(p1, token)
    frank2 = await open_socket(p2, token)
    manage(
        database.env,
        "shell",
        "-c",
        "from django.contrib.auth.models import User\n"
        "u = User.objects.get(username='frank'); u.is_active = False; u.save()",
    )
    for sock in (frank1, frank2):
        assert (await sock.recv())["payload"]["reason"] == "user_inactive"
        assert await sock.closed_code() == 4403
    again = await open_socket(p2)
    assert (await again.request("auth", token))["payload"]["error"]["code"] == "user_inactive"
    await again.close()


async def test_sigkill_of_one_process_and_reidentification_on_the_other(cluster):
    database, (p1, p2) = cluster
    token = access(p1, database, "alice")
    victim = await open_socket(p2, token)
    staff = access(p1, database, "operator")

    def online() -> dict[str, int]:
        status, body = p1.request("GET", "/api/online/", token=staff)
        assert status == 200
        return {u["username"]: u["connections"] for u in body["users"]}

    assert online().get("alice") == 1
    p2.stop(signal.SIGKILL)
    killed = time.monotonic()
    assert await victim.closed_code() == 1006
    # The client reconnects to the surviving process and re-identifies.
    again = await open_socket(p1, token)
    assert (await again.request("whoami"))["payload"]["user"]["username"] == "alice"
    # Meanwhile the dead process's socket stops counting within the bound.
    while online().get("alice") != 1:
        assert time.monotonic() - killed < EXPIRY + INTERVAL + 3
        await asyncio.sleep(0.1)  # no event exists for "a heartbeat went stale"
    await again.close()
    p2.start()


class AdminSession:
    """A staff browser session over plain HTTP: login form, CSRF cookie, posts."""

    def __init__(self, server: LiveServer, username: str, password: str) -> None:
        import http.cookiejar
        import urllib.request

        self.server = server
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        self.opener.open(server.http + "/admin/login/", timeout=10).read()
        response = self.post(
            "/admin/login/", {"username": username, "password": password, "next": "/admin/"}
        )
        assert "/admin/login/" not in response.geturl(), "admin login failed"

    def csrf(self) -> str:
        return next(c.value for c in self.jar if c.name == "csrftoken")

    def post(self, path: str, fields: dict):
        import urllib.parse
        import urllib.request

        data = urllib.parse.urlencode({**fields, "csrfmiddlewaretoken": self.csrf()}, doseq=True)
        request = urllib.request.Request(self.server.http + path, data=data.encode())
        request.add_header("Referer", self.server.http + path)
        return self.opener.open(request, timeout=10)


async def test_an_admin_action_on_process_1_closes_sockets_on_process_2(cluster):
    database, (p1, p2) = cluster
    carol = await signed_in(p2, database, "carol")
    admin = AdminSession(p1, "operator", database.passwords["operator"])
    carol_id = (await carol.request("whoami"))["payload"]["user"]["id"]
    started = time.monotonic()
    page = (
        admin.post(
            "/admin/auth/user/", {"action": "disconnect_users", "_selected_action": [carol_id]}
        )
        .read()
        .decode()
    )
    assert "1 socket closed for carol." in page
    await assert_withdrawn_within(carol, "kicked", started)
