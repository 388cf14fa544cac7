"""Load generator for the identity protocol: one scenario per process.

Runs as its own process (pinned to another core than the server by
`bench/run.py`), drives `ws://127.0.0.1:PORT/ws/` with the `websockets`
library on asyncio (uvloop when installed), validates every reply against
`shared/PROTOCOL.md`, and prints one JSON result on stdout (progress and error
samples go to stderr).

Scenarios:

- `sessions`: N concurrent workers, each looping connect, auth, one `message`
  echo, close. Reports sessions/s and the session latency.
- `echo`: N authenticated sockets with one `message` in flight each. Reports
  messages/s and the round trip p50/p99.
- `idle`: open and authenticate N sockets, then read the server's VmRSS.
  Reports the RSS growth per socket and the time to open+auth them all.
- `fanout`: one user holds N sockets; another user `send`s to them. Reports
  the time until every socket has the `direct` push.
- `presence`: N users online, each subscribed with `presence`; a churn user
  connects and disconnects. Reports the time until every subscriber has the
  `online` / `offline` push, and the `presence` list round trip.

`fanout` and `presence` print a note and report `skipped` when the server
answers `unknown_action`.

Every loop is bounded by a measuring window and a count, and the target must be
a loopback address.

Usage: `python bench/loadgen.py --url ws://127.0.0.1:8000/ws/ --creds FILE
--scenario echo [--server-pid PID] [--duration 10]`. The credentials file is
`{"users": [{"id": 1, "username": "u", "token": "<access token>"}, ...]}`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import resource
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
PUSH_ACTIONS = {"session", "direct", "presence", "disconnect"}
OPEN_TIMEOUT = 15.0  # seconds for one handshake
REPLY_TIMEOUT = 15.0  # seconds a setup/validation reply may take
SETUP_CONCURRENCY = 100  # handshakes in flight while opening many sockets
MAX_SETUP_SECONDS = 300.0  # opening the sockets of one scenario
MAX_WINDOW_SECONDS = 300.0  # the longest measuring window accepted
MAX_OPERATIONS = 5_000_000  # an upper bound on any measured loop
ERROR_SAMPLES = 5
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A reply broke the protocol; `kind` is the counter it lands in."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


class Unsupported(Exception):
    """The server answered `unknown_action`: the scenario does not apply."""


# What one socket may fail with: counted, never fatal to the scenario.
NETWORK_ERRORS = (BenchError, OSError, WebSocketException, TimeoutError)


@dataclass(frozen=True)
class Cred:
    """One bench user and an access token for them."""

    id: int
    username: str
    token: str

    @property
    def user(self) -> dict[str, Any]:
        """The `USER` object the protocol must send for this user."""
        return {"id": self.id, "username": self.username}


@dataclass
class Stats:
    """Counters shared by every task of one scenario."""

    errors: Counter[str] = field(default_factory=Counter)
    pushes: Counter[str] = field(default_factory=Counter)
    samples: list[str] = field(default_factory=list)

    def error(self, exc: BaseException) -> None:
        """Count one failure and keep the first few for the report."""
        kind = exc.kind if isinstance(exc, BenchError) else type(exc).__name__
        self.errors[kind] += 1
        if len(self.samples) < ERROR_SAMPLES:
            self.samples.append(f"{kind}: {exc}"[:300])

    @property
    def error_count(self) -> int:
        """All failures counted so far."""
        return sum(self.errors.values())


@dataclass
class Ctx:
    """What a scenario needs: target, users, knobs, and where to count."""

    url: str
    creds: list[Cred]
    args: argparse.Namespace
    stats: Stats = field(default_factory=Stats)
    refs: Iterable[int] = field(default_factory=lambda: itertools.count(1))

    def ref(self) -> int:
        """A fresh integer `ref`."""
        return next(self.refs)  # type: ignore[call-overload]


# --- the wire -----------------------------------------------------------------


async def open_socket(url: str) -> ClientConnection:
    """Open one socket: no compression, no client pings, no proxy."""
    return await connect(
        url,
        compression=None,
        ping_interval=None,
        proxy=None,
        open_timeout=OPEN_TIMEOUT,
        close_timeout=5,
        max_size=2**22,
        max_queue=None,
    )


def encode(action: str, payload: Any, ref: int) -> str:
    """One client frame."""
    return json.dumps({"action": action, "payload": payload, "ref": ref})


def decode(raw: str | bytes) -> dict[str, Any]:
    """Parse a server frame; anything but a JSON object is an error."""
    if isinstance(raw, bytes):
        raise BenchError("binary_frame", "the server sent a binary frame")
    try:
        frame = json.loads(raw)
    except ValueError as exc:
        raise BenchError("invalid_json", raw[:80]) from exc
    if not isinstance(frame, dict) or not isinstance(frame.get("action"), str):
        raise BenchError("invalid_envelope", raw[:80])
    return frame


async def recv_reply(ws: ClientConnection, ref: int, stats: Stats) -> dict[str, Any]:
    """Read frames until the reply to `ref`; pushes in between are counted."""
    while True:
        frame = decode(await ws.recv())
        if "ref" not in frame:
            if frame["action"] not in PUSH_ACTIONS:
                raise BenchError("unexpected_frame", json.dumps(frame)[:200])
            stats.pushes[frame["action"]] += 1
            continue
        if frame["ref"] != ref:
            raise BenchError("wrong_ref", f"expected {ref}, got {frame['ref']!r}")
        return frame


async def request(
    ws: ClientConnection, action: str, payload: Any, ctx: Ctx
) -> tuple[dict[str, Any], int]:
    """Send one action and return its reply (not yet validated) and ref."""
    ref = ctx.ref()
    await ws.send(encode(action, payload, ref))
    return await recv_reply(ws, ref, ctx.stats), ref


def expect_action(frame: dict[str, Any], action: str) -> Any:
    """The payload of a reply that must carry `action`."""
    if frame["action"] == "error":
        payload = frame.get("payload") or {}
        code = payload.get("code") if isinstance(payload, dict) else None
        if code == "unknown_action":
            raise Unsupported(f"the server answered unknown_action to {action!r}")
        raise BenchError(f"error:{code}", json.dumps(frame)[:200])
    if frame["action"] != action:
        raise BenchError("wrong_action", f"expected {action}, got {frame['action']}")
    return frame.get("payload")


def check_auth(frame: dict[str, Any], cred: Cred) -> None:
    """A successful `auth` reply for exactly this user."""
    payload = expect_action(frame, "auth")
    if not isinstance(payload, dict) or payload.get("registered") is not True:
        raise BenchError("auth_refused", json.dumps(frame)[:200])
    if payload.get("user") != cred.user:
        raise BenchError("wrong_user", json.dumps(payload.get("user"))[:200])
    if not isinstance(payload.get("expires_at"), int):
        raise BenchError("bad_expires_at", repr(payload.get("expires_at")))


def check_message(frame: dict[str, Any], text: str, cred: Cred) -> None:
    """A `message` echo of `text` from exactly this user."""
    payload = expect_action(frame, "message")
    if payload != {"text": text, "user": cred.user}:
        raise BenchError("bad_echo", json.dumps(payload)[:200])


async def authenticate(ws: ClientConnection, cred: Cred, ctx: Ctx) -> None:
    """`auth` with the user's token and validate the reply."""
    frame, _ = await request(ws, "auth", cred.token, ctx)
    check_auth(frame, cred)


