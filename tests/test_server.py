"""The real thing: `manage.py runserver` (daphne) in a subprocess, a real WebSocket client.

The communicator hides what daphne does (close before accept becomes a 403,
an exception becomes 1011), so this is the test that counts for the transport.
"""

from __future__ import annotations

import json

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.servers import Database, LiveServer

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def server():
    database = Database.sqlite(IDENTITY_AUTH_TIMEOUT="2", IDENTITY_MAX_AUTH_ATTEMPTS="2")
    live = LiveServer(database.env).start()
    live.passwords = database.passwords
    yield live
    live.stop()


async def recv(ws) -> dict:
    return json.loads(await ws.recv(decode=True))


async def authed(server, username="alice"):
    tokens = server.tokens(username, server.passwords[username])
    ws = await websockets.connect(server.ws)
    await ws.send(json.dumps({"action": "auth", "payload": tokens["access"], "ref": 1}))
    reply = await recv(ws)
    assert reply["payload"]["registered"] is True, reply
    return ws, reply


async def test_auth_and_echo_over_a_real_socket(server):
    ws, reply = await authed(server)
    assert reply["payload"]["user"]["username"] == "alice"
    await ws.send(json.dumps({"action": "message", "payload": "hello", "ref": "m"}))
    echo = await recv(ws)
    assert echo == {
        "action": "message",
        "payload": {"text": "hello", "user": reply["payload"]["user"]},
        "ref": "m",
    }
    await ws.close()


async def test_bad_json_is_answered_and_the_socket_stays_open(server):
    ws, _ = await authed(server)
    await ws.send("{not json")
    assert (await recv(ws))["payload"]["code"] == "invalid_json"
    await ws.send(b"\x00binary")
    assert (await recv(ws))["payload"]["code"] == "unsupported_frame"
    await ws.send(json.dumps({"action": "ping", "payload": 1}))
    assert (await recv(ws))["action"] == "pong"
    await ws.close()


async def test_an_oversize_frame_closes_1009_and_the_exact_limit_passes(server):
    async with websockets.connect(server.ws, max_size=None) as ws:
        head = '{"action":"ping","payload":"'
        exact = head + "x" * (65536 - len(head) - 2) + '"}'
        assert len(exact.encode()) == 65536
        await ws.send(exact)
        assert (await recv(ws))["action"] == "pong"
        await ws.send(exact[:-2] + 'x"}')
        with pytest.raises(ConnectionClosed) as closed:
            await recv(ws)
        assert closed.value.rcvd.code == 1009


async def test_a_foreign_origin_is_refused_at_the_handshake(server):
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(server.ws, origin="http://evil.example")
    assert refused.value.response.status_code == 403


async def test_origin_null_is_refused_at_the_handshake(server):
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(server.ws, origin="null")
    assert refused.value.response.status_code == 403


async def test_no_origin_is_accepted(server):
    async with websockets.connect(server.ws) as ws:
        await ws.send(json.dumps({"action": "whoami"}))
        assert (await recv(ws))["payload"] == {"user": None, "expires_at": None}


async def test_the_page_origin_is_accepted(server):
    async with websockets.connect(server.ws, origin=server.http) as ws:
        await ws.send(json.dumps({"action": "ping", "payload": 2}))
        assert (await recv(ws))["payload"] == 2


async def test_an_unknown_path_is_refused_not_crashed(server):
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(server.ws.replace("/ws/", "/other/"))
    assert refused.value.response.status_code == 403


async def test_the_token_endpoints_answer_over_http(server):
    status, body = server.post("/api/token/", {"username": "alice", "password": "wrong"})
    assert status == 401 and body["detail"]
    status, body = server.post("/api/token/refresh/", {"refresh": "junk"})
    assert status == 401 and body["code"] == "token_not_valid"


async def closing(ws) -> tuple[dict, int]:
    push = await recv(ws)
    with pytest.raises(ConnectionClosed) as closed:
        await recv(ws)
    return push, closed.value.rcvd.code


async def test_the_auth_timeout_closes_4401_through_daphne(server):
    async with websockets.connect(server.ws) as ws:
        push, code = await closing(ws)
    assert push["payload"] == {"reason": "auth_timeout", "reconnect": True}
    assert code == 4401


async def test_too_many_attempts_closes_4429_through_daphne(server):
    async with websockets.connect(server.ws) as ws:
        await ws.send(json.dumps({"action": "auth", "payload": "bad"}))
        assert (await recv(ws))["payload"]["registered"] is False
        await ws.send(json.dumps({"action": "auth", "payload": "bad"}))
        assert (await recv(ws))["payload"]["registered"] is False
        push, code = await closing(ws)
    assert push["payload"] == {"reason": "too_many_attempts", "reconnect": False}
    assert code == 4429
