"""The async edge of the domain: what the consumer asks of tokens and the registry.

Each function is one hop to the database thread, so `auth` costs one hop
whatever it checks (token, user, revocation, connection limit, registry).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from typing import Any, ParamSpec, TypeVar

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.contrib.auth import get_user_model
from django.db import InterfaceError, OperationalError, connection

from identity import metrics, push, registry, tokens
from identity.exceptions import ServiceUnavailable
from identity.layers import LayerUnavailable
from identity.protocol import user_payload

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


def hop(func: Callable[P, R]) -> Callable[P, Any]:
    """database_sync_to_async for the per-socket calls: no ping before each call.

    With CONN_HEALTH_CHECKS (config.settings), Django pings the database, one
    round trip, before the first query of every database_sync_to_async call:
    a third of an `auth`'s round trips and half a close's (docs/performance.md).
    Here a connection is used as it was left; if the database dropped it
    meanwhile (a restart), the call runs once more on a new connection.
    """

    @functools.wraps(func)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        connection.health_check_done = True  # type: ignore[attr-defined]  # Django's flag
        try:
            return func(*args, **kwargs)
        except (OperationalError, InterfaceError):
            if connection.in_atomic_block or (connection.connection and connection.is_usable()):
                raise  # the statement failed, not the connection
            connection.close()
            return func(*args, **kwargs)

    return database_sync_to_async(call)


@hop
def _open(
    raw: Any, info: registry.SocketInfo
) -> tuple[Any, tokens.VerifiedToken, registry.Arrival]:
    user, token = tokens.authenticate(raw)
    return user, token, registry.register(user.pk, info)


_unregister = hop(registry.unregister)
_leave = hop(registry.leave)


async def open_session(raw: Any, info: registry.SocketInfo) -> tuple[Any, tokens.VerifiedToken]:
    """Authenticate an anonymous socket, record it and join its user's group.

    Pushes `online` if it is the user's first socket (`offline` first if it
    replaced the ghosts of a dead process: registry.register). If the channel
    layer is down the registration is undone and ServiceUnavailable raised.
    """
    user, token, arrival = await _open(raw, info)
    try:
        await get_channel_layer().group_add(push.user_group(user.pk), info.channel_name)
    except LayerUnavailable as exc:
        await _unregister(info.channel_name, user.pk)
        raise ServiceUnavailable() from exc
    if arrival.first:
        name, version = user.get_username(), arrival.version
        if arrival.after_ghosts:
            gone = None if version is None else version - 1
            await best_effort(push.push_presence("offline", user.pk, name, gone))
        await best_effort(push.push_presence("online", user.pk, name, version))
    return user, token


async def best_effort(awaitable: Any) -> None:
    """A push that may be lost while the channel layer is down (logged, not raised)."""
    try:
        await awaitable
    except LayerUnavailable as exc:
        metrics.service_error(exc)
        logger.warning("channel layer unavailable: a presence push was lost", exc_info=True)


@hop
def check_token(raw: Any) -> tuple[Any, tokens.VerifiedToken]:
    """Verify a token and resolve its user (re-auth of a known socket)."""
    return tokens.authenticate(raw)


async def subscribe_presence(channel_name: str) -> None:
    """From now on the socket receives the `presence` pushes (left in close_session)."""
    await get_channel_layer().group_add(push.PRESENCE_GROUP, channel_name)


async def close_session(
    channel_name: str,
    user_id: int,
    username: str,
    subscribed: bool = False,
    topics: Iterable[str] = (),
    presence: bool = False,
) -> None:
    """Leave the groups open_session, subscribe_presence and join_topic joined, and the registry.

    TOPICS are the socket's topics; PRESENCE says whether it ever joined one
    that keeps presence. Pushes `offline` if it was the user's last socket,
    and `leave` for each presence topic it was their last socket in.
    """
    groups = [push.user_group(user_id)] + ([push.PRESENCE_GROUP] if subscribed else [])
    groups += [push.topic_group(topic) for topic in topics]
    try:
        for group in groups:
            await get_channel_layer().group_discard(group, channel_name)
    except LayerUnavailable as exc:
        metrics.service_error(exc)
        # Pushes to a channel nobody reads are dropped; nothing else to undo.
        logger.warning("channel layer unavailable: %s left its groups late", channel_name)
    try:
        last, left, version = await _leave(channel_name, user_id, presence)
    except Exception as exc:
        metrics.service_error(exc)
        # The socket is going anyway; the heartbeat expiry cleans up after us.
        logger.exception("could not remove %s from the registry", channel_name)
        return
    for topic in left:
        await best_effort(push.push_members(topic, "leave", user_id, username))
    if last:
        await best_effort(push.push_presence("offline", user_id, username, version))


async def join_topic(
    channel_name: str, user_id: int, username: str, topic: str, presence: bool
) -> list[dict[str, Any]] | None:
    """Join a topic's group; with PRESENCE record it and push `join`: the members, else None."""
    await get_channel_layer().group_add(push.topic_group(topic), channel_name)
    if not presence:
        return None
    try:
        first, after_ghosts, members = await database_sync_to_async(registry.join_topic)(
            user_id, channel_name, topic
        )
    except BaseException:
        await get_channel_layer().group_discard(push.topic_group(topic), channel_name)
        raise
    if first:
        if after_ghosts:  # as for `online` (registry.register)
            await best_effort(push.push_members(topic, "leave", user_id, username))
        await best_effort(push.push_members(topic, "join", user_id, username))
    return [user_payload(uid, name) for uid, name in members]


async def leave_topic(
    channel_name: str, user_id: int, username: str, topic: str, presence: bool
) -> None:
    """Leave a topic's group; with PRESENCE forget it and push `leave` if it was the last."""
    try:
        await get_channel_layer().group_discard(push.topic_group(topic), channel_name)
    finally:
        if presence:
            last = await database_sync_to_async(registry.leave_topic)(user_id, channel_name, topic)
            if last:
                await best_effort(push.push_members(topic, "leave", user_id, username))


@database_sync_to_async
def topic_members(topic: str) -> list[dict[str, Any]]:
    """The members of a presence topic, as USER dicts."""
    return [user_payload(uid, name) for uid, name in registry.topic_members(topic)]


@database_sync_to_async
def fresh_user(user_id: int) -> Any | None:
    """The user as stored now (rights re-read, no permission cache); None if gone or inactive."""
    user = get_user_model().objects.filter(pk=user_id).first()
    return user if user is not None and user.is_active else None


@hop
def find_recipient(username: str) -> tuple[int, bool] | None:
    """The user id for a username and whether they are online; None if no such user."""
    user_model = get_user_model()
    user_id = (
        user_model.objects.filter(**{user_model.USERNAME_FIELD: username})
        .values_list("pk", flat=True)
        .first()
    )
    if user_id is None:
        return None
    return user_id, registry.is_online(user_id)
