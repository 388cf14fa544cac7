"""`GET /metrics`: the operator metrics (identity.metrics), never for the public.

Reachable with a staff user's access token (`Authorization: Bearer ...`, the
staff API's authentication) or from a client address in
IDENTITY_METRICS_ALLOWED_ADDRESSES (IPs or CIDRs; none by default). Anyone
else gets a JSON 401 without credentials, 403 with a non-staff token.

The client address is REMOTE_ADDR, as for the sign-in throttle
(identity.throttling): never X-Forwarded-For itself. Behind a proxy,
`manage.py serve` (uvicorn's --proxy-headers, --forwarded-allow-ips) has
already put the client's address there when the proxy is trusted.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from django.core.checks import Error, register
from django.http import HttpResponse
from rest_framework import permissions
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.request import Request
from rest_framework.views import APIView

from identity import conf, metrics

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_network(entry: str) -> Network | None:
    """An IP or CIDR entry as a network; None if it is neither."""
    try:
        return ipaddress.ip_network(entry.strip(), strict=False)
    except ValueError:
        return None


def allowed_networks() -> list[Network]:
    """The networks of IDENTITY_METRICS_ALLOWED_ADDRESSES (bad entries: identity.E101)."""
    networks = (parse_network(entry) for entry in conf.metrics_allowed_addresses())
    return [network for network in networks if network is not None]


def address_allowed(address: str | None) -> bool:
    """Whether a client address may scrape without a token."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack listener's form of an IPv4 client
    return any(ip in network for network in allowed_networks())


class MetricsAccess(permissions.BasePermission):
    """An allowed client address, or a staff user's token."""

    message = "Metrics are for staff users and the addresses in IDENTITY_METRICS_ALLOWED_ADDRESSES."

    def has_permission(self, request: Request, view: Any) -> bool:
        if address_allowed(request.META.get("REMOTE_ADDR")):
            return True
        return bool(request.user and request.user.is_staff)


class ErrorsInJSON(BaseContentNegotiation):
    """JSON for errors whatever the Accept header (`text/plain` alone would be a 406)."""

    def select_parser(self, request: Request, parsers: Any) -> Any:
        return parsers[0]

    def select_renderer(self, request: Request, renderers: Any, format_suffix: Any = None) -> Any:
        return renderers[0], renderers[0].media_type


class MetricsView(APIView):
    """`GET /metrics`: Prometheus text format (OpenMetrics when the scraper asks for it)."""

    permission_classes = [MetricsAccess]
    content_negotiation_class = ErrorsInJSON

    def get(self, request: Request) -> HttpResponse:
        body, content_type = metrics.exposition(request.headers.get("Accept"))
        return HttpResponse(body, content_type=content_type)


@register()
def check_metrics_settings(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """identity.E101: an entry of IDENTITY_METRICS_ALLOWED_ADDRESSES that is no IP or CIDR."""
    return [
        Error(
            f"IDENTITY_METRICS_ALLOWED_ADDRESSES has {entry!r}, which is not an IP address "
            "or a network.",
            hint="Write addresses as 10.0.0.5 or networks as 10.0.0.0/8, separated by commas.",
            id="identity.E101",
        )
        for entry in conf.metrics_allowed_addresses()
        if parse_network(entry) is None
    ]
