"""Channel layers: the in-memory default made O(1) per receive, and Redis with bounds.

The in-memory layer (no REDIS_URL): Channels' own sweeps every channel and
group member for expired entries on *every* `receive`, so opening N sockets
costs O(N^2) (the benchmark's 10,000 idle sockets opened at ~70/s with the
server at 100% CPU). Here the sweep runs at most once per CLEAN_INTERVAL.

The Redis layer:
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
import time
from typing import Any

from channels.layers import InMemoryChannelLayer as _InMemoryLayer
from channels_redis.pubsub import RedisPubSubChannelLayer as _PubSubLayer
from channels_redis.pubsub import _async_proxy
from redis.exceptions import RedisError

LAYER_TIMEOUT = 2.0  # seconds

CLEAN_INTERVAL = 1.0  # seconds between expiry sweeps of the in-memory layer

__all__ = ["InMemoryChannelLayer", "LayerUnavailable", "RedisPubSubChannelLayer"]


class InMemoryChannelLayer(_InMemoryLayer):
    """Channels' in-memory layer with the expiry sweep amortised over CLEAN_INTERVAL."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._next_clean = 0.0

    def _clean_expired(self) -> None:
        now = time.monotonic()
        if now >= self._next_clean:
            self._next_clean = now + CLEAN_INTERVAL
            super()._clean_expired()

    async def receive(self, channel: str) -> dict[str, Any]:
        self.require_valid_channel_name(channel)
        self._clean_expired()
        queue = self.channels.get(channel)
        if queue is None:  # no throwaway Queue per call, unlike setdefault()
            queue = self.channels[channel] = asyncio.Queue(maxsize=self.get_capacity(channel))
        try:
            _, message = await queue.get()
        finally:
            if queue.empty():
                self.channels.pop(channel, None)
        return message


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
