"""`auth` with validly signed tokens whose claims are missing or of the wrong type."""

from __future__ import annotations

import pytest

from tests.test_auth import claims_for, forged

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize(
    "overrides",
    [
        {"exp": "9999999999"},
        {"exp": 10**20},
        {"iat": "1"},
        {"user_id": ["1"]},
        {"user_id": True},
        {"user_id": 1.5e300},
    ],
    ids=["exp-string", "exp-out-of-range", "iat-string", "user_id-list", "user_id-bool", "float"],
)
async def test_auth_with_a_signed_token_of_mistyped_claims_is_token_invalid(
    alice, connect, overrides
):
    client = await connect()
    reply = await client.auth(forged(claims_for(alice, **overrides)))
    assert reply["registered"] is False
    assert reply["error"]["code"] == "token_invalid", reply


async def test_auth_with_a_token_that_has_no_token_type_is_token_invalid(alice, connect):
    client = await connect()
    claims = {k: v for k, v in claims_for(alice).items() if k != "token_type"}
    reply = await client.auth(forged(claims))
    assert reply["error"]["code"] == "token_invalid", reply
    assert "token_type" in reply["error"]["message"]
