"""The benchmark suite: start each server under test, load it, print a table.

For every server and scenario, each run starts a fresh server process on a
free 127.0.0.1 port (pinned to core 0 with `taskset` where it exists), runs
`bench/loadgen.py` against it as a separate process (pinned to core 1), and
stops the server by its PID. The median of the runs, with min-max, goes into a
Markdown table with the project ÷ bare ratio on the same ASGI server, and
everything raw into `bench/results/latest.json`.

Servers: the bare ASGI app (`bench/bare_asgi.py`, the Python ceiling) and the
project (`config.asgi:application`), each on uvicorn and on daphne. The project
runs with its own settings on a separate SQLite file, the per-socket rate limit
off and a bench secret key; its users and tokens are made by
`bench/project_users.py`.

Usage: `python bench/run.py [--quick] [--runs 3] [--server bare-uvicorn,...]
[--scenario echo,...]`.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import jwt

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV_BIN = Path(sys.executable).parent
RESULTS = BENCH / "results" / "latest.json"
HOST = "127.0.0.1"
BENCH_DB = Path("/tmp/identity-bench.sqlite3")
LOCK = Path("/tmp/identity-bench.lock")  # one run at a time: they share BENCH_DB and the cores
TOKEN_LIFETIME = 86_400  # seconds: no token may expire (and push) mid-run
USER_COUNT = 1_101  # presence: 1,000 online + 1 churn user
START_TIMEOUT = 60.0  # seconds for a server to listen
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL
LOADGEN_TIMEOUT = 900.0  # seconds for one loadgen process, setup included
SERVER_CORE, CLIENT_CORE = "0", "1"
DJANGO_APP, BARE_APP = "config.asgi:application", "bench.bare_asgi:app"

SERVERS = ["bare-uvicorn", "bare-daphne", "project-uvicorn", "project-daphne"]
SCENARIOS = ["sessions", "echo", "idle", "fanout", "presence"]


@dataclass(frozen=True)
class Profile:
    """How long and how big each scenario is."""

    duration: float
    warmup: float
    idle_sizes: tuple[int, ...]
    presence_sockets: int
    runs: int


FULL = Profile(duration=10, warmup=2, idle_sizes=(5_000, 10_000), presence_sockets=1_000, runs=3)
QUICK = Profile(duration=3, warmup=1, idle_sizes=(1_000,), presence_sockets=200, runs=1)

# The table's rows, in order, with their labels.
METRICS: dict[str, str] = {
    "sessions_per_s": "sessions/s",
    "session_p50_ms": "session p50 ms",
    "session_p99_ms": "session p99 ms",
    "msgs_per_s": "msgs/s",
    "rtt_p50_ms": "rtt p50 ms",
    "rtt_p99_ms": "rtt p99 ms",
    "rss_kib_per_socket": "RSS KiB/socket",
    "open_auth_s": "open+auth s",
    "open_auth_per_s": "open+auth sockets/s",
    "fanouts_per_s": "fan-outs/s",
    "fanout_p50_ms": "direct→all p50 ms",
    "fanout_p99_ms": "direct→all p99 ms",
    "list_p50_ms": "list p50 ms",
    "online_p50_ms": "online→all p50 ms",
    "online_p99_ms": "online→all p99 ms",
    "offline_p50_ms": "offline→all p50 ms",
    "offline_p99_ms": "offline→all p99 ms",
    "sessions_per_cpu_s": "sessions per server CPU-s",
    "msgs_per_cpu_s": "msgs per server CPU-s",
    "open_auth_per_cpu_s": "open+auth per server CPU-s",
    "server_cpu_pct": "server CPU %",
    "client_cpu_pct": "loadgen CPU %",
}
PER_CPU = {
    "sessions_per_s": "sessions_per_cpu_s",
    "msgs_per_s": "msgs_per_cpu_s",
    "open_auth_per_s": "open_auth_per_cpu_s",
}
CPU_ROWS = {"server_cpu_pct", "client_cpu_pct"}  # no project/bare ratio for these
MIN_CPU_SHARE = 0.05  # below this a per-CPU-second figure is noise
DISTURBED = 0.15  # other processes' CPU share (of one core) that flags a run
SATURATED = 0.95  # the server's CPU share (of its core) at which it is the bottleneck


# --- environment and fixtures -------------------------------------------------


def bench_env(secret: str) -> dict[str, str]:
    """The environment every server and helper runs with."""
    env = dict(os.environ)
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env.pop(name, None)  # loopback only, never through a proxy
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY=secret,
        JWT_SIGNING_KEY=secret,
        JWT_ACCESS_TOKEN_LIFETIME=str(TOKEN_LIFETIME),
        DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
        DATABASE_URL=f"sqlite:///{BENCH_DB}",
        IDENTITY_RATE_LIMIT="0",
        # One load generator plays thousands of clients from one address.
        IDENTITY_MAX_ANONYMOUS_PER_ADDRESS="0",
        IDENTITY_HANDSHAKE_RATE="0",
        IDENTITY_LOGIN_RATE_PER_ACCOUNT="0",
        IDENTITY_LOGIN_RATE_PER_ADDRESS="0",
        IDENTITY_LOG_LEVEL="WARNING",
        BENCH_JWT_KEY=secret,
        PYTHONUNBUFFERED="1",
    )
    env.pop("REDIS_URL", None)  # one process: the in-memory channel layer
    return env


def bare_fixtures(workdir: Path, secret: str) -> Path:
    """Users file for the bare app and its credentials, minted with PyJWT."""
    now = int(time.time())
    users = [{"id": i + 1, "username": f"bench{i:05d}"} for i in range(USER_COUNT)]
    (workdir / "bare-users.json").write_text(json.dumps(users), encoding="utf-8")
    rows = [dict(u, token=mint(u["id"], now, secret)) for u in users]
    creds = workdir / "bare-creds.json"
    creds.write_text(json.dumps({"users": rows}), encoding="utf-8")
    return creds


def mint(user_id: int, now: int, secret: str) -> str:
    """An access token with SimpleJWT's claims."""
    claims = {
        "token_type": "access",
        "exp": now + TOKEN_LIFETIME,
        "iat": now,
        "jti": uuid.uuid4().hex,
        "user_id": user_id,
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def project_available() -> str | None:
    """None when the project can be benchmarked, else why not."""
    for needed in ("manage.py", "config/asgi.py"):
        if not (ROOT / needed).exists():
            return f"{needed} does not exist yet"
    return None


def project_fixtures(workdir: Path, env: dict[str, str]) -> Path:
    """Migrate the bench database, create the users, mint their tokens."""
    BENCH_DB.unlink(missing_ok=True)
    python = str(VENV_BIN / "python")
    run_checked([python, "manage.py", "migrate", "--noinput", "-v", "0"], env)
    creds = workdir / "project-creds.json"
    helper = [python, str(BENCH / "project_users.py"), "--count", str(USER_COUNT)]
    run_checked([*helper, "--out", str(creds)], env)
    shutil.copyfile(BENCH_DB, workdir / "pristine.sqlite3")
    return creds


def reset_project_db(workdir: Path) -> None:
    """Every project server starts from the migrated database with the users only."""
    for suffix in ("-wal", "-shm", "-journal"):
        Path(f"{BENCH_DB}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(workdir / "pristine.sqlite3", BENCH_DB)


def run_checked(cmd: list[str], env: dict[str, str]) -> None:
    """Run a setup command in the project root; show its output if it fails."""
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout}{done.stderr}")


# --- servers ------------------------------------------------------------------


def free_port() -> int:
    """A port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def pinned(core: str, cmd: list[str]) -> list[str]:
    """Prefix `taskset -c CORE` when taskset exists and there are two cores."""
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", core, *cmd]
    return cmd


def server_command(name: str, port: int) -> list[str]:
    """The command line of one server under test."""
    app = BARE_APP if name.startswith("bare-") else DJANGO_APP
    if name.endswith("-uvicorn"):
        uvicorn = str(VENV_BIN / "uvicorn")
        return [uvicorn, app, "--host", HOST, "--port", str(port), "--log-level", "warning",
                "--no-access-log"]  # fmt: skip
    return [str(VENV_BIN / "daphne"), "-b", HOST, "-p", str(port), "-v", "0", app]


def wait_listening(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    """Block until the server accepts TCP connections, or fail with its log."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{tail(log)}")
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server did not listen within {START_TIMEOUT}s:\n{tail(log)}")


