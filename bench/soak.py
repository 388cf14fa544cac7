"""`make soak`: two production workers on PostgreSQL and Redis, thousands of sockets, a storm.

Issue 12, item 4. The production shape (docs/deploy.md): `manage.py serve
--workers 2`, uvicorn workers sharing the local PostgreSQL (a database of its
own, `identity_soak`, dropped and created here, with the soak's users) and
Redis (channels under a prefix of their own). A second process,
bench/soak_client.py, holds SOCKETS identified sockets with a steady churn,
presence observers and `direct` messages for DURATION seconds. Then this
process kills one worker (SIGKILL: uvicorn's supervisor starts another) and
every socket reconnects and authenticates again: the storm. Meanwhile it
samples each worker's RSS from /proc; once the client has closed every
socket it waits for `GET /api/online/` to be empty. Prints the figures and
the checks as Markdown tables (also in bench/results/soak.json); exits 1 if a
check failed.

Run: .venv/bin/python bench/soak.py [--quick] [--duration 120] [--sockets 10000]
[--signal KILL|TERM] [--heartbeat 5,15] [--seed N]: TERM stops the worker
gracefully instead; --heartbeat sets IDENTITY_HEARTBEAT_INTERVAL,_EXPIRY.
Needs PostgreSQL at 127.0.0.1:5432 (user postgres) and Redis at
127.0.0.1:6379. Full size takes 5 to 6 minutes, --quick about one.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import run
import soak_client
import workers
from loadgen import proc_rss_kib

DATABASE = "identity_soak"
SOAK_ENV = {
    # Users hold two sockets, and one address plays every client: every
    # per-user and per-address limit off (bench_env turns off the others).
    "IDENTITY_MAX_CONNECTIONS_PER_USER": "0",
    "IDENTITY_HANDSHAKE_BURST": "0",
}
WORKERS = 2
STAFF = "soak-staff"
SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM}
SAMPLE_EVERY = 2.0  # seconds between RSS samples of each worker
FLAT = 0.05  # a worker's RSS is flat if the soak's second half peaks within 5% of the first
GHOST_TIMEOUT = 180.0  # seconds for /api/online/ to empty at all
START_TIMEOUT = 60.0  # seconds for both workers to answer
CLIENT_SLACK = 600.0  # seconds the client may take beyond DURATION (ramp, storm, checks)
RESULTS = run.BENCH / "results" / "soak.json"
SECRETS = ("creds.json", "staff-token")  # in the work directory: tokens
MIB = 1024  # KiB
# identity.consumers' warning for a push it dropped, as identity.logs.throttled folds them.
DROPPED = re.compile(r"is backed up: a '[^']*' push was dropped(?: \((\d+) more like it)?")


@dataclass(frozen=True)
class Heartbeat:
    """The registry heartbeat the workers run with (IDENTITY_HEARTBEAT_*), in seconds.

    The production defaults unless --heartbeat says otherwise: the storm's
    checks are about a deployment as shipped.
    """

    interval: float = 5
    expiry: float = 15

    @property
    def settled(self) -> float:
        """After a kill: the expiry, a living worker's next beat (its purge), a margin."""
        return self.expiry + 2 * self.interval + 1

    @property
    def env(self) -> dict[str, str]:
        return {
            "IDENTITY_HEARTBEAT_INTERVAL": f"{self.interval:g}",
            "IDENTITY_HEARTBEAT_EXPIRY": f"{self.expiry:g}",
        }


def heartbeat(text: str) -> Heartbeat:
    """--heartbeat INTERVAL,EXPIRY."""
    interval, _, expiry = text.partition(",")
    try:
        return Heartbeat(float(interval), float(expiry))
    except ValueError:
        raise argparse.ArgumentTypeError("INTERVAL,EXPIRY in seconds, e.g. 5,15") from None


# --- the server ----------------------------------------------------------------


