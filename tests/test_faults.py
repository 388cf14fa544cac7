"""A database that fails mid-request is a clear error on that socket, never a 1011."""

from __future__ import annotations

import pytest
from django.db import OperationalError

from identity import sessions, tokens
from tests.conftest import access_for

pytestmark = pytest.mark.django_db(transaction=True)


def failing(*args, **kwargs):
    raise OperationalError("database is down")


async def async_failing(*args, **kwargs):
    raise OperationalError("database is down")


async def test_auth_while_the_database_fails_is_service_unavailable(alice, connect, monkeypatch):
    client = await connect()
    monkeypatch.setattr(tokens, "load_user", failing)
    reply = await client.auth(access_for(alice))
    assert reply["registered"] is False
    assert reply["error"]["code"] == "service_unavailable"
    monkeypatch.undo()
    assert (await client.auth(access_for(alice)))["registered"] is True


async def test_send_while_the_database_fails_is_service_unavailable(
    alice, bob, connect, monkeypatch
):
    client = await connect(access_for(alice))
    monkeypatch.setattr(sessions, "find_recipient", async_failing)
    reply = await client.request("send", {"to": "bob", "text": "x"}, ref=4)
    assert reply["payload"]["code"] == "service_unavailable"
    assert "channel layer" not in reply["payload"]["message"]  # Redis is not what failed
    assert reply["ref"] == 4
    assert (await client.request("ping", 1))["action"] == "pong"


async def test_failed_auths_for_the_servers_sake_do_not_count(
    alice, connect, monkeypatch, settings
):
    settings.IDENTITY_MAX_AUTH_ATTEMPTS = 2
    client = await connect()
    monkeypatch.setattr(tokens, "load_user", failing)
    for _ in range(3):
        assert (await client.auth(access_for(alice)))["error"]["code"] == "service_unavailable"
    await client.assert_silent()  # not closed 4429