async def echo_once(ws: ClientConnection, cred: Cred, ctx: Ctx, n: int) -> None:
    """One validated `message` round trip."""
    text = f"bench {n}"
    frame, _ = await request(ws, "message", text, ctx)
    check_message(frame, text, cred)


async def open_authenticated(cred: Cred, ctx: Ctx) -> ClientConnection:
    """A socket authenticated as `cred`; closed again if auth fails."""
    ws = await open_socket(ctx.url)
    try:
        await asyncio.wait_for(authenticate(ws, cred, ctx), REPLY_TIMEOUT)
    except BaseException:
        await ws.close()
        raise
    return ws


Opened = list[tuple[Cred, ClientConnection]]


async def open_many(creds: list[Cred], ctx: Ctx) -> Opened:
    """Open and authenticate one socket per entry, a bounded number at a time.

    Returns the (cred, socket) pairs that made it; the failures are counted.
    """
    gate = asyncio.Semaphore(ctx.args.setup_concurrency)

    async def one(cred: Cred) -> tuple[Cred, ClientConnection] | None:
        async with gate:
            try:
                return cred, await open_authenticated(cred, ctx)
            except NETWORK_ERRORS as exc:
                ctx.stats.error(exc)
                return None

    opened = await asyncio.wait_for(asyncio.gather(*(one(c) for c in creds)), MAX_SETUP_SECONDS)
    return [pair for pair in opened if pair is not None]


