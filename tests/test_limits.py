"""Auth timeout, attempt limit, frame limit and rate limit (PROTOCOL.md rules 4-7)."""

from __future__ import annotations

import pytest

from tests.conftest import access_for

pytestmark = pytest.mark.django_db(transaction=True)


async def test_an_anonymous_socket_is_closed_4401_after_the_auth_timeout(connect, settings):
    settings.IDENTITY_AUTH_TIMEOUT = 0.2
    client = await connect()
    push = await client.receive()
    assert push == {
        "action": "disconnect",
        "payload": {"reason": "auth_timeout", "reconnect": True},
    }
    assert await client.receive_close() == 4401


async def test_an_authenticated_socket_outlives_the_auth_timeout(alice, connect, settings):
    settings.IDENTITY_AUTH_TIMEOUT = 0.2
    client = await connect(access_for(alice))
    assert await client.communicator.receive_nothing(timeout=0.5)
    assert (await client.request("ping", 1))["action"] == "pong"


async def test_the_auth_timeout_starts_over_after_logout(alice, connect, settings):
    settings.IDENTITY_AUTH_TIMEOUT = 0.3
    client = await connect(access_for(alice))
    await client.request("logout")
    assert (await client.receive())["payload"]["reason"] == "auth_timeout"
    assert await client.receive_close() == 4401


async def test_the_failure_that_reaches_the_attempt_limit_closes_4429(alice, connect, settings):
    settings.IDENTITY_MAX_AUTH_ATTEMPTS = 3
    client = await connect()
    for _ in range(2):
        assert (await client.auth("nope"))["registered"] is False
    assert (await client.auth("nope"))["error"]["code"] == "token_invalid"
    assert await client.receive() == {
        "action": "disconnect",
        "payload": {"reason": "too_many_attempts", "reconnect": False},
    }
    assert await client.receive_close() == 4429


async def test_a_successful_auth_resets_the_attempt_count(alice, connect, settings):
    settings.IDENTITY_MAX_AUTH_ATTEMPTS = 2
    client = await connect()
    assert (await client.auth("nope"))["registered"] is False
    assert (await client.auth(access_for(alice)))["registered"] is True
    assert (await client.auth("nope"))["registered"] is False
    assert (await client.request("whoami"))["payload"]["user"]["username"] == "alice"


async def test_a_frame_of_exactly_the_limit_is_accepted(connect, settings, transactional_db):
    settings.IDENTITY_MAX_FRAME_BYTES = 2048
    client = await connect()
    head = '{"action":"ping","payload":"'
    body = "é" * ((2048 - len(head) - 2) // 2)  # two UTF-8 bytes each
    text = head + body + '"}'
    assert len(text.encode()) == 2048
    await client.send_text(text)
    assert (await client.receive())["action"] == "pong"


async def test_a_frame_over_the_limit_closes_1009_without_a_push(
    connect, settings, transactional_db
):
    settings.IDENTITY_MAX_FRAME_BYTES = 2048
    client = await connect()
    head = '{"action":"ping","payload":"'
    text = head + "é" * ((2048 - len(head) - 2) // 2) + 'x"}'  # 2049 bytes, 1 < 2048 chars
    assert len(text.encode()) == 2049
    await client.send_text(text)
    assert await client.receive_close() == 1009


async def test_frames_past_the_burst_are_rate_limited(alice, connect, settings):
    settings.IDENTITY_RATE_LIMIT = 0.001  # practically no refill during the test
    settings.IDENTITY_RATE_BURST = 3
    client = await connect()
    for n in range(3):
        assert (await client.request("ping", n))["action"] == "pong"
    refused = await client.request("ping", 3, ref="late")
    assert refused["payload"]["code"] == "rate_limited"
    # Not processed, but answered as the frame it was: a pending request must not hang.
    assert (refused["ref"], refused["payload"]["action"]) == ("late", "ping")


async def test_sustained_flooding_closes_4429(connect, settings, transactional_db):
    settings.IDENTITY_RATE_LIMIT = 0.001
    settings.IDENTITY_RATE_BURST = 2
    client = await connect()
    for _ in range(2):
        await client.send("ping")
    # 2 answered, then refusals 1..3: the third refusal (> burst) closes.
    for _ in range(5):
        await client.send("ping")
    replies = [await client.receive() for _ in range(6)]
    assert [r["action"] for r in replies[:2]] == ["pong", "pong"]
    assert [r["payload"]["code"] for r in replies[2:5]] == ["rate_limited"] * 3
    assert replies[5] == {
        "action": "disconnect",
        "payload": {"reason": "rate_limited", "reconnect": False},
    }
    assert await client.receive_close() == 4429


async def test_rate_limit_zero_turns_the_limit_off(connect, settings, transactional_db):
    settings.IDENTITY_RATE_LIMIT = 0
    settings.IDENTITY_RATE_BURST = 1
    client = await connect()
    for n in range(20):
        await client.send("ping", n)
    assert [(await client.receive())["payload"] for _ in range(20)] == list(range(20))


async def test_a_flooding_socket_does_not_slow_another(alice, bob, connect, settings):
    settings.IDENTITY_RATE_LIMIT = 0.001
    settings.IDENTITY_RATE_BURST = 2
    flooder = await connect()
    calm = await connect()
    for _ in range(6):
        await flooder.send("ping")
    assert (await calm.request("ping", "ok"))["payload"] == "ok"


async def test_rate_burst_zero_also_turns_the_limit_off(connect, settings, transactional_db):
    settings.IDENTITY_RATE_LIMIT = 30
    settings.IDENTITY_RATE_BURST = 0
    client = await connect()
    for n in range(5):
        assert (await client.request("ping", n))["payload"] == n
