"""HTTP: token endpoints, the staff API and the health check (PROTOCOL.md, HTTP companions)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from django.http import Http404, JsonResponse
from django.shortcuts import get_object_or_404
from rest_framework import exceptions, permissions, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework.views import exception_handler as drf_exception_handler
from rest_framework_simplejwt import serializers as jwt_serializers
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.settings import api_settings
from rest_framework_simplejwt.views import TokenObtainPairView

from identity import registry, tokens, withdraw
from identity.exceptions import IdentityError
from identity.layers import LayerUnavailable
from identity.protocol import Reason, storable_text
from identity.throttling import FailedSignInThrottle, SignInAccountThrottle, SignInAddressThrottle

logger = logging.getLogger(__name__)


class SignInView(TokenObtainPairView):
    """`POST /api/token/`, throttled on failed attempts per account and per address."""

    # The account first: it parses the body, and a malformed one stops here.
    throttle_classes = [SignInAccountThrottle, SignInAddressThrottle]
    throttles: list[FailedSignInThrottle] = []  # the instances get_throttles made

    def get_throttles(self) -> list[Any]:
        self.throttles = cast(list[FailedSignInThrottle], super().get_throttles())
        return self.throttles

    def finalize_response(self, request: Request, response: Any, *args: Any, **kwargs: Any) -> Any:
        failed = response.status_code == status.HTTP_401_UNAUTHORIZED
        for throttle in self.throttles:
            throttle.settle(failed)
        return super().finalize_response(request, response, *args, **kwargs)


class TokenRefreshSerializer(jwt_serializers.TokenRefreshSerializer):
    """SimpleJWT's refresh, refusing deleted, inactive and revoked users with a 401.

    SimpleJWT 5.5.1 answers 500 for a deleted user's refresh token, and knows
    nothing of our revocations.
    """

    token_class = tokens.CheckedRefreshToken

    def validate(self, attrs: dict[str, Any]) -> dict[str, str]:
        refresh = self.token_class(attrs["refresh"])
        try:
            user = tokens.load_user(refresh.get(api_settings.USER_ID_CLAIM))
            tokens.check_user(user, int(refresh.get("iat", 0)))
        except IdentityError as exc:
            raise exceptions.AuthenticationFailed(exc.message, code=str(exc.code)) from exc
        return super().validate(attrs)


class TokenBlacklistSerializer(jwt_serializers.TokenBlacklistSerializer):
    """SimpleJWT's blacklist, refusing mistyped claims with a 401 instead of a 500."""

    token_class = tokens.CheckedRefreshToken


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, plus a stable `code` in every error body."""
    if isinstance(exc, TokenError):
        exc = exceptions.AuthenticationFailed(str(exc), code="token_not_valid")
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound()  # DRF converts it too, but loses the code
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(response.data, dict) and "code" not in response.data:
        codes = exc.get_codes() if isinstance(exc, exceptions.APIException) else None
        response.data["code"] = codes if isinstance(codes, str) else "invalid"
    return response


class IsStaff(permissions.BasePermission):
    """Staff users only (401 without a token, 403 for others)."""

    message = "This endpoint is for staff users."

    def has_permission(self, request: Request, view: Any) -> bool:
        return bool(request.user and request.user.is_staff)


def user_model_permission(action: str) -> str:
    """The Django permission to `action` ("view", "change") the configured user model."""
    opts = get_user_model()._meta
    return f"{opts.app_label}.{action}_{opts.model_name}"


class CanChangeUsers(permissions.BasePermission):
    """The admin's rule for its disconnect and revoke actions: change permission on users."""

    message = "This endpoint needs the permission to change users."

    def has_permission(self, request: Request, view: Any) -> bool:
        return request.user.has_perm(user_model_permission("change"))


class CanViewUsers(permissions.BasePermission):
    """The admin's rule for its user list: view (or change) permission on users."""

    message = "This endpoint needs the permission to view users."

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        return any(user.has_perm(user_model_permission(a)) for a in ("view", "change"))


class StaffView(APIView):
    # In order: no token is a 401, a non-staff user a 403 whatever the
    # permissions, then the model permission the admin would ask for.
    permission_classes = [permissions.IsAuthenticated, IsStaff, CanChangeUsers]

    def target(self, username: str) -> Any:
        # PostgreSQL refuses NUL in a query parameter (a 500): no user has it.
        if not storable_text(username):
            raise Http404
        user_model = get_user_model()
        return get_object_or_404(user_model, **{user_model.USERNAME_FIELD: username})


class OnlineView(StaffView):
    """`GET /api/online/`: who is online, across every process."""

    permission_classes = [permissions.IsAuthenticated, IsStaff, CanViewUsers]

    def get(self, request: Request) -> Response:
        return Response({"users": [u.as_dict() for u in registry.online_users()]})


class DisconnectView(StaffView):
    """`POST /api/users/USERNAME/disconnect/`: kick every socket of the user."""

    def post(self, request: Request, username: str) -> Response:
        user = self.target(username)
        return _withdrawn(
            request, username, lambda: withdraw.disconnect(user.pk, Reason.KICKED, username)
        )


class RevokeView(StaffView):
    """`POST /api/users/USERNAME/revoke/`: refuse the user's tokens and close their sockets."""

    def post(self, request: Request, username: str) -> Response:
        user = self.target(username)
        return _withdrawn(request, username, lambda: withdraw.revoke(user.pk, username))


def _withdrawn(request: Request, username: str, action: Any) -> Response:
    """`{"username", "connections": sockets closed}`; 503 saying what did not close."""
    try:
        with withdraw.acting_as(f"staff API user {request.user.get_username()}"):
            closed = action()
    except LayerUnavailable as exc:
        return Response(
            {
                "detail": withdraw.failure(username, exc),
                "code": "layer_unreachable",
                "username": username,
                "connections": getattr(exc, "closed", 0),
            },
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
        )
    return Response({"username": username, "connections": closed})


HEALTH_TIMEOUT = 2.0


def _check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


async def _check_channel_layer() -> None:
    url = getattr(settings, "REDIS_URL", "")
    if not url:
        get_channel_layer()  # in-memory: answers as long as the process does
        return
    import redis.asyncio as redis

    client = redis.from_url(url, socket_connect_timeout=HEALTH_TIMEOUT)
    try:
        await client.ping()
    finally:
        await client.aclose()


async def healthz(request: Any) -> JsonResponse:
    """`GET /healthz`: 200 when the database and channel layer answer, 503 otherwise."""
    if request.method not in ("GET", "HEAD"):
        return JsonResponse(
            {"detail": f'Method "{request.method}" not allowed.', "code": "method_not_allowed"},
            status=405,
            headers={"Allow": "GET, HEAD"},
        )
    checks = {
        "database": sync_to_async(_check_database)(),
        "channel_layer": _check_channel_layer(),
    }
    report: dict[str, str] = {}
    for name, check in checks.items():
        try:
            await asyncio.wait_for(check, HEALTH_TIMEOUT)
            report[name] = "ok"
        except Exception as exc:
            logger.warning("health check %s failed: %s", name, exc)
            report[name] = "unavailable"
    healthy = all(value == "ok" for value in report.values())
    return JsonResponse(
        {"status": "ok" if healthy else "unavailable", **report}, status=200 if healthy else 503
    )
