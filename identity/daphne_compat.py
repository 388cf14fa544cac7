"""Small patches to daphne (`manage.py runserver`), applied once when the app loads.

1. Close oversize frames with 1009 instead of dropping the TCP connection.
   Daphne enforces the frame limit through autobahn (an ASGI app cannot send
   1009 through daphne: autobahn refuses close codes outside 1000 and
   3000-4999). Autobahn's default `failByDrop=True` then cuts the TCP
   connection without a close frame, and the client sees 1006 instead of the
   1009 PROTOCOL.md promises.
2. Let the app refuse a handshake with an HTTP status (ASGI's
   `websocket.http.response`, which uvicorn has and daphne lacks): daphne
   only knows "close before accept", always a 403, and 403 already means a
   refused Origin or path. Autobahn writes the status line; the app's headers
   and body are dropped.
3. A deadline on the request headers: twisted only drops a connection idle
   for 60 s, so a client sending a byte every minute held a socket forever.
   A connection that has not sent its first request's headers within
   IDENTITY_HANDSHAKE_TIMEOUT gets 408 and is closed. (Header size is bounded
   by twisted itself: 16 KiB, then 400 or a dropped connection.)
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

HTTP_RESPONSE = "websocket.http.response"
TIMEOUT_RESPONSE = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


def patch_daphne() -> None:
    """Apply the patches above (once; a no-op where daphne is not installed)."""
    # Not daphne.server: importing it installs twisted's reactor, which must not
    # happen here (uvicorn loads this app too) nor before daphne chooses it.
    try:
        from daphne import http_protocol, ws_protocol
    except ImportError:  # not running under daphne
        return
    if getattr(ws_protocol.WebSocketFactory, "_identity_patched", False):
        return
    patch_websocket_factory(ws_protocol.WebSocketFactory)
    patch_http_response(ws_protocol.WebSocketProtocol)
    patch_header_deadline(http_protocol.HTTPFactory)
    ws_protocol.WebSocketFactory._identity_patched = True


def patch_websocket_factory(factory: Any) -> None:
    """Close frames before dropping (1); the server advertises websocket.http.response (2)."""
    original_init = factory.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.setProtocolOptions(failByDrop=False)
        advertise_http_response(self.server_class)

    factory.__init__ = __init__


def advertise_http_response(server: Any) -> None:
    """Add `websocket.http.response` to the extensions of the daphne server's WebSocket scopes."""
    original_create = server.create_application

    def create_application(protocol: Any, scope: dict[str, Any]) -> Any:
        if scope.get("type") == "websocket":
            scope.setdefault("extensions", {})[HTTP_RESPONSE] = {}
        return original_create(protocol, scope)

    server.create_application = create_application


def patch_http_response(protocol_class: Any) -> None:
    """Turn `websocket.http.response` into autobahn's ConnectionDeny with that status."""
    from autobahn.websocket.types import ConnectionDeny

    original_reply = protocol_class.handle_reply

    def handle_reply(self: Any, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == HTTP_RESPONSE + ".start" and self.state == self.STATE_CONNECTING:
            self.identity_status = message["status"]
        elif kind == HTTP_RESPONSE + ".body":
            status = getattr(self, "identity_status", None)
            if status is not None and not message.get("more_body"):
                deny(self, ConnectionDeny(code=status, reason=HTTPStatus(status).phrase))
        else:
            original_reply(self, message)

    protocol_class.handle_reply = handle_reply


def deny(protocol: Any, denial: Exception) -> None:
    """Daphne's serverReject, with the app's status instead of 403."""
    protocol.identity_status = None
    protocol.handshake_deferred.errback(denial)
    del protocol.handshake_deferred
    protocol.server.protocol_disconnected(protocol)


def patch_header_deadline(factory: Any) -> None:
    """408 and close when the first request's headers are not in within the timeout."""
    from identity import conf

    original_build = factory.buildProtocol

    def buildProtocol(self: Any, addr: Any) -> Any:
        from twisted.internet import reactor  # daphne's, installed by now

        protocol = original_build(self, addr)
        timeout = conf.handshake_timeout()
        if protocol is None or timeout <= 0:
            return protocol
        # Twisted wraps the HTTPChannel to negotiate HTTP/2 over TLS.
        channel = getattr(protocol, "_channel", protocol)
        deadline = reactor.callLater(timeout, expire, channel)
        original_headers = channel.allHeadersReceived
        original_lost = channel.connectionLost

        def allHeadersReceived() -> None:
            if deadline.active():
                deadline.cancel()
            original_headers()

        def connectionLost(reason: Any) -> None:
            if deadline.active():
                deadline.cancel()
            original_lost(reason)

        channel.allHeadersReceived, channel.connectionLost = allHeadersReceived, connectionLost
        return protocol

    factory.buildProtocol = buildProtocol


def expire(channel: Any) -> None:
    transport = channel.transport
    if transport is not None and not getattr(transport, "disconnecting", False):
        transport.write(TIMEOUT_RESPONSE)
        transport.loseConnection()
