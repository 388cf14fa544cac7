"""Topics (PROTOCOL.md v2): subscribe, unsubscribe, publish, and the pushes they cause."""

from __future__ import annotations

import datetime
import logging
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.db import DatabaseError
from django.test import override_settings

import tests.realtime_example  # noqa: F401  (the topics below)
from identity import push, registry
from identity.models import ServerProcess, TopicMember
from tests.conftest import access_for, adb, grant, make_user

pytestmark = pytest.mark.django_db(transaction=True)


def user_of(user: Any) -> dict[str, Any]:
    return {"id": user.pk, "username": user.get_username()}


async def subscribe(client: Any, topic: str, **extra: Any) -> dict[str, Any]:
    reply = await client.request("subscribe", {"topic": topic}, **extra)
    assert reply["action"] == "subscribe", reply
    return reply


async def test_subscribing_is_answered_with_the_topic_and_the_ref(alice, connect):
    client = await connect(access_for(alice))
    reply = await subscribe(client, "notes.alice", ref=7)
    assert reply == {
        "action": "subscribe",
        "payload": {"topic": "notes.alice", "subscribed": True},
        "ref": 7,
    }


async def test_an_event_published_by_the_server_reaches_subscribers_with_from_null(
    alice, bob, connect
):
    reader = await connect(access_for(alice))
    other = await connect(access_for(bob))
    await subscribe(reader, "news")
    await push.publish("news", "headline", {"text": "hello"})
    assert await reader.receive() == {
        "action": "event",
        "payload": {"topic": "news", "event": "headline", "data": {"text": "hello"}, "from": None},
    }
    await other.assert_silent()  # not subscribed: nothing


async def test_a_client_publish_reaches_every_subscriber_the_publisher_included(
    alice, bob, connect
):
    staff = await adb(grant)(alice, "change")
    writer = await connect(access_for(staff))
    reader = await connect(access_for(await adb(grant)(bob, "change")))
    await subscribe(writer, "ops.night")
    await subscribe(reader, "ops.night")
    await writer.receive()  # bob's join
    reply = await writer.request(
        "publish", {"topic": "ops.night", "data": [1, 2], "event": "note"}, ref="p"
    )
    event = {
        "action": "event",
        "payload": {"topic": "ops.night", "event": "note", "data": [1, 2], "from": user_of(alice)},
    }
    # The event may overtake the reply on the publisher's own socket.
    got = [reply, await writer.receive()]
    assert {"action": "publish", "payload": {"topic": "ops.night"}, "ref": "p"} in got
    assert event in got
    assert await reader.receive() == event


async def test_a_publish_without_an_event_name_is_a_message(alice, connect):
    client = await connect(access_for(alice))
    await subscribe(client, "room.lobby")
    await client.request("publish", {"topic": "room.lobby", "data": "hi"})
    event = await client.receive()
    assert event["payload"]["event"] == "message"
    assert event["payload"]["data"] == "hi"


async def test_events_from_one_process_arrive_in_the_order_published(alice, connect):
    client = await connect(access_for(alice))
    await subscribe(client, "news")
    for n in range(30):
        await push.publish("news", "n", n)
    assert [(await client.receive())["payload"]["data"] for _ in range(30)] == list(range(30))


async def test_after_unsubscribing_nothing_more_arrives(alice, connect):
    client = await connect(access_for(alice))
    await subscribe(client, "news")
    reply = await client.request("unsubscribe", {"topic": "news"}, ref="u")
    assert reply == {
        "action": "unsubscribe",
        "payload": {"topic": "news", "subscribed": False},
        "ref": "u",
    }
    await push.publish("news", "late", None)
    await client.assert_silent()


async def test_unsubscribing_from_a_topic_one_never_subscribed_is_answered_the_same(alice, connect):
    client = await connect(access_for(alice))
    reply = await client.request("unsubscribe", {"topic": "room.lobby"})
    assert reply["payload"] == {"topic": "room.lobby", "subscribed": False}


async def test_subscribing_twice_changes_nothing_and_events_arrive_once(alice, connect):
    client = await connect(access_for(alice))
    first = await subscribe(client, "room.lobby")
    again = await subscribe(client, "room.lobby")
    assert again["payload"] == first["payload"]
    await push.publish("room.lobby", "once", None)
    assert (await client.receive())["payload"]["event"] == "once"
    await client.assert_silent()


async def test_a_topic_no_pattern_declares_is_unknown_topic(alice, connect):
    client = await connect(access_for(alice))
    for name in ["nothing.here", "notes.alice.extra", "room", "room.lobby2"]:
        reply = await client.request("subscribe", {"topic": name}, ref=name)
        assert reply["action"] == "error", name
        assert reply["payload"]["code"] == "unknown_topic", name
        assert reply["ref"] == name


