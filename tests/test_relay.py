"""Withdrawals carried by the database to the process holding in-memory sockets.

The cross-process cases run against real server processes in
test_live_lifecycle.py; here the two halves are driven in one process.
"""

from __future__ import annotations

import logging

import pytest
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.db import OperationalError
from django.utils import timezone

from identity import heartbeat, push, registry, relay
from identity.models import Connection, ServerProcess, WithdrawalRequest
from tests.conftest import access_for, adb, as_request
from tests.test_metrics import moved, read
from tests.test_withdrawal import assert_withdrawn

pytestmark = pytest.mark.django_db(transaction=True)

ELSEWHERE = "another-host:1:cafebabe"


@pytest.fixture
def in_memory() -> None:
    if not isinstance(get_channel_layer(), InMemoryChannelLayer):
        pytest.skip("the database carries withdrawals only for the in-memory layer")


@pytest.fixture
def short_relay(monkeypatch) -> None:
    monkeypatch.setattr(push, "RELAY_TIMEOUT", 0.3)


def socket_elsewhere(user_id: int) -> None:
    """A live socket of USER held by another (live, silent) server process."""
    now = timezone.now()
    ServerProcess.objects.create(id=ELSEWHERE, started_at=now, heartbeat_at=now)
    Connection.objects.create(
        channel_name="specific.elsewhere!abc",
        user_id=user_id,
        server_id=ELSEWHERE,
        opened_at=now,
        authenticated_at=now,
    )


async def test_a_process_carries_out_the_requests_addressed_to_it(alice, connect):
    client = await connect(access_for(alice))
    ids = await adb(relay.request)({registry.SERVER_ID: 1}, alice.pk, "kicked")
    assert await heartbeat.poll_once() == 1
    await assert_withdrawn(client, "kicked")
    row = await adb(WithdrawalRequest.objects.get)(pk=next(iter(ids)))
    assert (row.closed, row.done_at is not None) == (1, True)
    assert await heartbeat.poll_once() == 0  # done once


async def test_a_request_for_one_socket_closes_only_that_one(alice, connect):
    first = await connect(access_for(alice))
    second = await connect(access_for(alice))
    channel = await adb(
        lambda: Connection.objects.order_by("authenticated_at").first().channel_name
    )()
    await adb(relay.request)({registry.SERVER_ID: 1}, alice.pk, "kicked", channel_name=channel)
    assert await heartbeat.poll_once() == 1
    await assert_withdrawn(first, "kicked")
    await second.assert_silent()


async def test_no_answer_raises_nothing_closed_and_cancels_the_request(
    alice, in_memory, short_relay
):
    await adb(socket_elsewhere)(alice.pk)
    with pytest.raises(push.LayerUnreachable) as raised:
        await push.disconnect_user(alice.pk, push.Reason.KICKED)
    assert raised.value.closed == 0
    assert str(raised.value).startswith("nothing closed: 1 socket(s) held by server process(es)")
    assert ELSEWHERE in str(raised.value)
    # Cancelled: it will not run when that process wakes up.
    assert await adb(WithdrawalRequest.objects.count)() == 0


async def test_deleting_a_user_whose_sockets_cannot_be_reached_warns(
    alice, in_memory, short_relay, caplog
):
    await adb(socket_elsewhere)(alice.pk)
    caplog.set_level(logging.INFO, logger="identity")
    await as_request(alice.delete)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, caplog.text
    assert "delete of alice" in warnings[0].getMessage()
    assert "nothing closed for alice: 1 socket(s) held by" in warnings[0].getMessage()


async def test_a_database_that_refuses_the_request_closes_nothing(alice, in_memory, monkeypatch):
    await adb(socket_elsewhere)(alice.pk)

    def locked(*args, **kwargs):
        raise OperationalError("database is locked")

    monkeypatch.setattr(relay, "request", locked)
    with pytest.raises(push.LayerUnreachable) as raised:
        await push.disconnect_user(alice.pk, push.Reason.KICKED)
    assert raised.value.closed == 0
    assert str(raised.value) == (
        "nothing closed: 1 socket(s) held by other server process(es): "
        "no request sent (database is locked)"
    )


async def test_a_publish_delivered_here_is_not_refused_when_the_relay_fails(
    alice, connect, in_memory, monkeypatch, caplog
):
    client = await connect(access_for(alice))
    assert (await client.request("subscribe", {"topic": "room.lobby"}))["payload"]["subscribed"]
    now = timezone.now()  # another live process: the event is written for it too
    await adb(ServerProcess.objects.create)(id=ELSEWHERE, started_at=now, heartbeat_at=now)
    monkeypatch.setattr(relay, "_servers", (0.0, []))  # no list cached from an earlier test

    def locked(*args):
        raise OperationalError("database is locked")

    monkeypatch.setattr(relay, "broadcast", locked)
    before = await read()
    with caplog.at_level(logging.WARNING, logger="identity"):
        await client.send("publish", {"topic": "room.lobby", "data": 1}, ref="p")
        frames = sorted([await client.receive(), await client.receive()], key=str)
    assert [f["action"] for f in frames] == ["event", "publish"]  # a retry would deliver twice
    assert frames[1] == {"action": "publish", "payload": {"topic": "room.lobby"}, "ref": "p"}
    await client.assert_silent()
    after = await read()
    assert moved(before, after, "identity_service_errors_total", service="database") == 1
    logged = [r for r in caplog.records if "could not relay an event" in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None


async def test_a_relayed_event_that_cannot_be_sent_is_logged_and_the_next_ones_go_on(
    alice, connect, in_memory, monkeypatch, caplog
):
    client = await connect(access_for(alice))
    for n in (1, 2):
        message = {"type": push.PUSH_EVENT, "frame": {"action": "direct", "payload": n}}
        await adb(relay.broadcast)([registry.SERVER_ID], push.user_group(alice.pk), message)
    layer = get_channel_layer()
    group_send = layer.group_send

    async def first_fails(group, message):
        if message["frame"]["payload"] == 1:
            raise RuntimeError("the layer refused it")
        await group_send(group, message)

    monkeypatch.setattr(layer, "group_send", first_fails)
    with caplog.at_level(logging.WARNING, logger="identity"):
        assert await heartbeat.poll_once() == 2  # the poller is not brought down
    assert await client.receive() == {"action": "direct", "payload": 2}
    logged = [r for r in caplog.records if "relayed" in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None
