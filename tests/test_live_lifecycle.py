"""Lifecycle against real server processes: crashes, restarts, commands from outside."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
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


async def run_manage(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """A management command in its own process, awaited without blocking the sockets."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "manage.py",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def assert_withdrawn(ws, reason: str) -> None:
    assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {
        "action": "disconnect",
        "payload": {"reason": reason, "reconnect": False},
    }
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd.code == 4403


def timed_shell(code: str) -> str:
    """Python for `manage.py shell -c`: run CODE (which sets `result`) on alice, timed."""
    return (
        "import time; from django.contrib.auth import get_user_model; "
        "from identity import withdraw; from identity.protocol import Reason; "
        "User = get_user_model(); user = User.objects.get(username='alice'); "
        f"start = time.monotonic(); {code}; "
        "print('RESULT', result, round(time.monotonic() - start, 3))"
    )


def shell_result(out: str) -> tuple[str, float]:
    """The result and seconds printed by a `timed_shell` run."""
    line = next(line for line in out.splitlines() if line.startswith("RESULT "))
    _, result, seconds = line.split()
    return result, float(seconds)


@pytest.mark.parametrize(
    ("command", "reason", "output"),
    [
        ("disconnect", "kicked", "1 socket closed for alice.\n"),
        (
            "revoke",
            "token_revoked",
            "alice: every token issued so far is refused from now on.\n"
            "1 socket closed for alice.\n",
        ),
    ],
)
async def test_a_command_in_another_process_closes_in_memory_sockets(
    server, database, command, reason, output
):
    ws = await authed(server, database, "alice")
    status, out, err = await run_manage(database.env, command, "alice")
    assert (status, out) == (0, output), err
    await assert_withdrawn(ws, reason)
    assert f"by command, reason {reason}: 1 socket closed for alice" in err  # the INFO log line
    assert online(server, staff_token(server, database)) == {}


async def test_a_withdrawal_from_another_process_lands_within_one_second(server, database):
    ws = await authed(server, database, "alice")
    code = timed_shell("result = withdraw.disconnect(user.pk, Reason.KICKED)")
    status, out, err = await run_manage(database.env, "shell", "-c", code)
    assert status == 0, err
    closed, seconds = shell_result(out)
    # From the request to the server process's "done": the socket closed before that.
    assert closed == "1" and seconds < 1.0, out
    await assert_withdrawn(ws, "kicked")


async def test_deleting_a_user_from_the_shell_closes_their_socket_and_pushes_offline(
    server, database
):
    watcher = await authed(server, database, "bob")
    await watcher.send(json.dumps({"action": "presence"}))
    json.loads(await watcher.recv())
    ws = await authed(server, database, "alice")
    assert json.loads(await watcher.recv())["payload"]["event"] == "online"
    status, out, err = await run_manage(
        database.env, "shell", "-c", timed_shell("result = user.delete()[0] > 0")
    )
    assert status == 0, err
    deleted, seconds = shell_result(out)
    assert deleted == "True" and seconds < 1.0, out
    await assert_withdrawn(ws, "user_deleted")
    offline = json.loads(await asyncio.wait_for(watcher.recv(), 5))
    assert offline["payload"]["event"] == "offline", offline
    assert offline["payload"]["user"]["username"] == "alice"
    assert "delete of alice" in err and "by shell, reason user_deleted: 1 socket closed" in err
    await watcher.close()


async def test_deactivating_a_user_from_the_shell_closes_their_socket(server, database):
    ws = await authed(server, database, "alice")
    code = timed_shell("user.is_active = False; user.save(); result = 1")
    status, _, err = await run_manage(database.env, "shell", "-c", code)
    assert status == 0, err
    await assert_withdrawn(ws, "user_inactive")
    assert "deactivation of alice" in err and "by shell" in err


def stop_outside_a_transaction(server: LiveServer, database: Database) -> None:
    """SIGSTOP the server, but not while it holds SQLite's write lock.

    A process stopped mid-transaction would block every writer, the command too
    (SQLite's nature, not the withdrawal's): retry until the lock is free.
    """
    assert server.process is not None
    path = database.env["DATABASE_URL"].removeprefix("sqlite:///")
    while True:
        server.process.send_signal(signal.SIGSTOP)
        try:
            with contextlib.closing(
                sqlite3.connect(path, timeout=0.05, isolation_level=None)
            ) as db:
                db.execute("BEGIN IMMEDIATE")
                db.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:
            server.process.send_signal(signal.SIGCONT)
            time.sleep(0.05)


async def test_a_stalled_server_process_is_reported_and_never_withdraws_later(tmp_path):
    # A longer expiry: the stopped process's sockets must still count as live
    # while the command starts.
    database = Database.sqlite(
        IDENTITY_HEARTBEAT_INTERVAL=str(INTERVAL), IDENTITY_HEARTBEAT_EXPIRY="30", REDIS_URL=""
    )
    server = LiveServer(database.env).start()
    try:
        ws = await authed(server, database, "alice")
        stop_outside_a_transaction(server, database)
        try:
            status, out, err = await run_manage(database.env, "disconnect", "alice")
        finally:
            server.process.send_signal(signal.SIGCONT)
        assert status != 0 and out == ""
        assert "nothing closed for alice: 1 socket(s) held by server process(es)" in err
        assert "were not closed: no answer within 3s" in err
        # The cancelled request does not run once the process wakes up.
        await asyncio.sleep(1.0)
        await ws.send(json.dumps({"action": "whoami"}))
        assert json.loads(await ws.recv())["payload"]["user"]["username"] == "alice"
        await ws.close()
    finally:
        server.stop()


async def test_the_staff_api_kicks_over_a_real_socket(server, database):
    ws = await authed(server, database, "alice")
    status, body = server.post("/api/users/alice/disconnect/", None, staff_token(server, database))
    assert (status, body) == (200, {"username": "alice", "connections": 1})
    push = json.loads(await ws.recv())
    assert push == {"action": "disconnect", "payload": {"reason": "kicked", "reconnect": False}}
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await ws.recv()
    assert closed.value.rcvd.code == 4403
