"""Channel layers: the in-memory default made cheap per socket, and Redis with bounds.

Every socket has a channel, but a channel is idle nearly all its life. The rule
kept here: an idle channel costs a dict entry, no task and no queue. Channels'
consumer keeps a task blocked in `layer.receive()` on each one, with a queue
behind it; `attach()` instead hands each message for a channel to a callback
(the consumer's `deliver`). Both layers here do that; for any other layer
`attach()` falls back to one task that pulls from `receive()`.

The in-memory layer (no REDIS_URL): opening N sockets must not cost O(N^2).
Channels' own sweeps every channel and group member for expired entries on
*every* `receive`; here the sweep runs at most once per CLEAN_INTERVAL, and
`group_send` hands each member its copy in one loop instead of a task each.
What each of these saved is measured in docs/performance.md.

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
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from copy import deepcopy
from typing import Any

from channels.exceptions import ChannelFull
from channels.layers import BaseChannelLayer
from channels.layers import InMemoryChannelLayer as _InMemoryLayer
from channels_redis.pubsub import RedisPubSubChannelLayer as _PubSubLayer
from channels_redis.pubsub import _async_proxy
from redis.exceptions import RedisError

LAYER_TIMEOUT = 2.0  # seconds

CLEAN_INTERVAL = 1.0  # seconds between expiry sweeps of the in-memory layer

__all__ = [
    "InMemoryChannelLayer",
    "LayerUnavailable",
    "RedisPubSubChannelLayer",
    "attach",
    "release",
]

logger = logging.getLogger(__name__)

# Takes one message for a channel; raises ChannelFull if its owner is backed up.
Deliver = Callable[[dict[str, Any]], None]
Detach = Callable[[], Awaitable[None]]


def attach(layer: BaseChannelLayer, channel: str, deliver: Deliver) -> Detach:
    """Send every message for CHANNEL to DELIVER from now on; returns the undo.

    A layer with its own `attach` (the in-memory one) calls DELIVER as each
    message is sent; for any other, one task per channel pulls from `receive`.
    """
    if isinstance(layer, InMemoryChannelLayer | RedisPubSubChannelLayer):
        layer.attach(channel, deliver)
        return lambda: layer.detach(channel)
    task = asyncio.ensure_future(_pull(layer, channel, deliver))

    async def detach() -> None:
        task.cancel()  # channels-redis unsubscribes the channel on cancel
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return detach


async def _pull(layer: BaseChannelLayer, channel: str, deliver: Deliver) -> None:
    while True:
        _hand_over(channel, deliver, await layer.receive(channel))


def _hand_over(channel: str, deliver: Deliver, message: dict[str, Any]) -> None:
    """Deliver a received message; one its owner has no room for is dropped, and logged."""
    try:
        deliver(message)
    except ChannelFull:
        logger.warning("%s is backed up: a %r event was dropped", channel, message.get("type"))


class InMemoryChannelLayer(_InMemoryLayer):
    """Channels' in-memory layer with the expiry sweep amortised over CLEAN_INTERVAL."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._next_clean = 0.0
        self.inboxes: dict[str, Deliver] = {}

    def attach(self, channel: str, deliver: Deliver) -> None:
        """Hand CHANNEL's messages to DELIVER as they are sent (those queued first)."""
        self.require_valid_channel_name(channel)
        self.inboxes[channel] = deliver
        queue = self.channels.pop(channel, None)
        while queue is not None and not queue.empty():
            expires, message = queue.get_nowait()
            if expires >= time.time():
                deliver(message)

    async def detach(self, channel: str) -> None:
        """Stop handing CHANNEL's messages over (later ones queue, and expire)."""
        self.inboxes.pop(channel, None)

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        deliver = self.inboxes.get(channel)
        if deliver is None:
            await super().send(channel, message)
            return
        assert isinstance(message, dict), "message is not a dict"
        assert "__asgi_channel__" not in message
        self.require_valid_channel_name(channel)
        deliver(deepcopy(message))  # a copy each, as if it had crossed a wire

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        assert isinstance(message, dict), "Message is not a dict"
        self.require_valid_group_name(group)
        self._clean_expired()
        for channel in list(self.groups.get(group, ())):
            with contextlib.suppress(ChannelFull):  # a backed-up member misses it
                await self.send(channel, message)

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


