"""DRF authentication for the staff API: Bearer access tokens, checked like `auth`."""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework_simplejwt.authentication import JWTAuthentication

from identity import tokens
from identity.exceptions import IdentityError


class IdentityJWTAuthentication(JWTAuthentication):
    """Bearer access tokens, checked like `auth` on a socket (revocation included)."""

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        header = self.get_header(request)
        raw = self.get_raw_token(header) if header is not None else None
        if raw is None:
            return None
        try:
            user, token = tokens.authenticate(raw.decode("latin-1"))
        except IdentityError as exc:
            raise exceptions.AuthenticationFailed(exc.message, code=str(exc.code)) from exc
        return user, token
