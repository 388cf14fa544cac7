"""The server-side API: reach or disconnect a user's sockets from any Django code.

Views, signals, the admin, management commands and the shell call these; they
work across every server process that shares the channel layer. Each function
has an async form and a sync form (suffix `_sync`) for sync code.

    from identity import push
    push.send_to_user_sync(user.pk, "direct", {"from": ..., "text": "hi"})
    closed = push.disconnect_user_sync(user.pk, push.Reason.KICKED)
    for entry in push.online_users_sync(): print(entry.username, entry.connections)
"""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import InMemoryChannelLayer, get_channel_layer

from identity import registry
from identity.protocol import Action, Reason, frame, user_payload

__all__ = [
    "DISCONNECT_EVENT",
    "PRESENCE_EVENT",
    "PRESENCE_GROUP",
    "PUSH_EVENT",
    "LayerUnreachable",
    "Reason",
    "disconnect_connection",
    "disconnect_user",
    "online_users",
    "push_presence",
    "send_to_user",
    "user_group",
]

logger = logging.getLogger(__name__)

# Channel-layer event types; the consumer's handlers are named after them
# (`identity.disconnect` -> `identity_disconnect`).
DISCONNECT_EVENT = "identity.disconnect"
# A socket's answer to a withdrawal that named a `reply_to` channel.
WITHDRAWN_EVENT = "identity.withdrawn"
PUSH_EVENT = "identity.push"
PRESENCE_EVENT = "identity.presence"

PRESENCE_GROUP = "identity.presence"


def user_group(user_id: int) -> str:
    """The channel-layer group holding every authenticated socket of a user."""
    return f"identity.user.{user_id}"


class LayerUnreachable(Exception):
    """The sockets live in another process that this channel layer cannot reach."""


def _layer() -> Any:
    return get_channel_layer()


def _check_reachable(connections: list[Any]) -> None:
    # The in-memory layer lives inside one process: from any other (a
    # management command, a shell) its sockets cannot be reached at all.
    if not isinstance(_layer(), InMemoryChannelLayer):
        return
    foreign = [c for c in connections if c.server_id != registry.SERVER_ID]
    if foreign:
        raise LayerUnreachable(
            f"{len(foreign)} socket(s) are held by another server process, which the "
            "in-memory channel layer cannot reach; set REDIS_URL so every process "
            "shares one channel layer."
        )


async def send_to_user(user_id: int, action: str, payload: Any) -> None:
    """Push a frame to every open socket of a user, on every process."""
    await _layer().group_send(
        user_group(user_id), {"type": PUSH_EVENT, "frame": frame(action, payload)}
    )


async def disconnect_user(user_id: int, reason: Reason) -> int:
    """Close every socket of a user with `disconnect` REASON; the number of sockets."""
    connections = await database_sync_to_async(registry.user_connections)(user_id)
    _check_reachable(connections)
    await _layer().group_send(
        user_group(user_id), {"type": DISCONNECT_EVENT, "reason": str(reason)}
    )
    return len(connections)


async def disconnect_connection(channel_name: str, reason: Reason) -> None:
    """Close one socket, named by its channel, with `disconnect` REASON."""
    await _layer().send(channel_name, {"type": DISCONNECT_EVENT, "reason": str(reason)})


async def online_users() -> list[registry.OnlineUser]:
    """Who is online now, across every process."""
    return await database_sync_to_async(registry.online_users)()


async def push_presence(event: str, user_id: int, username: str) -> None:
    """Tell the sockets that asked `presence` that a user came or went."""
    payload = {"event": event, "user": user_payload(user_id, username)}
    await _layer().group_send(
        PRESENCE_GROUP, {"type": PRESENCE_EVENT, "frame": frame(Action.PRESENCE, payload)}
    )


def connection_is_local(channel_name: str) -> bool:
    """Whether a socket can be reached from this process."""
    if not isinstance(_layer(), InMemoryChannelLayer):
        return True
    return registry.Connection.objects.filter(
        channel_name=channel_name, server_id=registry.SERVER_ID
    ).exists()


send_to_user_sync = async_to_sync(send_to_user)
disconnect_user_sync = async_to_sync(disconnect_user)
disconnect_connection_sync = async_to_sync(disconnect_connection)
online_users_sync = registry.online_users
push_presence_sync = async_to_sync(push_presence)
