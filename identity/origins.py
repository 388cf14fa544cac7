"""The WebSocket Origin rule (PROTOCOL.md, precise rule 12).

Channels' AllowedHostsOriginValidator refuses a handshake with no Origin, but
native apps and scripts send none and identify by token, so they must pass.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import validate_host

from identity import conf, metrics

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def split_origin(origin: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port or DEFAULT_PORTS[scheme]


def origin_allowed(origin: str) -> bool:
    """Whether a browser Origin may open a socket; `null` and garbage may not."""
    parsed = split_origin(origin)
    if parsed is None:
        return False
    exact = conf.allowed_origins()
    if exact:
        return parsed in {split_origin(entry) for entry in exact}
    scheme, host, _ = parsed
    return scheme in ("http", "https") and validate_host(host, settings.ALLOWED_HOSTS)


def _origin_header(scope: dict[str, Any]) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"origin":
            return value.decode("latin-1")
    return None


class OriginValidator:
    """ASGI middleware: refuse a WebSocket handshake from a foreign Origin (HTTP 403)."""

    def __init__(self, application: Any) -> None:
        self.application = application

    def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Awaitable[Any]:
        # Returns the inner app's coroutine rather than awaiting it: no frame of
        # ours stays suspended for the life of each socket.
        if scope["type"] == "websocket":
            origin = _origin_header(scope)
            if origin is not None and not origin_allowed(origin):
                metrics.CONNECTS.inc(metrics.ORIGIN_REFUSED)
                return WebsocketDenier()(scope, receive, send)
        return self.application(scope, receive, send)
