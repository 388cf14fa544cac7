"""The soak's load generator: thousands of identified sockets, churn, presence, directs, a storm.

Run by bench/soak.py as its own process (the driver owns the server, kills a
worker and samples memory); talks to it over stdin and stdout, one JSON
object per line (everything else goes to stderr):

- out `{"event": "ramped" | "soak_start" | "soak_end" | "storm_ready" | "storm_end" |
  "checked" | "closed", "at": MONOTONIC, ...}` as each phase ends (the driver
  marks its memory samples with them), then `{"event": "result", ...}`;
- in, after `storm_ready`: `{"killed_at": MONOTONIC}` once a worker is gone.

The phases: open SOCKETS sockets and authenticate them (ramped), subscribe the
observers to `presence`, then for DURATION seconds churn (a pool of sockets
of users of their own connect, live a few seconds and close) while `direct`
messages with unique texts go between random online users; then the storm:
every socket closes (or was lost with the killed worker), reconnects and
authenticates again, observers subscribe again; directs once more; then the
checks, and every socket closes.

What is checked here: each `direct` reached every socket of its recipient
that was identified before the `send` and stayed open until GRACE after its
reply exactly once, and no other socket twice; each observer's presence (the
`presence` reply, then the `online`/`offline` pushes applied in order) ends
equal to the users this process holds open sockets of; `GET /api/online/`
lists those users with those socket counts; `send` said online for each
recipient with such a socket; no socket was dropped but those of the killed
worker; no reply broke the protocol.

Bounded: every reply waits REPLY_TIMEOUT, the ramp RAMP_TIMEOUT, the storm
STORM_TIMEOUT, the consistency checks CONSISTENCY_TIMEOUT; the driver kills
this process past its own deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import secrets
import sys
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loadgen import (
    NETWORK_ERRORS,
    BenchError,
    Cred,
    Stats,
    check_auth,
    check_loopback,
    decode,
    encode,
    expect_action,
    load_creds,
    open_socket,
    percentile,
    raise_nofile,
)
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import WebSocketException

REPLY_TIMEOUT = 15.0  # seconds any reply may take, `auth` in the storm included
CLOSE_TIMEOUT = 10.0  # seconds a polite close may take before the socket is aborted
GRACE = 2.0  # seconds after a `send` reply its `direct` may still be on its way
STORM_TIMEOUT = 180.0  # seconds for every socket to be identified again
CONSISTENCY_TIMEOUT = 10.0  # seconds for presence and /api/online/ to agree with the sockets
DRIVER_TIMEOUT = 60.0  # seconds the driver may take to kill a worker
MAX_DIRECTS_IN_FLIGHT = 200
GAP = (0.2, 1.0)  # seconds a churn socket stays away between two lives
RETRY = (0.2, 1.0)  # seconds between two attempts of one storm socket
SAMPLES = 5  # examples shown per failed check
# How a socket ends when its worker goes: no close frame (SIGKILL), or
# uvicorn's 1012 "service restart" (SIGTERM).
WORKER_GONE = {1006, 1012}
RAMP_TIMEOUT = 240.0  # seconds to open every socket


@dataclass(frozen=True)
class Profile:
    """How big and how long one soak is."""

    sockets: int  # open at once: the stable ones plus the churn pool
    churn: int  # sockets of the churn pool, each a user of its own
    users: int  # all users, the churn pool's included
    observers: int  # stable sockets of distinct users subscribed to `presence`
    duration: float  # seconds of churn and directs before the storm
    direct_rate: float  # `send`s per second
    lifetime: tuple[float, float]  # seconds a churn socket lives, uniform
    after: float  # seconds of directs after the storm
    ramp_concurrency: int  # handshakes in flight while opening
    storm_concurrency: int  # reconnects in flight in the storm


FULL = Profile(
    sockets=10_000, churn=500, users=7_000, observers=20, duration=120.0, direct_rate=50.0,
    lifetime=(4.0, 12.0), after=10.0, ramp_concurrency=200, storm_concurrency=500,
)  # fmt: skip
QUICK = Profile(
    sockets=1_000, churn=100, users=700, observers=5, duration=20.0, direct_rate=20.0,
    lifetime=(1.0, 4.0), after=5.0, ramp_concurrency=100, storm_concurrency=200,
)  # fmt: skip


def profile_from(args: argparse.Namespace) -> Profile:
    """The profile of --quick, with --sockets and --duration over it."""
    base = QUICK if args.quick else FULL
    changes: dict[str, Any] = {}
    if args.duration is not None:
        changes["duration"] = args.duration
    if args.sockets is not None and args.sockets != base.sockets:
        # Same shape, scaled: a tenth churns, seven users for ten sockets.
        changes.update(
            sockets=args.sockets, churn=max(1, args.sockets // 20), users=args.sockets * 7 // 10
        )
    return Profile(**{**base.__dict__, **changes})


# --- what happened -------------------------------------------------------------


@dataclass(eq=False)
class Incarnation:
    """One socket's identified life: from its `auth` reply to its end."""

    user_id: int
    authed_at: float
    ended_at: float | None = None
    directs: Counter[str] = field(default_factory=Counter)


