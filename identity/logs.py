"""Log lines a client can provoke, at most one per kind per interval.

Anything an anonymous client can trigger at will (a frame the server cannot
read, a connection reset mid-send, pushes dropped for a reader that does not
read) is logged as one line, never a traceback, and at most once per
THROTTLE_INTERVAL per kind; the next line says how many were left out.
"""

from __future__ import annotations

import logging
import time

THROTTLE_INTERVAL = 10.0  # seconds

_last: dict[str, tuple[float, int]] = {}  # kind -> (when last logged, left out since)


def throttled(logger: logging.Logger, kind: str, message: str, *args: object) -> bool:
    """Log MESSAGE at WARNING unless KIND was logged within the interval; True if logged."""
    now = time.monotonic()
    last, left_out = _last.get(kind, (-THROTTLE_INTERVAL, 0))
    if now - last < THROTTLE_INTERVAL:
        _last[kind] = (last, left_out + 1)
        return False
    _last[kind] = (now, 0)
    if left_out:
        message += f" ({left_out} more like it in the last {THROTTLE_INTERVAL:.0f} s)"
    logger.warning(message, *args)
    return True


def reset() -> None:
    """Forget what was logged (tests)."""
    _last.clear()
