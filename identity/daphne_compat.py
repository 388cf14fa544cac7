"""Small patches to daphne (`manage.py runserver`), applied once when the app loads.

1. Close oversize frames with 1009 instead of dropping the TCP connection,
   and give a close frame 10 s to be answered, not 1 s.
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
4. Sends wait while Twisted has paused writing (see WriteGate).
5. Let the app close with 1011 (a server error): autobahn's `sendClose`
   refuses it, as every code outside 1000 and 3000-4999, and the socket
   stayed open. Daphne itself closes with 1011 after an app's exception, by
   the lower-level `sendCloseFrame` this uses too.
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from typing import Any, cast

from identity.protocol import CloseCode

# Autobahn resets the connection 1 s after its close frame unless the client
# answers; a client still reading what was queued before it needs longer
# (uvicorn waits 10 s).
CLOSE_HANDSHAKE_TIMEOUT = 10.0  # seconds

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
    patch_write_gate(ws_protocol.WebSocketProtocol)
    patch_server_error_close(ws_protocol.WebSocketProtocol)
    patch_header_deadline(http_protocol.HTTPFactory)
    ws_protocol.WebSocketFactory._identity_patched = True


def patch_websocket_factory(factory: Any) -> None:
    """Close frames before dropping (1); websocket.http.response (2); sends wait (4)."""
    original_init = factory.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.setProtocolOptions(failByDrop=False, closeHandshakeTimeout=CLOSE_HANDSHAKE_TIMEOUT)
        advertise_http_response(self.server_class)
        wait_for_the_transport(self.server_class)

    factory.__init__ = __init__


def advertise_http_response(server: Any) -> None:
    """Add `websocket.http.response` to the extensions of the daphne server's WebSocket scopes."""
    original_create = server.create_application

    def create_application(protocol: Any, scope: dict[str, Any]) -> Any:
        if scope.get("type") == "websocket":
            scope.setdefault("extensions", {})[HTTP_RESPONSE] = {}
        return original_create(protocol, scope)

    server.create_application = create_application


def wait_for_the_transport(server: Any) -> None:
    """The daphne server's replies to a socket wait while its transport is paused (4)."""
    original_reply = server.handle_reply

    async def handle_reply(protocol: Any, message: dict[str, Any]) -> None:
        gate = getattr(protocol, "identity_gate", None)
        if gate is not None and message.get("type") == "websocket.send":
            await gate.open.wait()
        await original_reply(protocol, message)

    server.handle_reply = handle_reply


class WriteGate:
    """A transport's flow control as an awaitable: open unless Twisted paused writing.

    While it is shut the connection is not read either (as Twisted's HTTP
    channel does, and uvicorn): a client that sends without reading would
    otherwise fill daphne's unbounded queue of incoming frames.
    """

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.open = asyncio.Event()
        self.open.set()

    # Twisted's IPushProducer
    def pauseProducing(self) -> None:
        self.open.clear()
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.open.set()
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.open.set()  # the connection is gone: let waiting sends through to fail


def patch_write_gate(protocol_class: Any) -> None:
    """Each open socket registers a WriteGate as its transport's producer (4)."""
    original_open = protocol_class.onOpen

    def onOpen(self: Any) -> None:
        original_open(self)
        # The HTTP channel that handed the connection over is still registered
        # as its producer; the socket takes its place.
        if getattr(self.transport, "producer", None) is not None:
            self.transport.unregisterProducer()
        self.identity_gate = WriteGate(self.transport)
        self.transport.registerProducer(self.identity_gate, True)

    protocol_class.onOpen = onOpen


def patch_server_error_close(protocol_class: Any) -> None:
    """`websocket.close` with 1011 sends that close frame (5)."""
    original_reply = protocol_class.handle_reply

    def handle_reply(self: Any, message: dict[str, Any]) -> None:
        code = message.get("code") if message.get("type") == "websocket.close" else None
        if code == CloseCode.SERVER_ERROR and self.state != self.STATE_CONNECTING:
            self.sendCloseFrame(code=int(code))  # a no-op once closing
        else:
            original_reply(self, message)

    protocol_class.handle_reply = handle_reply


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
        deadline: Any = cast(Any, reactor).callLater(timeout, expire, channel)
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