def tail(path: Path, lines: int = 30) -> str:
    """The end of a log file."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@contextmanager
def server(name: str, env: dict[str, str], log: Path) -> Iterator[tuple[int, int]]:
    """Run one server under test; yields (port, pid) and stops it by its PID."""
    port = free_port()
    cmd = pinned(SERVER_CORE, server_command(name, port))
    with log.open("ab") as out:
        # taskset execs the server, so this PID is the server's own.
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_listening(proc, port, log)
        time.sleep(0.5)  # let the app finish starting (daphne builds it lazily)
        yield port, proc.pid
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server by PID, SIGKILL it if it lingers."""
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=STOP_TIMEOUT)


# --- one measurement ----------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One row group of the table: a scenario with its size."""

    key: str
    scenario: str
    args: tuple[str, ...]


def cases(profile: Profile, wanted: list[str]) -> list[Case]:
    """The scenario instances a profile runs."""
    timing = ("--duration", str(profile.duration), "--warmup", str(profile.warmup))
    out = []
    for scenario in wanted:
        if scenario == "idle":
            out += [Case(f"idle-{n}", "idle", ("--sockets", str(n))) for n in profile.idle_sizes]
        elif scenario == "presence":
            n = str(profile.presence_sockets)
            out.append(Case(f"presence-{n}", "presence", (*timing, "--sockets", n)))
        else:
            out.append(Case(scenario, scenario, timing))
    return out