@dataclass
class Server:
    """`manage.py serve --workers 2`: its supervisor's PID, port and log."""

    pid: int
    port: int
    log: Path

    @property
    def http(self) -> str:
        return f"http://{run.HOST}:{self.port}"

    def workers(self) -> list[int]:
        """The uvicorn workers now: children of the supervisor made by multiprocessing's spawn."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                status = (entry / "status").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if f"\nPPid:\t{self.pid}\n" in status and b"spawn_main" in cmdline:
                found.append(int(entry.name))
        return sorted(found)


@contextmanager
def serving(env: dict[str, str], log: Path) -> Iterator[Server]:
    """bench/workers.py's server, once both workers answer."""
    with workers.serving(WORKERS, env, log) as (port, pid):
        server = Server(pid, port, log)
        wait_for_workers(server)
        yield server


def wait_for_workers(server: Server) -> None:
    """Block until both workers run and one answers /healthz."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if len(server.workers()) == WORKERS:
            try:
                urllib.request.urlopen(server.http + "/healthz", timeout=5).close()
                return
            except OSError:
                pass
        time.sleep(0.2)
    raise RuntimeError(f"the workers did not start:\n{run.tail(server.log)}")


def make_staff(env: dict[str, str]) -> str:
    """A superuser for the staff API, made by `createsuperuser`; its password."""
    password = secrets.token_urlsafe(24)
    command = [str(run.VENV_BIN / "python"), "manage.py", "createsuperuser", "--noinput"]
    command += ["--username", STAFF, "--email", "soak@example.com"]
    run.run_checked(command, {**env, "DJANGO_SUPERUSER_PASSWORD": password})
    return password


def staff_token(server: Server, password: str, path: Path) -> str:
    """Sign the staff user in through `POST /api/token/`; the access token, also in PATH."""
    request = urllib.request.Request(
        server.http + "/api/token/",
        data=json.dumps({"username": STAFF, "password": password}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        token = json.load(response)["access"]
    path.touch(mode=0o600)
    path.write_text(token, encoding="ascii")
    return token


def ghosts_after_close(
    server: Server, token: str, beat: Heartbeat
) -> tuple[list[dict[str, Any]], float]:
    """Who `/api/online/` still lists once every socket closed; when it emptied (or gave up).

    The workers finish the closes after the client has seen them: a list that
    still shrinks is work in progress. A ghost is a user listed when it has
    not changed for longer than a killed process's rows may count, or
    after GHOST_TIMEOUT.
    """
    started = changed = time.monotonic()
    listed: list[dict[str, Any]] = []
    while True:
        users, now = soak_client.online_users(server.http, token), time.monotonic()
        if users != listed:
            listed, changed = users, now
        if not users or now - changed > beat.settled or now - started > GHOST_TIMEOUT:
            return users, now - started
        time.sleep(0.5)


# --- memory ----------------------------------------------------------------------


@dataclass
class Memory:
    """RSS samples of every worker, by PID: (monotonic time, KiB)."""

    samples: dict[int, list[tuple[float, int]]] = field(default_factory=dict)
    last: float = 0.0

    def sample(self, pids: list[int], force: bool = False) -> None:
        """One sample per worker, at most every SAMPLE_EVERY seconds unless FORCE."""
        now = time.monotonic()
        if not force and now - self.last < SAMPLE_EVERY:
            return
        self.last = now
        for pid in pids:
            rss = proc_rss_kib(pid)
            if rss is not None:
                self.samples.setdefault(pid, []).append((now, rss))

    def between(self, pid: int, start: float, end: float) -> list[int]:
        """The RSS samples of PID from START to END."""
        return [rss for at, rss in self.samples.get(pid, []) if start <= at <= end]

    def at(self, pid: int, moment: float) -> int | None:
        """The first RSS sample of PID at or after MOMENT."""
        return next((rss for at, rss in self.samples.get(pid, []) if at >= moment), None)


def flat(memory: Memory, pid: int, start: float, end: float) -> tuple[bool | None, str]:
    """Whether PID's RSS in the soak's second half stays within FLAT of the first half's peak."""
    middle = (start + end) / 2
    first, second = memory.between(pid, start, middle), memory.between(pid, middle, end)
    if not first or not second:
        return None, f"worker {pid}: too few samples"
    growth = max(second) / max(first) - 1
    text = (
        f"worker {pid}: {mib(first[0])} at the start, first-half peak {mib(max(first))}, "
        f"second-half peak {mib(max(second))} ({growth:+.1%})"
    )
    return growth <= FLAT, text


def mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / MIB:,.0f} MiB"


# --- the run ---------------------------------------------------------------------


