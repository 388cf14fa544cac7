"""Raw token -> validated access token -> user, one typed error per step.

SimpleJWT does the decoding and claim checks; this module only sorts its
failures into the protocol's error codes and adds what SimpleJWT lacks:
revocation of access tokens (SimpleJWT only blacklists refresh tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from rest_framework_simplejwt.exceptions import ExpiredTokenError, TokenError
from rest_framework_simplejwt.settings import api_settings
from rest_framework_simplejwt.tokens import AccessToken, RefreshToken, Token, UntypedToken

from identity import sql
from identity.exceptions import (
    TokenExpired,
    TokenInvalid,
    TokenRevoked,
    TokenWrongType,
    UserInactive,
    UserNotFound,
)

# Raw strings longer than this are not tokens; refuse before decoding.
MAX_TOKEN_LENGTH = 4096
# The seconds datetime can hold (up to 9999-12-31): SimpleJWT turns exp into a
# datetime and raises OverflowError or ValueError past it.
MAX_EPOCH_SECONDS = 253_402_300_799


def check_claim_types(payload: dict[str, Any]) -> None:
    """Refuse time claims that are not seconds and user ids that are not str or int.

    PyJWT accepts `"exp": "9999999999"` (it calls int()), then SimpleJWT's
    check_exp raises TypeError, which callers would take for a server fault.
    """
    for claim in ("exp", "iat"):
        if claim in payload and not _is_seconds(payload[claim]):
            raise TokenError(f"Token claim {claim!r} is not a number of seconds.")
    user_id = payload.get(api_settings.USER_ID_CLAIM)
    if user_id is not None and (isinstance(user_id, bool) or not isinstance(user_id, str | int)):
        raise TokenError(f"Token claim {api_settings.USER_ID_CLAIM!r} is not a string or integer.")


class _ClaimTypesChecked(Token):
    """Check the claims' types before SimpleJWT's own checks use them."""

    def verify(self) -> None:
        check_claim_types(self.payload)
        super().verify()


class CheckedUntypedToken(_ClaimTypesChecked, UntypedToken):
    """An UntypedToken whose exp, iat and user id have the right types."""


class CheckedRefreshToken(_ClaimTypesChecked, RefreshToken):  # type: ignore[misc]  # SimpleJWT's own bases disagree
    """A RefreshToken whose exp, iat and user id have the right types."""


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """The claims of a valid access token that the server needs."""

    user_id: Any
    issued_at: int
    expires_at: int


def verify_access_token(raw: Any) -> VerifiedToken:
    """Check signature, algorithm, expiry, type and claims; no database access."""
    if not isinstance(raw, str) or not raw or len(raw) > MAX_TOKEN_LENGTH:
        raise TokenInvalid("The payload of auth must be an access token (a non-empty string).")
    token = _decode(raw)
    token_type = token.get(api_settings.TOKEN_TYPE_CLAIM)
    if token_type is None:
        # Not a token of another kind: a token that lacks a required claim.
        raise TokenInvalid(f"The token lacks the {api_settings.TOKEN_TYPE_CLAIM!r} claim.")
    if token_type != AccessToken.token_type:
        raise TokenWrongType()
    return _claims(token)


def _decode(raw: str) -> Token:
    try:
        # UntypedToken checks signature, algorithm, exp and jti but not the
        # type, so a refresh token can be told apart from garbage.
        return CheckedUntypedToken(raw)  # type: ignore[arg-type]  # SimpleJWT hints a Token; it takes the string
    except ExpiredTokenError as exc:
        raise TokenExpired() from exc
    except TokenError as exc:
        raise TokenInvalid(f"The token is not valid ({exc}).") from exc


def _claims(token: Token) -> VerifiedToken:
    user_id = token.get(api_settings.USER_ID_CLAIM)
    issued_at, expires_at = token.get("iat"), token.get("exp")
    if user_id is None or not _is_seconds(issued_at) or not _is_seconds(expires_at):
        raise TokenInvalid("The token lacks a user, iat or exp claim.")
    return VerifiedToken(user_id, int(issued_at), int(expires_at))


def _is_seconds(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return 0 <= value <= MAX_EPOCH_SECONDS


def get_user(token: VerifiedToken) -> AbstractBaseUser:
    """The active, unrevoked user of a verified token, in one query."""
    user = load_user(token.user_id)
    check_user(user, token.issued_at)
    return user


def load_user(user_id: Any) -> AbstractBaseUser:
    """The token's user with its revocation time annotated; UserNotFound if gone."""
    try:
        user = sql.fetch_user(user_id)
    except (ValueError, TypeError) as exc:
        raise UserNotFound("The token's user no longer exists.") from exc
    if user is None:
        raise UserNotFound("The token's user no longer exists.")
    return user


def check_user(user: Any, issued_at: int) -> None:
    """Refuse a deactivated user, or a token issued at or before a revocation."""
    if not user.is_active:
        raise UserInactive()
    revoked_at = getattr(user, "tokens_revoked_at", None)
    if revoked_at is not None and issued_at <= revoked_at:
        raise TokenRevoked()


def authenticate(raw: Any) -> tuple[AbstractBaseUser, VerifiedToken]:
    """Verify an access token and resolve its user (sync: call from a thread)."""
    token = verify_access_token(raw)
    return get_user(token), token