def measure(case: Case, port: int, pid: int, creds: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run the load generator once against a running server."""
    cmd = pinned(CLIENT_CORE, [
        str(VENV_BIN / "python"), str(BENCH / "loadgen.py"),
        "--url", f"ws://{HOST}:{port}/ws/", "--creds", str(creds),
        "--scenario", case.scenario, "--server-pid", str(pid), *case.args,
    ])  # fmt: skip
    try:
        done = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=LOADGEN_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        return {"failed": f"loadgen ran over {LOADGEN_TIMEOUT}s", "metrics": {}}
    sys.stderr.write("".join(f"    {line}\n" for line in done.stderr.splitlines()[-8:]))
    if done.returncode != 0 or not done.stdout.strip():
        return {"failed": f"loadgen exited {done.returncode}", "metrics": {}}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    add_cpu_metrics(result)
    return result


def add_cpu_metrics(result: dict[str, Any]) -> None:
    """CPU shares as percentages, and throughput per CPU-second of the server.

    Per CPU-second is the fairer figure when the load generator, or another
    process, kept the server below 100% of its core.
    """
    metrics = result["metrics"]
    for who in ("server", "client"):
        if result.get(f"{who}_cpu") is not None:
            metrics[f"{who}_cpu_pct"] = round(100 * result[f"{who}_cpu"], 1)
    server_cpu = result.get("server_cpu") or 0
    for name in PER_CPU:
        if metrics.get(name) is not None and server_cpu > MIN_CPU_SHARE:
            metrics[PER_CPU[name]] = round(metrics[name] / server_cpu, 1)


def disturbed(result: dict[str, Any]) -> bool:
    """Whether other processes took CPU meanwhile while the server had its core to spare.

    A server at (nearly) 100% of its core was not starved, whatever ran elsewhere.
    """
    other, server_cpu = result.get("other_cpu"), result.get("server_cpu")
    if other is None or server_cpu is None:
        return False
    return other > DISTURBED and server_cpu < SATURATED


def run_case(
    name: str, case: Case, env: dict[str, str], workdir: Path, creds: dict[str, Path], retries: int
) -> dict[str, Any]:
    """One run on a fresh server; a disturbed run is tried again, up to `retries` times."""
    for attempt in range(retries + 1):
        if name.startswith("project-"):
            reset_project_db(workdir)
        try:
            with server(name, env, workdir / f"{name}.log") as (port, pid):
                result = measure(case, port, pid, creds[name.split("-")[0]], env)
        except RuntimeError as exc:
            result = {"failed": str(exc), "metrics": {}}
        result["attempts"] = attempt + 1
        print(f"    {describe(result)}", file=sys.stderr, flush=True)
        if not disturbed(result):
            break
    return result


def describe(result: dict[str, Any]) -> str:
    """One progress line for a finished run."""
    if result.get("skipped"):
        return f"skipped: {result['skipped']}"
    if result.get("failed"):
        return f"FAILED: {result['failed']}"
    metrics = ", ".join(f"{k}={v}" for k, v in result["metrics"].items())
    line = f"{metrics}; errors={result.get('error_count', 0)}"
    if disturbed(result):
        line += f"; DISTURBED: other processes used {100 * result['other_cpu']:.0f}% of a core"
    return line


# --- summary ------------------------------------------------------------------


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median, min and max of every metric over the runs; errors added up."""
    out: dict[str, Any] = {"metrics": {}, "errors": 0, "runs": len(runs)}
    out["disturbed"] = sum(1 for r in runs if disturbed(r))
    skipped = [r["skipped"] for r in runs if r.get("skipped")]
    if skipped:
        out["skipped"] = skipped[0]
    for run in runs:
        out["errors"] += max(run.get("error_count", 0), 1 if run.get("failed") else 0)
    names = {k for r in runs for k in r.get("metrics", {})}
    for name in names:
        values = [r["metrics"][name] for r in runs if r["metrics"].get(name) is not None]
        if values:
            out["metrics"][name] = {
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
            }
    return out


def fmt(value: float | None) -> str:
    """A number with as many digits as it deserves."""
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def cell(stat: dict[str, float] | None) -> str:
    """median (min-max)."""
    if stat is None:
        return "-"
    if stat["min"] == stat["max"]:
        return fmt(stat["median"])
    return f"{fmt(stat['median'])} ({fmt(stat['min'])}-{fmt(stat['max'])})"


def ratio(summary: dict[str, Any], case: str, metric: str, srv: str) -> str:
    """project ÷ bare of the medians on one ASGI server."""
    try:
        proj = summary[f"project-{srv}"][case]["metrics"][metric]["median"]
        bare = summary[f"bare-{srv}"][case]["metrics"][metric]["median"]
    except KeyError:
        return "-"
    return "-" if not bare else f"{proj / bare:.2f}"


def table(summary: dict[str, Any], servers: list[str], case_keys: list[str]) -> str:
    """The Markdown table: one row per metric, one column per server."""
    ratio_srvs = [s for s in ("uvicorn", "daphne") if {f"bare-{s}", f"project-{s}"} <= set(servers)]
    head = ["scenario", "metric", *servers, *(f"project÷bare {s}" for s in ratio_srvs)]
    rows = [head, ["---"] * len(head)]
    for key in case_keys:
        per = {s: summary.get(s, {}).get(key, {}) for s in servers}
        notes = {s: v["skipped"] for s, v in per.items() if v.get("skipped")}
        names = [m for m in METRICS if any(m in v.get("metrics", {}) for v in per.values())]
        for name in names:
            cells = [cell(per[s].get("metrics", {}).get(name)) for s in servers]
            cells = [("skipped" if s in notes else c) for s, c in zip(servers, cells, strict=True)]
            ratios = ["" if name in CPU_ROWS else ratio(summary, key, name, s) for s in ratio_srvs]
            rows.append([key, METRICS[name], *cells, *ratios])
        errors = [("skipped" if s in notes else str(per[s].get("errors", "-"))) for s in servers]
        rows.append([key, "errors", *errors, *([""] * len(ratio_srvs))])
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "taskset": bool(shutil.which("taskset")),
    }


