"""Every error under /api/ and /healthz is JSON with a `code`, in every mode."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.deprecation import MiddlewareMixin

from identity.views import wants_json

CODES = {
    400: "bad_request",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    500: "server_error",
}
# Headers an error must keep: how long to wait, which methods exist.
KEPT_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate")


class JSONErrorsMiddleware(MiddlewareMixin):
    """Replace an HTML error page under the API with a JSON body.

    With DEBUG on, Django answers unknown paths and exceptions with its HTML
    debug pages before any handler404/handler500 runs; API clients get JSON
    instead, and the 500's traceback is in the log (LOGGING's django.request).
    """

    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        if response.status_code < 400 or not wants_json(request):
            return response
        if response.get("Content-Type", "").startswith("application/json"):
            return response
        status = response.status_code
        body = {"detail": f"{response.reason_phrase}.", "code": CODES.get(status, "error")}
        headers = {name: response[name] for name in KEPT_HEADERS if response.has_header(name)}
        return JsonResponse(body, status=status, headers=headers)
