"""Live re-authorization (PROTOCOL.md v2 rule 2): a change of rights re-checks subscriptions."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission

import tests.realtime_example
from identity import consumers, push
from tests.conftest import access_for, adb, grant, make_user

pytestmark = pytest.mark.django_db(transaction=True)

FORBIDDEN = "forbidden"


def ended(topic: str) -> dict[str, Any]:
    return {"action": "unsubscribed", "payload": {"topic": topic, "reason": FORBIDDEN}}


async def subscribed(user: Any, connect: Any, *topics: str) -> Any:
    client = await connect(access_for(user))
    for topic in topics:
        reply = await client.request("subscribe", {"topic": topic})
        assert reply["payload"]["subscribed"] is True, reply
    return client


def change_user_permission() -> Permission:
    return Permission.objects.get(codename="change_user", content_type__app_label="auth")


async def test_staff_taken_away_ends_the_staff_room_and_nothing_more_arrives(connect):
    carol = await adb(make_user)("carol", is_staff=True)
    client = await subscribed(carol, connect, "room.staff", "room.lobby")
    carol.is_staff = False
    await adb(carol.save)()
    assert await client.receive() == ended("room.staff")
    await push.publish("room.staff", "secret", None)
    await push.publish("room.lobby", "public", None)  # the lobby stays
    assert (await client.receive())["payload"]["event"] == "public"
    await client.assert_silent()


async def test_the_other_members_see_the_user_leave(alice, connect):
    carol = await adb(make_user)("carol", is_staff=True)
    dave = await adb(make_user)("dave", is_staff=True)
    watcher = await subscribed(dave, connect, "room.staff")
    client = await subscribed(carol, connect, "room.staff")
    assert (await watcher.receive())["payload"]["event"] == "join"
    carol.is_staff = False
    await adb(carol.save)()
    assert await client.receive_besides("members") == ended("room.staff")
    left = await watcher.receive()
    assert left["payload"] == {
        "topic": "room.staff",
        "event": "leave",
        "user": {"id": carol.pk, "username": "carol"},
    }


async def test_a_save_that_changes_no_right_ends_nothing(connect):
    carol = await adb(make_user)("carol", is_staff=True)
    client = await subscribed(carol, connect, "room.staff")
    carol.email = "carol@example.com"
    await adb(carol.save)()
    await client.assert_silent()
    await push.publish("room.staff", "still", None)
    assert (await client.receive())["payload"]["event"] == "still"


async def test_leaving_a_group_ends_the_subscriptions_it_allowed(alice, connect):
    red = await adb(Group.objects.create)(name="red")
    await adb(alice.groups.add)(red)
    client = await subscribed(alice, connect, "team.red", "news")
    await adb(alice.groups.remove)(red)
    assert await client.receive() == ended("team.red")
    await client.assert_silent()  # news passes still


async def test_a_group_emptied_from_its_side_re_checks_its_former_members(alice, connect):
    red = await adb(Group.objects.create)(name="red")
    await adb(red.user_set.add)(alice)
    client = await subscribed(alice, connect, "team.red")
    await adb(red.user_set.clear)()
    assert await client.receive() == ended("team.red")


async def test_a_permission_removed_from_a_group_re_checks_its_members(alice, bob, connect):
    ops = await adb(Group.objects.create)(name="ops")
    await adb(ops.permissions.add)(await adb(change_user_permission)())
    await adb(ops.user_set.add)(alice, bob)
    a = await subscribed(alice, connect, "ops.night")
    b = await subscribed(bob, connect, "ops.night")
    await a.receive()  # bob's join
    await adb(ops.permissions.clear)()
    assert await a.receive() == ended("ops.night")
    assert await b.receive() == ended("ops.night")


async def test_a_permission_taken_from_its_side_re_checks_the_groups_members(alice, connect):
    ops = await adb(Group.objects.create)(name="ops")
    permission = await adb(change_user_permission)()
    await adb(ops.permissions.add)(permission)
    await adb(ops.user_set.add)(alice)
    client = await subscribed(alice, connect, "ops.night")
    await adb(permission.group_set.remove)(ops)
    assert await client.receive() == ended("ops.night")


async def test_a_deleted_group_re_checks_its_former_members(alice, connect):
    red = await adb(Group.objects.create)(name="red")
    await adb(alice.groups.add)(red)
    client = await subscribed(alice, connect, "team.red")
    await adb(red.delete)()
    assert await client.receive() == ended("team.red")


async def test_a_user_permission_removed_re_checks_that_user(alice, connect):
    permission = await adb(change_user_permission)()
    await adb(alice.user_permissions.add)(permission)
    client = await subscribed(alice, connect, "ops.night")
    await adb(alice.user_permissions.remove)(permission)
    assert await client.receive() == ended("ops.night")


async def test_superuser_taken_away_re_checks(connect):
    root = await adb(make_user)("root", is_superuser=True)
    client = await subscribed(root, connect, "ops.night")
    root.is_superuser = False
    await adb(root.save)()
    assert await client.receive() == ended("ops.night")


async def test_recheck_user_applies_rules_of_the_applications_own(alice, bob, connect):
    a = await subscribed(alice, connect, "chat.general")
    b = await subscribed(bob, connect, "chat.general")
    tests.realtime_example.BANNED.add("alice")
    try:
        await push.recheck_user(alice.pk)
        assert await a.receive() == ended("chat.general")
        await b.assert_silent()  # bob was not re-checked, and would pass
    finally:
        tests.realtime_example.BANNED.discard("alice")


async def test_a_change_inside_a_transaction_re_checks_once_it_commits(connect):
    carol = await adb(make_user)("carol", is_staff=True)
    client = await subscribed(carol, connect, "room.staff")

    def demote_then_fail() -> None:
        from django.db import transaction

        with pytest.raises(RuntimeError), transaction.atomic():
            carol.is_staff = False
            carol.save()
            raise RuntimeError("rolled back")

    await adb(demote_then_fail)()
    await client.assert_silent()  # rolled back: she is staff still


async def test_a_rule_that_raises_on_a_re_check_ends_the_subscription(alice, connect, monkeypatch):
    client = await subscribed(alice, connect, "chat.general")
    monkeypatch.setattr(tests.realtime_example, "BANNED", None)  # `name in None` raises
    await push.recheck_user(alice.pk)
    assert await client.receive() == ended("chat.general")


async def test_a_re_check_waiting_behind_a_full_backlog_is_not_dropped(bob, connect, gate, caplog):
    await adb(grant)(bob, "change")
    # A topic of its own: late pushes of the other tests' `ops.night` (on a
    # shared Redis) would take backlog places.
    client = await subscribed(bob, connect, "ops.backlog")
    await client.send("test.gate", "held", ref="g")  # a long action holds the socket
    await asyncio.wait_for(gate.entered.wait(), 3)
    for n in range(consumers.EVENT_BACKLOG):  # the socket's push queue is full
        await push.publish("ops.backlog", "n", n)
    with caplog.at_level(logging.WARNING, logger="identity"):
        await adb(bob.user_permissions.clear)()  # re-checks once it commits
        await push.recheck_user(bob.pk)
    gate.opened.set()
    assert (await client.receive())["ref"] == "g"
    for n in range(consumers.EVENT_BACKLOG):  # published before the change: they stay
        assert (await client.receive())["payload"]["data"] == n
    assert await client.receive() == ended("ops.backlog")
    await push.publish("ops.backlog", "after", None)
    await client.assert_silent()
    refused = await client.request("test.staff_only", ref="s")
    assert (refused["action"], refused["payload"]["code"]) == ("error", FORBIDDEN)
    assert not [r for r in caplog.records if "recheck" in r.getMessage()]
