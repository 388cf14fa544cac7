"""Connects and auth failures per minute, counted in memory and flushed with the heartbeat.

The socket path only adds one to a dict entry (`count`); each server process
adds what it counted to the shared per-minute rows (MinuteCount) on its
heartbeat (`flush`), so the dashboard sees every process's counts a few
seconds late and no socket ever waits on the database for them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from identity.models import MinuteCount

logger = logging.getLogger(__name__)

CONNECT = "connect"  # a socket opened (accepted)
AUTH_FAILURE = "auth_failure"  # an `auth` refused, by error code
KEEP = timedelta(hours=2)  # older minutes are deleted on flush

_counts: Counter[tuple[int, str, str]] = Counter()
# Sockets count on the event loop's thread, the heartbeat flushes from the
# database thread: swapping the counter must not lose an increment.
_lock = threading.Lock()


def count(kind: str, code: str = "") -> None:
    """Count one event of KIND (and CODE) in the current minute; no I/O."""
    with _lock:
        _counts[int(time.time()) // 60, kind, code] += 1


def pending() -> dict[tuple[int, str, str], int]:
    """What this process counted and has not flushed yet."""
    with _lock:
        return dict(_counts)


def flush() -> int:
    """Add this process's counts to the shared rows; how many rows were touched.

    Counts that could not be written go back into the counter for the next flush.
    """
    global _counts
    with _lock:
        taken, _counts = _counts, Counter()
    try:
        for key, n in taken.items():
            _add(*key, n)
    except Exception:
        with _lock:
            _counts.update(taken)
        raise
    MinuteCount.objects.filter(minute__lt=timezone.now() - KEEP).delete()
    return len(taken)


def _add(minute: int, kind: str, code: str, n: int) -> None:
    start = datetime.fromtimestamp(minute * 60, tz=UTC)
    rows = MinuteCount.objects.filter(minute=start, kind=kind, code=code)
    if rows.update(n=F("n") + n):
        return
    try:
        with transaction.atomic():
            MinuteCount.objects.create(minute=start, kind=kind, code=code, n=n)
    except IntegrityError:
        # Another process created the row since our update: add to it.
        rows.update(n=F("n") + n)


def last_hour(now: datetime | None = None) -> dict[str, list[int]]:
    """Per kind, the counts of the last 60 minutes, oldest first (the current minute last)."""
    now = now or timezone.now()
    end = now.replace(second=0, microsecond=0)
    start = end - timedelta(minutes=59)
    series: dict[str, list[int]] = {CONNECT: [0] * 60, AUTH_FAILURE: [0] * 60}
    rows = MinuteCount.objects.filter(minute__gte=start, minute__lte=end)
    for minute, kind, n in rows.values_list("minute", "kind", "n"):
        index = int((minute - start).total_seconds()) // 60
        series.setdefault(kind, [0] * 60)[index] += n
    return series


def failures_by_code(now: datetime | None = None) -> list[tuple[str, int]]:
    """Auth failures of the last hour per error code, most frequent first."""
    now = now or timezone.now()
    start = now.replace(second=0, microsecond=0) - timedelta(minutes=59)
    totals: Counter[str] = Counter()
    rows = MinuteCount.objects.filter(kind=AUTH_FAILURE, minute__gte=start)
    for code, n in rows.values_list("code", "n"):
        totals[code] += n
    return totals.most_common()
