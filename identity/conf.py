"""The identity settings, read lazily so `override_settings` works in tests.

This module owns their defaults: config/settings.py reads each IDENTITY_*
variable of the environment over them, and a project that adds the app
without those lines gets the same defaults here.
"""

from __future__ import annotations

from django.conf import settings

DEFAULTS: dict[str, float] = {
    "IDENTITY_AUTH_TIMEOUT": 10,
    "IDENTITY_EXPIRY_NOTICE": 30,
    "IDENTITY_MAX_AUTH_ATTEMPTS": 5,
    "IDENTITY_MAX_FRAME_BYTES": 65536,
    "IDENTITY_RATE_LIMIT": 30,
    "IDENTITY_RATE_BURST": 60,
    "IDENTITY_MAX_CONNECTIONS_PER_USER": 0,
    "IDENTITY_HEARTBEAT_INTERVAL": 5,
    "IDENTITY_HEARTBEAT_EXPIRY": 15,
    "IDENTITY_MAX_ANONYMOUS_PER_ADDRESS": 50,
    "IDENTITY_HANDSHAKE_RATE": 20,
    "IDENTITY_HANDSHAKE_BURST": 40,
    "IDENTITY_HANDSHAKE_TIMEOUT": 10,
    "IDENTITY_WITHDRAWAL_POLL": 0.25,
    "IDENTITY_MAX_TOPICS_PER_SOCKET": 100,
}
# Failed `POST /api/token/` per username and per client address (429 past it):
# "N/period"; 0 or empty turns a limit off.
RATE_DEFAULTS: dict[str, str] = {
    "IDENTITY_LOGIN_RATE_PER_ACCOUNT": "10/min",
    "IDENTITY_LOGIN_RATE_PER_ADDRESS": "30/min",
}
# Client addresses that may read /metrics without a token (identity.metrics_api):
# comma-separated IPs or CIDRs; empty, the default, means staff tokens only.
LIST_DEFAULTS: dict[str, str] = {
    "IDENTITY_METRICS_ALLOWED_ADDRESSES": "",
}


def _get(name: str) -> float:
    return getattr(settings, name, DEFAULTS[name])


def auth_timeout() -> float:
    """Seconds an anonymous socket may live."""
    return float(_get("IDENTITY_AUTH_TIMEOUT"))


def expiry_notice() -> float:
    """Seconds before `exp` that `session` `expiring` is pushed."""
    return float(_get("IDENTITY_EXPIRY_NOTICE"))


def max_auth_attempts() -> int:
    """Failed `auth` per socket before close 4429."""
    return int(_get("IDENTITY_MAX_AUTH_ATTEMPTS"))


def max_frame_bytes() -> int:
    """Largest accepted text frame, in UTF-8 bytes."""
    return int(_get("IDENTITY_MAX_FRAME_BYTES"))


def rate_limit() -> float:
    """Frames per second a socket may sustain; 0 turns the limit off."""
    return float(_get("IDENTITY_RATE_LIMIT"))


def rate_burst() -> float:
    """Frames a socket may send at once."""
    return float(_get("IDENTITY_RATE_BURST"))


def max_connections_per_user() -> int:
    """Authenticated sockets per user across every process; 0 is no limit."""
    return int(_get("IDENTITY_MAX_CONNECTIONS_PER_USER"))


def heartbeat_interval() -> float:
    """Seconds between a server process's registry heartbeats."""
    return float(_get("IDENTITY_HEARTBEAT_INTERVAL"))


def heartbeat_expiry() -> float:
    """Seconds without a heartbeat after which a process's sockets count as gone."""
    return float(_get("IDENTITY_HEARTBEAT_EXPIRY"))


def login_rate_per_account() -> str | None:
    """Failed sign-ins allowed per username, as "N/period"; None turns the limit off."""
    name = "IDENTITY_LOGIN_RATE_PER_ACCOUNT"
    return getattr(settings, name, RATE_DEFAULTS[name]) or None


def login_rate_per_address() -> str | None:
    """Failed sign-ins allowed per client address, as "N/period"; None turns the limit off."""
    name = "IDENTITY_LOGIN_RATE_PER_ADDRESS"
    return getattr(settings, name, RATE_DEFAULTS[name]) or None


def max_anonymous_per_address() -> int:
    """Sockets without an identity one address may hold in a process; 0 is no limit."""
    return int(_get("IDENTITY_MAX_ANONYMOUS_PER_ADDRESS"))


def handshake_rate() -> float:
    """WebSocket handshakes per second one address may sustain in a process; 0 is no limit."""
    return float(_get("IDENTITY_HANDSHAKE_RATE"))


def handshake_burst() -> float:
    """WebSocket handshakes one address may start at once; 0 turns the rate limit off."""
    return float(_get("IDENTITY_HANDSHAKE_BURST"))


def handshake_timeout() -> float:
    """Seconds a connection has to send its request headers; 0 is no limit."""
    return float(_get("IDENTITY_HANDSHAKE_TIMEOUT"))


def withdrawal_poll() -> float:
    """Seconds between a process's looks for withdrawal requests (in-memory layer); 0 is off."""
    return float(_get("IDENTITY_WITHDRAWAL_POLL"))


def max_topics_per_socket() -> int:
    """Topic subscriptions one socket may hold; 0 is no limit."""
    return int(_get("IDENTITY_MAX_TOPICS_PER_SOCKET"))


def allowed_origins() -> list[str]:
    """Exact origins from IDENTITY_ALLOWED_ORIGINS (empty: use the allowed hosts)."""
    return list(getattr(settings, "IDENTITY_ALLOWED_ORIGINS", []))


def metrics_allowed_addresses() -> list[str]:
    """IPs and CIDRs that may read /metrics without a token (a list or a comma string)."""
    name = "IDENTITY_METRICS_ALLOWED_ADDRESSES"
    raw = getattr(settings, name, LIST_DEFAULTS[name])
    entries = raw.split(",") if isinstance(raw, str) else raw
    return [entry.strip() for entry in entries if entry.strip()]