async def test_a_pattern_parameter_with_a_dot_matches_nothing(alice, connect):
    client = await connect(access_for(alice))
    reply = await client.request("subscribe", {"topic": "notes.al.ice"})
    assert reply["payload"]["code"] == "unknown_topic"


async def test_a_topic_the_rule_refuses_is_forbidden(alice, bob, connect):
    client = await connect(access_for(alice))
    reply = await client.request("subscribe", {"topic": "notes.bob"}, ref="r")
    assert reply["action"] == "error"
    assert reply["payload"]["code"] == "forbidden"
    assert reply["payload"]["action"] == "subscribe"
    assert reply["ref"] == "r"


async def test_a_topic_that_needs_a_permission_is_forbidden_without_it(alice, connect):
    client = await connect(access_for(alice))
    reply = await client.request("subscribe", {"topic": "ops.night"})
    assert reply["payload"]["code"] == "forbidden"


async def test_an_async_rule_decides_too(alice, connect):
    client = await connect(access_for(alice))
    refused = await client.request("subscribe", {"topic": "team.red"})
    assert refused["payload"]["code"] == "forbidden"
    await adb(lambda: alice.groups.add(Group.objects.create(name="red")))()
    reply = await subscribe(client, "team.red")
    assert reply["payload"] == {
        "topic": "team.red",
        "subscribed": True,
        "members": [user_of(alice)],
    }


@pytest.mark.parametrize(
    "payload",
    [
        None,
        "room.lobby",
        ["room.lobby"],
        {},
        {"topic": None},
        {"topic": 5},
        {"topic": ""},
        {"topic": "room lobby"},
        {"topic": "room/lobby"},
        {"topic": "r" * 101},
        {"topic": "room.lobby\u0000"},
        {"topic": "salle.caf\u00e9"},
    ],
)
async def test_a_malformed_subscribe_is_invalid_payload_and_changes_nothing(
    alice, connect, payload
):
    client = await connect(access_for(alice))
    await subscribe(client, "news")
    reply = await client.request("subscribe", payload, ref="bad")
    assert reply["action"] == "error"
    assert reply["payload"]["code"] == "invalid_payload"
    assert reply["ref"] == "bad"
    reply = await client.request("unsubscribe", payload, ref="bad")
    assert reply["payload"]["code"] == "invalid_payload"
    await push.publish("news", "still", None)  # the good subscription is untouched
    assert (await client.receive())["payload"]["event"] == "still"


async def test_a_name_of_100_characters_is_a_name(alice, connect):
    client = await connect(access_for(alice))
    name = "notes." + "a" * 94
    reply = await client.request("subscribe", {"topic": name})
    assert reply["payload"]["code"] == "forbidden"  # a valid name, someone else's notes


@pytest.mark.parametrize(
    "payload",
    [
        None,
        {"topic": "room.lobby"},  # no data
        {"data": 1},
        {"topic": 3, "data": 1},
        {"topic": "room.lobby", "data": 1, "event": 5},
        {"topic": "room.lobby", "data": 1, "event": ""},
        {"topic": "room.lobby", "data": 1, "event": "x" * 101},
        {"topic": "room.lobby", "data": 1, "event": "no spaces"},
    ],
)
async def test_a_malformed_publish_is_invalid_payload_and_publishes_nothing(
    alice, bob, connect, payload
):
    reader = await connect(access_for(bob))
    await subscribe(reader, "room.lobby")
    writer = await connect(access_for(alice))
    reply = await writer.request("publish", payload, ref=1)
    assert reply["payload"]["code"] == "invalid_payload"
    assert reply["ref"] == 1
    await reader.assert_silent()


async def test_publishing_where_clients_may_not_is_forbidden(alice, connect):
    client = await connect(access_for(alice))
    await subscribe(client, "notes.alice")
    for name in ["notes.alice", "news"]:
        reply = await client.request("publish", {"topic": name, "data": 1}, ref=name)
        assert reply["payload"]["code"] == "forbidden", name
        assert reply["ref"] == name
    await client.assert_silent()


async def test_publishing_to_a_topic_one_may_not_subscribe_to_is_forbidden(alice, connect):
    client = await connect(access_for(alice))
    reply = await client.request("publish", {"topic": "ops.night", "data": 1})
    assert reply["payload"]["code"] == "forbidden"
    reply = await client.request("publish", {"topic": "nowhere", "data": 1})
    assert reply["payload"]["code"] == "unknown_topic"


async def test_topic_actions_need_an_identity(connect):
    client = await connect()
    for action in ["subscribe", "unsubscribe", "publish"]:
        reply = await client.request(action, {"topic": "room.lobby", "data": 1}, ref=action)
        assert reply["payload"]["code"] == "not_authenticated"
        assert reply["ref"] == action


