"""Which WebSocket path exists: `/ws/` (PROTOCOL.md); any other is refused (403).

A function, not Channels' URLRouter: with one fixed path there is nothing to
resolve, and URLRouter would keep a copy of the scope and a suspended frame
for the whole life of every socket. It returns the consumer's coroutine
instead of awaiting it, for the same reason: nothing per socket outlives the
handshake here (docs/performance.md has the measurement).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from channels.security.websocket import WebsocketDenier

from identity.consumers import IdentityConsumer

WEBSOCKET_PATH = "/ws/"


def websocket_path(scope: dict[str, Any]) -> str:
    """The path below the mount point (`root_path`), as URLRouter would match it."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def websocket_application(scope: dict[str, Any], receive: Any, send: Any) -> Awaitable[None]:
    """ASGI app for WebSocket scopes: the identity consumer on /ws/, a 403 elsewhere."""
    if websocket_path(scope) == WEBSOCKET_PATH:
        return IdentityConsumer()(scope, receive, send)
    return WebsocketDenier()(scope, receive, send)