@dataclass(eq=False)
class Direct:
    """One `send`, by the unique text it carries."""

    text: str
    to: Cred
    sent_at: float
    replied_at: float | None = None
    online: bool | None = None


@dataclass(eq=False)
class Pending:
    """A request waiting for its reply; ON_REPLY runs in the reader, before the next frame."""

    future: asyncio.Future[dict[str, Any]]
    on_reply: Callable[[dict[str, Any]], None] | None


@dataclass(eq=False)
class Conn:
    """One socket of a slot: its reader, its requests, its identity and presence view."""

    ws: ClientConnection
    pending: dict[int, Pending] = field(default_factory=dict)
    inc: Incarnation | None = None
    view: set[int] | None = None  # user ids online, once subscribed to `presence`
    closing: bool = False  # closed by us
    ended: bool = False
    reader: asyncio.Task[None] | None = None

    @property
    def identified(self) -> bool:
        """Open, authenticated, and not being closed by us."""
        return self.inc is not None and not self.ended and not self.closing


@dataclass(eq=False)
class Slot:
    """A place for one socket at a time, always of the same user."""

    index: int
    cred: Cred
    churn: bool
    observer: bool
    conn: Conn | None = None

    @property
    def identified(self) -> bool:
        """Whether the slot holds an identified socket now."""
        return self.conn is not None and self.conn.identified


@dataclass
class Check:
    """One line of the verdict."""

    name: str
    ok: bool
    detail: str


def emit(event: str, **fields: Any) -> None:
    """One line to the driver."""
    print(json.dumps({"event": event, "at": time.monotonic(), **fields}), flush=True)


def note(text: str) -> None:
    """Progress, on stderr."""
    print(f"soak: {text}", file=sys.stderr, flush=True)


# --- the sockets ---------------------------------------------------------------


