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

It also subscribes once per process, not once per socket and group. As
channels-redis ships it, each socket's channel is a Redis subscription, and
so is each group with a member in the process (every user's group): a
connect and a close cost four SUBSCRIBE and UNSUBSCRIBE commands. Here a
socket's channel is process-local (`...!id`, Channels' naming for it) and
reached through its process's one subscription, and groups live in the
process only: a group_send goes to every process on one shared "bus"
subscription, and each hands it to its own members. The price is that every
process reads every group message; with the handful of workers a deployment
runs, that costs less than the commands it saves (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
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


# The private parts of channels and channels-redis used here (the channel and
# group dicts of each in-memory and per-loop Redis layer, `_get_layer`,
# `_get_shard`, `_get_group_channel_name`, a shard's `_subscribed_to` and
# `_receive_message`, `_async_proxy`, `_clean_expired`), verified with these releases. A release
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
        (pubsub.RedisPubSubLoopLayer, "_get_group_channel_name"),
        (pubsub.RedisSingleShardConnection, "_receive_message"),
        (pubsub, "_async_proxy"),
    ]
    missing = [
        f"{getattr(owner, '__name__', owner)}.{name}"
        for owner, name in needed
        if not hasattr(owner, name)
    ]
    for name, made in (
        ("InMemoryChannelLayer", _InMemoryLayer()),
        ("RedisPubSubLoopLayer", pubsub.RedisPubSubLoopLayer(hosts=["redis://127.0.0.1:1"])),
    ):  # nothing connects before the first command
        missing += [
            f"{name}().{attr}"
            for attr in ("channels", "groups")
            if not isinstance(getattr(made, attr, None), dict)
        ]
    shard = pubsub.RedisSingleShardConnection({"address": "redis://127.0.0.1:1"}, None)
    if not isinstance(getattr(shard, "_subscribed_to", None), set):
        missing.append("RedisSingleShardConnection()._subscribed_to")
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


class _Bus:
    """Sits in channels-redis's channel dict under this process's two subscriptions.

    Each message arrives as b"<channel or group>\\n<message>" and goes on as
    channels-redis would have delivered a message of that Redis channel: to
    the named process-local channel, or to each local member of the group.
    b"\\n<token>" is a barrier of this process's own (see group_add).
    """

    __slots__ = ("barriers", "shard")

    def __init__(self, shard: Any) -> None:
        self.shard = shard
        self.barriers: dict[bytes, Callable[[], None]] = {}

    def put_nowait(self, data: bytes) -> None:
        name, _, message = data.partition(b"\n")
        if name:
            self.shard._receive_message({"channel": name, "data": message})
        elif (reached := self.barriers.pop(message, None)) is not None:
            reached()


class RedisPubSubChannelLayer(_PubSubLayer):
    """channels-redis's pub/sub layer: one subscription per process, every operation bounded."""

    def _bus(self) -> tuple[Any, str, str]:
        """This event loop's layer, the bus, and this process's own channel.

        Per event loop, as channels-redis keeps its layers. Both are read on
        the bus's shard (its Redis connection), so a process receives what is
        published to either in the order Redis ran the PUBLISH commands.
        """
        loop_layer = self._get_layer()
        names = getattr(loop_layer, "identity_bus", None)
        if names is None:
            names = (f"{self.prefix}bus", f"{self.prefix}process.{secrets.token_hex(8)}")
            loop_layer.identity_bus = names
        return loop_layer, *names

    async def _listen(self) -> tuple[Any, str, _Bus]:
        """Subscribe this process to the bus and its own channel, once (again after a flush).

        This loop's layer, the process's own channel, and the _Bus under it.
        """
        loop_layer, bus, own = self._bus()
        shard = loop_layer._get_shard(bus)
        for name in (bus, own):
            if not isinstance(loop_layer.channels.get(name), _Bus):
                loop_layer.channels[name] = _Bus(shard)
            if name not in shard._subscribed_to:
                await guarded(shard.subscribe(name), "subscribe")
        return loop_layer, own, loop_layer.channels[own]

    async def _publish(self, via: str, data: bytes, what: str) -> None:
        loop_layer, bus, _ = self._bus()
        await guarded(loop_layer._get_shard(bus).publish(via, data), what)

    async def new_channel(self, prefix: str = "specific.") -> str:
        """A process-local channel: no subscription of its own."""
        loop_layer, own, _ = await self._listen()
        channel = f"{own}!{prefix}{secrets.token_hex(8)}"
        loop_layer.channels[channel] = asyncio.Queue()
        return channel

    def attach(self, channel: str, deliver: Deliver) -> None:
        """Hand CHANNEL's messages (a channel from new_channel) to DELIVER as they arrive.

        The receive task puts each message in `channels[name]` with
        `put_nowait`; an _Inbox there delivers it instead of queueing.
        """
        loop_layer = self._get_layer()
        queue = loop_layer.channels.get(channel)
        loop_layer.channels[channel] = _Inbox(channel, deliver, self.deserialize)
        while queue is not None and not queue.empty():
            deliver(self.deserialize(queue.get_nowait()))

    async def detach(self, channel: str) -> None:
        """Stop delivering CHANNEL (a local channel: nothing to unsubscribe)."""
        self._get_layer().channels.pop(channel, None)

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        own, bang, _ = channel.partition("!")
        if not bang:  # not one of ours: channels-redis's own way
            await guarded(_async_proxy(self, "send", channel, message), "send")
            return
        await self._publish(own, channel.encode() + b"\n" + self.serialize(message), "send")

    async def group_add(self, group: str, channel: str) -> None:
        """Add CHANNEL to GROUP for every message published after this call began.

        The membership is local, so a message published a moment earlier
        could still be on its way; it would reach CHANNEL too, unlike with a
        Redis subscription. So this publishes a barrier to the process's own
        channel and adds the member when it comes back: what arrives before it
        was published before.
        """
        loop_layer, own, own_bus = await self._listen()
        members = loop_layer._get_group_channel_name(group)
        token = secrets.token_hex(8).encode()
        reached = asyncio.get_running_loop().create_future()

        def join() -> None:
            loop_layer.groups.setdefault(members, set()).add(channel)
            if not reached.done():
                reached.set_result(None)

        own_bus.barriers[token] = join
        try:
            await self._publish(own, b"\n" + token, "group_add")
            await guarded(reached, "group_add")
        finally:
            own_bus.barriers.pop(token, None)  # a late barrier adds nobody

    async def group_discard(self, group: str, channel: str) -> None:
        loop_layer = self._get_layer()
        name = loop_layer._get_group_channel_name(group)
        members = loop_layer.groups.get(name, set())
        members.discard(channel)
        if not members:
            loop_layer.groups.pop(name, None)

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        loop_layer, bus, _ = self._bus()
        name = loop_layer._get_group_channel_name(group)
        await self._publish(bus, name.encode() + b"\n" + self.serialize(message), "group_send")