@override_settings(IDENTITY_MAX_TOPICS_PER_SOCKET=2)
async def test_past_the_topic_limit_subscribe_is_refused_with_topic_limit(alice, connect):
    client = await connect(access_for(alice))
    await subscribe(client, "news")
    await subscribe(client, "notes.alice")
    reply = await client.request("subscribe", {"topic": "room.lobby"}, ref="3")
    assert reply["payload"]["code"] == "topic_limit"
    assert reply["ref"] == "3"
    assert (await subscribe(client, "news"))["payload"]["subscribed"] is True  # held already
    await client.request("unsubscribe", {"topic": "news"})
    assert (await subscribe(client, "room.lobby"))["payload"]["subscribed"] is True


async def test_members_lists_who_is_in_a_presence_topic(alice, bob, connect):
    a = await connect(access_for(alice))
    b = await connect(access_for(bob))
    await subscribe(a, "room.lobby")
    reply = await subscribe(b, "room.lobby")
    assert reply["payload"]["members"] == [user_of(alice), user_of(bob)]


async def test_join_and_leave_are_pushed_once_per_user_not_per_socket(alice, bob, connect):
    watcher = await connect(access_for(alice))
    await subscribe(watcher, "room.lobby")
    b1 = await connect(access_for(bob))
    b2 = await connect(access_for(bob))
    await subscribe(b1, "room.lobby")
    joined = {"topic": "room.lobby", "event": "join", "user": user_of(bob)}
    assert await watcher.receive() == {"action": "members", "payload": joined}
    await subscribe(b2, "room.lobby")  # bob's second socket: no join
    await b1.request("unsubscribe", {"topic": "room.lobby"})  # one of two: no leave
    await watcher.assert_silent()
    await b2.close()  # the last one goes
    left = {"topic": "room.lobby", "event": "leave", "user": user_of(bob)}
    assert await watcher.receive() == {"action": "members", "payload": left}


async def test_a_same_user_reauth_keeps_the_subscriptions(alice, connect):
    client = await connect(access_for(alice))
    await subscribe(client, "news")
    assert (await client.auth(access_for(alice)))["registered"] is True
    await push.publish("news", "kept", None)
    assert (await client.receive())["payload"]["event"] == "kept"


async def test_logout_ends_every_subscription_with_unsubscribed_identity(alice, bob, connect):
    watcher = await connect(access_for(bob))
    await subscribe(watcher, "room.lobby")
    client = await connect(access_for(alice))
    await subscribe(client, "room.lobby")
    await subscribe(client, "news")
    await watcher.receive()  # alice's join
    await client.send("logout", ref="out")
    frames = [await client.receive_besides("members") for _ in range(3)]
    assert frames[-1] == {"action": "logout", "payload": {"registered": False}, "ref": "out"}
    assert sorted(f["payload"]["topic"] for f in frames[:2]) == ["news", "room.lobby"]
    assert {f["action"] for f in frames[:2]} == {"unsubscribed"}
    assert {f["payload"]["reason"] for f in frames[:2]} == {"identity"}
    left = {"topic": "room.lobby", "event": "leave", "user": user_of(alice)}
    assert await watcher.receive() == {"action": "members", "payload": left}
    await push.publish("news", "after", None)
    await client.assert_silent()


async def test_a_withdrawal_closes_without_unsubscribed_and_pushes_leave(alice, bob, connect):
    watcher = await connect(access_for(bob))
    await subscribe(watcher, "room.lobby")
    client = await connect(access_for(alice))
    await subscribe(client, "room.lobby")
    await watcher.receive()  # alice's join
    await push.disconnect_user(alice.pk, push.Reason.KICKED)
    assert (await client.receive_besides("members"))["action"] == "disconnect"
    assert await client.receive_close() == 4403
    left = {"topic": "room.lobby", "event": "leave", "user": user_of(alice)}
    assert await watcher.receive() == {"action": "members", "payload": left}


async def test_a_failed_unsubscribe_leaves_no_member_behind(alice, bob, connect, monkeypatch):
    watcher = await connect(access_for(bob))
    await subscribe(watcher, "room.lobby")
    client = await connect(access_for(alice))
    await subscribe(client, "room.lobby")
    await watcher.receive()  # alice's join

    def down(*args: Any) -> None:
        raise DatabaseError("the database went away")

    monkeypatch.setattr(registry, "leave_topic", down)
    reply = await client.request("unsubscribe", {"topic": "room.lobby"}, ref="u")
    assert (reply["ref"], reply["payload"]["code"]) == ("u", "service_unavailable")
    monkeypatch.undo()
    await client.close()  # the row of the failed unsubscribe goes with the socket
    left = {"topic": "room.lobby", "event": "leave", "user": user_of(alice)}
    assert await watcher.receive() == {"action": "members", "payload": left}
    assert not await adb(TopicMember.objects.filter(user=alice).exists)()


