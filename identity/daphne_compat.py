"""Make daphne behave like the other servers where the protocol depends on it.

1. Oversize frames close with 1009 instead of dropping the TCP connection,
   and a close frame is not cut off a second after it was sent.
   Daphne enforces the frame limit through autobahn (an ASGI app cannot send
   1009 through daphne: autobahn refuses close codes outside 1000 and
   3000-4999). Autobahn's default `failByDrop=True` then cuts the TCP
   connection without a close frame, and the client sees 1006 instead of the
   1009 PROTOCOL.md promises.
2. A client that does not read holds up the application's sends, as under
   uvicorn, instead of daphne buffering every frame in memory without bound.
   Daphne's `send` never waits: each frame goes into Twisted's write buffer.
   Here each socket registers itself as a streaming producer on its transport
   (Twisted's flow control: paused past 64 KiB unsent, resumed once it drains),
   and a `websocket.send` waits while the transport is paused (and reading
   pauses with it). The consumer's
   bound on waiting pushes (and its `slow_reader` close) then holds here too.
"""

from __future__ import annotations

import asyncio
from typing import Any

CLOSE_HANDSHAKE_TIMEOUT = 10.0  # seconds


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


def patch_daphne() -> None:
    """Close frames before dropping a failed connection; sends wait on a full transport."""
    try:
        from daphne.server import Server
        from daphne.ws_protocol import WebSocketFactory, WebSocketProtocol
    except ImportError:  # not running under daphne
        return
    if getattr(WebSocketFactory, "_identity_patched", False):
        return
    original_init = WebSocketFactory.__init__
    original_open = WebSocketProtocol.onOpen
    original_reply = Server.handle_reply

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        # Autobahn resets the connection 1 s after its close frame unless the
        # client answers; a client still reading what was queued before it
        # needs longer (uvicorn waits 10 s).
        self.setProtocolOptions(failByDrop=False, closeHandshakeTimeout=CLOSE_HANDSHAKE_TIMEOUT)

    def onOpen(self: Any) -> None:
        original_open(self)
        # The HTTP channel that handed the connection over is still registered
        # as its producer; the socket takes its place.
        if getattr(self.transport, "producer", None) is not None:
            self.transport.unregisterProducer()
        self.identity_gate = WriteGate(self.transport)
        self.transport.registerProducer(self.identity_gate, True)

    async def handle_reply(self: Any, protocol: Any, message: dict[str, Any]) -> None:
        gate = getattr(protocol, "identity_gate", None)
        if gate is not None and message.get("type") == "websocket.send":
            await gate.open.wait()
        await original_reply(self, protocol, message)

    WebSocketFactory.__init__ = __init__
    WebSocketProtocol.onOpen = onOpen
    Server.handle_reply = handle_reply
    WebSocketFactory._identity_patched = True
