"""The in-memory layer: expiry sweeps amortised, membership kept, messages handed over."""

from __future__ import annotations

import asyncio
import os

import pytest
from channels.exceptions import ChannelFull
from channels.layers import InMemoryChannelLayer as ChannelsLayer

from identity import layers
from tests.services import require_redis


class Inbox:
    """A `deliver` callback for layers that hand messages over from another task."""

    def __init__(self) -> None:
        self.got: list[dict] = []
        self.arrived = asyncio.Event()

    def deliver(self, message: dict) -> None:
        self.got.append(message)
        self.arrived.set()

    async def first(self) -> None:
        await asyncio.wait_for(self.arrived.wait(), 3)

    async def until(self, count: int) -> list[str]:
        """Wait for COUNT messages in all; their types."""
        async with asyncio.timeout(3):
            while len(self.got) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return [m["type"] for m in self.got]


async def test_receive_delivers_in_order_and_forgets_empty_channels():
    layer = layers.InMemoryChannelLayer()
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "a"})
    await layer.send(channel, {"type": "b"})
    assert (await layer.receive(channel))["type"] == "a"
    assert (await layer.receive(channel))["type"] == "b"
    assert channel not in layer.channels


async def test_the_expiry_sweep_runs_at_most_once_per_interval(monkeypatch):
    sweeps = []
    monkeypatch.setattr(ChannelsLayer, "_clean_expired", lambda self: sweeps.append(1))
    layer = layers.InMemoryChannelLayer()
    channels = [await layer.new_channel() for _ in range(50)]
    for channel in channels:
        await layer.send(channel, {"type": "x"})
    await asyncio.gather(*(layer.receive(channel) for channel in channels))
    assert len(sweeps) == 1  # Channels' own layer sweeps on each of the 50 receives
    layer._next_clean = 0.0  # the interval has passed
    await layer.send(channels[0], {"type": "y"})
    await layer.receive(channels[0])
    assert len(sweeps) == 2


async def test_group_membership_outlives_channels_default_expiry(settings):
    from django.conf import settings as django_settings

    default = django_settings.CHANNEL_LAYERS["default"]
    if not default["BACKEND"].endswith("InMemoryChannelLayer"):
        pytest.skip("the suite runs on Redis (REDIS_URL): no in-memory layer is configured")
    layer = layers.InMemoryChannelLayer(**default["CONFIG"])
    assert layer.group_expiry > 86400 * 365
    channel = await layer.new_channel()
    await layer.group_add("g", channel)
    await layer.group_send("g", {"type": "hello"})
    assert (await layer.receive(channel))["type"] == "hello"


async def test_an_attached_channel_has_each_message_handed_over_and_queues_none():
    layer = layers.InMemoryChannelLayer()
    channel = await layer.new_channel()
    got = []
    layers.attach(layer, channel, got.append)
    await layer.group_add("g", channel)
    await layer.send(channel, {"type": "direct"})
    await layer.group_send("g", {"type": "group"})
    assert [m["type"] for m in got] == ["direct", "group"]
    assert layer.channels == {}


async def test_messages_sent_before_attaching_are_handed_over_in_order():
    layer = layers.InMemoryChannelLayer()
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "a"})
    await layer.send(channel, {"type": "b"})
    got = []
    layers.attach(layer, channel, got.append)
    assert [m["type"] for m in got] == ["a", "b"]


async def test_after_detaching_messages_queue_again():
    layer = layers.InMemoryChannelLayer()
    channel = await layer.new_channel()
    got = []
    detach = layers.attach(layer, channel, got.append)
    await detach()
    await layer.send(channel, {"type": "later"})
    assert got == []
    assert (await layer.receive(channel))["type"] == "later"


async def test_each_member_gets_its_own_copy():
    layer = layers.InMemoryChannelLayer()
    first, second = await layer.new_channel(), await layer.new_channel()
    got: dict[str, list] = {first: [], second: []}
    for channel in (first, second):
        layers.attach(layer, channel, got[channel].append)
        await layer.group_add("g", channel)
    await layer.group_send("g", {"type": "x", "frame": {"n": 1}})
    got[first][0]["frame"]["n"] = 2
    assert got[second][0]["frame"] == {"n": 1}


async def test_group_send_skips_a_backed_up_member_and_reaches_the_rest():
    layer = layers.InMemoryChannelLayer()
    full, fine = await layer.new_channel(), await layer.new_channel()
    got = []

    def backed_up(message):
        raise ChannelFull(full)

    layers.attach(layer, full, backed_up)
    layers.attach(layer, fine, got.append)
    for channel in (full, fine):
        await layer.group_add("g", channel)
    await layer.group_send("g", {"type": "x"})
    assert [m["type"] for m in got] == ["x"]
    with pytest.raises(ChannelFull):
        await layer.send(full, {"type": "y"})


