"""`ping`, `message`, the envelope errors and `ref` (PROTOCOL.md, rule 1 and the error table)."""

from __future__ import annotations

import json

import pytest
from channels.testing import WebsocketCommunicator

from config.asgi import application
from tests.conftest import access_for

pytestmark = pytest.mark.django_db(transaction=True)


async def test_ping_answers_pong_with_the_same_payload(connect):
    client = await connect()
    reply = await client.request("ping", {"n": [1, 2]}, ref="r1")
    assert reply == {"action": "pong", "payload": {"n": [1, 2]}, "ref": "r1"}


async def test_message_echoes_the_text_with_the_user(alice, connect):
    client = await connect(access_for(alice))
    reply = await client.request("message", "héllo 👋", ref=7)
    assert reply == {
        "action": "message",
        "payload": {"text": "héllo 👋", "user": {"id": alice.pk, "username": "alice"}},
        "ref": 7,
    }


async def test_message_accepts_empty_text_and_exactly_4096_code_points(alice, connect):
    client = await connect(access_for(alice))
    assert (await client.request("message", ""))["payload"]["text"] == ""
    text = "😀" * 4096
    assert (await client.request("message", text))["payload"]["text"] == text


@pytest.mark.parametrize("payload", ["x" * 4097, 5, None, {"text": "hi"}, ["hi"]])
async def test_message_with_a_bad_payload_is_invalid_payload(alice, connect, payload):
    client = await connect(access_for(alice))
    reply = await client.request("message", payload, ref="m")
    assert reply["action"] == "error"
    assert reply["payload"]["code"] == "invalid_payload"
    assert reply["payload"]["action"] == "message"
    assert reply["ref"] == "m"


async def test_message_without_identity_is_not_authenticated(connect, transactional_db):
    client = await connect()
    reply = await client.request("message", "hi", ref=1)
    assert reply == {
        "action": "error",
        "payload": {
            "code": "not_authenticated",
            "message": reply["payload"]["message"],
            "action": "message",
        },
        "ref": 1,
    }


@pytest.mark.parametrize("action", ["send", "presence"])
async def test_identity_actions_without_identity_are_not_authenticated(
    connect, transactional_db, action
):
    client = await connect()
    assert (await client.request(action, None))["payload"]["code"] == "not_authenticated"


async def test_bad_json_is_invalid_json_and_the_socket_lives_on(connect, transactional_db):
    client = await connect()
    await client.send_text('{"action": "ping", "ref": 5')
    reply = await client.receive()
    assert reply["action"] == "error"
    assert reply["payload"]["code"] == "invalid_json"
    assert reply["payload"]["action"] is None
    assert "ref" not in reply
    assert (await client.request("ping", 1))["action"] == "pong"


async def test_deeply_nested_json_is_an_error_not_a_crash(connect, transactional_db):
    client = await connect()
    await client.send_text("[" * 30_000 + "]" * 30_000)
    reply = await client.receive()
    assert reply["payload"]["code"] in {"invalid_json", "invalid_message"}
    assert (await client.request("ping", 1))["action"] == "pong"


@pytest.mark.parametrize(
    "content",
    [[], 3, "ping", None, {}, {"action": 5}, {"payload": 1}, {"action": None}],
)
async def test_json_that_is_not_an_envelope_is_invalid_message(connect, transactional_db, content):
    client = await connect()
    await client.send_text(json.dumps(content))
    reply = await client.receive()
    assert reply["payload"]["code"] == "invalid_message"
    assert "ref" not in reply


@pytest.mark.parametrize("ref", [1.5, True, [1], {"a": 1}, "x" * 65])
async def test_a_bad_ref_is_invalid_message_without_ref(connect, transactional_db, ref):
    client = await connect()
    reply = await client.request("ping", 1, ref=ref)
    assert reply["action"] == "error"
    assert reply["payload"]["code"] == "invalid_message"
    assert reply["payload"]["action"] == "ping"
    assert "ref" not in reply


async def test_ref_null_counts_as_no_ref(connect, transactional_db):
    client = await connect()
    reply = await client.request("ping", 1, ref=None)
    assert reply == {"action": "pong", "payload": 1}


