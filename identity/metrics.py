"""Operator metrics: what the socket path counts, and the Prometheus exposition.

One process (runserver, tests) keeps its metrics in a registry of its own.
`manage.py serve` runs several uvicorn workers and a scrape lands on one of
them, so it puts prometheus_client in multiprocess mode before the workers
start (`fresh_multiprocess_dir`): each worker writes its values to files in
PROMETHEUS_MULTIPROC_DIR and the worker that answers a scrape reads every
worker's files. Gauges of open sockets add up the living workers only: a
scrape gives back the gauge files of workers that are gone.

What it costs the socket path (measured with timeit, docs/deploy.md): a
prometheus_client inc() takes about 0.5 µs, 1.3-1.9 µs in multiprocess mode
(an mmap write under a lock). That is noise beside a connect or an `auth`,
which pay it directly; frames in and out, the hot path, only add one to a
plain int (`FRAMES`), which `publish` copies into the counters on the
heartbeat and before a scrape.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import ParamSpec, TypeVar

from django.db import DatabaseError
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from identity import registry
from identity.layers import LayerUnavailable
from identity.protocol import ErrorCode, Reason, Refusal

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# prometheus_client chose its mode when it was imported, from the same variable.
MULTIPROCESS = MULTIPROC_ENV in os.environ

# Connect outcomes besides the guard's refusals (identity.guard's Refusal codes).
ACCEPTED = "accepted"
ORIGIN_REFUSED = "origin_refused"
# Auth outcomes besides the failure codes.
SUCCESS = "success"
# Rate limits besides the guard's refusals: the per-socket frame bucket and the
# sign-in throttles (identity.throttling's scopes).
SOCKET_FRAMES = "socket_frames"
SIGN_IN_ACCOUNT = "login_account"
SIGN_IN_ADDRESS = "login_address"
# Services whose errors a socket meets.
CHANNEL_LAYER = "channel_layer"
DATABASE = "database"

AUTH_FAILURES = (
    ErrorCode.TOKEN_INVALID,
    ErrorCode.TOKEN_EXPIRED,
    ErrorCode.TOKEN_WRONG_TYPE,
    ErrorCode.TOKEN_REVOKED,
    ErrorCode.USER_INACTIVE,
    ErrorCode.USER_NOT_FOUND,
    ErrorCode.IDENTITY_MISMATCH,
    ErrorCode.CONNECTION_LIMIT,
    ErrorCode.SERVICE_UNAVAILABLE,
)
# Seconds: an `auth` on SQLite takes about a millisecond, one waiting on a
# stalled channel layer up to its 2 s bound.
AUTH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# Plain mode: the metrics live here. Multiprocess mode: in files, read per scrape.
_local = None if MULTIPROCESS else CollectorRegistry()

SOCKETS_OPEN = Gauge(
    "identity_sockets_open",
    "WebSocket connections open now, with an identity or not.",
    multiprocess_mode="livesum",
    registry=_local,
)
SOCKETS_AUTHENTICATED = Gauge(
    "identity_sockets_authenticated",
    "WebSocket connections open now with an identity (after a successful auth).",
    multiprocess_mode="livesum",
    registry=_local,
)
_connects = Counter(
    "identity_connects",
    "WebSocket handshakes by outcome: accepted, or the reason it was refused.",
    ["outcome"],
    registry=_local,
)
_auths = Counter(
    "identity_auth",
    "Answered auth actions by outcome: success, or the error code of the refusal.",
    ["outcome"],
    registry=_local,
)
AUTH_SECONDS = Histogram(
    "identity_auth_seconds",
    "Seconds from an auth action to its answer being ready, successful or not.",
    buckets=AUTH_BUCKETS,
    registry=_local,
)
_disconnects = Counter(
    "identity_disconnects",
    "Sockets the server closed with a disconnect push, by reason; kicked, token_revoked, "
    "user_inactive and user_deleted are withdrawals of the identity.",
    ["reason"],
    registry=_local,
)
_rate_limited = Counter(
    "identity_rate_limited",
    "Refusals by a rate limit: frames over a socket's allowance, handshakes over an "
    "address's (429), sign-ins over an account's or address's failures (429).",
    ["limit"],
    registry=_local,
)
_service_errors = Counter(
    "identity_service_errors",
    "Channel-layer and database errors met while serving sockets.",
    ["service"],
    registry=_local,
)
_frames_received = Counter(
    "identity_frames_received",
    "WebSocket frames received from clients.",
    registry=_local,
)
_frames_sent = Counter(
    "identity_frames_sent",
    "WebSocket text frames sent to clients (replies, errors and pushes).",
    registry=_local,
)


class _Labelled:
    """A labelled counter with its children kept: labels() costs more than the inc."""

    __slots__ = ("children", "counter")

    def __init__(self, counter: Counter, values: Iterable[str]) -> None:
        self.counter = counter
        # Created up front so each series starts at 0 (rate() needs a start).
        self.children = {str(value): counter.labels(str(value)) for value in values}

    def inc(self, value: str) -> None:
        child = self.children.get(value)
        if child is None:
            child = self.children[value] = self.counter.labels(value)
        child.inc()


CONNECTS = _Labelled(_connects, [ACCEPTED, *Refusal, ORIGIN_REFUSED, ErrorCode.SERVICE_UNAVAILABLE])
AUTHS = _Labelled(_auths, [SUCCESS, *AUTH_FAILURES])
DISCONNECTS = _Labelled(_disconnects, Reason)
RATE_LIMITED = _Labelled(_rate_limited, [SOCKET_FRAMES, *Refusal, SIGN_IN_ACCOUNT, SIGN_IN_ADDRESS])
SERVICE_ERRORS = _Labelled(_service_errors, [CHANNEL_LAYER, DATABASE])


class FrameCounts:
    """Frames in and out of this process: plain ints, the only cost per frame."""

    __slots__ = ("received", "sent")

    def __init__(self) -> None:
        self.received = self.sent = 0


FRAMES = FrameCounts()
_published = FrameCounts()
# The heartbeat (event loop) and a scrape (a request's thread) may publish at once.
_publish_lock = threading.Lock()


def publish() -> None:
    """Copy the frame counts into the counters (the heartbeat, and before a scrape)."""
    with _publish_lock:
        received, sent = FRAMES.received, FRAMES.sent
        _frames_received.inc(received - _published.received)
        _frames_sent.inc(sent - _published.sent)
        _published.received, _published.sent = received, sent


def refused(refusal: Refusal) -> None:
    """A handshake refused with a 429 (identity.guard): a connect outcome and a rate limit."""
    CONNECTS.inc(refusal)
    RATE_LIMITED.inc(refusal)


CAUSES_LOOKED_AT = 5  # a chain is short; a hand-made __cause__ loop must not hang


def service_error(exc: BaseException) -> None:
    """Count EXC (or what it was raised from) as a channel-layer or database error."""
    cause: BaseException | None = exc
    for _ in range(CAUSES_LOOKED_AT):
        if cause is None:
            return
        if isinstance(cause, LayerUnavailable):
            SERVICE_ERRORS.inc(CHANNEL_LAYER)
            return
        if isinstance(cause, DatabaseError):
            SERVICE_ERRORS.inc(DATABASE)
            return
        cause = cause.__cause__ or cause.__context__


P = ParamSpec("P")
R = TypeVar("R")


def timed(histogram: Histogram) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Decorate a coroutine function: HISTOGRAM observes how long each call took, raised or not."""

    def decorator(function: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(function)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            started = time.perf_counter()
            try:
                return await function(*args, **kwargs)
            finally:
                histogram.observe(time.perf_counter() - started)

        return wrapper

    return decorator


class OnlineUsers:
    """Users with a live socket on any process: the registry's answer at scrape time."""

    def collect(self) -> Iterator[Metric]:
        try:
            online = registry.online_count()
        except Exception:
            # The other metrics still say what the process sees (its errors too).
            logger.warning("metrics: could not count the users online", exc_info=True)
            return
        yield GaugeMetricFamily(
            "identity_users_online",
            "Users with at least one authenticated socket, on every server process.",
            value=online,
        )


if _local is not None:
    _local.register(OnlineUsers())


def exposition(accept: str | None) -> tuple[bytes, str]:
    """The metrics in the format the Accept header asks for, and its content type."""
    publish()
    try:
        encoder, content_type = choose_encoder(accept or "")
    except (TypeError, ValueError):
        # prometheus_client compares the version it cannot parse (`version=abc`)
        # with a tuple and raises: a scraper's bad header is no server error.
        encoder, content_type = choose_encoder("")  # the text format
    return encoder(_local if _local is not None else _gathered()), content_type


def _gathered() -> CollectorRegistry:
    """Every worker's files (multiprocess mode), plus the registry's count of users online."""
    path = os.environ[MULTIPROC_ENV]
    forget_dead_workers(path)
    gathered = CollectorRegistry()
    multiprocess.MultiProcessCollector(gathered, path)
    gathered.register(OnlineUsers())
    return gathered


# Files of the gauges that count living processes only: gauge_livesum_<pid>.db.
_LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db")


def forget_dead_workers(path: str) -> list[int]:
    """Give back the live-gauge files of workers that are gone; their pids.

    uvicorn offers no hook when a worker exits or is replaced, and a worker
    cannot do it itself: uvicorn re-raises SIGTERM after its graceful shutdown,
    so atexit never runs, and nothing runs after a SIGKILL.
    """
    pids = {int(m.group(1)) for name in os.listdir(path) if (m := _LIVE_GAUGE_FILE.fullmatch(name))}
    dead = sorted(pid for pid in pids if not _alive(pid))
    for pid in dead:
        multiprocess.mark_process_dead(pid, path)
    return dead


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process holds that pid now
    return True


def fresh_multiprocess_dir() -> str:
    """A new, empty directory for the workers' metric files, made before they start.

    Under $TMPDIR/identity-metrics-<uid>/, named after this process, which
    becomes uvicorn's supervisor (exec keeps the pid); directories left by
    servers that are no longer running are removed.
    """
    parent = Path(tempfile.gettempdir()) / f"identity-metrics-{os.getuid()}"
    parent.mkdir(mode=0o700, exist_ok=True)
    for old in parent.iterdir():
        pid = old.name.split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=parent)