def sockets_of(opened: Opened) -> list[ClientConnection]:
    """Just the sockets of (cred, socket) pairs."""
    return [ws for _, ws in opened]


async def close_many(sockets: Iterable[ClientConnection], concurrency: int = 200) -> None:
    """Close sockets politely, a bounded number at a time."""
    gate = asyncio.Semaphore(concurrency)

    async def one(ws: ClientConnection) -> None:
        async with gate:
            try:
                await asyncio.wait_for(ws.close(), 10)
            except (TimeoutError, OSError, WebSocketException):
                ws.transport.abort()

    await asyncio.gather(*(one(ws) for ws in sockets))


def creds_cycle(ctx: Ctx, n: int, start: int = 0) -> list[Cred]:
    """N credentials taken round-robin from the user list."""
    pool = ctx.creds
    return [pool[(start + i) % len(pool)] for i in range(n)]


# --- measuring ----------------------------------------------------------------


def proc_cpu_seconds(pid: int | None) -> float | None:
    """User+system CPU seconds of a process (all its threads), from /proc."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # After the ")" of comm: field 3 (state) is index 0, so utime/stime are 11/12.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_kib(pid: int | None) -> int | None:
    """VmRSS of a process in KiB, from /proc/PID/status."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent in processes since boot: user, nice, system, steal.

    Interrupt time is left out: much of it is our own loopback traffic.
    """
    with open("/proc/stat", encoding="ascii") as fh:
        user, nice, system, _idle, _iowait, _irq, _softirq, steal = (
            int(x) for x in fh.readline().split()[1:9]
        )
    return (user + nice + system + steal) / CLK_TCK


class Window:
    """CPU and wall time of the server, this process and the rest over a window.

    `other_cpu` is what every other process on the machine used meanwhile: a
    window where it is high was disturbed and its numbers are suspect.
    """

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.t0 = time.perf_counter()
        self.server0 = proc_cpu_seconds(pid)
        self.self0 = time.process_time()
        self.busy0 = machine_busy_seconds()
        self.elapsed = 0.0
        self.server_cpu: float | None = None
        self.client_cpu = 0.0
        self.other_cpu: float | None = None

    def stop(self) -> None:
        """Close the window: CPU use as a fraction of one core."""
        self.elapsed = time.perf_counter() - self.t0
        span = max(self.elapsed, 1e-9)
        server1 = proc_cpu_seconds(self.pid)
        client = time.process_time() - self.self0
        self.client_cpu = round(client / span, 3)
        if self.server0 is not None and server1 is not None:
            server = server1 - self.server0
            self.server_cpu = round(server / span, 3)
            busy = machine_busy_seconds() - self.busy0
            self.other_cpu = round(max(0.0, busy - server - client) / span, 3)

    def report(self) -> dict[str, Any]:
        """The CPU fields of a scenario result."""
        return {
            "window_s": round(self.elapsed, 3),
            "server_cpu": self.server_cpu,
            "client_cpu": self.client_cpu,
            "other_cpu": self.other_cpu,
        }


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile of a list (sorted here)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def ms(seconds: float | None) -> float | None:
    """Seconds to milliseconds, rounded for the report."""
    return None if seconds is None else round(seconds * 1000, 3)


async def measure_window(args: argparse.Namespace, window: list[Window]) -> None:
    """After the warm-up, open the measuring window, and close it `duration` later."""
    await asyncio.sleep(args.warmup)
    window.append(Window(args.server_pid))
    await asyncio.sleep(args.duration)
    window[0].stop()


async def run_until(
    deadline: float, workers: list[Callable[[], Awaitable[None]]], grace: float = 10.0
) -> None:
    """Run worker coroutines; cancel whatever is still running past the deadline."""
    tasks = [asyncio.ensure_future(w()) for w in workers]
    timeout = max(0.0, deadline - time.perf_counter()) + grace
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# --- scenarios ----------------------------------------------------------------


async def scenario_sessions(ctx: Ctx) -> dict[str, Any]:
    """connect + auth + one echo + close, N workers in a loop."""
    args = ctx.args
    start = time.perf_counter()
    window_start = start + args.warmup
    deadline = window_start + args.duration
    latencies: list[float] = []
    budget = itertools.count()
    window: list[Window] = []

    async def worker(i: int) -> None:
        cred = ctx.creds[i % len(ctx.creds)]
        while time.perf_counter() < deadline and next(budget) < MAX_OPERATIONS:
            t0 = time.perf_counter()
            try:
                ws = await open_authenticated(cred, ctx)
                try:
                    await echo_once(ws, cred, ctx, i)
                finally:
                    await ws.close()
            except NETWORK_ERRORS as exc:
                ctx.stats.error(exc)
                await asyncio.sleep(0.01)  # no hot loop against a refusing server
                continue
            t1 = time.perf_counter()
            if window_start <= t0 and t1 <= deadline:
                latencies.append(t1 - t0)

    workers = [lambda i=i: worker(i) for i in range(args.concurrency)]
    await run_until(deadline, [*workers, lambda: measure_window(args, window)])
    w = window[0]
    return {
        "metrics": {
            "sessions_per_s": round(len(latencies) / args.duration, 1),
            "session_p50_ms": ms(percentile(latencies, 50)),
            "session_p99_ms": ms(percentile(latencies, 99)),
        },
        "counts": {"sessions": len(latencies), "concurrency": args.concurrency},
        **w.report(),
    }


async def scenario_echo(ctx: Ctx) -> dict[str, Any]:
    """N authenticated sockets, one `message` in flight each."""
    args = ctx.args
    creds = creds_cycle(ctx, args.sockets)
    opened = await open_many(creds, ctx)
    sockets = sockets_of(opened)
    if len(sockets) < len(creds):
        print(f"echo: only {len(sockets)}/{len(creds)} sockets opened", file=sys.stderr)
    start = time.perf_counter()
    window_start = start + args.warmup
    deadline = window_start + args.duration
    rtts: list[float] = []
    budget = itertools.count()
    window: list[Window] = []

    async def worker(ws: ClientConnection, cred: Cred) -> None:
        n = 0
        while time.perf_counter() < deadline and next(budget) < MAX_OPERATIONS:
            n += 1
            t0 = time.perf_counter()
            try:
                await echo_once(ws, cred, ctx, n)
            except NETWORK_ERRORS as exc:
                ctx.stats.error(exc)
                if ws.close_code is not None:
                    return
                continue
            t1 = time.perf_counter()
            if window_start <= t0 and t1 <= deadline:
                rtts.append(t1 - t0)

    workers = [lambda ws=ws, c=c: worker(ws, c) for c, ws in opened]
    await run_until(deadline, [*workers, lambda: measure_window(args, window)])
    await close_many(sockets)
    w = window[0]
    return {
        "metrics": {
            "msgs_per_s": round(len(rtts) / args.duration, 1),
            "rtt_p50_ms": ms(percentile(rtts, 50)),
            "rtt_p99_ms": ms(percentile(rtts, 99)),
        },
        "counts": {"messages": len(rtts), "sockets": len(sockets)},
        **w.report(),
    }


async def verify_alive(sockets: list[ClientConnection], ctx: Ctx) -> int:
    """`ping` every socket; return how many answered `pong` correctly."""
    gate = asyncio.Semaphore(ctx.args.setup_concurrency)
    alive = 0

    async def one(ws: ClientConnection) -> None:
        nonlocal alive
        async with gate:
            try:
                frame, _ = await asyncio.wait_for(request(ws, "ping", "alive", ctx), 30)
                if expect_action(frame, "pong") != "alive":
                    raise BenchError("bad_pong", json.dumps(frame)[:200])
                alive += 1
            except NETWORK_ERRORS as exc:
                ctx.stats.error(exc)

    await asyncio.wait_for(asyncio.gather(*(one(ws) for ws in sockets)), MAX_SETUP_SECONDS)
    return alive


async def settle_rss(pid: int | None, seconds: float) -> int | None:
    """Let the server finish its work, then read its RSS."""
    await asyncio.sleep(seconds)
    return proc_rss_kib(pid)


async def scenario_idle(ctx: Ctx) -> dict[str, Any]:
    """Open and authenticate N sockets; RSS growth per socket, time to open."""
    args = ctx.args
    raise_nofile(args.sockets + 1024)
    # Warm the server first, so lazy imports and caches are in the baseline.
    warm = await open_many(creds_cycle(ctx, 50), ctx)
    for i, (cred, ws) in enumerate(warm[:5]):
        await echo_once(ws, cred, ctx, i)
    await close_many(sockets_of(warm))
    base = await settle_rss(args.server_pid, 1.0)
    window = Window(args.server_pid)
    sockets = sockets_of(await open_many(creds_cycle(ctx, args.sockets), ctx))
    window.stop()
    loaded = await settle_rss(args.server_pid, 1.0)
    alive = await verify_alive(sockets, ctx)
    await close_many(sockets)
    per_socket = None
    if base is not None and loaded is not None and sockets:
        per_socket = round((loaded - base) / len(sockets), 2)
    return {
        "metrics": {
            "rss_kib_per_socket": per_socket,
            "open_auth_s": round(window.elapsed, 3),
            "open_auth_per_s": round(len(sockets) / window.elapsed, 1),
        },
        "counts": {
            "requested": args.sockets,
            "opened": len(sockets),
            "alive": alive,
            "rss_base_kib": base,
            "rss_loaded_kib": loaded,
        },
        **window.report(),
    }


class PushCounter:
    """Counts matching pushes across many sockets and signals at a target."""

    def __init__(self) -> None:
        self.key: Any = None
        self.count = 0
        self.target = 0
        self.done = asyncio.Event()

    def arm(self, key: Any, target: int) -> None:
        """Start waiting for `target` pushes matching `key`."""
        self.key, self.count, self.target = key, 0, target
        self.done.clear()

    def hit(self, key: Any) -> None:
        """One push arrived; it counts only if it is the awaited one."""
        if key == self.key:
            self.count += 1
            if self.count >= self.target:
                self.done.set()


async def read_pushes(
    ws: ClientConnection, ctx: Ctx, on_push: Callable[[dict[str, Any]], None]
) -> None:
    """Reader task: every frame on this socket must be a push we understand."""
    try:
        async for raw in ws:
            try:
                frame = decode(raw)
                if "ref" in frame:
                    raise BenchError("unexpected_reply", json.dumps(frame)[:200])
                on_push(frame)
            except BenchError as exc:
                ctx.stats.error(exc)
    except (OSError, WebSocketException) as exc:
        ctx.stats.error(exc)


def skipped(reason: str) -> dict[str, Any]:
    """The result of a scenario the server does not support."""
    print(f"note: skipped: {reason}", file=sys.stderr)
    return {"skipped": reason, "metrics": {}, "counts": {}}


async def scenario_fanout(ctx: Ctx) -> dict[str, Any]:
    """One `send` to a user with N sockets: time until all have `direct`."""
    args = ctx.args
    target, sender = ctx.creds[0], ctx.creds[1]
    sender_ws = await open_authenticated(sender, ctx)
    try:
        frame, _ = await request(sender_ws, "send", {"to": target.username, "text": "probe"}, ctx)
        expect_action(frame, "send")
    except Unsupported as exc:
        await sender_ws.close()
        return skipped(str(exc))
    receivers = sockets_of(await open_many([target] * args.sockets, ctx))
    counter = PushCounter()

    def on_push(frame: dict[str, Any]) -> None:
        if frame["action"] != "direct":
            ctx.stats.pushes[frame["action"]] += 1
            return
        payload = frame.get("payload")
        if not isinstance(payload, dict) or payload.get("from") != sender.user:
            raise BenchError("bad_direct", json.dumps(frame)[:200])
        counter.hit(payload.get("text"))

    readers = [asyncio.ensure_future(read_pushes(ws, ctx, on_push)) for ws in receivers]
    await asyncio.sleep(0.2)  # let the probe's pushes drain before measuring
    latencies: list[float] = []
    window = Window(args.server_pid)
    deadline = time.perf_counter() + args.duration
    for n in range(min(args.count, MAX_OPERATIONS)):
        if time.perf_counter() >= deadline:
            break
        text = f"fan {n}"
        counter.arm(text, len(receivers))
        t0 = time.perf_counter()
        try:
            frame, _ = await request(sender_ws, "send", {"to": target.username, "text": text}, ctx)
            payload = expect_action(frame, "send")
            if payload != {"to": target.username, "online": True}:
                raise BenchError("bad_send_reply", json.dumps(payload)[:200])
            await asyncio.wait_for(counter.done.wait(), REPLY_TIMEOUT)
        except (*NETWORK_ERRORS, Unsupported) as exc:
            ctx.stats.error(exc)
            continue
        latencies.append(time.perf_counter() - t0)
    window.stop()
    for task in readers:
        task.cancel()
    await close_many([*receivers, sender_ws])
    return {
        "metrics": {
            "fanouts_per_s": round(len(latencies) / window.elapsed, 1),
            "fanout_p50_ms": ms(percentile(latencies, 50)),
            "fanout_p99_ms": ms(percentile(latencies, 99)),
        },
        "counts": {"fanouts": len(latencies), "sockets": len(receivers)},
        **window.report(),
    }


def check_presence_list(payload: Any, expected: list[Cred]) -> None:
    """A `presence` reply that lists at least every expected user."""
    if not isinstance(payload, dict) or not isinstance(payload.get("users"), list):
        raise BenchError("bad_presence_list", json.dumps(payload)[:200])
    listed = {u.get("id") for u in payload["users"] if isinstance(u, dict)}
    missing = [c.id for c in expected if c.id not in listed]
    if missing:
        raise BenchError("presence_missing_users", f"{len(missing)} missing, e.g. {missing[:3]}")


async def subscribe_all(sockets: list[ClientConnection], creds: list[Cred], ctx: Ctx) -> None:
    """Send `presence` on every socket (a bounded number at a time)."""
    gate = asyncio.Semaphore(ctx.args.setup_concurrency)

    async def one(ws: ClientConnection) -> None:
        async with gate:
            frame, _ = await asyncio.wait_for(request(ws, "presence", None, ctx), 60)
            check_presence_list(expect_action(frame, "presence"), creds)

    await asyncio.wait_for(asyncio.gather(*(one(ws) for ws in sockets)), MAX_SETUP_SECONDS)


async def scenario_presence(ctx: Ctx) -> dict[str, Any]:
    """N subscribed users online; a churn user comes and goes."""
    args = ctx.args
    if len(ctx.creds) < args.sockets + 1:
        raise SystemExit(f"presence needs {args.sockets + 1} users, got {len(ctx.creds)}")
    online, churn = ctx.creds[: args.sockets], ctx.creds[args.sockets]
    probe = await open_authenticated(online[0], ctx)
    try:
        frame, _ = await request(probe, "presence", None, ctx)
        expect_action(frame, "presence")
    except Unsupported as exc:
        await probe.close()
        return skipped(str(exc))
    await probe.close()
    opened = await open_many(online, ctx)
    sockets, online = sockets_of(opened), [cred for cred, _ in opened]
    if not sockets:
        raise BenchError("no_sockets", "no subscriber could authenticate")
    # Subscribe only once everyone is online, so the setup is not n² pushes.
    await subscribe_all(sockets, online, ctx)
    list_rtts = await presence_list_rtts(sockets[0], online, ctx)
    counter = PushCounter()

    def on_push(frame: dict[str, Any]) -> None:
        if frame["action"] != "presence":
            ctx.stats.pushes[frame["action"]] += 1
            return
        payload = frame.get("payload")
        if not isinstance(payload, dict) or payload.get("event") not in ("online", "offline"):
            raise BenchError("bad_presence_push", json.dumps(frame)[:200])
        if payload.get("user") == churn.user:
            counter.hit(payload["event"])

    readers = [asyncio.ensure_future(read_pushes(ws, ctx, on_push)) for ws in sockets]
    online_lat: list[float] = []
    offline_lat: list[float] = []
    window = Window(args.server_pid)
    deadline = time.perf_counter() + args.duration
    for _ in range(min(args.count, MAX_OPERATIONS)):
        if time.perf_counter() >= deadline:
            break
        try:
            counter.arm("online", len(sockets))
            t0 = time.perf_counter()
            ws = await open_authenticated(churn, ctx)
            await asyncio.wait_for(counter.done.wait(), REPLY_TIMEOUT)
            online_lat.append(time.perf_counter() - t0)
            counter.arm("offline", len(sockets))
            t0 = time.perf_counter()
            await ws.close()
            await asyncio.wait_for(counter.done.wait(), REPLY_TIMEOUT)
            offline_lat.append(time.perf_counter() - t0)
        except NETWORK_ERRORS as exc:
            ctx.stats.error(exc)
    window.stop()
    for task in readers:
        task.cancel()
    await close_many(sockets)
    return {
        "metrics": {
            "list_p50_ms": ms(percentile(list_rtts, 50)),
            "online_p50_ms": ms(percentile(online_lat, 50)),
            "online_p99_ms": ms(percentile(online_lat, 99)),
            "offline_p50_ms": ms(percentile(offline_lat, 50)),
            "offline_p99_ms": ms(percentile(offline_lat, 99)),
        },
        "counts": {
            "subscribers": len(sockets),
            "online_events": len(online_lat),
            "offline_events": len(offline_lat),
        },
        **window.report(),
    }


async def presence_list_rtts(
    ws: ClientConnection, expected: list[Cred], ctx: Ctx, n: int = 20
) -> list[float]:
    """Round trips of the `presence` list with everyone online."""
    rtts = []
    for _ in range(n):
        t0 = time.perf_counter()
        try:
            frame, _ = await asyncio.wait_for(request(ws, "presence", None, ctx), REPLY_TIMEOUT)
            check_presence_list(expect_action(frame, "presence"), expected)
        except NETWORK_ERRORS as exc:
            ctx.stats.error(exc)
            continue
        rtts.append(time.perf_counter() - t0)
    return rtts


SCENARIOS: dict[str, Callable[[Ctx], Awaitable[dict[str, Any]]]] = {
    "sessions": scenario_sessions,
    "echo": scenario_echo,
    "idle": scenario_idle,
    "fanout": scenario_fanout,
    "presence": scenario_presence,
}

DEFAULT_SOCKETS = {"sessions": 50, "echo": 100, "idle": 5000, "fanout": 100, "presence": 1000}


# --- entry point --------------------------------------------------------------


def raise_nofile(wanted: int) -> None:
    """Raise the soft open-files limit as far as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < wanted:
        print(f"warning: open files limited to {target} < {wanted}", file=sys.stderr)


