"""Channel-layer events reach a socket one at a time, after the frame it is handling."""

from __future__ import annotations

import asyncio

import pytest
from channels.layers import get_channel_layer

from identity import consumers, push
from tests.conftest import access_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def stalled_presence(monkeypatch):
    """`presence` waits inside its database call until the test lets it go."""
    entered, release = asyncio.Event(), asyncio.Event()
    real = push.online_users

    async def stalled():
        entered.set()
        await release.wait()
        return await real()

    monkeypatch.setattr(push, "online_users", stalled)
    return entered, release


async def test_a_disconnect_sent_mid_frame_waits_for_that_frames_reply(
    alice, connect, stalled_presence
):
    entered, release = stalled_presence
    client = await connect(access_for(alice))
    await client.send("presence", ref="p")
    await asyncio.wait_for(entered.wait(), 3)
    # The kick waits for the socket's acknowledgement, which comes after the frame.
    kick = asyncio.ensure_future(push.disconnect_user(alice.pk, push.Reason.KICKED))
    await client.assert_silent()  # not closed under the pending `presence`
    release.set()
    reply = await client.receive()
    assert (reply["action"], reply["ref"]) == ("presence", "p")
    assert reply["payload"]["users"] == [{"id": alice.pk, "username": "alice", "connections": 1}]
    pushed = await client.receive()
    assert (pushed["action"], pushed["payload"]["reason"]) == ("disconnect", "kicked")
    assert await client.receive_close() == 4403
    assert await kick == 1


async def test_events_past_the_backlog_are_dropped_not_piled_up(alice, connect, stalled_presence):
    entered, release = stalled_presence
    client = await connect(access_for(alice))
    await client.send("presence")
    await asyncio.wait_for(entered.wait(), 3)
    sent = consumers.EVENT_BACKLOG + 20
    for n in range(sent):
        await push.send_to_user(alice.pk, "direct", {"n": n})
    release.set()
    assert (await client.receive())["action"] == "presence"
    got = [(await client.receive())["payload"]["n"] for _ in range(consumers.EVENT_BACKLOG)]
    assert got == list(range(consumers.EVENT_BACKLOG))  # the first ones, in order
    await client.assert_silent()


async def test_a_withdrawal_is_never_dropped_however_backed_up_the_socket_is(
    alice, connect, stalled_presence, monkeypatch
):
    entered, release = stalled_presence
    client = await connect(access_for(alice))
    await client.send("presence")
    await asyncio.wait_for(entered.wait(), 3)
    for n in range(consumers.EVENT_BACKLOG):
        await push.send_to_user(alice.pk, "direct", {"n": n})
    sent = asyncio.Event()
    layer = get_channel_layer()
    group_send = layer.group_send

    async def group_send_then_tell(group, message):
        await group_send(group, message)
        if message["type"] == push.DISCONNECT_EVENT:
            sent.set()

    monkeypatch.setattr(layer, "group_send", group_send_then_tell)
    kick = asyncio.ensure_future(push.disconnect_user(alice.pk, push.Reason.KICKED))
    await asyncio.wait_for(sent.wait(), 3)  # sent while the socket is backed up
    release.set()
    frames = [await client.receive() for _ in range(consumers.EVENT_BACKLOG + 2)]
    assert frames[-1]["action"] == "disconnect"
    assert await client.receive_close() == 4403
    assert await kick == 1
