"""Withdrawals count the sockets that acknowledge closing, not registry rows.

Runs on the in-memory layer and, in the suite's second run, on Redis.
"""

from __future__ import annotations

import pytest
from channels.layers import get_channel_layer
from django.utils import timezone

from identity import push, registry
from identity.layers import release
from identity.models import Connection
from tests.conftest import RequestClient, access_for, adb
from tests.test_withdrawal import assert_withdrawn, bearer

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def short_acks(monkeypatch) -> None:
    """A ghost never answers: don't wait the full two seconds for it."""
    monkeypatch.setattr(push, "ACK_TIMEOUT", 0.3)


def add_ghost(user_id: int) -> None:
    """A registry row on this (live) process with no socket behind it."""
    registry.heartbeat()  # this process's row, in case no socket registered it yet
    now = timezone.now()
    Connection.objects.create(
        channel_name="specific.ghost!nobody",
        user_id=user_id,
        server_id=registry.SERVER_ID,
        opened_at=now,
        authenticated_at=now,
    )


async def channel_of(user_id: int) -> str:
    return await adb(
        lambda: (
            Connection.objects.filter(user_id=user_id)
            .exclude(channel_name__contains="ghost")
            .get()
            .channel_name
        )
    )()


async def test_a_ghost_row_is_not_counted_as_a_closed_socket(alice, connect, short_acks):
    client = await connect(access_for(alice))
    await adb(add_ghost)(alice.pk)
    assert await push.disconnect_user(alice.pk, push.Reason.KICKED) == 1
    await assert_withdrawn(client, "kicked")


async def test_the_staff_api_reports_sockets_closed_not_rows(alice, staff, connect, short_acks):
    client = await connect(access_for(alice))
    await adb(add_ghost)(alice.pk)
    response = await RequestClient().post(
        "/api/users/alice/disconnect/", headers=bearer(access_for(staff))
    )
    assert response.json() == {"username": "alice", "connections": 1}
    await assert_withdrawn(client, "kicked")


async def test_only_ghosts_count_as_nothing_closed(alice, short_acks):
    await adb(add_ghost)(alice.pk)
    assert await push.disconnect_user(alice.pk, push.Reason.KICKED) == 0


async def test_disconnect_connection_says_whether_the_socket_closed(alice, connect):
    client = await connect(access_for(alice))
    channel = await channel_of(alice.pk)
    assert await push.disconnect_connection(channel, push.Reason.KICKED) == 1
    await assert_withdrawn(client, "kicked")


async def test_disconnect_connection_of_a_socket_that_logged_out_closes_nothing(alice, connect):
    client = await connect(access_for(alice))
    channel = await channel_of(alice.pk)
    assert (await client.request("logout"))["payload"] == {"registered": False}
    assert await push.disconnect_connection(channel, push.Reason.KICKED) == 0
    await client.assert_silent()  # still open, anonymous


async def test_each_socket_acknowledges_on_the_reply_channel(alice, bob, connect):
    client = await connect(access_for(alice))
    channel = await channel_of(alice.pk)
    # A socket with no identity (logged out) answers too, with closed=false.
    anonymous = await connect(access_for(bob))
    other = await channel_of(bob.pk)
    await anonymous.request("logout")
    layer = get_channel_layer()
    reply_to = await layer.new_channel()
    try:
        event = {"type": push.DISCONNECT_EVENT, "reason": "kicked", "reply_to": reply_to}
        await layer.send(other, event)
        assert await layer.receive(reply_to) == {
            "type": "identity.withdrawn",
            "channel": other,
            "closed": False,
        }
        await anonymous.assert_silent()
        await layer.group_send(push.user_group(alice.pk), event)
        ack = await layer.receive(reply_to)
        assert ack == {"type": "identity.withdrawn", "channel": channel, "closed": True}
        await assert_withdrawn(client, "kicked")
    finally:
        await release(layer, reply_to)