async def test_a_64_character_ref_is_echoed(connect, transactional_db):
    client = await connect()
    assert (await client.request("ping", 1, ref="r" * 64))["ref"] == "r" * 64


@pytest.mark.parametrize("ref", [2**64, -(2**63) - 1, 10**30])
async def test_an_integer_ref_past_64_bits_is_echoed_exactly(connect, transactional_db, ref):
    client = await connect()
    await client.send_text(json.dumps({"action": "ping", "payload": 1, "ref": ref}))
    assert json.loads(await client.communicator.receive_from(3)) == {
        "action": "pong",
        "payload": 1,
        "ref": ref,
    }
    await client.send_text(json.dumps({"action": "dance", "ref": ref}))
    assert json.loads(await client.communicator.receive_from(3))["ref"] == ref


async def test_unknown_action_is_unknown_action_with_ref(connect, transactional_db):
    client = await connect()
    reply = await client.request("dance", None, ref="d")
    assert reply["payload"]["code"] == "unknown_action"
    assert reply["payload"]["action"] == "dance"
    assert reply["ref"] == "d"


@pytest.mark.parametrize("action", ["error", "pong", "session", "disconnect", "direct"])
async def test_server_push_names_are_not_client_actions(connect, transactional_db, action):
    client = await connect()
    assert (await client.request(action, None))["payload"]["code"] == "unknown_action"


async def test_a_binary_frame_is_unsupported_frame(connect, transactional_db):
    client = await connect()
    await client.communicator.send_to(bytes_data=b"\x00\x01")
    reply = await client.receive()
    assert reply["payload"]["code"] == "unsupported_frame"
    assert "ref" not in reply
    assert (await client.request("ping", 1))["action"] == "pong"


async def test_a_bad_frame_does_not_touch_another_socket(alice, bob, connect):
    victim = await connect(access_for(bob))
    attacker = await connect(access_for(alice))
    for bad in ["{", "[]", '{"action": 1}', '{"action": "nope"}']:
        await attacker.send_text(bad)
        assert (await attacker.receive())["action"] == "error"
    await victim.assert_silent()
    assert (await victim.request("message", "still here"))["payload"]["text"] == "still here"


async def test_an_unknown_websocket_path_is_refused(transactional_db):
    from tests.conftest import open_client

    connected, client = await open_client(path="/nope/")
    assert not connected
    await client.close()


@pytest.mark.parametrize(
    ("path", "root_path", "served"),
    [
        ("/ws/", "", True),
        ("/ws", "", False),
        ("/ws/x", "", False),
        ("/prefix/ws/", "/prefix", True),
        ("/prefix/ws/", "", False),
    ],
)
async def test_only_ws_below_the_mount_point_is_served(transactional_db, path, root_path, served):
    communicator = WebsocketCommunicator(application, path)
    communicator.scope["root_path"] = root_path
    connected, _ = await communicator.connect(timeout=3)
    assert connected is served
    await communicator.disconnect()


async def test_invalid_message_carries_a_valid_ref(connect, transactional_db):
    client = await connect()
    await client.send_text('{"action": 5, "ref": "x"}')
    reply = await client.receive()
    assert reply["payload"]["code"] == "invalid_message"
    assert reply["ref"] == "x"


async def test_a_payload_too_deep_to_echo_is_an_error_never_a_crash(
    connect, settings, transactional_db
):
    settings.IDENTITY_RATE_LIMIT = 0
    client = await connect()
    outcomes = set()
    for depth in range(850, 1000, 2):
        await client.send_text('{"action":"ping","payload":' + "[" * depth + "]" * depth + "}")
        reply = await client.receive()
        outcomes.add(reply["action"] if reply["action"] == "pong" else reply["payload"]["code"])
    assert outcomes <= {"pong", "invalid_json", "invalid_payload"}
    assert "invalid_payload" in outcomes or "invalid_json" in outcomes
    assert (await client.request("ping", 1))["action"] == "pong"


async def test_healthz_refuses_other_methods_with_json(transactional_db):
    from django.test import AsyncClient

    response = await AsyncClient().post("/healthz")
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"