async def test_a_subscribe_that_failed_after_its_row_leaves_no_member_behind(
    alice, bob, connect, monkeypatch
):
    watcher = await connect(access_for(bob))
    await subscribe(watcher, "room.lobby")
    client = await connect(access_for(alice))

    async def down(*args: Any) -> None:
        raise DatabaseError("the database went away")

    monkeypatch.setattr(push, "push_members", down)
    reply = await client.request("subscribe", {"topic": "room.lobby"}, ref="s")
    assert (reply["ref"], reply["payload"]["code"]) == ("s", "service_unavailable")
    monkeypatch.undo()
    assert await adb(TopicMember.objects.filter(user=alice).exists)()
    await client.close()
    assert not await adb(TopicMember.objects.filter(user=alice).exists)()


async def test_a_subscriber_is_a_member_while_its_own_heartbeat_is_late(alice, connect):
    client = await connect(access_for(alice))
    await adb(registry.retire)()  # to the others, this process looks dead
    reply = await subscribe(client, "room.lobby", ref="r")
    assert reply["payload"]["members"] == [user_of(alice)]
    assert (await client.request("ping", None, ref="p"))["ref"] == "p"  # still serving


async def test_a_member_back_before_the_purge_is_pushed_leave_then_join(alice, bob, connect):
    old = "2026-01-01T00:00:00Z"
    dead = await adb(ServerProcess.objects.create)(id="dead:t", started_at=old, heartbeat_at=old)
    await adb(TopicMember.objects.create)(
        topic="room.lobby", channel_name="bob-ghost", user=bob, server=dead
    )
    watcher = await connect(access_for(alice))
    assert (await subscribe(watcher, "room.lobby"))["payload"]["members"] == [user_of(alice)]
    await subscribe(await connect(access_for(bob)), "room.lobby")
    for event in ("leave", "join"):
        pushed = {"topic": "room.lobby", "event": event, "user": user_of(bob)}
        assert await watcher.receive() == {"action": "members", "payload": pushed}
    assert not await adb(TopicMember.objects.filter(channel_name="bob-ghost").exists)()


async def test_the_socket_sees_its_subscriptions_in_an_action(alice, connect):
    client = await connect(access_for(alice))
    await subscribe(client, "news")
    reply = await client.request("test.echo", 1)
    assert reply["payload"]["topics"] == ["news"]


async def test_a_user_made_later_is_a_member_too(alice, connect):
    carol = await adb(make_user)("carol")
    client = await connect(access_for(carol))
    reply = await subscribe(client, "room.lobby")
    assert reply["payload"]["members"] == [user_of(carol)]


async def test_a_rule_that_raises_refuses_is_logged_and_the_socket_lives_on(alice, connect, caplog):
    client = await connect(access_for(alice))
    assert (await subscribe(client, "broken.3"))["payload"]["subscribed"] is True
    with caplog.at_level(logging.ERROR, logger="identity.realtime"):
        reply = await client.request("subscribe", {"topic": "broken.abc"}, ref="b")
    assert reply["payload"]["code"] == "forbidden"
    assert reply["ref"] == "b"
    assert any("broken.{n}" in r.getMessage() and r.exc_info for r in caplog.records)
    assert (await client.request("ping", 1))["action"] == "pong"


async def test_server_data_that_is_not_json_raises_in_the_caller(alice, connect):
    client = await connect(access_for(alice))
    await subscribe(client, "news")
    with pytest.raises(TypeError):
        await push.publish("news", "bad", {"a": {1, 2}})
    await client.assert_silent()


async def test_server_data_reads_the_same_on_every_layer(alice, connect):
    client = await connect(access_for(alice))
    await subscribe(client, "news")
    await push.publish("news", "when", {"at": datetime.date(2026, 12, 3)})
    assert (await client.receive())["payload"]["data"] == {"at": "2026-12-03"}


@override_settings(IDENTITY_MAX_TOPICS_PER_SOCKET=0)
async def test_a_topic_limit_of_0_is_no_limit(alice, connect):
    client = await connect(access_for(alice))
    for name in ["news", "room.lobby", "notes.alice", "chat.a", "chat.b"]:
        assert (await subscribe(client, name))["payload"]["subscribed"] is True


@override_settings(IDENTITY_MAX_FRAME_BYTES=1000)
async def test_an_event_over_the_frame_limit_is_refused_and_reaches_nobody(alice, connect):
    client = await connect(access_for(alice))
    await subscribe(client, "room.lobby")
    with pytest.raises(push.EventTooLarge):
        await push.publish("room.lobby", "big", "x" * 1000)
    # A frame within the limit whose event push (with `from` and `event`) would not be.
    reply = await client.request("publish", {"topic": "room.lobby", "data": "x" * 905}, ref="b")
    assert reply["payload"]["code"] == "invalid_payload" and reply["ref"] == "b"
    await client.assert_silent()
