"""The browser client page, and JSON error pages for the API."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views import defaults
from django.views.decorators.http import require_GET


@require_GET
def index(request: HttpRequest) -> HttpResponse:
    """The page: sign in, chat, see who is online."""
    return render(request, "identity/index.html")


def wants_json(request: HttpRequest) -> bool:
    """Whether the path belongs to the API (JSON errors) rather than to pages."""
    return request.path.startswith("/api/") or request.path.startswith("/healthz")


def not_found(request: HttpRequest, exception: Any = None) -> HttpResponse:
    """404: JSON under /api/, Django's page elsewhere."""
    if wants_json(request):
        return JsonResponse({"detail": "Not found.", "code": "not_found"}, status=404)
    return defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    """500: JSON under /api/ (should never happen; the suite checks that)."""
    if wants_json(request):
        return JsonResponse({"detail": "Server error.", "code": "server_error"}, status=500)
    return defaults.server_error(request)


def bad_request(request: HttpRequest, exception: Any = None) -> HttpResponse:
    """400: JSON under /api/."""
    if wants_json(request):
        return JsonResponse({"detail": "Bad request.", "code": "bad_request"}, status=400)
    return defaults.bad_request(request, exception)
