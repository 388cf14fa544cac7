"""System checks for configuration that would break the protocol."""

from __future__ import annotations

from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings
from django.core.checks import Error, Warning, register

from identity import conf, layers, realtime
from identity.layers import in_process
from identity.origins import split_origin


@register()
def check_identity_settings(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """identity.E001-E003, W001: bad origins, frame limit, heartbeat bounds, layer."""
    problems: list[Any] = []
    for origin in conf.allowed_origins():
        if split_origin(origin) is None:
            problems.append(
                Error(
                    f"IDENTITY_ALLOWED_ORIGINS has {origin!r}, which is not an origin.",
                    hint="Write origins as scheme://host[:port], e.g. https://app.example.com.",
                    id="identity.E001",
                )
            )
    if conf.max_frame_bytes() < 1024:
        problems.append(
            Error(
                "IDENTITY_MAX_FRAME_BYTES is below 1024: an auth frame with a token would not fit.",
                id="identity.E002",
            )
        )
    if 0 < conf.heartbeat_expiry() <= conf.heartbeat_interval():
        problems.append(
            Error(
                "IDENTITY_HEARTBEAT_EXPIRY must be longer than IDENTITY_HEARTBEAT_INTERVAL, "
                "or every live socket would look dead.",
                id="identity.E003",
            )
        )
    if not settings.DEBUG and in_process(get_channel_layer()):
        problems.append(
            Warning(
                "The in-memory channel layer serves one process only.",
                hint="Set REDIS_URL when running more than one server process.",
                id="identity.W001",
            )
        )
    problems += _layer_internals()
    problems += [
        Error(f"{what}: {why}.", hint="See docs/realtime.md.", id="identity.E005")
        for what, why in realtime.problems()
    ]
    return problems


def _layer_internals() -> list[Any]:
    """identity.E004, W002: the private parts of the channel layers identity.layers uses."""
    problems: list[Any] = []
    missing = layers.missing_internals()
    if missing:
        problems.append(
            Error(
                f"channels or channels-redis lack what identity.layers uses: {', '.join(missing)}.",
                hint=f"Install releases identity.layers was verified with: {layers.VERIFIED}.",
                id="identity.E004",
            )
        )
    unverified = layers.unverified_releases()
    if unverified:
        problems.append(
            Warning(
                f"identity.layers was not verified with {', '.join(unverified)}.",
                hint=f"Verified: {layers.VERIFIED}; run the suite (tests/test_layers.py).",
                id="identity.W002",
            )
        )
    return problems
