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
    withdrawal = asyncio.ensure_future(push.disconnect_user(alice.pk, push.Reason.KICKED))
    await client.assert_silent()  # not closed under the pending `presence`
    release.set()
    assert await withdrawal == 1
    reply = await client.receive()
    assert (reply["action"], reply["ref"]) == ("presence", "p")
    assert reply["payload"]["users"] == [{"id": alice.pk, "username": "alice", "connections": 1}]
    pushed = await client.receive()
    assert (pushed["action"], pushed["payload"]["reason"]) == ("disconnect", "kicked")
    assert await client.receive_close() == 4403


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


async def test_presence_past_the_backlog_is_merged_to_each_users_latest_state(alice, connect, gate):
    client = await connect(access_for(alice))
    await client.request("presence")
    await client.send("test.gate", None, ref="g")  # holds the socket
    await asyncio.wait_for(gate.entered.wait(), 3)
    truth: dict[int, str] = {}
    events = [("online", n) for n in range(150)] + [("offline", n) for n in (*range(100, 150), 3)]
    for event, n in events:  # 100 wait, the rest overflow
        await push.push_presence(event, 1000 + n, f"user{n}")
        truth[1000 + n] = event
    gate.opened.set()
    assert (await client.receive())["ref"] == "g"
    seen: dict[int, str] = {}
    # The 100 that waited, then one per user of the 101 that overflowed (51 users).
    for _ in range(consumers.EVENT_BACKLOG + 51):
        frame = await client.receive()
        seen[frame["payload"]["user"]["id"]] = frame["payload"]["event"]
    await client.assert_silent()
    assert seen == truth  # every user's last word, though 201 pushes met a backlog of 100


async def test_a_withdrawal_goes_ahead_of_the_pushes_waiting_on_a_backed_up_socket(
    alice, bob, connect, stalled_presence, monkeypatch
):
    entered, release = stalled_presence
    client = await connect(access_for(alice))
    witness = await connect(access_for(bob))
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
    withdrawal = asyncio.ensure_future(push.disconnect_user(alice.pk, push.Reason.KICKED))
    await asyncio.wait_for(sent.wait(), 3)
    # A push sent after the withdrawal, through the same layer connection: when
    # it has arrived, so has the withdrawal, while the socket is backed up.
    await push.send_to_user(bob.pk, "direct", {"n": "after"})
    assert (await witness.receive())["payload"] == {"n": "after"}
    release.set()
    assert await withdrawal == 1
    assert (await client.receive())["action"] == "presence"  # the frame in hand is finished
    pushed = await client.receive()  # the waiting directs were dropped
    assert pushed == {"action": "disconnect", "payload": {"reason": "kicked", "reconnect": False}}
    assert await client.receive_close() == 4403