def source() -> dict[str, Any]:
    """The commit measured, and whether the project's files differed from it."""

    def git(*cmd: str) -> str:
        try:
            done = subprocess.run(
                ["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.rstrip() if done.returncode == 0 else ""

    changed = [line[3:] for line in git("status", "--porcelain").splitlines()]
    return {
        "commit": git("rev-parse", "HEAD") or None,
        "uncommitted_files": [f for f in changed if not f.startswith(("bench/", "docs/"))],
    }


def versions() -> dict[str, str]:
    """Versions of the packages that shape the numbers."""
    names = ["uvicorn", "uvloop", "httptools", "daphne", "twisted", "autobahn", "django",
             "channels", "djangorestframework-simplejwt", "pyjwt", "websockets"]  # fmt: skip
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


# --- entry point --------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short windows, fewer sockets, 1 run")
    p.add_argument("--runs", type=int, help="runs per server and scenario (default 3, quick 1)")
    p.add_argument(
        "--server", default=",".join(SERVERS), help="comma list of " + ", ".join(SERVERS)
    )
    p.add_argument(
        "--scenario", default=",".join(SCENARIOS), help="comma list of " + ", ".join(SCENARIOS)
    )
    p.add_argument("--duration", type=float, help="measuring window in seconds")
    p.add_argument(
        "--retries",
        type=int,
        default=2,
        help="re-run a run that other processes disturbed, at most this many times",
    )
    p.add_argument(
        "--reuse",
        type=Path,
        help="take the servers not run now from this earlier JSON (e.g. the bare baselines)",
    )
    p.add_argument("--output", type=Path, default=RESULTS, help="where the JSON goes")
    args = p.parse_args(argv)
    args.servers = [s.strip() for s in args.server.split(",") if s.strip()]
    args.scenarios = [s.strip() for s in args.scenario.split(",") if s.strip()]
    for bad in set(args.servers) - set(SERVERS):
        p.error(f"unknown server {bad!r}")
    for bad in set(args.scenarios) - set(SCENARIOS):
        p.error(f"unknown scenario {bad!r}")
    if args.runs is not None and not 1 <= args.runs <= 20:
        p.error("--runs must be between 1 and 20")
    return args


def raise_nofile() -> None:
    """Open-files limit to the hard limit: the servers inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1_048_576
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def prepare(servers: list[str], workdir: Path, env: dict[str, str], secret: str) -> dict[str, Path]:
    """Credentials per app; drops the project servers when the project cannot run."""
    creds: dict[str, Path] = {}
    if any(s.startswith("bare-") for s in servers):
        creds["bare"] = bare_fixtures(workdir, secret)
    if any(s.startswith("project-") for s in servers):
        reason = project_available()
        if reason is None:
            try:
                creds["project"] = project_fixtures(workdir, env)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                reason = str(exc)
        if reason is not None:
            print(f"note: skipping the project servers: {reason}", file=sys.stderr)
    return creds


def run_all(
    servers: list[str], all_cases: list[Case], runs: int, ctx: tuple[Any, ...]
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Every server, every case, `runs` times: the raw results."""
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for name in servers:
        for case in all_cases:
            results = raw.setdefault(name, {}).setdefault(case.key, [])
            for n in range(runs):
                print(f"[{name}] {case.key} run {n + 1}/{runs}", file=sys.stderr, flush=True)
                results.append(run_case(name, case, *ctx))
                if results[-1].get("skipped"):
                    break  # the same server will skip it again
    return raw


def notes(summary: dict[str, dict[str, Any]]) -> str:
    """Footnotes for the table: the runs that other processes disturbed."""
    lines = []
    for name, per_case in summary.items():
        for key, summ in per_case.items():
            if summ.get("disturbed"):
                lines.append(
                    f"note: {summ['disturbed']} of {summ['runs']} runs of {key} on {name} "
                    f"were disturbed (other processes over {DISTURBED:.0%} of a core "
                    f"while the server was under {SATURATED:.0%})"
                )
    return "\n".join(lines)


def reuse(path: Path | None, servers: list[str]) -> dict[str, Any]:
    """Results of the servers not run now, taken from an earlier JSON report."""
    if path is None:
        return {}
    earlier = json.loads(path.read_text(encoding="utf-8"))
    taken = [s for s in earlier["servers"] if s not in servers]
    origin = {k: earlier.get(k) for k in ("generated_at", "source", "profile")}
    return {
        name: {"raw": earlier["raw"][name], "summary": earlier["summary"][name], **origin}
        for name in taken
    }


def changed_note(before: dict[str, Any], after: dict[str, Any]) -> str:
    """A warning when the project's code changed while it was being measured."""
    if before == after:
        return ""
    return (
        f"note: the project changed during the run ({before['commit']} -> {after['commit']}, "
        f"uncommitted {before['uncommitted_files']} -> {after['uncommitted_files']})"
    )


@contextmanager
def exclusive() -> Iterator[None]:
    """Hold the bench lock; refuse to start while another run holds it."""
    with LOCK.open("a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            raise SystemExit(
                f"another benchmark run holds {LOCK} (pid {fh.read().strip() or '?'}): "
                "two runs share the database and the cores, so wait for it to finish"
            ) from None
        fh.truncate(0)
        fh.write(str(os.getpid()))
        fh.flush()
        yield


def main(argv: list[str] | None = None) -> int:
    """Run the suite under the bench lock."""
    args = parse_args(argv)
    with exclusive():
        return run_suite(args)


def run_suite(args: argparse.Namespace) -> int:
    """Run the suite, print the table, write the JSON."""
    profile = QUICK if args.quick else FULL
    if args.duration:
        profile = Profile(args.duration, profile.warmup, profile.idle_sizes,
                          profile.presence_sockets, profile.runs)  # fmt: skip
    runs = args.runs or profile.runs
    measured = source()  # before the run: the owner may commit meanwhile
    reused = reuse(args.reuse, args.servers)
    raise_nofile()
    secret = secrets.token_urlsafe(50)
    env = bench_env(secret)
    all_cases = cases(profile, args.scenarios)
    with tempfile.TemporaryDirectory(prefix="identity-bench-") as tmp:
        workdir = Path(tmp)
        creds = prepare(args.servers, workdir, env, secret)
        env["BENCH_USERS_FILE"] = str(workdir / "bare-users.json")
        servers = [s for s in args.servers if s.split("-")[0] in creds]
        raw = run_all(servers, all_cases, runs, (env, workdir, creds, args.retries))
    summary = {
        name: {key: summarise(results) for key, results in per_case.items()}
        for name, per_case in raw.items()
    }
    for name, earlier in reused.items():
        raw[name], summary[name] = earlier["raw"], earlier["summary"]
    shown = [s for s in SERVERS if s in summary]
    text = table(summary, shown, [c.key for c in all_cases])
    footer = [notes(summary), changed_note(measured, source())]
    footer += [f"note: {name} reused from {args.reuse} ({reused[name]['generated_at']})"
               for name in reused]  # fmt: skip
    print("\n\n".join([text, "\n".join(f for f in footer if f)]).strip(), flush=True)
    report = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "source": measured,
        "versions": versions(),
        "profile": {**profile.__dict__, "runs": runs, "quick": args.quick},
        "servers": shown,
        "reused": {
            name: {k: v for k, v in r.items() if k not in ("raw", "summary")}
            for name, r in reused.items()
        },
        "summary": summary,
        "raw": raw,
        "table": text,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(f"\nwrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
