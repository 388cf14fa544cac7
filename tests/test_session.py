"""Token expiry on an open socket: `session` pushes (PROTOCOL.md rule 2)."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from rest_framework_simplejwt.tokens import AccessToken

from tests.conftest import access_for

pytestmark = pytest.mark.django_db(transaction=True)


async def test_expiring_is_pushed_right_after_auth_when_little_time_is_left(
    alice, connect, settings
):
    settings.IDENTITY_EXPIRY_NOTICE = 30
    token = access_for(alice, lifetime=timedelta(seconds=20))
    client = await connect()
    assert (await client.auth(token))["registered"] is True
    assert await client.receive() == {
        "action": "session",
        "payload": {"event": "expiring", "expires_at": AccessToken(token)["exp"]},
    }


async def test_expiring_is_pushed_before_exp(alice, connect, settings):
    settings.IDENTITY_EXPIRY_NOTICE = 1
    token = access_for(alice, lifetime=timedelta(seconds=2))
    client = await connect()
    await client.auth(token)
    push = await client.receive(timeout=3)
    assert push["payload"]["event"] == "expiring"
    assert time.time() < AccessToken(token)["exp"]


async def test_at_exp_the_socket_turns_anonymous(alice, connect, settings):
    settings.IDENTITY_EXPIRY_NOTICE = 0.5
    token = access_for(alice, lifetime=timedelta(seconds=1))
    exp = AccessToken(token)["exp"]
    client = await connect(token)
    assert (await client.receive(timeout=3))["payload"]["event"] == "expiring"
    assert await client.receive(timeout=3) == {"action": "session", "payload": {"event": "expired"}}
    assert time.time() >= exp
    assert (await client.request("whoami"))["payload"] == {"user": None, "expires_at": None}


async def test_after_expiry_the_auth_timeout_starts_over(alice, connect, settings):
    settings.IDENTITY_EXPIRY_NOTICE = 0
    settings.IDENTITY_AUTH_TIMEOUT = 0.3
    client = await connect(access_for(alice, lifetime=timedelta(seconds=1)))
    assert (await client.receive(timeout=3))["payload"]["event"] == "expired"
    assert (await client.receive())["payload"]["reason"] == "auth_timeout"
    assert await client.receive_close() == 4401


async def test_reauth_before_exp_keeps_the_socket_authenticated(alice, connect, settings):
    settings.IDENTITY_EXPIRY_NOTICE = 0.8
    client = await connect(access_for(alice, lifetime=timedelta(seconds=1)))
    assert (await client.receive(timeout=3))["payload"]["event"] == "expiring"
    fresh = access_for(alice, lifetime=timedelta(seconds=60))
    assert (await client.auth(fresh))["expires_at"] == AccessToken(fresh)["exp"]
    assert await client.communicator.receive_nothing(timeout=1.5)
    assert (await client.request("whoami"))["payload"]["user"]["username"] == "alice"
