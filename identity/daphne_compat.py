"""Make daphne close oversize frames with 1009 instead of dropping the TCP connection.

Daphne enforces the frame limit through autobahn (an ASGI app cannot send
1009 through daphne: autobahn refuses close codes outside 1000 and 3000-4999).
Autobahn's default `failByDrop=True` then cuts the TCP connection without a
close frame, and the client sees 1006 instead of the 1009 PROTOCOL.md promises.
"""

from __future__ import annotations

from typing import Any


def patch_daphne() -> None:
    """Send a close frame (1009, 1002, ...) before dropping a failed connection."""
    try:
        from daphne.ws_protocol import WebSocketFactory
    except ImportError:  # not running under daphne
        return
    if getattr(WebSocketFactory, "_identity_patched", False):
        return
    original_init = WebSocketFactory.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.setProtocolOptions(failByDrop=False)

    WebSocketFactory.__init__ = __init__
    WebSocketFactory._identity_patched = True