def check_loopback(url: str) -> None:
    """Refuse any target that is not this machine."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or parts.hostname not in LOOPBACK_HOSTS:
        raise SystemExit(f"refusing {url!r}: the load generator only targets loopback")


def load_creds(path: str) -> list[Cred]:
    """Read the credentials file written by `bench/run.py`."""
    with open(path, encoding="utf-8") as fh:
        rows = json.load(fh)["users"]
    return [Cred(int(r["id"]), r["username"], r["token"]) for r in rows]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="ws://127.0.0.1:PORT/ws/")
    p.add_argument("--creds", required=True, help="JSON credentials file")
    p.add_argument("--scenario", required=True, choices=sorted(SCENARIOS))
    p.add_argument("--server-pid", type=int, help="read CPU and RSS of this process")
    p.add_argument("--duration", type=float, default=10.0, help="measuring window, s")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds before the window")
    p.add_argument("--sockets", type=int, help="sockets (sessions: workers)")
    p.add_argument("--count", type=int, default=100_000, help="max fan-outs / churns")
    p.add_argument("--setup-concurrency", type=int, default=SETUP_CONCURRENCY)
    args = p.parse_args(argv)
    if not 0 < args.duration <= MAX_WINDOW_SECONDS:
        p.error(f"--duration must be in (0, {MAX_WINDOW_SECONDS}]")
    if args.sockets is None:
        args.sockets = DEFAULT_SOCKETS[args.scenario]
    args.concurrency = args.sockets
    return args


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    """Run one scenario and build its JSON result."""
    ctx = Ctx(url=args.url, creds=load_creds(args.creds), args=args)
    raise_nofile(args.sockets + 1024)
    started = time.time()
    try:
        result = await SCENARIOS[args.scenario](ctx)
    except Unsupported as exc:
        result = skipped(str(exc))
    except NETWORK_ERRORS as exc:
        # Setup broke (e.g. the first auth was refused): report, don't crash.
        ctx.stats.error(exc)
        result = {"failed": str(exc)[:300], "metrics": {}, "counts": {}}
    result.update(
        scenario=args.scenario,
        started_at=round(started, 3),
        errors=dict(ctx.stats.errors),
        error_count=ctx.stats.error_count,
        error_samples=ctx.stats.samples,
        pushes=dict(ctx.stats.pushes),
    )
    return result


def main(argv: list[str] | None = None) -> int:
    """Entry point: prints the result as one JSON line on stdout."""
    args = parse_args(argv)
    check_loopback(args.url)
    try:
        import uvloop

        runner: Callable[..., Any] = uvloop.run
    except ImportError:
        runner = asyncio.run
    result = runner(main_async(args))
    for sample in result["error_samples"]:
        print(f"error sample: {sample}", file=sys.stderr)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
