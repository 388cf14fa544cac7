"""`presence`, `send` and the `direct`/`presence` pushes, several users and sockets."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext

from identity import heartbeat, push, registry
from identity.models import Connection, ServerProcess, UserIdentity
from tests.conftest import access_for, adb, make_user

pytestmark = pytest.mark.django_db(transaction=True)


def online(users_reply: dict) -> dict[str, int]:
    return {u["username"]: u["connections"] for u in users_reply["payload"]["users"]}


async def test_presence_lists_users_and_their_socket_counts(alice, bob, connect):
    a1 = await connect(access_for(alice))
    await connect(access_for(alice))
    await connect(access_for(bob))
    await connect()  # anonymous sockets are nobody
    reply = await a1.request("presence", None, ref="p")
    assert reply["ref"] == "p"
    assert online(reply) == {"alice": 2, "bob": 1}
    assert all(set(u) == {"id", "username", "connections"} for u in reply["payload"]["users"])


async def test_online_and_offline_are_pushed_once_per_transition(alice, bob, connect):
    watcher = await connect(access_for(alice))
    await watcher.request("presence")
    b1 = await connect(access_for(bob))
    assert await watcher.receive() == {
        "action": "presence",
        "payload": {"event": "online", "user": {"id": bob.pk, "username": "bob"}},
    }
    b2 = await connect(access_for(bob))  # second socket: no transition
    await b1.close()  # one of two goes: no transition
    await watcher.assert_silent()
    await b2.request("logout")  # the last one goes
    assert await watcher.receive() == {
        "action": "presence",
        "payload": {"event": "offline", "user": {"id": bob.pk, "username": "bob"}},
    }
    await watcher.assert_silent()


async def test_presence_pushes_go_only_to_sockets_that_asked(alice, bob, connect):
    asked = await connect(access_for(alice))
    await asked.request("presence")
    silent = await connect(access_for(alice))
    await connect(access_for(bob))
    assert (await asked.receive())["payload"]["event"] == "online"
    await silent.assert_silent()


async def test_the_subscription_ends_with_the_identity_and_survives_same_user_reauth(
    alice, bob, connect
):
    watcher = await connect(access_for(alice))
    await watcher.request("presence")
    assert (await watcher.auth(access_for(alice)))["registered"] is True
    bob_socket = await connect(access_for(bob))
    assert (await watcher.receive())["payload"]["event"] == "online"
    await watcher.request("logout")
    await watcher.auth(access_for(alice))
    await bob_socket.close()
    await watcher.assert_silent()


async def test_disconnect_of_a_users_last_socket_pushes_offline(alice, bob, connect):
    watcher = await connect(access_for(alice))
    await watcher.request("presence")
    bob_socket = await connect(access_for(bob))
    await watcher.receive()
    await bob_socket.close()
    assert (await watcher.receive())["payload"]["event"] == "offline"


async def test_send_reaches_every_socket_of_the_recipient(alice, bob, connect):
    sender = await connect(access_for(alice))
    b1 = await connect(access_for(bob))
    b2 = await connect(access_for(bob))
    reply = await sender.request("send", {"to": "bob", "text": "hi bob"}, ref=9)
    assert reply == {"action": "send", "payload": {"to": "bob", "online": True}, "ref": 9}
    expected = {
        "action": "direct",
        "payload": {"from": {"id": alice.pk, "username": "alice"}, "text": "hi bob"},
    }
    assert await b1.receive() == expected
    assert await b2.receive() == expected
    await sender.assert_silent()


async def test_send_to_oneself_reaches_ones_own_sockets(alice, connect):
    a1 = await connect(access_for(alice))
    a2 = await connect(access_for(alice))
    await a1.send("send", {"to": "alice", "text": "note"})
    frames = [await a1.receive(), await a1.receive()]
    assert {f["action"] for f in frames} == {"send", "direct"}
    assert (await a2.receive())["payload"]["text"] == "note"


async def test_send_to_an_existing_user_without_sockets_is_online_false(alice, bob, connect):
    sender = await connect(access_for(alice))
    assert (await sender.request("send", {"to": "bob", "text": "x"}))["payload"] == {
        "to": "bob",
        "online": False,
    }


async def test_send_to_an_unknown_username_is_user_not_found(alice, connect):
    sender = await connect(access_for(alice))
    reply = await sender.request("send", {"to": "nobody", "text": "x"}, ref="s")
    assert reply["payload"]["code"] == "user_not_found"
    assert reply["payload"]["action"] == "send"
    assert reply["ref"] == "s"


@pytest.mark.parametrize(
    "payload",
    [
        None,
        "bob",
        {"to": "bob"},
        {"text": "x"},
        {"to": 5, "text": "x"},
        {"to": "", "text": "x"},
        {"to": "bob", "text": "x" * 4097},
        {"to": "bob", "text": 3},
    ],
)
async def test_send_with_a_bad_payload_is_invalid_payload(alice, bob, connect, payload):
    sender = await connect(access_for(alice))
    receiver = await connect(access_for(bob))
    reply = await sender.request("send", payload)
    assert reply["payload"]["code"] == "invalid_payload"
    await receiver.assert_silent()


async def test_a_logged_out_socket_no_longer_receives_direct(alice, bob, connect):
    sender = await connect(access_for(alice))
    b1 = await connect(access_for(bob))
    await b1.request("logout")
    assert (await sender.request("send", {"to": "bob", "text": "x"}))["payload"]["online"] is False
    await b1.assert_silent()


async def test_the_connection_limit_holds(alice, connect, settings):
    settings.IDENTITY_MAX_CONNECTIONS_PER_USER = 2
    await connect(access_for(alice))
    second = await connect(access_for(alice))
    third = await connect()
    reply = await third.auth(access_for(alice))
    assert reply["registered"] is False
    assert reply["error"]["code"] == "connection_limit"
    assert "already has 2 open connection(s)" in reply["error"]["message"]
    await second.close()
    assert (await third.auth(access_for(alice)))["registered"] is True


async def test_reauth_of_the_same_user_does_not_count_against_the_limit(alice, connect, settings):
    settings.IDENTITY_MAX_CONNECTIONS_PER_USER = 1
    client = await connect(access_for(alice))
    assert (await client.auth(access_for(alice)))["registered"] is True


async def test_ghosts_of_a_dead_process_vanish_after_the_bound(alice, bob, connect, settings):
    settings.IDENTITY_HEARTBEAT_EXPIRY = 5
    watcher = await connect(access_for(alice))
    await watcher.request("presence")
    dead = await adb(ServerProcess.objects.create)(
        id="dead:1:x", started_at="2026-01-01T00:00:00Z", heartbeat_at="2026-01-01T00:00:00Z"
    )
    await adb(Connection.objects.create)(
        channel_name="ghost-channel",
        user=bob,
        server=dead,
        opened_at="2026-01-01T00:00:00Z",
        authenticated_at="2026-01-01T00:00:00Z",
    )
    # Stale heartbeat: not listed even before anyone purges it.
    assert online(await watcher.request("presence")) == {"alice": 1}
    await heartbeat.beat_once()
    assert (await watcher.receive())["payload"] == {
        "event": "offline",
        "user": {"id": bob.pk, "username": "bob"},
    }
    assert not await adb(Connection.objects.filter(channel_name="ghost-channel").exists)()
    assert not await adb(ServerProcess.objects.filter(id="dead:1:x").exists)()
    assert await adb(ServerProcess.objects.filter(id=registry.SERVER_ID).exists)()


LONG_AGO = "2026-01-01T00:00:00Z"


async def test_a_user_back_before_the_purge_is_pushed_offline_then_online(
    alice, bob, connect, settings
):
    # A watcher that listed presence after bob's process died never saw bob;
    # one that listed it before never saw him go. offline + online serves both.
    settings.IDENTITY_HEARTBEAT_EXPIRY = 5
    dead = await adb(ServerProcess.objects.create)(
        id="dead:3:x", started_at=LONG_AGO, heartbeat_at=LONG_AGO
    )
    await adb(Connection.objects.create)(
        channel_name="bob-ghost", user=bob, server=dead,
        opened_at=LONG_AGO, authenticated_at=LONG_AGO,
    )  # fmt: skip
    watcher = await connect(access_for(alice))
    assert online(await watcher.request("presence")) == {"alice": 1}  # bob's ghost: not live
    await connect(access_for(bob))
    bob_dict = {"id": bob.pk, "username": "bob"}
    assert (await watcher.receive())["payload"] == {"event": "offline", "user": bob_dict}
    assert (await watcher.receive())["payload"] == {"event": "online", "user": bob_dict}
    assert not await adb(Connection.objects.filter(channel_name="bob-ghost").exists)()
    await heartbeat.beat_once()  # nothing left for the purge to push
    await watcher.assert_silent()


async def test_an_older_presence_push_that_arrives_late_is_dropped(alice, connect):
    # Two processes' pushes for one user can reach Redis in the other order
    # than their transactions: the registry's version puts them back.
    watcher = await connect(access_for(alice))
    other = await connect(access_for(alice))
    for client in (watcher, other):
        await client.request("presence")
    await push.push_presence("online", 4242, "carol", version=6)
    await push.push_presence("offline", 4242, "carol", version=5)  # decided before, came after
    await push.push_presence("offline", 4242, "carol", version=7)
    await push.push_presence("online", 4242, "carol")  # no version: never dropped
    for client in (watcher, other):
        events = [(await client.receive())["payload"]["event"] for _ in range(3)]
        assert events == ["online", "offline", "online"]
        await client.assert_silent()


async def test_the_registry_versions_a_users_presence_on_postgresql(alice, bob, connect):
    if connection.vendor != "postgresql":
        pytest.skip("versions come from the PostgreSQL functions (make test-services runs it)")
    watcher = await connect(access_for(alice))
    await watcher.request("presence")
    for _ in range(2):
        client = await connect(access_for(bob))
        await client.close()
    seen = [await watcher.receive() for _ in range(4)]
    assert [f["payload"]["event"] for f in seen] == ["online", "offline"] * 2
    row = await adb(UserIdentity.objects.get)(user=bob)
    assert row.presence_version == 2 + 1 + 2 + 1  # online +2 (room for an offline), offline +1


async def test_the_heartbeat_beats_while_the_sockets_database_thread_is_busy(alice, connect):
    # In a reconnect storm thousands of `auth`s queue on that thread; a
    # heartbeat behind them came late enough for the others to purge us.
    if connection.vendor == "sqlite":
        pytest.skip("on SQLite (one process) the heartbeat shares the thread (identity.heartbeat)")
    await connect(access_for(alice))
    await adb(ServerProcess.objects.filter(id=registry.SERVER_ID).update)(heartbeat_at=LONG_AGO)
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        entered.set()
        release.wait(10)

    busy = asyncio.ensure_future(adb(hold)())  # the sockets' thread, held
    try:
        assert await asyncio.to_thread(entered.wait, 3)
        await asyncio.wait_for(heartbeat.beat_once(), 3)
        assert not busy.done()
    finally:
        release.set()
        await busy
    beat = await adb(ServerProcess.objects.get)(id=registry.SERVER_ID)
    assert beat.heartbeat_at.year > 2026 - 1


async def test_a_push_older_than_the_presence_list_is_dropped(alice, bob, connect, monkeypatch):
    if connection.vendor != "postgresql":
        pytest.skip("versions come from the PostgreSQL functions (make test-services runs it)")
    monkeypatch.setattr(push, "_seen_versions", {})  # a process that saw none of bob's pushes
    await connect(access_for(bob))  # online, version 2: no subscriber here to see it pass
    watcher = await connect(access_for(alice))
    reply = await watcher.request("presence")
    assert "bob" in online(reply)
    await push.push_presence("offline", bob.pk, "bob", version=1)  # decided before the list
    await watcher.assert_silent()


def purge_with_ghosts(count: int, tag: str, also_live: Any) -> tuple[list[tuple[int, str]], int]:
    """COUNT users with a socket on a dead process, ALSO_LIVE with one too; what the
    purge returns and how many queries it took."""
    user_model = get_user_model()
    users = user_model.objects.bulk_create([user_model(username=f"{tag}{n}") for n in range(count)])
    UserIdentity.objects.bulk_create([UserIdentity(user=u) for u in users])  # no signals
    old = {"started_at": LONG_AGO, "heartbeat_at": LONG_AGO}
    dead = ServerProcess.objects.create(id=f"dead:{tag}", **old)
    ghost = {"server": dead, "opened_at": LONG_AGO, "authenticated_at": LONG_AGO}
    Connection.objects.bulk_create(
        Connection(channel_name=f"ghost-{u.pk}", user=u, **ghost) for u in [*users, also_live]
    )
    with CaptureQueriesContext(connection) as queries:
        gone = registry.purge_dead_servers()
    assert not Connection.objects.filter(server=dead).exists()
    return gone, len(queries)


async def test_a_dead_process_is_purged_in_the_same_queries_for_3_users_or_300(alice, connect):
    await connect(access_for(alice))  # alive elsewhere: no offline for alice
    few, few_queries = await adb(purge_with_ghosts)(3, "few", alice)
    many, many_queries = await adb(purge_with_ghosts)(300, "many", alice)
    assert [name for _, name, _ in few] == sorted(f"few{n}" for n in range(3))
    assert len(many) == 300 and "alice" not in {name for _, name, _ in many}
    assert {version for _, _, version in many} == {1}  # each user's offline, versioned
    assert many_queries == few_queries  # not a transaction per user


async def test_presence_scales_with_subscribers_not_with_sockets(connect, transactional_db):
    users = [await adb(make_user)(f"user{n}") for n in range(5)]
    sockets = [await connect(access_for(u)) for u in users]
    watcher = sockets[0]
    await watcher.request("presence")
    newcomer = await adb(make_user)("newcomer")
    await connect(access_for(newcomer))
    assert (await watcher.receive())["payload"]["user"]["username"] == "newcomer"
    for other in sockets[1:]:
        await other.assert_silent()


async def test_the_server_side_api_reaches_every_socket_of_a_user_from_sync_code(
    alice, bob, connect
):
    from identity import push

    a1, a2 = await connect(access_for(alice)), await connect(access_for(alice))
    other = await connect(access_for(bob))
    note = {"from": {"id": 0, "username": "system"}, "text": "maintenance at noon"}
    await adb(push.send_to_user_sync)(alice.pk, "direct", note)
    for client in (a1, a2):
        assert await client.receive() == {"action": "direct", "payload": note}
    await other.assert_silent()
    listed = await adb(push.online_users_sync)()
    assert [(u.username, u.connections) for u in listed] == [("alice", 2), ("bob", 1)]
