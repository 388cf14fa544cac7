"""Garbage in the topic actions through real servers, daphne and uvicorn.

Every bad `subscribe`, `unsubscribe` and `publish` is answered with its error
and its ref, the socket stays open with its subscriptions, another socket's
subscription and events are untouched, and the server logs no traceback.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.fuzz import DAPHNE, UVICORN
from tests.live_sockets import LiveSocket, is_event, is_members, prepare
from tests.servers import Database, LiveServer

pytestmark = [pytest.mark.server, pytest.mark.usefixtures("closes_live_sockets")]

FRAME_LIMIT = 65536  # IDENTITY_MAX_FRAME_BYTES, the default

WRONG_TYPES: list[Any] = [
    None,
    "room.lobby",
    ["room.lobby"],
    5,
    True,
    {},
    {"name": "room.lobby"},
    {"topic": None},
    {"topic": 5},
    {"topic": 1.5},
    {"topic": True},
    {"topic": ["room.lobby"]},
    {"topic": {"room": "lobby"}},
]
BAD_NAMES = [
    "",
    "room lobby",
    "room/lobby",
    "room.lobby\n",
    "room.lobby\u0000",
    "salle.caf\u00e9",
    "room.lobby;x",
    "<script>",
    "room.*",
    "room.{name}",
    "r" * 101,
    "room." + "x" * 96,  # 101 characters
]
# Well-formed names no declared pattern matches: a parameter never holds a dot.
UNKNOWN_NAMES = ["room.lobby.x", "notes.al.ice", "room.lobby2", "room", ".", "x" * 100]
# Topics alice may not use (tests/realtime_example.py, config/realtime.py).
FORBIDDEN_NAMES = ["room.staff", "notes.bob", "ops.night", "team.red"]
BAD_EVENTS: list[Any] = [None, 5, "", "x" * 101, "no spaces", "caf\u00e9", ["message"]]


def cases(action: str) -> list[tuple[Any, str | None]]:
    """(payload, the error code it earns; None for a success) for ACTION."""
    bad_names = [{"topic": name} for name in BAD_NAMES]
    if action == "publish":
        payloads = [
            p if not isinstance(p, dict) or "topic" not in p else {**p, "data": 1}
            for p in WRONG_TYPES
        ]
        invalid = [
            *payloads,
            *({**p, "data": 1} for p in bad_names),
            {"topic": "room.lobby"},  # no data
            {"data": 1},
            *({"topic": "room.lobby", "data": 1, "event": e} for e in BAD_EVENTS),
        ]
        return [
            *((p, "invalid_payload") for p in invalid),
            *(({"topic": n, "data": 1}, "unknown_topic") for n in UNKNOWN_NAMES),
            *(({"topic": n, "data": 1}, "forbidden") for n in [*FORBIDDEN_NAMES, "news"]),
        ]
    unknown = "unknown_topic" if action == "subscribe" else None
    forbidden = "forbidden" if action == "subscribe" else None
    return [
        *((p, "invalid_payload") for p in [*WRONG_TYPES, *bad_names]),
        *(({"topic": n}, unknown) for n in UNKNOWN_NAMES),
        *(({"topic": n}, forbidden) for n in FORBIDDEN_NAMES),
    ]


@pytest.fixture(scope="module")
def database():
    database = Database.sqlite(
        DJANGO_SETTINGS_MODULE="tests.settings_with_test_topics",
        DJANGO_DEBUG="0",  # `manage.py serve` refuses debug mode
        REDIS_URL="",
        IDENTITY_RATE_LIMIT="0",  # dozens of bad frames per socket, as fast as they go
        JWT_ACCESS_TOKEN_LIFETIME="3600",
    )
    database.tokens = prepare(database.env, "")
    return database


@pytest.fixture(scope="module", params=["daphne", "uvicorn"])
def server(request, database):
    command = DAPHNE if request.param == "daphne" else UVICORN
    live = LiveServer(database.env, command).start()
    live.tokens_by_user = database.tokens
    yield live
    live.stop()


async def pair(server: LiveServer) -> tuple[LiveSocket, LiveSocket]:
    """bob in the lobby, then alice: the bystander and the socket that sends garbage."""
    bystander = await LiveSocket.open(server, server.tokens_by_user["bob"])
    await bystander.subscribe("room.lobby")
    sender = await LiveSocket.open(server, server.tokens_by_user["alice"])
    await sender.subscribe("room.lobby")
    await bystander.until(is_members("room.lobby", "join", "alice"))
    return bystander, sender


async def assert_untouched(server: LiveServer, bystander: LiveSocket, sender: LiveSocket) -> None:
    """Both still subscribed, both open, nothing pushed by the garbage, no traceback."""
    await sender.publish("room.lobby", "after", "garbage")
    for sock in (bystander, sender):
        before, event, _ = await sock.until(is_event("room.lobby", "after"))
        assert before == [], before
        assert event["payload"]["from"]["username"] == "alice"
    assert sender.close_code is None and bystander.close_code is None
    assert "Traceback" not in server.output()


def error_of(reply: dict[str, Any]) -> str:
    assert reply["action"] == "error", reply
    assert isinstance(reply["payload"]["message"], str) and reply["payload"]["message"]
    return reply["payload"]["code"]


@pytest.mark.parametrize("action", ["subscribe", "unsubscribe", "publish"])
async def test_malformed_topic_frames_are_answered_with_their_error_and_ref_and_change_nothing(
    server, action
):
    bystander, sender = await pair(server)
    for n, (payload, code) in enumerate(cases(action)):
        ref = f"{action}-{n}"
        await sender.send(action, payload, ref)
        reply = await sender.next()
        shown = f"{action} {json.dumps(payload)[:120]}: {reply}"
        assert reply["ref"] == ref, shown
        if code is None:  # leaving a topic one is not in: answered, not refused
            assert reply["action"] == action and reply["payload"]["subscribed"] is False, shown
        else:
            assert error_of(reply) == code, shown
            assert reply["payload"]["action"] == action, shown
    await assert_untouched(server, bystander, sender)


def near_limit(action: str, payload: dict[str, Any], key: str, ref: str = "big") -> str:
    """The frame of ACTION whose PAYLOAD[KEY] is a string that brings it to the frame limit."""
    empty = json.dumps({"action": action, "payload": {**payload, key: ""}, "ref": ref})
    filled = {**payload, key: "x" * (FRAME_LIMIT - len(empty))}
    return json.dumps({"action": action, "payload": filled, "ref": ref})


@pytest.mark.parametrize(
    ("action", "payload", "key", "code"),
    [
        ("subscribe", {}, "topic", "invalid_payload"),
        ("unsubscribe", {}, "topic", "invalid_payload"),
        ("publish", {"data": 1}, "topic", "invalid_payload"),
        ("publish", {"topic": "room.lobby", "data": 1}, "event", "invalid_payload"),
        # Data that fits a frame, but not the `event` push it would make.
        ("publish", {"topic": "room.lobby", "event": "big"}, "data", "invalid_payload"),
        ("publish", {"topic": "room.staff"}, "data", "forbidden"),
        ("publish", {"topic": "news"}, "data", "forbidden"),
        ("publish", {"topic": "room.lobby.x"}, "data", "unknown_topic"),
        ("publish", {"topic": "notes.al.ice"}, "data", "unknown_topic"),
    ],
)
async def test_a_frame_at_the_limit_is_refused_in_a_short_error_with_its_ref(
    server, action, payload, key, code
):
    bystander, sender = await pair(server)
    text = near_limit(action, payload, key)
    assert len(text.encode()) == FRAME_LIMIT
    await sender.ws.send(text)
    reply = await sender.next()
    assert error_of(reply) == code and reply["ref"] == "big", reply
    assert len(json.dumps(reply)) < 300  # the error does not echo what it refused
    await assert_untouched(server, bystander, sender)


async def test_an_event_is_published_up_to_the_frame_limit_and_refused_past_it(server):
    bystander, sender = await pair(server)
    alice = (await sender.request("whoami"))["payload"]["user"]

    def event(n: int) -> dict[str, Any]:
        payload = {"topic": "room.lobby", "event": "big", "data": "x" * n, "from": alice}
        return {"action": "event", "payload": payload}

    # The largest data whose `event` push is a frame of exactly the limit.
    n = FRAME_LIMIT - len(json.dumps(event(0), separators=(",", ":")).encode())
    too_big = await sender.request(
        "publish", {"topic": "room.lobby", "event": "big", "data": "x" * (n + 1)}
    )
    assert error_of(too_big) == "invalid_payload", too_big
    await sender.send("publish", {"topic": "room.lobby", "event": "big", "data": "x" * n}, "fits")
    for sock in (bystander, sender):
        before, got, _ = await sock.until(is_event("room.lobby", "big"))
        assert got == event(n)
        assert [f for f in before if f["action"] == "event"] == []  # not the one refused
    # `before` is the sender's: its reply may come before its own event or after it.
    assert any(f.get("ref") == "fits" for f in [*before, *await sender.drain()])
    await assert_untouched(server, bystander, sender)
