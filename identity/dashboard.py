"""The operator's dashboard in the admin: who is online now, the last hour, the processes.

The page renders every figure on the server, so it reads without JavaScript.
It then stays current by polling `data` (staff session, same permission)
every POLL_SECONDS and swapping in the re-rendered body. Polling rather than
the project's WebSocket: the socket authenticates with a JWT, which an admin
page signed in with a session does not have; the figures live in the
database anyway (the counters arrive there with each process's heartbeat,
every few seconds), so a push could not be fresher than a poll; and one
small request every few seconds per open dashboard costs nothing the
socket path would feel.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.db.models import Count, Min
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.views.decorators.http import require_GET

from identity import counters, registry, times
from identity.models import ServerProcess, Withdrawal

POLL_SECONDS = 3
SHOWN_USERS = 50
SHOWN_WITHDRAWALS = 50
BODY_TEMPLATE = "admin/identity/dashboard_body.html"

# The chart's drawing box (SVG user units), one slot per minute.
CHART_WIDTH, CHART_HEIGHT, SLOT = 600, 120, 10


@dataclass(frozen=True, slots=True)
class Server:
    """A server process as the dashboard shows it."""

    id: str
    started_at: datetime
    heartbeat_at: datetime
    sockets: int
    state: str  # "live", "stale" (heartbeat expired) or "stopped" (retired)


def allowed(request: HttpRequest) -> bool:
    """Staff who may view users (the dashboard names them)."""
    opts = get_user_model()._meta
    return request.user.is_staff and request.user.has_perm(
        f"{opts.app_label}.view_{opts.model_name}"
    )


def snapshot() -> dict[str, Any]:
    """Every figure on the dashboard, read now."""
    now = timezone.now()
    online = list(
        registry.live_connections()
        .values("user_id", "user__username")
        .annotate(sockets=Count("channel_name"), since=Min("opened_at"))
        .order_by("user__username")
    )
    series = counters.last_hour(now)
    return {
        "now": now,
        "as_of": timezone.localtime(now).strftime("%H:%M:%S %Z"),
        "users_online": len(online),
        "open_sockets": sum(row["sockets"] for row in online),
        "online": [
            {**row, "since_html": times.when(row["since"], now)} for row in online[:SHOWN_USERS]
        ],
        "more_online": max(0, len(online) - SHOWN_USERS),
        "connects": sum(series[counters.CONNECT]),
        "auth_failures": sum(series[counters.AUTH_FAILURE]),
        "failures_by_code": counters.failures_by_code(now),
        "chart": chart(series),
        "servers": servers(now),
        "withdrawals": [
            {"row": row, "at_html": times.when(row.at, now)}
            for row in Withdrawal.objects.all()[:SHOWN_WITHDRAWALS]
        ],
        "poll_seconds": POLL_SECONDS,
    }


def servers(now: datetime) -> list[dict[str, Any]]:
    """The server processes, freshest heartbeat first, with their state and socket count."""
    cutoff = registry.live_cutoff()
    rows = ServerProcess.objects.annotate(sockets=Count("connections")).order_by("-heartbeat_at")
    shown = []
    for row in rows:
        if row.heartbeat_at <= registry.RETIRED:
            state, beat = "stopped", "stopped"
        else:
            state = "live" if row.heartbeat_at >= cutoff else "stale"
            beat = times.when(row.heartbeat_at, now)
        shown.append(
            {
                "id": row.id,
                "started_html": times.when(row.started_at, now),
                "heartbeat_html": beat,
                "sockets": row.sockets,
                "state": state,
            }
        )
    return shown


def chart(series: dict[str, list[int]]) -> SafeString:
    """Connects and auth failures per minute over the last hour, as a small inline SVG."""
    connects, failures = series[counters.CONNECT], series[counters.AUTH_FAILURE]
    top = max([*connects, *failures, 1])
    scale = (CHART_HEIGHT - 14) / top
    bars = format_html_join(
        "",
        '<rect class="{}" x="{}" y="{}" width="{}" height="{}"><title>{}</title></rect>',
        (
            (kind, minute * SLOT + offset, CHART_HEIGHT - n * scale, SLOT / 2 - 1, n * scale, label)
            for minute, (c, f) in enumerate(zip(connects, failures, strict=True))
            for kind, offset, n, label in (
                ("connects", 0.5, c, f"{_minute_label(minute)}: {c} connects"),
                ("failures", SLOT / 2, f, f"{_minute_label(minute)}: {f} auth failures"),
            )
            if n
        ),
    )
    return format_html(
        '<svg class="identity-chart" viewBox="0 0 {} {}" role="img" '
        'aria-labelledby="chart-summary" preserveAspectRatio="none">'
        '<line class="axis" x1="0" y1="{}" x2="{}" y2="{}"></line>'
        '<text class="top" x="2" y="10">{}</text>{}</svg>',
        CHART_WIDTH,
        CHART_HEIGHT,
        CHART_HEIGHT - 0.5,
        CHART_WIDTH,
        CHART_HEIGHT - 0.5,
        top,
        bars,
    )


def _minute_label(minute: int) -> str:
    back = 59 - minute
    return "this minute" if back == 0 else f"{back} min ago"


@require_GET
def page(request: HttpRequest) -> HttpResponse:
    """The dashboard, rendered whole."""
    if not allowed(request):
        return HttpResponse("Forbidden", status=403)
    context = {
        **admin.site.each_context(request),
        "title": "Dashboard",
        **snapshot(),
    }
    return TemplateResponse(request, "admin/identity/dashboard.html", context)


@require_GET
def data(request: HttpRequest) -> HttpResponse:
    """The dashboard's figures and its re-rendered body, for the page's poll."""
    if not allowed(request):
        return JsonResponse({"error": "forbidden"}, status=403)
    figures = snapshot()
    body = render_to_string(BODY_TEMPLATE, figures, request)
    return JsonResponse(
        {
            "as_of": figures["as_of"],
            "users_online": figures["users_online"],
            "open_sockets": figures["open_sockets"],
            "connects": figures["connects"],
            "auth_failures": figures["auth_failures"],
            "html": body,
        },
        headers={"Cache-Control": "no-store"},
    )