@dataclass
class Run:
    """What the driver saw: the client's events and result, the kill, memory."""

    marks: dict[str, float] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)
    memory: Memory = field(default_factory=Memory)
    first_workers: list[int] = field(default_factory=list)
    killed: int | None = None
    killed_at: float | None = None
    replacement: int | None = None
    replaced_after: float | None = None
    log_offset: int = 0  # the server log's size when the client started: startup is not news
    ghosts: tuple[list[dict[str, Any]], float] = ([], 0.0)  # still online after the close; when


def client_command(args: argparse.Namespace, server: Server, creds: Path, token: Path) -> list[str]:
    """The load generator's command line."""
    cmd = [
        str(run.VENV_BIN / "python"), str(run.BENCH / "soak_client.py"),
        "--url", f"ws://{run.HOST}:{server.port}/ws/", "--creds", str(creds),
        "--staff-token-file", str(token),
        "--expiry", str(args.heartbeat.settled), "--seed", str(args.seed),
    ]  # fmt: skip
    for name in ("sockets", "duration"):
        if getattr(args, name) is not None:
            cmd += [f"--{name}", str(getattr(args, name))]
    return cmd + (["--quick"] if args.quick else [])


def lines_of(stream: IO[str]) -> queue.Queue[str | None]:
    """A queue of the lines of STREAM (None at its end), read by a thread."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def drive(args: argparse.Namespace, server: Server, cmd: list[str], duration: float) -> Run:
    """Run the client (CMD) to its end: sample memory, kill a worker when it asks."""
    seen = Run(first_workers=server.workers(), log_offset=server.log.stat().st_size)
    client = subprocess.Popen(
        cmd, cwd=run.ROOT, env=client_env(),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert client.stdin is not None and client.stdout is not None
    lines, deadline = lines_of(client.stdout), time.monotonic() + duration + CLIENT_SLACK
    try:
        while time.monotonic() < deadline:
            seen.memory.sample(server.workers())
            watch_replacement(server, seen)
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if line is None:
                break
            on_event(json.loads(line), seen, server, client.stdin, args)
        else:
            raise RuntimeError(f"the soak client ran over {duration + CLIENT_SLACK:.0f} s")
        if client.wait(timeout=30) != 0:
            raise RuntimeError(f"the soak client exited with {client.returncode}")
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(timeout=10)
    return seen


def client_env() -> dict[str, str]:
    """The client's environment: no proxy, none of the server's settings."""
    env = dict(os.environ)
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env.pop(name, None)
    return env


def on_event(
    event: dict[str, Any], seen: Run, server: Server, stdin: IO[str], args: argparse.Namespace
) -> None:
    """A phase of the client ended; after `storm_ready`, kill a worker and say when."""
    name = event["event"]
    seen.marks[name] = event["at"]
    seen.memory.sample(server.workers(), force=True)
    print(f"[soak] {name}", file=sys.stderr, flush=True)
    if name == "storm_ready":
        seen.killed = seen.first_workers[0]
        os.kill(seen.killed, SIGNALS[args.signal])
        seen.killed_at = time.monotonic()
        stdin.write(json.dumps({"killed_at": seen.killed_at}) + "\n")
        stdin.flush()
    elif name == "result":
        seen.result = event


def watch_replacement(server: Server, seen: Run) -> None:
    """Note when uvicorn's supervisor has started a worker in place of the killed one."""
    if seen.killed_at is None or seen.replacement is not None:
        return
    new = [pid for pid in server.workers() if pid not in seen.first_workers]
    if new:
        seen.replacement, seen.replaced_after = new[0], time.monotonic() - seen.killed_at


# --- the report ------------------------------------------------------------------


