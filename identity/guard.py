"""Per-address limits at the WebSocket handshake: anonymous sockets and handshake rate.

An anonymous socket costs the server memory and a deadline until it
authenticates or its auth timeout closes it; one address could otherwise hold
thousands (docs/deploy.md, "Limits and abuse"). So, per client address, in each
server process:

- at most IDENTITY_MAX_ANONYMOUS_PER_ADDRESS sockets without an identity
  (a handshake in progress counts; `auth` stops it counting; `logout` or an
  expired token makes it count again);
- at most IDENTITY_HANDSHAKE_RATE handshakes per second, IDENTITY_HANDSHAKE_BURST
  at once (a token bucket).

A refused handshake gets HTTP 429 with Retry-After and a JSON body
`{"code", "message"}` where the server can send an HTTP response to a
WebSocket handshake (ASGI's `websocket.http.response`: uvicorn; daphne through
identity.daphne_compat); elsewhere a close before accept (HTTP 403). It is
never accepted, so the protocol's close codes keep their meanings.

IPv6 clients are counted per /64: one host usually holds a whole /64.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import Counter
from typing import Any

import orjson

from identity import conf, metrics
from identity.protocol import Refusal

SCOPE_KEY = "identity.guard"
HTTP_RESPONSE = "websocket.http.response"
PRUNE_EVERY = 1024  # new addresses between sweeps of full (forgotten) buckets

REFUSAL_MESSAGES: dict[Refusal, str] = {
    Refusal.TOO_MANY_ANONYMOUS: (
        "Too many sockets from your address have not authenticated yet; "
        "retry after Retry-After seconds and send `auth` as the first frame."
    ),
    Refusal.HANDSHAKE_RATE: (
        "Too many connections from your address; retry after Retry-After seconds."
    ),
}


def address_key(scope: dict[str, Any]) -> str:
    """The address a socket is counted against: the client IP, or its /64 for IPv6."""
    client = scope.get("client") or ("", 0)
    host = str(client[0] or "")
    if ":" not in host:
        return host
    try:
        return str(ipaddress.IPv6Network((host, 64), strict=False))
    except ValueError:
        return host


class Bucket:
    """Handshakes an address may start: `burst` at once, refilled at `rate` per second."""

    __slots__ = ("stamp", "tokens")

    def __init__(self, burst: float, now: float) -> None:
        self.tokens, self.stamp = burst, now

    def refill(self, rate: float, burst: float, now: float) -> None:
        self.tokens = min(burst, self.tokens + (now - self.stamp) * rate)
        self.stamp = now


class Ticket:
    """One socket's place in its address's anonymous count (`scope["identity.guard"]`)."""

    __slots__ = ("counted", "ended", "guard", "key")

    def __init__(self, guard: Guard, key: str) -> None:
        self.guard, self.key = guard, key
        self.counted, self.ended = True, False

    def authenticated(self) -> None:
        """The socket has an identity: it stops counting."""
        if self.counted:
            self.counted = False
            self.guard.release(self.key)

    def anonymous(self) -> None:
        """The socket lost its identity (logout, expiry, withdrawal): it counts again."""
        # A task of the consumer may still run after the socket ended: never count it then.
        if not self.counted and not self.ended:
            self.counted = True
            self.guard.anonymous[self.key] += 1

    def end(self) -> None:
        """The socket is gone, however it ended."""
        self.ended = True
        self.authenticated()


class Guard:
    """ASGI middleware enforcing the per-address limits on WebSocket scopes.

    The counts belong to this process: with several workers each enforces its own.
    """

    def __init__(self, application: Any) -> None:
        self.application = application
        self.anonymous: Counter[str] = Counter()
        self.buckets: dict[str, Bucket] = {}
        self.new_buckets = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            await self.application(scope, receive, send)
            return
        key = address_key(scope)
        refusal, retry_after = self.check(key)
        if refusal is not None:
            metrics.refused(refusal)
            await refuse(scope, receive, send, refusal, retry_after)
            return
        ticket = scope[SCOPE_KEY] = Ticket(self, key)
        self.anonymous[key] += 1
        try:
            await self.application(scope, receive, send)
        finally:
            # However the socket ended (close, reset, error, cancellation).
            ticket.end()

    def check(self, key: str) -> tuple[Refusal | None, int]:
        """Why a new handshake from `key` is refused (None: it is not), and Retry-After."""
        cap = conf.max_anonymous_per_address()
        if cap > 0 and self.anonymous[key] >= cap:
            return Refusal.TOO_MANY_ANONYMOUS, 1
        return self.take(key)

    def take(self, key: str) -> tuple[Refusal | None, int]:
        rate, burst = conf.handshake_rate(), conf.handshake_burst()
        if rate <= 0 or burst <= 0:
            return None, 0
        now = time.monotonic()
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = Bucket(burst, now)
            self.new_buckets += 1
            if self.new_buckets >= PRUNE_EVERY:
                self.prune(rate, burst, now)
        bucket.refill(rate, burst, now)
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return None, 0
        return Refusal.HANDSHAKE_RATE, max(1, math.ceil((1 - bucket.tokens) / rate))

    def prune(self, rate: float, burst: float, now: float) -> None:
        """Forget addresses whose bucket has refilled: a new one would be the same."""
        self.new_buckets = 0
        for key, bucket in list(self.buckets.items()):
            if bucket.tokens + (now - bucket.stamp) * rate >= burst:
                del self.buckets[key]

    def release(self, key: str) -> None:
        self.anonymous[key] -= 1
        if self.anonymous[key] <= 0:
            del self.anonymous[key]  # no entry per address that ever connected


async def refuse(
    scope: dict[str, Any], receive: Any, send: Any, refusal: Refusal, retry_after: int
) -> None:
    """Refuse the handshake: 429 where the server can say so, else a close before accept."""
    await receive()  # websocket.connect
    if HTTP_RESPONSE not in scope.get("extensions", {}):
        await send({"type": "websocket.close"})
        return
    body = orjson.dumps({"code": refusal, "message": REFUSAL_MESSAGES[refusal]})
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(retry_after).encode()),
    ]
    await send({"type": "websocket.http.response.start", "status": 429, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": body})


def authenticated(scope: dict[str, Any]) -> None:
    """Consumer hook: the socket has an identity (no-op without the Guard)."""
    ticket = scope.get(SCOPE_KEY)
    if ticket is not None:
        ticket.authenticated()


def anonymous(scope: dict[str, Any]) -> None:
    """Consumer hook: the socket has no identity any more (no-op without the Guard)."""
    ticket = scope.get(SCOPE_KEY)
    if ticket is not None:
        ticket.anonymous()
