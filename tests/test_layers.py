"""The in-memory layer: expiry sweeps amortised, membership kept, messages delivered."""

from __future__ import annotations

import asyncio

import pytest
from channels.layers import InMemoryChannelLayer as ChannelsLayer

from identity import layers


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
