"""identity.guard alone: the counts, however a socket ends, and the buckets."""

from __future__ import annotations

import asyncio

import pytest

from identity import guard
from identity.guard import Guard, address_key


def scope(host: str = "192.0.2.1") -> dict:
    return {"type": "websocket", "client": (host, 5000), "extensions": {}}


async def no_message():
    await asyncio.Event().wait()


async def test_a_socket_counts_while_its_app_runs_however_it_ends(settings):
    settings.IDENTITY_MAX_ANONYMOUS_PER_ADDRESS = 10
    started, release = asyncio.Event(), asyncio.Event()

    async def app(scope, receive, send):
        started.set()
        await release.wait()
        raise RuntimeError("boom")

    middleware = Guard(app)
    for end in ("error", "cancel"):
        started.clear()
        release.clear()
        task = asyncio.ensure_future(middleware(scope(), no_message, None))
        await started.wait()
        assert middleware.anonymous["192.0.2.1"] == 1
        if end == "cancel":
            task.cancel()
        else:
            release.set()
        with pytest.raises((RuntimeError, asyncio.CancelledError)):
            await task
        assert middleware.anonymous == {}


async def test_authenticated_stops_counting_and_a_late_anonymous_never_leaks(settings):
    settings.IDENTITY_MAX_ANONYMOUS_PER_ADDRESS = 10
    seen = {}

    async def app(scope, receive, send):
        seen.update(scope)
        guard.authenticated(scope)
        assert middleware.anonymous == {}
        guard.anonymous(scope)  # logout
        assert middleware.anonymous["192.0.2.1"] == 1

    middleware = Guard(app)
    await middleware(scope(), no_message, None)
    assert middleware.anonymous == {}
    guard.anonymous(seen)  # a consumer task running after the socket ended
    assert middleware.anonymous == {}


async def test_a_refused_handshake_is_429_where_the_server_can_say_so(settings):
    settings.IDENTITY_MAX_ANONYMOUS_PER_ADDRESS = 0
    settings.IDENTITY_HANDSHAKE_RATE, settings.IDENTITY_HANDSHAKE_BURST = 1, 1
    sent = []

    async def send(message):
        sent.append(message)

    async def connect():
        return {"type": "websocket.connect"}

    async def app(scope, receive, send):
        pass

    middleware = Guard(app)
    await middleware(scope(), connect, send)
    await middleware({**scope(), "extensions": {"websocket.http.response": {}}}, connect, send)
    await middleware(scope(), connect, send)
    assert [m["type"] for m in sent] == [
        "websocket.http.response.start",
        "websocket.http.response.body",
        "websocket.close",
    ]
    assert sent[0]["status"] == 429
    assert (b"retry-after", b"1") in sent[0]["headers"]


def test_full_buckets_are_forgotten(settings, monkeypatch):
    monkeypatch.setattr(guard, "PRUNE_EVERY", 3)
    settings.IDENTITY_HANDSHAKE_RATE, settings.IDENTITY_HANDSHAKE_BURST = 1000, 2
    middleware = Guard(None)
    for n in range(7):
        assert middleware.check(f"10.0.0.{n}") == (None, 0)
    assert len(middleware.buckets) < 7


def test_ipv6_clients_count_per_64():
    assert address_key(scope("2001:db8::1")) == address_key(scope("2001:db8::ffff:1"))
    assert address_key(scope("2001:db8:0:1::1")) != address_key(scope("2001:db8::1"))
    assert address_key({"client": None}) == ""
