"""The Redis channel layer, with bounded waits and a typed error when Redis is down.

channels-redis's RedisPubSubChannelLayer keeps group membership in the
process and re-subscribes after a reconnect (redis-py's PubSub does), so
sockets that stay open through a Redis restart keep receiving their pushes.
What it lacks is a bound: an operation against a Redis that is down (or
stalled) raises a raw ConnectionError, or waits forever. Here each operation
either completes within LAYER_TIMEOUT or raises LayerUnavailable, which the
consumer answers with `service_unavailable`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from channels_redis.pubsub import RedisPubSubChannelLayer as _PubSubLayer
from channels_redis.pubsub import _async_proxy
from redis.exceptions import RedisError

LAYER_TIMEOUT = 2.0  # seconds

__all__ = ["LayerUnavailable", "RedisPubSubChannelLayer"]


class LayerUnavailable(Exception):
    """The channel layer (Redis) did not answer; the operation did not happen."""


async def guarded(awaitable: Any, what: str) -> Any:
    """Await a layer operation within LAYER_TIMEOUT; LayerUnavailable otherwise."""
    try:
        return await asyncio.wait_for(awaitable, LAYER_TIMEOUT)
    except (RedisError, OSError, TimeoutError) as exc:
        raise LayerUnavailable(f"channel layer unavailable during {what}: {exc!r}") from exc


class RedisPubSubChannelLayer(_PubSubLayer):
    """channels-redis's pub/sub layer; every operation but `receive` is bounded."""

    async def new_channel(self, prefix: str = "specific.") -> str:
        return await guarded(_async_proxy(self, "new_channel", prefix), "new_channel")

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        await guarded(_async_proxy(self, "send", channel, message), "send")

    async def group_add(self, group: str, channel: str) -> None:
        await guarded(_async_proxy(self, "group_add", group, channel), "group_add")

    async def group_discard(self, group: str, channel: str) -> None:
        await guarded(_async_proxy(self, "group_discard", group, channel), "group_discard")

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        await guarded(_async_proxy(self, "group_send", group, message), "group_send")