def memory_rows(seen: Run) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """RSS rows per worker, and the memory check."""
    start, end = seen.marks.get("soak_start", 0.0), seen.marks.get("soak_end", 0.0)
    rows, verdicts, texts = [], [], []
    for pid in [*seen.first_workers, *([seen.replacement] if seen.replacement else [])]:
        role = "killed" if pid == seen.killed else "replacement" if pid == seen.replacement else ""
        soak = seen.memory.between(pid, start, end)
        cells = []
        if soak:
            cells += [
                f"soak start {mib(soak[0])}",
                f"peak {mib(max(soak))}",
                f"end {mib(soak[-1])}",
            ]
        if pid != seen.killed:
            cells += [
                f"after the storm {mib(seen.memory.at(pid, seen.marks.get('storm_end', 0.0)))}",
                f"after the close {mib(seen.memory.at(pid, seen.marks.get('closed', 0.0)))}",
            ]
        if pid != seen.replacement:
            ok, text = flat(seen.memory, pid, start, end)
            verdicts.append(ok)
            texts.append(text)
        rows.append((f"RSS, worker {pid}{f' ({role})' if role else ''}", ", ".join(cells)))
    check = {
        "name": f"memory flat (second half of the soak within {FLAT:.0%} of the first)",
        "ok": bool(verdicts) and all(v is True for v in verdicts),
        "detail": "; ".join(texts),
    }
    return rows, check


def figure_rows(seen: Run, args: argparse.Namespace) -> list[tuple[str, str]]:
    """The figures of the run, as (what, value) rows."""
    f, p = seen.result["figures"], seen.result["figures"]["profile"]
    stable = p["sockets"] - p["churn"]
    storm = f.get("storm_s") or 0.0
    failed = f.get("storm_errors") or {}  # attempts that failed, by exception
    retried = f" ({', '.join(f'{n} {kind}' for kind, n in failed.items())})" if failed else ""
    return [
        ("sockets", f"{p['sockets']:,}: {stable:,} stable over {p['users'] - p['churn']:,} "
                    f"users, {p['churn']:,} churning (a user each); {p['observers']} observe "
                    "presence"),
        ("ramp: open and authenticate all", f"{f['ramp_opened']:,} in {f['ramp_s']:.1f} s, "
                                            f"{f['ramp_rate']:,.0f} connects/s"),
        ("soak", f"{f['soak_s']:.0f} s; churn {f['churn_rate']:.1f} connects/s "
                 f"({f['churn_connects']:,} connects, {f['churn_disconnects']:,} disconnects)"),
        ("directs", f"{f['directs_soak']:,} sent in the soak, {f['directs_after']:,} after the "
                    f"storm; {f['deliveries_expected'] - f['deliveries_lost']:,} of "
                    f"{f['deliveries_expected']:,} expected deliveries arrived"),
        ("presence pushes per observer", f"{f['presence_pushes_per_observer']:,.0f} (mean)"),
        ("worker restarted", f"SIG{args.signal} to worker {seen.killed}; "
                             f"{f['lost_with_worker']:,} sockets lost with it; replacement "
                             f"{seen.replacement or 'never seen'}"
                             + (f", up {seen.replaced_after:.1f} s after"
                                if seen.replaced_after is not None else "")),
        ("reconnect storm: every socket again", f"{f['storm_sockets']:,} re-identified "
                                               f"{storm:.1f} s after the kill, "
                                               f"{p['storm_concurrency']} reconnecting at a time "
                                               f"({f['storm_rate'] or 0:,.0f} connects/s; half "
                                               f"by {f['storm_p50_s'] or 0:.1f} s; "
                                               f"{f['storm_retries']} retries{retried}, "
                                               f"{f['storm_failed']} never)"),
        ("presence and /api/online/ consistent", "after " + (
            f"{f['consistent_after_s']:.1f} s" if f["consistent_after_s"] is not None
            else "never") + f", {f['online_users']:,} users online"),
        ("close every socket", f"{f['close_s']:.1f} s"),
        ("registry heartbeat", f"every {args.heartbeat.interval:g} s, expiry "
                               f"{args.heartbeat.expiry:g} s"),
    ]  # fmt: skip


def log_lines(log: Path, offset: int) -> list[str]:
    """What the server logged from OFFSET on (it logs at WARNING: warnings, errors, tracebacks)."""
    try:
        with log.open("rb") as fh:
            fh.seek(offset)
            text = fh.read().decode(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()]


def dropped_pushes(lines: list[str]) -> int:
    """Pushes the server says it dropped: each line, and the "N more like it" it folded in."""
    found = (DROPPED.search(line) for line in lines)
    return sum(1 + int(m.group(1) or 0) for m in found if m)


