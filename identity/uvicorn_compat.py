"""uvicorn's httptools protocol with a deadline and a size bound on request headers.

`manage.py serve` passes this class as `--http`. Plain uvicorn 0.54 has
neither: `--timeout-keep-alive` runs only between requests, and
`--h11-max-incomplete-event-size` applies to h11, not httptools, which
buffers a header of any size. Measured before this class: a connection that
sent half a request, or a 60 KB header, was held with no answer for as long
as the client liked (docs/deploy.md, "Limits and abuse").

Also WebSocketsSansIOProtocol (`--ws`), minus a false "ASGI callable returned
without completing handshake" error logged after every handshake the app
refused with an HTTP response (identity.guard's 429): one log line per
refused handshake would be a log flood under a connection flood. For the same
reason a text frame that is not UTF-8 (closed 1007) is one throttled line,
not a traceback each (any anonymous client can send them).

Now a request whose headers are not complete within IDENTITY_HANDSHAKE_TIMEOUT
gets 408, and one whose headers pass MAX_HEADER_BYTES (or a WebSocket
handshake with one header line past MAX_LINE_BYTES, which the websockets
library would refuse without answering) gets 431; both are closed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from identity import conf
from identity.logs import throttled

# As daphne (twisted): request line plus headers. Browsers send a few KiB.
MAX_HEADER_BYTES = 16384
# The websockets library's limit on one line of the handshake (MAX_LINE_LENGTH).
MAX_LINE_BYTES = 8192


class HeadersTooLarge(Exception):
    """Raised from a parser callback: httptools turns it into HttpParserCallbackError."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol answering slow (408) and oversized (431) request headers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reading_headers = False
        self.header_timer: asyncio.TimerHandle | None = None
        self.header_bytes = self.parsed_bytes = 0
        self.long_line = self.oversize = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.start_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self.stop_headers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        reading_headers = self.reading_headers
        if reading_headers:
            self.header_bytes += len(data)
        super().data_received(data)
        # A header block arriving slowly in pieces: httptools keeps every piece.
        if reading_headers and self.reading_headers and self.header_bytes > MAX_HEADER_BYTES:
            self.refuse(431, "Request header fields too large.")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self.reading_headers:  # a later request on a kept-alive connection
            self.start_headers()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self.count_parsed(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        if len(name) + len(value) + 4 > MAX_LINE_BYTES:
            self.long_line = True
        self.count_parsed(len(name) + len(value) + 4)

    def count_parsed(self, size: int) -> None:
        # Headers that arrived in one read are parsed before data_received can
        # look: stop the parser here (uvicorn answers its error with 400, made 431).
        self.parsed_bytes += size
        if self.parsed_bytes > MAX_HEADER_BYTES:
            self.oversize = True
            raise HeadersTooLarge()

    def send_400_response(self, msg: str) -> None:
        if self.oversize:
            self.refuse(431, "Request header fields too large.")
        else:
            super().send_400_response(msg)

    def on_headers_complete(self) -> None:
        self.stop_headers()
        super().on_headers_complete()

    def handle_websocket_upgrade(self) -> None:
        if self.long_line:
            self.refuse(431, "A request header line is too long for a WebSocket handshake.")
            return
        super().handle_websocket_upgrade()

    def start_headers(self) -> None:
        self.reading_headers = True
        self.header_bytes = self.parsed_bytes = 0
        self.long_line = self.oversize = False
        timeout = conf.handshake_timeout()
        if timeout > 0:
            self.header_timer = self.loop.call_later(timeout, self.headers_timed_out)

    def stop_headers(self) -> None:
        self.reading_headers = False
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def headers_timed_out(self) -> None:
        self.header_timer = None
        self.refuse(408, "The request headers took too long.")

    def refuse(self, status: int, message: str) -> None:
        """Answer `status` with a short text body and close the connection."""
        self.stop_headers()
        if self.transport.is_closing():
            return
        body = message.encode()
        self.transport.write(
            STATUS_LINE[status]
            + b"content-type: text/plain; charset=utf-8\r\n"
            + b"content-length: "
            + str(len(body)).encode()
            + b"\r\nconnection: close\r\n\r\n"
            + body
        )
        self.transport.close()


class QuietWebSocketProtocol(WebSocketsSansIOProtocol):
    """websockets-sansio, without log lines a client can provoke at will."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.logger = OneLineInvalidText(self.logger)  # type: ignore[assignment]  # a Logger's duck

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.http.response.body" and not message.get("more_body"):
            self.handshake_complete = True


class OneLineInvalidText:
    """uvicorn's logger, with its traceback per non-UTF-8 text frame made one throttled line."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger

    def exception(self, message: str, *args: Any, **kwargs: Any) -> None:
        if message.startswith("Invalid UTF-8"):
            throttled(self.logger, "invalid-utf8", "a text frame was not UTF-8: closed 1007")
        else:
            self.logger.exception(message, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.logger, name)
