"""Where one connect goes: py-spy on a `manage.py serve` worker under load.

The production shape of bench/workers.py (one uvicorn worker on the local
PostgreSQL and Redis, or with --embedded on SQLite and the in-memory layer),
loaded by bench/loadgen.py from a second process with the `sessions` scenario
(connect, auth, one message, close), sampled by py-spy. Prints the share of
samples under each step of a session, per thread (the event loop, and the
database thread that database_sync_to_async runs the ORM on).

Run: .venv/bin/python bench/profile_connect.py [--duration 12] [--rate 200] [--embedded]
Needs py-spy on PATH or in PY_SPY (it is not a dependency of the project:
`python3 -m venv /tmp/pyspy && /tmp/pyspy/bin/pip install py-spy`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

import run
import workers

# (label, function name as py-spy prints it, file suffix): inclusive shares.
STEPS = [
    ("websocket_connect: accept, timer", "websocket_connect", "identity/consumers.py"),
    ("new_channel (channel layer)", "new_channel", "identity/layers.py"),
    ("on_auth, all of it", "on_auth", "identity/consumers.py"),
    ("  tokens.authenticate (token, user, revocation)", "authenticate", "identity/tokens.py"),
    ("  registry.register (lock, count, insert)", "register", "identity/registry.py"),
    ("  group_add (the user's group)", "group_add", "identity/layers.py"),
    ("  push_presence (first socket)", "push_presence", "identity/push.py"),
    ("on_message (echo)", "on_message", "identity/consumers.py"),
    ("end / forget_identity, all of it", "end", "identity/consumers.py"),
    ("  registry.leave (lock, delete, live?)", "leave", "identity/registry.py"),
    ("  group_discard", "group_discard", "identity/layers.py"),
    ("  detach (unsubscribe the channel)", "detach", "identity/layers.py"),
    ("transaction.atomic (commit and begin)", "__exit__", "django/db/transaction.py"),
    ("database connection checks", "ensure_connection", "django/db/backends/base/base.py"),
    ("close_old_connections", "close_old_connections", "django/db/__init__.py"),
    ("sync_to_async hops (thread hand-over)", "__call__", "asgiref/sync.py"),
    ("redis-py (commands and pub/sub)", "", "redis/"),
    ("psycopg (queries)", "", "psycopg/"),
    ("sqlite3 (queries)", "execute", "django/db/backends/sqlite3/base.py"),
    ("uvicorn's websocket protocol", "", "uvicorn/protocols/websockets/"),
    ("websockets (frames)", "", "websockets/"),
    ("asyncio (inclusive: every event-loop sample)", "", "asyncio/"),
]  # fmt: skip


def py_spy() -> str:
    found = os.environ.get("PY_SPY") or shutil.which("py-spy") or "/tmp/pyspy/bin/py-spy"
    if not Path(found).exists():
        raise SystemExit("py-spy not found: set PY_SPY (see this file's docstring)")
    return found


def worker_pid(parent: int) -> int:
    """The uvicorn worker under `serve` (its child, or itself with one worker)."""
    out = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True).stdout
    children = [int(pid) for pid in out.split()]
    return children[0] if children else parent


def record(args: argparse.Namespace, env: dict[str, str], creds: Path, out: Path) -> dict:
    """Serve with one worker, load it with sessions while py-spy samples it; the load's metrics."""
    with workers.serving(1, env) as (port, pid):
        time.sleep(1)
        spy = subprocess.Popen(
            [py_spy(), "record", "-p", str(worker_pid(pid)), "-r", str(args.rate),
             "-d", str(int(args.duration) + 2), "-f", "raw", "-o", str(out), "--threads"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        metrics = workers.loadgen(port, "sessions", args.duration, env, creds)
        said, _ = spy.communicate(timeout=args.duration + 60)
        if spy.returncode:
            raise SystemExit(f"py-spy failed: {said}")
    return metrics


def shares(path: Path) -> tuple[int, Counter[str], Counter[str]]:
    """Total samples; samples per thread; inclusive samples per (thread, step)."""
    total, threads, steps = 0, Counter(), Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = stack.split(";")
        # With --threads the first frame names the thread.
        thread = "event loop" if "MainThread" in frames[0] else "database thread"
        total += n
        threads[thread] += n
        for label, name, where in STEPS:
            if any(_matches(frame, name, where) for frame in frames):
                steps[thread, label] += n
    return total, threads, steps


def _matches(frame: str, name: str, where: str) -> bool:
    # py-spy raw frames look like "Class.method (path/to/file.py:LINE)".
    func, _, place = frame.partition(" (")
    return where in place and (not name or func.rpartition(".")[2] == name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=12.0)
    parser.add_argument("--rate", type=int, default=200, help="samples per second")
    parser.add_argument("--embedded", action="store_true", help="SQLite and in-memory layer")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="profile-"))
    with run.exclusive():
        env, creds = workers.embedded_env(workdir) if args.embedded else workers.prepare(workdir)
        out = workdir / "profile.txt"
        metrics = record(args, env, creds, out)
    total, threads, steps = shares(out)
    shape = "SQLite + in-memory" if args.embedded else "PostgreSQL + Redis"
    print(f"{shape}, one worker: {metrics.get('sessions_per_s', 0):,.0f} sessions/s; "
          f"{total:,} samples at {args.rate} Hz; raw stacks in {out}")  # fmt: skip
    print()
    names = sorted(threads, key=lambda t: -threads[t])
    print("| step | " + " | ".join(f"{t} (% of all)" for t in names) + " |")
    print("| --- |" + " ---: |" * len(names))
    whole = [f"{100 * threads[t] / total:.1f}" for t in names]
    print("| the thread, all of it | " + " | ".join(whole) + " |")
    for label, _, _ in STEPS:
        cells = [f"{100 * steps[t, label] / total:.1f}" for t in names]
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