def table(head: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    return "\n".join([*lines, *("| " + " | ".join(r) + " |" for r in rows)])


def report(seen: Run, args: argparse.Namespace, log: Path) -> bool:
    """Print the figures and the checks; whether every check passed."""
    mem_rows, mem_check = memory_rows(seen)
    left, took = seen.ghosts
    ghost_check = {
        "name": "no ghost in /api/online/ after every socket closed",
        "ok": not left,
        "detail": (
            f"empty {took:.1f} s after the last close"
            if not left
            else f"{len(left)} users still listed after {took:.0f} s, e.g. {left[:3]}"
        ),
    }
    checks = [*seen.result["checks"], ghost_check, mem_check]
    logged = log_lines(log, seen.log_offset)
    rows = [*figure_rows(seen, args), *mem_rows]
    rows.append((
        "server log during the run",
        f"{len(logged)} lines (it logs at WARNING); {dropped_pushes(logged):,} pushes dropped "
        "for sockets with 100 waiting (its `is backed up` lines)",
    ))  # fmt: skip
    commit = run.source()["commit"] or "?"
    when = time.strftime("%Y-%m-%d %H:%M")
    print(f"\nSoak on {when}, commit {commit[:10]}, {os.cpu_count()} cores, "
          f"{WORKERS} `manage.py serve` workers on PostgreSQL and Redis\n")  # fmt: skip
    print(table(("figure", "value"), rows))
    print()
    verdict = [(c["name"], "PASS" if c["ok"] else "FAIL", c["detail"]) for c in checks]
    print(table(("check", "result", "detail"), verdict))
    for line in dict.fromkeys(logged[:200]):  # each distinct line once
        print(f"server log: {line[:300]}", file=sys.stderr)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {"commit": commit, "figures": seen.result["figures"], "checks": checks,
             "rss": seen.memory.samples, "marks": seen.marks, "killed": seen.killed,
             "replacement": seen.replacement, "server_log": logged[:200]},
            indent=2,
        ),
        encoding="utf-8",
    )  # fmt: skip
    return all(c["ok"] for c in checks)


# --- entry point -----------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1,000 sockets for 20 s")
    p.add_argument("--duration", type=float, help="seconds of churn before the storm")
    p.add_argument("--sockets", type=int, help="sockets open at once")
    p.add_argument("--signal", choices=sorted(SIGNALS), default="KILL", help="for the worker")
    p.add_argument("--seed", type=int, default=secrets.randbelow(1_000_000))
    p.add_argument(
        "--heartbeat", type=heartbeat, default=Heartbeat(), help="INTERVAL,EXPIRY seconds (5,15)"
    )
    args = p.parse_args(argv)
    if args.duration is not None and not 0 < args.duration <= 600:
        p.error("--duration must be in (0, 600]")
    return args


def soak(args: argparse.Namespace, profile: soak_client.Profile, workdir: Path) -> Run:
    """Prepare the database, serve, run the client, wait for /api/online/ to empty."""
    env, creds = workers.prepare(workdir, DATABASE, profile.users, prefix="soak")
    env.update(SOAK_ENV, **args.heartbeat.env)
    password = make_staff(env)
    token_file = workdir / "staff-token"
    with serving(env, workdir / "server.log") as server:
        token = staff_token(server, password, token_file)
        cmd = client_command(args, server, creds, token_file)
        seen = drive(args, server, cmd, profile.duration)
        seen.ghosts = ghosts_after_close(server, token, args.heartbeat)
        seen.memory.sample(server.workers(), force=True)
    return seen


def main(argv: list[str] | None = None) -> int:
    """Prepare, serve, soak, report; 1 if a check failed."""
    args = parse_args(argv)
    profile = soak_client.profile_from(args)
    print(f"[soak] {profile.sockets:,} sockets, {profile.duration:.0f} s, seed {args.seed}",
          file=sys.stderr, flush=True)  # fmt: skip
    run.raise_nofile()  # the server and the client inherit it
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    try:
        with run.exclusive():
            seen = soak(args, profile, workdir)
    finally:
        for secret in SECRETS:  # tokens never outlive the run; the log may
            (workdir / secret).unlink(missing_ok=True)
    log = workdir / "server.log"
    passed = report(seen, args, log)
    if passed:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"\nsome check failed: the server log is in {log}", file=sys.stderr)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
