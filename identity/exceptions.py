"""Why an identity is refused: one class per wire error code."""

from __future__ import annotations

from identity.protocol import ErrorCode


class IdentityError(Exception):
    """Base of every refusal; `code` is what goes on the wire."""

    code: ErrorCode = ErrorCode.TOKEN_INVALID
    default_message = "The token is not valid."

    def __init__(self, message: str | None = None) -> None:
        self.message = message or self.default_message
        super().__init__(self.message)


class TokenInvalid(IdentityError):
    """Malformed, bad signature, wrong algorithm or missing claims."""

    code = ErrorCode.TOKEN_INVALID
    default_message = "The token is not valid; sign in again to get a new one."


class TokenExpired(IdentityError):
    """The token's `exp` has passed."""

    code = ErrorCode.TOKEN_EXPIRED
    default_message = "The token has expired; refresh it and authenticate again."


class TokenWrongType(IdentityError):
    """A refresh (or other non-access) token was offered."""

    code = ErrorCode.TOKEN_WRONG_TYPE
    default_message = "This is not an access token; send the access token, not the refresh token."


class TokenRevoked(IdentityError):
    """The token was issued before the user's tokens were revoked."""

    code = ErrorCode.TOKEN_REVOKED
    default_message = "The token was revoked; sign in again."


class UserInactive(IdentityError):
    """The user exists but is deactivated."""

    code = ErrorCode.USER_INACTIVE
    default_message = "The user account is deactivated."


class UserNotFound(IdentityError):
    """The token's user no longer exists (or `send` names no user)."""

    code = ErrorCode.USER_NOT_FOUND
    default_message = "No such user."


class IdentityMismatch(IdentityError):
    """Another user's token on an authenticated socket."""

    code = ErrorCode.IDENTITY_MISMATCH
    default_message = "The socket belongs to another user; send logout first."


class ConnectionLimit(IdentityError):
    """The user already holds the allowed number of authenticated sockets."""

    code = ErrorCode.CONNECTION_LIMIT
    default_message = "Too many open connections for this user; close one first."


class ServiceUnavailable(IdentityError):
    """The channel layer is down: the socket cannot be registered for pushes now."""

    code = ErrorCode.SERVICE_UNAVAILABLE
    default_message = "The server cannot reach its channel layer right now; try again shortly."
