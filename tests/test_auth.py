"""`auth`, `whoami`, `logout`: every reply and error of PROTOCOL.md's auth rows."""

from __future__ import annotations

import time
from datetime import timedelta

import jwt
import pytest
from django.conf import settings
from rest_framework_simplejwt.tokens import AccessToken

from tests.conftest import access_for, adb, refresh_for

pytestmark = pytest.mark.django_db(transaction=True)


def forged(claims: dict, key: str | None = None, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key or settings.SIMPLE_JWT["SIGNING_KEY"], algorithm=algorithm)


def claims_for(user, **overrides) -> dict:
    now = int(time.time())
    base = {
        "token_type": "access",
        "exp": now + 300,
        "iat": now,
        "jti": "a" * 32,
        "user_id": str(user.pk),
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


async def test_auth_with_a_valid_token_registers_the_user(alice, connect):
    client = await connect()
    token = access_for(alice)
    reply = await client.auth(token)
    assert reply == {
        "registered": True,
        "user": {"id": alice.pk, "username": "alice"},
        "expires_at": AccessToken(token)["exp"],
    }


async def test_only_id_and_username_of_the_user_travel(alice, connect):
    client = await connect()
    reply = await client.auth(access_for(alice))
    assert set(reply["user"]) == {"id", "username"}
    assert "alice@example.com" not in str(reply)


@pytest.mark.parametrize(
    "payload",
    ["garbage", "a.b.c", "", None, 42, ["x"], {"token": "x"}],
    ids=["garbage", "three-dots", "empty", "null", "number", "list", "object"],
)
async def test_auth_with_garbage_is_token_invalid(alice, connect, payload):
    client = await connect()
    reply = await client.auth(payload)
    assert reply["registered"] is False
    assert reply["error"]["code"] == "token_invalid"
    assert reply["error"]["message"]


async def test_auth_with_a_bad_signature_is_token_invalid(alice, connect):
    client = await connect()
    token = access_for(alice)
    head, body, sig = token.split(".")
    tampered = f"{head}.{body}.{sig[:-4]}AAAA"
    assert (await client.auth(tampered))["error"]["code"] == "token_invalid"


async def test_auth_with_the_wrong_key_is_token_invalid(alice, connect):
    client = await connect()
    token = forged(claims_for(alice), key="another-key-entirely-0123456789abcdef")
    assert (await client.auth(token))["error"]["code"] == "token_invalid"


async def test_auth_with_alg_none_is_token_invalid(alice, connect):
    client = await connect()
    token = jwt.encode(claims_for(alice), key=None, algorithm="none")
    assert (await client.auth(token))["error"]["code"] == "token_invalid"


async def test_auth_with_another_algorithm_is_token_invalid(alice, connect):
    client = await connect()
    token = forged(claims_for(alice), algorithm="HS512")
    assert (await client.auth(token))["error"]["code"] == "token_invalid"


@pytest.mark.parametrize("missing", ["user_id", "exp", "jti", "iat", "token_type"])
async def test_auth_with_a_missing_claim_is_refused(alice, connect, missing):
    client = await connect()
    token = forged(claims_for(alice, **{missing: None}))
    reply = await client.auth(token)
    assert reply["registered"] is False
    # No type claim is a missing claim, not a token of another type.
    assert reply["error"]["code"] == "token_invalid"


async def test_auth_with_an_expired_token_is_token_expired(alice, connect):
    client = await connect()
    token = access_for(alice, lifetime=-timedelta(seconds=1))
    assert (await client.auth(token))["error"]["code"] == "token_expired"


async def test_auth_with_a_refresh_token_is_token_wrong_type(alice, connect):
    client = await connect()
    refresh = await adb(refresh_for)(alice)
    assert (await client.auth(refresh))["error"]["code"] == "token_wrong_type"


async def test_auth_of_an_inactive_user_is_user_inactive(alice, connect):
    token = access_for(alice)
    alice.is_active = False
    await adb(alice.save)()
    client = await connect()
    assert (await client.auth(token))["error"]["code"] == "user_inactive"


async def test_auth_of_a_deleted_user_is_user_not_found(alice, connect):
    token = access_for(alice)
    await adb(alice.delete)()
    client = await connect()
    assert (await client.auth(token))["error"]["code"] == "user_not_found"


@pytest.mark.parametrize(
    "user_id",
    ["not-a-number", "99999999999999999999999", "-99999999999999999999999", 2**63],
    ids=["text", "past-64-bits", "below-64-bits", "2**63"],
)
async def test_auth_with_a_user_id_no_row_can_have_is_user_not_found(alice, connect, user_id):
    client = await connect()
    reply = await client.auth(forged(claims_for(alice, user_id=user_id)))
    assert reply["registered"] is False
    assert reply["error"]["code"] == "user_not_found"
    assert (await client.request("ping", "still-open"))["payload"] == "still-open"


async def test_auth_with_the_user_id_as_a_number_finds_the_user(alice, connect):
    client = await connect()
    reply = await client.auth(forged(claims_for(alice, user_id=alice.pk)))
    assert reply["user"] == {"id": alice.pk, "username": "alice"}


async def test_auth_of_another_user_on_an_authenticated_socket_is_identity_mismatch(
    alice, bob, connect
):
    client = await connect(access_for(alice))
    reply = await client.auth(access_for(bob))
    assert reply["error"]["code"] == "identity_mismatch"
    whoami = await client.request("whoami")
    assert whoami["payload"]["user"]["username"] == "alice"


async def test_reauth_of_the_same_user_moves_expires_at(alice, connect):
    first = access_for(alice, lifetime=timedelta(seconds=100))
    client = await connect(first)
    second = access_for(alice, lifetime=timedelta(seconds=200))
    reply = await client.auth(second)
    assert reply["registered"] is True
    assert reply["expires_at"] == AccessToken(second)["exp"] > AccessToken(first)["exp"]
    assert (await client.request("whoami"))["payload"]["expires_at"] == reply["expires_at"]


async def test_failed_auth_keeps_the_identity(alice, connect):
    client = await connect(access_for(alice))
    assert (await client.auth("garbage"))["registered"] is False
    whoami = await client.request("whoami")
    assert whoami["payload"]["user"] == {"id": alice.pk, "username": "alice"}


async def test_whoami_on_an_anonymous_socket(connect, transactional_db):
    client = await connect()
    reply = await client.request("whoami")
    assert reply == {"action": "whoami", "payload": {"user": None, "expires_at": None}}


async def test_logout_makes_the_socket_anonymous(alice, connect):
    client = await connect(access_for(alice))
    assert await client.request("logout") == {"action": "logout", "payload": {"registered": False}}
    assert (await client.request("whoami"))["payload"]["user"] is None
    error = await client.request("message", "hi")
    assert error["payload"]["code"] == "not_authenticated"


async def test_logout_on_an_anonymous_socket_changes_nothing(connect, transactional_db):
    client = await connect()
    reply = await client.request("logout", ref=3)
    assert reply == {"action": "logout", "payload": {"registered": False}, "ref": 3}


async def test_after_logout_another_user_may_authenticate(alice, bob, connect):
    client = await connect(access_for(alice))
    await client.request("logout")
    reply = await client.auth(access_for(bob))
    assert reply["user"]["username"] == "bob"