async def release(layer: BaseChannelLayer, channel: str) -> None:
    """Forget a reply channel made with `new_channel` and read with `receive`.

    Channels has no call for it: the in-memory layer would keep the channel's
    queue until its messages expire, the Redis layer its subscription.
    """
    if isinstance(layer, RedisPubSubChannelLayer):
        await layer.detach(channel)
    elif isinstance(layer, _InMemoryLayer):
        layer.channels.pop(channel, None)


# The private parts of channels and channels-redis used above (the per-channel
# dict of each in-memory and per-loop Redis layer, `_get_layer`, `_get_shard`,
# `_async_proxy`, `_clean_expired`), verified with these releases. A release
# that moves them would stop delivery silently: the system check identity.E004
# refuses to start without them, and identity.W002 warns outside these ranges.
VERIFIED = {"channels": ("4.3",), "channels_redis": ("4.3",)}


def missing_internals() -> list[str]:
    """The private attributes this module relies on that the installed releases lack."""
    from channels_redis import pubsub

    needed = [
        (_InMemoryLayer, "_clean_expired"),
        (_InMemoryLayer, "get_capacity"),
        (_PubSubLayer, "_get_layer"),
        (pubsub.RedisPubSubLoopLayer, "_get_shard"),
        (pubsub, "_async_proxy"),
    ]
    missing = [
        f"{getattr(owner, '__name__', owner)}.{name}"
        for owner, name in needed
        if not hasattr(owner, name)
    ]
    layer = _InMemoryLayer()
    missing += [
        f"InMemoryChannelLayer().{name}"
        for name in ("channels", "groups")
        if not isinstance(getattr(layer, name, None), dict)
    ]
    return missing


def unverified_releases() -> list[str]:
    """Installed releases of channels and channels-redis outside VERIFIED."""
    from importlib.metadata import version

    found = {name: version(name.replace("_", "-")) for name in VERIFIED}
    return [
        f"{name} {found[name]}"
        for name, prefixes in VERIFIED.items()
        if not found[name].startswith(prefixes)
    ]


class LayerUnavailable(Exception):
    """Sockets cannot be reached: the channel layer (Redis) did not answer.

    The one error for "the sockets can't be reached"; identity.push's
    LayerUnreachable (another process on the in-memory layer did not answer)
    is a kind of it.
    """


def in_process(layer: BaseChannelLayer) -> bool:
    """Whether LAYER reaches only this process's sockets (the in-memory layer)."""
    return isinstance(layer, _InMemoryLayer)


async def guarded(awaitable: Any, what: str) -> Any:
    """Await a layer operation within LAYER_TIMEOUT; LayerUnavailable otherwise."""
    try:
        return await asyncio.wait_for(awaitable, LAYER_TIMEOUT)
    except (RedisError, OSError, TimeoutError) as exc:
        raise LayerUnavailable(f"channel layer unavailable during {what}: {exc!r}") from exc


class _Inbox:
    """Takes the place of channels-redis's per-channel queue: hands each message over."""

    __slots__ = ("channel", "deliver", "deserialize")

    def __init__(self, channel: str, deliver: Deliver, deserialize: Callable[[bytes], Any]):
        self.channel, self.deliver, self.deserialize = channel, deliver, deserialize

    def put_nowait(self, data: bytes) -> None:
        _hand_over(self.channel, self.deliver, self.deserialize(data))


class RedisPubSubChannelLayer(_PubSubLayer):
    """channels-redis's pub/sub layer; every operation but `receive` is bounded."""

    def attach(self, channel: str, deliver: Deliver) -> None:
        """Hand CHANNEL's messages (a channel from new_channel) to DELIVER as they arrive.

        The per-loop layer's receive task puts each message in `channels[name]`
        with `put_nowait`; an _Inbox there delivers it instead of queueing.
        """
        loop_layer = self._get_layer()
        queue = loop_layer.channels.get(channel)
        loop_layer.channels[channel] = _Inbox(channel, deliver, self.deserialize)
        while queue is not None and not queue.empty():
            deliver(self.deserialize(queue.get_nowait()))

    async def detach(self, channel: str) -> None:
        """Stop delivering CHANNEL and unsubscribe it (what `receive` does when cancelled)."""
        loop_layer = self._get_layer()
        if loop_layer.channels.pop(channel, None) is None:
            return
        try:
            await guarded(loop_layer._get_shard(channel).unsubscribe(channel), "unsubscribe")
        except LayerUnavailable:
            logger.warning(
                "channel layer unavailable: %s stays subscribed until reconnect", channel
            )

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
