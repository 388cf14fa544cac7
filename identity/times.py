"""Times as the operator reads them: "3 min ago", with the exact time on hover."""

from __future__ import annotations

from datetime import datetime

from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString


def ago(then: datetime, now: datetime | None = None) -> str:
    """How long ago THEN was, in the largest whole unit: "12 s ago", "3 min ago"."""
    seconds = int(((now or timezone.now()) - then).total_seconds())
    if seconds <= 0:  # or a clock a little ahead of ours
        return "just now"
    for unit, size in (("day", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            count = seconds // size
            plural = "s" if unit == "day" and count != 1 else ""
            return f"{count} {unit}{plural} ago"
    return f"{seconds} s ago"


def exact(then: datetime) -> str:
    """The time to the second in the server's time zone: "2026-12-03 08:12:05 UTC"."""
    return timezone.localtime(then).strftime("%Y-%m-%d %H:%M:%S %Z")


def when(then: datetime | None, now: datetime | None = None) -> SafeString | str:
    """A <time> saying how long ago, with the exact time in its title."""
    if then is None:
        return "-"
    return format_html(
        '<time datetime="{}" title="{}">{}</time>',
        then.isoformat(timespec="seconds"),
        exact(then),
        ago(then, now),
    )
