"""The async edge of the domain: what the consumer asks of tokens and the registry.

Each function is one hop to the database thread, so `auth` costs one hop
whatever it checks (token, user, revocation, connection limit, registry).
"""

from __future__ import annotations

import logging
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.contrib.auth import get_user_model

from identity import push, registry, tokens
from identity.exceptions import ServiceUnavailable
from identity.layers import LayerUnavailable

logger = logging.getLogger(__name__)


@database_sync_to_async
def _open(raw: Any, info: registry.SocketInfo) -> tuple[Any, tokens.VerifiedToken, bool]:
    user, token = tokens.authenticate(raw)
    first = registry.register(user.pk, info)
    return user, token, first


_unregister = database_sync_to_async(registry.unregister)


async def open_session(raw: Any, info: registry.SocketInfo) -> tuple[Any, tokens.VerifiedToken]:
    """Authenticate an anonymous socket, record it and join its user's group.

    Pushes `online` if it is the user's first socket. If the channel layer is
    down the registration is undone and ServiceUnavailable raised.
    """
    user, token, first = await _open(raw, info)
    try:
        await get_channel_layer().group_add(push.user_group(user.pk), info.channel_name)
    except LayerUnavailable as exc:
        await _unregister(info.channel_name, user.pk)
        raise ServiceUnavailable() from exc
    if first:
        await best_effort(push.push_presence("online", user.pk, user.get_username()))
    return user, token


async def best_effort(awaitable: Any) -> None:
    """A push that may be lost while the channel layer is down (logged, not raised)."""
    try:
        await awaitable
    except LayerUnavailable:
        logger.warning("channel layer unavailable: a presence push was lost", exc_info=True)


@database_sync_to_async
def check_token(raw: Any) -> tuple[Any, tokens.VerifiedToken]:
    """Verify a token and resolve its user (re-auth of a known socket)."""
    return tokens.authenticate(raw)


async def subscribe_presence(channel_name: str) -> None:
    """From now on the socket receives the `presence` pushes (left in close_session)."""
    await get_channel_layer().group_add(push.PRESENCE_GROUP, channel_name)


async def close_session(
    channel_name: str, user_id: int, username: str, subscribed: bool = False
) -> None:
    """Leave the groups open_session and subscribe_presence joined, and the registry.

    Pushes `offline` if it was the user's last socket.
    """
    groups = [push.user_group(user_id)] + ([push.PRESENCE_GROUP] if subscribed else [])
    try:
        for group in groups:
            await get_channel_layer().group_discard(group, channel_name)
    except LayerUnavailable:
        # Pushes to a channel nobody reads are dropped; nothing else to undo.
        logger.warning("channel layer unavailable: %s left its groups late", channel_name)
    try:
        last = await _unregister(channel_name, user_id)
    except Exception:
        # The socket is going anyway; the heartbeat expiry cleans up after us.
        logger.exception("could not remove %s from the registry", channel_name)
        return
    if last:
        await best_effort(push.push_presence("offline", user_id, username))


@database_sync_to_async
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