async def test_a_layer_without_attach_is_pulled_by_one_task_until_detached():
    layer = ChannelsLayer()  # Channels' own: no attach(), like channels-redis
    channel = await layer.new_channel()
    inbox = Inbox()
    detach = layers.attach(layer, channel, inbox.deliver)
    await layer.send(channel, {"type": "x"})
    await inbox.first()
    await detach()
    await layer.send(channel, {"type": "after"})
    assert [m["type"] for m in inbox.got] == ["x"]
    assert (await layer.receive(channel))["type"] == "after"


async def test_redis_subscribes_once_per_process_and_hands_messages_over():
    layer = layers.RedisPubSubChannelLayer(hosts=[require_redis()], prefix=f"t{os.getpid()}")
    other = layers.RedisPubSubChannelLayer(hosts=[require_redis()], prefix=f"t{os.getpid()}")
    try:
        channels = {name: await layer.new_channel() for name in ("a", "b", "c")}
        got = {name: Inbox() for name in channels}
        detach = {
            name: layers.attach(layer, channels[name], got[name].deliver) for name in channels
        }
        for name, channel in channels.items():
            await layer.group_add(f"user.{name}", channel)
            await layer.group_add("everyone", channel)
        shard = layer._get_layer()._get_shard(channels["a"])
        # The bus and the process's own channel, whatever the sockets and groups.
        assert len(shard._subscribed_to) == 2
        there = await other.new_channel()
        theirs = Inbox()
        layers.attach(other, there, theirs.deliver)
        await other.group_add("everyone", there)

        await other.group_send("user.b", {"type": "to.b"})  # from another process
        await other.send(channels["c"], {"type": "to.c"})
        await layer.group_send("everyone", {"type": "all"})
        for name, expected in (("a", ["all"]), ("b", ["to.b", "all"]), ("c", ["to.c", "all"])):
            assert await got[name].until(len(expected)) == expected
        assert await theirs.until(1) == ["all"]

        await detach["a"]()
        await layer.group_discard("everyone", channels["b"])
        assert channels["a"] not in layer._get_layer().channels
        await layer.group_send("everyone", {"type": "later"})
        assert await got["c"].until(3) == ["to.c", "all", "later"]
        assert await theirs.until(2) == ["all", "later"]
        assert [m["type"] for m in got["a"].got] == ["all"]
        assert [m["type"] for m in got["b"].got] == ["to.b", "all"]
        assert len(shard._subscribed_to) == 2
    finally:
        await layer.flush()
        await other.flush()


async def test_redis_a_new_member_gets_only_what_was_published_after_it_joined():
    layer = layers.RedisPubSubChannelLayer(hosts=[require_redis()], prefix=f"j{os.getpid()}")
    other = layers.RedisPubSubChannelLayer(hosts=[require_redis()], prefix=f"j{os.getpid()}")
    try:
        channel = await layer.new_channel()
        inbox = Inbox()
        layers.attach(layer, channel, inbox.deliver)
        await other.new_channel()  # the other process listens too
        # Published, and on its way to this process, before the member joins.
        await other.group_send("g", {"type": "before"})
        await layer.group_add("g", channel)
        await other.group_send("g", {"type": "after"})
        assert await inbox.until(1) == ["after"]
    finally:
        await layer.flush()
        await other.flush()


def test_the_installed_channel_layers_have_every_private_part_identity_uses():
    assert layers.missing_internals() == []
    assert layers.unverified_releases() == []


def test_a_release_without_them_stops_the_server_at_its_system_check(monkeypatch):
    from channels_redis import pubsub

    from identity import checks

    monkeypatch.delattr(pubsub.RedisPubSubLoopLayer, "_get_shard")
    errors = [p for p in checks.check_identity_settings() if p.id == "identity.E004"]
    assert len(errors) == 1 and "RedisPubSubLoopLayer._get_shard" in errors[0].msg


def test_a_release_outside_the_verified_ones_is_warned_about(monkeypatch):
    from identity import checks

    monkeypatch.setitem(layers.VERIFIED, "channels", ("9.9",))
    warnings = [p for p in checks.check_identity_settings() if p.id == "identity.W002"]
    assert len(warnings) == 1 and "channels 4.3" in warnings[0].msg