class Soak:
    """Every slot, socket and message of one run, and the checks over them."""

    def __init__(self, args: argparse.Namespace, profile: Profile, creds: list[Cred]) -> None:
        if len(creds) < profile.users:
            raise SystemExit(f"the soak needs {profile.users} users, got {len(creds)}")
        self.args, self.profile = args, profile
        self.rng = random.Random(args.seed)
        self.stats = Stats()
        self.refs = itertools.count(1)
        self.nonce = secrets.token_hex(3)
        self.by_id = {c.id: c for c in creds}
        self.slots = layout(profile, creds[: profile.users])
        self.stable = [s for s in self.slots if not s.churn]
        self.incarnations: dict[int, list[Incarnation]] = defaultdict(list)
        self.directs: dict[str, Direct] = {}
        self.strays: Counter[str] = Counter()  # directs no `send` of ours explains
        self.drops: Counter[str] = Counter()  # sockets the server ended, by close code
        self.killing = False  # from `storm_ready` on, a worker may vanish under its sockets
        self.killed_at: float | None = None
        self.lost_with_worker = 0
        self.presence_pushes = 0  # received by every observer socket, all along
        self.figures: dict[str, Any] = {}

    # -- one socket

    async def connect(self, slot: Slot) -> None:
        """Open the slot's socket and authenticate it; its socket is left closed on failure."""
        conn = Conn(await open_socket(self.args.url))
        slot.conn = conn
        conn.reader = asyncio.ensure_future(self.read(conn))

        def identified(frame: dict[str, Any]) -> None:
            check_auth(frame, slot.cred)
            conn.inc = Incarnation(slot.cred.id, time.monotonic())
            self.incarnations[slot.cred.id].append(conn.inc)

        try:
            await self.request(conn, "auth", slot.cred.token, identified)
        except BaseException:
            await self.close(conn)
            raise

    async def close(self, conn: Conn) -> None:
        """Close politely (abort past CLOSE_TIMEOUT) and wait for the reader to end."""
        conn.closing = True
        try:
            await asyncio.wait_for(conn.ws.close(), CLOSE_TIMEOUT)
        except (TimeoutError, OSError, WebSocketException):
            conn.ws.transport.abort()
        if conn.reader is not None:
            await asyncio.wait([conn.reader], timeout=CLOSE_TIMEOUT)

    async def disconnect(self, slot: Slot) -> None:
        """Close the slot's socket, if it has one."""
        conn, slot.conn = slot.conn, None
        if conn is not None and not conn.ended:
            await self.close(conn)

    async def request(
        self,
        conn: Conn,
        action: str,
        payload: Any,
        on_reply: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Send one action and wait for its reply (ON_REPLY has seen it first)."""
        ref = next(self.refs)
        pending = Pending(asyncio.get_running_loop().create_future(), on_reply)
        conn.pending[ref] = pending
        try:
            await conn.ws.send(encode(action, payload, ref))
            return await asyncio.wait_for(asyncio.shield(pending.future), REPLY_TIMEOUT)
        finally:
            conn.pending.pop(ref, None)

    async def subscribe(self, conn: Conn) -> None:
        """`presence`: the reply's users are the observer's view from then on."""

        def listed(frame: dict[str, Any]) -> None:
            payload = expect_action(frame, "presence")
            users = payload.get("users") if isinstance(payload, dict) else None
            if not isinstance(users, list):
                raise BenchError("bad_presence_list", json.dumps(frame)[:200])
            conn.view = {u["id"] for u in users if isinstance(u, dict) and "id" in u}

        await self.request(conn, "presence", None, listed)

    # -- what a socket reads

    async def read(self, conn: Conn) -> None:
        """Every frame of one socket, in order, until it ends."""
        try:
            async for raw in conn.ws:
                try:
                    self.on_frame(conn, decode(raw))
                except BenchError as exc:
                    self.stats.error(exc)
        except (OSError, WebSocketException):
            pass
        finally:
            self.ended(conn)

    def on_frame(self, conn: Conn, frame: dict[str, Any]) -> None:
        if "ref" in frame:
            pending = conn.pending.pop(frame["ref"], None)
            if pending is None:
                raise BenchError("unexpected_reply", json.dumps(frame)[:200])
            try:
                if pending.on_reply is not None:
                    pending.on_reply(frame)
                pending.future.set_result(frame)
            except Exception as exc:
                pending.future.set_exception(exc)
            return
        action, payload = frame["action"], frame.get("payload")
        if action == "direct":
            self.on_direct(conn, payload)
        elif action == "presence" and conn.view is not None:
            self.on_presence(conn, payload)
        else:  # `disconnect`, `session`, an error without ref, presence unasked
            raise BenchError(f"unexpected_{action}", json.dumps(frame)[:200])

    def on_direct(self, conn: Conn, payload: Any) -> None:
        text = payload.get("text") if isinstance(payload, dict) else None
        direct = self.directs.get(text) if isinstance(text, str) else None
        if conn.inc is None or direct is None:
            self.strays["unknown"] += 1
            raise BenchError("stray_direct", json.dumps(payload)[:200])
        conn.inc.directs[direct.text] += 1
        if conn.inc.user_id != direct.to.id:
            self.strays["misdelivered"] += 1
        sender = payload.get("from")
        if not isinstance(sender, dict) or sender.get("id") not in self.by_id:
            raise BenchError("bad_direct_from", json.dumps(payload)[:200])

    def on_presence(self, conn: Conn, payload: Any) -> None:
        assert conn.view is not None
        event = payload.get("event") if isinstance(payload, dict) else None
        user = payload.get("user") if isinstance(payload, dict) else None
        if event not in ("online", "offline") or not isinstance(user, dict):
            raise BenchError("bad_presence_push", json.dumps(payload)[:200])
        self.presence_pushes += 1
        if event == "online":
            conn.view.add(user["id"])
        else:
            conn.view.discard(user["id"])

    def ended(self, conn: Conn) -> None:
        """The socket is closed: its life ends, its waiting requests fail."""
        conn.ended = True
        if conn.inc is not None:
            conn.inc.ended_at = time.monotonic()
        for pending in conn.pending.values():
            if not pending.future.done():
                pending.future.set_exception(BenchError("closed", "the socket closed"))
        conn.pending.clear()
        if conn.closing:
            return
        code = conn.ws.close_code
        if self.killing and code in WORKER_GONE:
            self.lost_with_worker += 1
        else:
            self.drops[str(code)] += 1

    # -- phases

    async def ramp(self) -> None:
        """Open and authenticate every slot's socket, a bounded number at a time."""
        started = time.monotonic()
        concurrency = self.profile.ramp_concurrency
        await self.each(self.slots, concurrency, self.connect_counted, RAMP_TIMEOUT)
        took = time.monotonic() - started
        opened = sum(s.identified for s in self.slots)
        self.figures.update(ramp_s=took, ramp_opened=opened, ramp_rate=opened / took)
        note(f"ramp: {opened:,} sockets identified in {took:.1f} s")
        for slot in self.slots:
            if slot.observer and slot.conn is not None:
                await self.counted(self.subscribe(slot.conn))
        emit("ramped", sockets=opened)

    async def connect_counted(self, slot: Slot) -> None:
        await self.counted(self.connect(slot))

    async def counted(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run WORK; a network or protocol failure is counted, not raised."""
        try:
            await work
        except NETWORK_ERRORS as exc:
            self.stats.error(exc)

    async def each(
        self,
        slots: Iterable[Slot],
        concurrency: int,
        work: Callable[[Slot], Coroutine[Any, Any, None]],
        timeout: float = STORM_TIMEOUT,
    ) -> None:
        """WORK on every slot, CONCURRENCY at a time, all within TIMEOUT."""
        gate = asyncio.Semaphore(concurrency)

        async def one(slot: Slot) -> None:
            async with gate:
                await work(slot)

        await asyncio.wait_for(asyncio.gather(*(one(s) for s in slots)), timeout)

    async def soak(self) -> None:
        """Churn and directs for DURATION seconds; every churn slot open again at the end."""
        stop = asyncio.Event()
        churns = [self.churn_slot(s, stop) for s in self.slots if s.churn]
        churning = asyncio.ensure_future(asyncio.gather(*churns))
        emit("soak_start")
        started = time.monotonic()
        sent = await self.directs_for(self.profile.duration)
        stop.set()
        lives = await asyncio.wait_for(churning, REPLY_TIMEOUT + 2 * CLOSE_TIMEOUT)
        took = time.monotonic() - started
        connects = sum(c for c, _ in lives)
        self.figures.update(
            soak_s=took,
            churn_connects=connects,
            churn_disconnects=sum(d for _, d in lives),
            churn_rate=connects / took,
            directs_soak=sent,
        )
        await self.each([s for s in self.slots if not s.identified], 50, self.connect_counted)
        emit("soak_end")
        await asyncio.sleep(GRACE)  # the last directs land before anything closes
        note(f"soak: {connects:,} churn connects, {sent:,} directs in {took:.0f} s")

    async def churn_slot(self, slot: Slot, stop: asyncio.Event) -> tuple[int, int]:
        """Close and reopen one churn socket until STOP: (connects, disconnects)."""
        connects = disconnects = 0
        while not stop.is_set():
            if await self.stopped(stop, self.rng.uniform(*self.profile.lifetime)):
                break
            await self.disconnect(slot)
            disconnects += 1
            if await self.stopped(stop, self.rng.uniform(*GAP)):
                break
            try:
                await self.connect(slot)
                connects += 1
            except NETWORK_ERRORS as exc:
                self.stats.error(exc)
        return connects, disconnects

    @staticmethod
    async def stopped(stop: asyncio.Event, seconds: float) -> bool:
        """Wait SECONDS, or less if STOP is set meanwhile; whether it is."""
        try:
            await asyncio.wait_for(stop.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def directs_for(self, seconds: float) -> int:
        """`send` at DIRECT_RATE between random identified sockets for SECONDS; how many."""
        interval, deadline = 1 / self.profile.direct_rate, time.monotonic() + seconds
        tick, sent = time.monotonic(), 0
        flying: set[asyncio.Task[None]] = set()
        while time.monotonic() < deadline:
            tick += interval
            pair = self.pick_pair()
            if pair is not None and len(flying) < MAX_DIRECTS_IN_FLIGHT:
                task = asyncio.ensure_future(self.send_direct(*pair))
                flying.add(task)
                task.add_done_callback(flying.discard)
                sent += 1
            await asyncio.sleep(max(0.0, tick - time.monotonic()))
        if flying:
            await asyncio.wait(flying, timeout=REPLY_TIMEOUT + 1)
        return sent

    def pick_pair(self) -> tuple[Conn, Cred] | None:
        """A sender among the stable sockets, and a recipient who is online now."""
        for _ in range(10):
            sender = self.rng.choice(self.stable)
            recipient = self.rng.choice(self.slots)
            if sender.identified and recipient.identified:
                assert sender.conn is not None
                return sender.conn, recipient.cred
        return None

    async def send_direct(self, conn: Conn, to: Cred) -> None:
        direct = Direct(f"{self.nonce}-{len(self.directs)}", to, time.monotonic())
        self.directs[direct.text] = direct

        def answered(frame: dict[str, Any]) -> None:
            payload = expect_action(frame, "send")
            if not isinstance(payload, dict) or payload.get("to") != to.username:
                raise BenchError("bad_send_reply", json.dumps(frame)[:200])
            direct.replied_at, direct.online = time.monotonic(), payload.get("online")

        await self.counted(
            self.request(conn, "send", {"to": to.username, "text": direct.text}, answered)
        )

    async def storm(self, stdin: asyncio.StreamReader) -> None:
        """Ask for the kill, then reconnect every slot; the time until all are identified."""
        self.killing = True
        emit("storm_ready")
        line = await asyncio.wait_for(stdin.readline(), DRIVER_TIMEOUT)
        self.killed_at = float(json.loads(line)["killed_at"])
        started = time.monotonic()
        attempts: Counter[int] = Counter()
        identified: list[float] = []

        async def again(slot: Slot) -> None:
            attempts[await self.reconnect(slot, started + STORM_TIMEOUT)] += 1
            identified.append(time.monotonic())
            if slot.observer and slot.conn is not None:
                await self.counted(self.subscribe(slot.conn))

        order = list(self.slots)
        self.rng.shuffle(order)
        try:
            await self.each(order, self.profile.storm_concurrency, again, STORM_TIMEOUT + 10)
        except TimeoutError:
            note("storm: not every socket came back in time")
        back = sum(s.identified for s in self.slots)
        took = (max(identified) - self.killed_at) if identified else None
        self.figures.update(
            storm_sockets=back,
            storm_s=took,
            storm_rate=back / took if took else None,
            storm_retries=sum((n - 1) * k for n, k in attempts.items() if n),
            storm_failed=attempts.get(0, 0),
            storm_p50_s=percentile([t - self.killed_at for t in identified], 50),
            lost_with_worker=self.lost_with_worker,
        )
        emit("storm_end", sockets=back, seconds=took)
        note(f"storm: {back:,} sockets identified again {took or 0:.1f} s after the kill")

    async def reconnect(self, slot: Slot, deadline: float) -> int:
        """Close the slot's socket, open it again until identified; attempts (0: never)."""
        await self.disconnect(slot)
        for attempt in itertools.count(1):
            try:
                await self.connect(slot)
                return attempt
            except NETWORK_ERRORS as exc:
                self.figures.setdefault("storm_errors", Counter())[type(exc).__name__] += 1
                if time.monotonic() >= deadline:
                    self.stats.error(exc)
                    return 0
                await asyncio.sleep(self.rng.uniform(*RETRY))
        raise AssertionError("unreachable")

    # -- checks

    def open_users(self) -> Counter[int]:
        """Identified sockets per user, as this process holds them."""
        return Counter(s.cred.id for s in self.slots if s.identified)

    async def consistency(self, token: str) -> list[Check]:
        """Presence views and /api/online/ against the open sockets, until they agree."""
        started = time.monotonic()
        http = self.args.url.replace("ws", "http", 1).removesuffix("/ws/")
        while True:
            expected = self.open_users()
            views = self.view_mismatches(set(expected))
            try:
                listed = await asyncio.to_thread(sockets_listed, http, token)
                api_diff = diff_counts(expected, listed)
            except OSError as exc:  # urllib's errors, HTTP statuses included
                api_diff = f"GET /api/online/ failed: {exc}"
            done = not views and not api_diff
            if done or time.monotonic() - started > CONSISTENCY_TIMEOUT:
                break
            await asyncio.sleep(0.5)
        took = time.monotonic() - started
        self.figures.update(consistent_after_s=took if done else None, online_users=len(expected))
        observers = [s for s in self.slots if s.observer]
        return [
            Check(
                "presence ends consistent with the open sockets",
                not views,
                f"{len(observers) - len(views)}/{len(observers)} observers see exactly the "
                f"{len(expected):,} users with open sockets"
                + (f"; {'; '.join(views[:SAMPLES])}" if views else f" (after {took:.1f} s)"),
            ),
            Check(
                "/api/online/ lists exactly the open sockets",
                not api_diff,
                api_diff or f"{len(expected):,} users, {sum(expected.values()):,} sockets",
            ),
        ]

    def view_mismatches(self, expected: set[int]) -> list[str]:
        """Observers whose presence view is not EXPECTED, described."""
        wrong = []
        for slot in self.slots:
            if not slot.observer:
                continue
            conn = slot.conn
            if conn is None or not conn.identified or conn.view is None:
                wrong.append(f"observer {slot.cred.username} is not subscribed")
                continue
            missing, extra = expected - conn.view, conn.view - expected
            if missing or extra:
                wrong.append(
                    f"{slot.cred.username}: {len(missing)} missing (e.g. {sorted(missing)[:3]}), "
                    f"{len(extra)} ghosts (e.g. {sorted(extra)[:3]})"
                )
        return wrong

    def direct_checks(self) -> list[Check]:
        """Directs: exactly once on each socket there for them; `send` said those were online."""
        now = time.monotonic()
        expected = lost = duplicated = offline_said = unanswered = 0
        samples: list[str] = []
        said: list[str] = []
        for direct in self.directs.values():
            if direct.replied_at is None:
                unanswered += 1
            stayed_until = (direct.replied_at or now) + GRACE
            there = False
            for inc in self.incarnations[direct.to.id]:
                copies = inc.directs.get(direct.text, 0)
                duplicated += max(0, copies - 1)
                if inc.authed_at > direct.sent_at or (inc.ended_at or now) < stayed_until:
                    continue  # not identified for the whole send: either way is right
                if direct.replied_at is None:
                    continue
                there = True
                expected += 1
                if copies == 0:
                    lost += 1
                    if len(samples) < SAMPLES:
                        samples.append(f"{direct.text} to {direct.to.username}")
            if there and direct.online is not True:
                offline_said += 1
                if len(said) < SAMPLES:
                    said.append(f"{direct.text} to {direct.to.username} (id {direct.to.id})")
        misdelivered = self.strays["misdelivered"]
        self.figures.update(
            directs_sent=len(self.directs),
            directs_answered=len(self.directs) - unanswered,
            deliveries_expected=expected,
            deliveries_lost=lost,
            deliveries_duplicated=duplicated,
        )
        ok = not (lost or duplicated or misdelivered or self.strays["unknown"])
        detail = (
            f"{expected - lost:,}/{expected:,} deliveries to sockets there for them; "
            f"{lost} lost, {duplicated} duplicated, {misdelivered} to the wrong user, "
            f"{self.strays['unknown']} unknown; {unanswered} sends unanswered (not counted)"
        )
        if samples:
            detail += "; lost: " + ", ".join(samples)
        answered = len(self.directs) - unanswered
        online = (
            f"{offline_said} of {answered:,} answers said online: false for a recipient with "
            "an identified socket"
        )
        if said:
            online += "; e.g. " + ", ".join(said)
        return [
            Check("every direct to an online user arrived exactly once", ok, detail),
            Check(
                "`send` answers online: true for every online recipient", not offline_said, online
            ),
        ]

    def drop_check(self) -> Check:
        """No socket ended by the server but those of the killed worker; no protocol error."""
        dropped = sum(self.drops.values())
        errors = self.stats.error_count
        detail = (
            f"{self.lost_with_worker:,} lost with the killed worker; "
            f"{dropped} others closed by the server{by_kind(self.drops)}; "
            f"{errors} errors{by_kind(self.stats.errors)}"
        )
        if self.stats.samples:
            detail += "; e.g. " + " | ".join(self.stats.samples[:2])
        return Check(
            "no other socket dropped, no protocol error", not dropped and not errors, detail
        )

    async def close_all(self) -> None:
        """Close every socket; how long it took goes to the figures."""
        started = time.monotonic()
        await self.each(self.slots, self.profile.storm_concurrency, self.disconnect)
        self.figures["close_s"] = time.monotonic() - started


def layout(profile: Profile, creds: list[Cred]) -> list[Slot]:
    """The slots: stable ones round-robin over most users, then one per churn user.

    So some users hold two sockets (a `direct` reaches both; `offline` waits for
    the last), others one; churn users come and go as a whole (presence moves).
    """
    stable_users, churn_users = creds[: -profile.churn], creds[-profile.churn :]
    stable = profile.sockets - profile.churn
    if profile.observers > len(stable_users) or stable <= 0:
        raise SystemExit("the profile has too few stable users for its observers")
    slots = [
        Slot(i, stable_users[i % len(stable_users)], churn=False, observer=i < profile.observers)
        for i in range(stable)
    ]
    slots += [
        Slot(stable + i, cred, churn=True, observer=False) for i, cred in enumerate(churn_users)
    ]
    return slots


def by_kind(counts: Counter[str]) -> str:
    """The counts in brackets, most first; nothing when there are none."""
    return f" ({', '.join(f'{k}: {n}' for k, n in counts.most_common())})" if counts else ""


def online_users(http: str, token: str) -> list[dict[str, Any]]:
    """The users of the staff API's `GET /api/online/` on the server at HTTP (a base URL)."""
    request = urllib.request.Request(
        f"{http}/api/online/", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["users"]


def sockets_listed(http: str, token: str) -> Counter[int]:
    """Sockets per user, as `GET /api/online/` lists them."""
    return Counter({u["id"]: u["connections"] for u in online_users(http, token)})


def diff_counts(expected: Counter[int], listed: Counter[int]) -> str:
    """What differs between two sockets-per-user counts, in words; empty if nothing."""
    missing = sorted(set(expected) - set(listed))
    ghosts = sorted(set(listed) - set(expected))
    counts = sorted(u for u in set(expected) & set(listed) if expected[u] != listed[u])
    if not (missing or ghosts or counts):
        return ""
    return (
        f"{len(missing)} users missing (e.g. {missing[:3]}), {len(ghosts)} ghosts "
        f"(e.g. {ghosts[:3]}), {len(counts)} with other socket counts (e.g. "
        + ", ".join(f"{u}: {expected[u]} open, {listed[u]} listed" for u in counts[:3])
        + ")"
    )


# --- entry point ---------------------------------------------------------------


async def stdin_stream() -> asyncio.StreamReader:
    """This process's stdin as a stream (the driver's answers)."""
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every phase in order; the figures and the checks."""
    profile = profile_from(args)
    soak = Soak(args, profile, load_creds(args.creds))
    stdin = await stdin_stream()
    token = Path(args.staff_token_file).read_text(encoding="ascii").strip()
    await soak.ramp()
    await soak.soak()
    await soak.storm(stdin)
    soak.figures["directs_after"] = await soak.directs_for(profile.after)
    await asyncio.sleep(GRACE)
    # The killed worker's rows must have expired (and been purged) first.
    await asyncio.sleep(max(0.0, (soak.killed_at or 0) + args.expiry - time.monotonic()))
    checks = await soak.consistency(token)
    checks += [*soak.direct_checks(), soak.drop_check()]
    emit("checked")
    await soak.close_all()
    emit("closed")
    soak.figures.update(
        presence_pushes_per_observer=soak.presence_pushes / profile.observers,
        profile=profile.__dict__,
    )
    return {"figures": soak.figures, "checks": [asdict(c) for c in checks]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="ws://127.0.0.1:PORT/ws/")
    p.add_argument("--creds", required=True, help="JSON credentials file (bench/project_users.py)")
    p.add_argument(
        "--staff-token-file", required=True, help="a staff access token, for /api/online/"
    )
    p.add_argument(
        "--expiry", type=float, required=True, help="seconds after the kill before checking"
    )
    p.add_argument("--quick", action="store_true")
    p.add_argument("--sockets", type=int)
    p.add_argument("--duration", type=float)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the soak's load; the result is the last line on stdout."""
    args = parse_args(argv)
    check_loopback(args.url)
    profile = profile_from(args)
    raise_nofile(profile.sockets + profile.storm_concurrency + 1024)
    try:
        import uvloop

        runner: Callable[..., Any] = uvloop.run
    except ImportError:
        runner = asyncio.run
    result = runner(run(args))
    emit("result", **result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
