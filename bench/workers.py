"""One `manage.py serve` worker against two, on PostgreSQL and Redis, and one embedded.

The production shape (docs/deploy.md): uvicorn workers sharing the local
PostgreSQL (a database of its own, `identity_bench`, dropped and created
here) and Redis (channels under their own prefix). For each worker count the
server is started, `bench/loadgen.py` runs the sessions and echo scenarios
against it RUNS times (unpinned: the workers need both cores), and the server
is stopped by its process group. Then the same for one worker of the
embedded default (SQLite and the in-memory layer), the yardstick of issue
12's targets. Prints a Markdown table, and the targets' ratios of medians.

Run: .venv/bin/python bench/workers.py [--runs 2] [--duration 8] [--workers 1,2] [--no-embedded]
Needs PostgreSQL at 127.0.0.1:5432 (user postgres) and Redis at 127.0.0.1:6379.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import run

PG = "postgres://postgres@127.0.0.1:5432"
DATABASE = "identity_bench"
REDIS_URL = "redis://127.0.0.1:6379/0"
# Issue 12's targets on sessions/s: (label, numerator column, denominator column, at least).
EMBEDDED = "1 worker, SQLite + in-memory"
TARGETS = [
    ("1 worker on PostgreSQL + Redis / 1 embedded", "1 worker", EMBEDDED, 0.5),
    ("2 workers / 1 worker, PostgreSQL + Redis", "2 workers", "1 worker", 1.7),
]
ROWS = {
    "sessions_per_s": ("sessions", "sessions (connect + auth + echo + close, 50 concurrent), /s"),
    "msgs_per_s": ("echo", "echo (100 sockets, 1 in flight each), msgs/s"),
    "rtt_p99_ms": ("echo", "echo round trip p99, ms"),
}


def psql(sql: str) -> None:
    subprocess.run(["psql", f"{PG}/postgres", "-qc", sql], check=True, capture_output=True)


def prepare(
    workdir: Path, database: str = DATABASE, users: int = run.USER_COUNT, prefix: str = "bench"
) -> tuple[dict[str, str], Path]:
    """A fresh database with USERS bench users; the environment and credentials.

    Channels go under PREFIX and a random suffix, so runs never hear each other.
    """
    env = run.bench_env(secrets.token_urlsafe(32))
    env.update(
        DATABASE_URL=f"{PG}/{database}",
        REDIS_URL=REDIS_URL,
        IDENTITY_REDIS_PREFIX=f"{prefix}-{secrets.token_hex(4)}",
        DJANGO_HTTPS="0",
    )
    psql(f"DROP DATABASE IF EXISTS {database}")
    psql(f"CREATE DATABASE {database}")
    return env, migrate_with_users(env, workdir, users)


def migrate_with_users(env: dict[str, str], workdir: Path, count: int = run.USER_COUNT) -> Path:
    """Migrate the database ENV names and add COUNT bench users; their credentials file."""
    python = str(run.VENV_BIN / "python")
    run.run_checked([python, "manage.py", "migrate", "--noinput", "-v", "0"], env)
    creds = workdir / "creds.json"
    users = [python, str(run.BENCH / "project_users.py"), "--count", str(count)]
    run.run_checked([*users, "--out", str(creds)], env)
    return creds


@contextmanager
def serving(
    workers: int, env: dict[str, str], log: Path | None = None
) -> Iterator[tuple[int, int]]:
    """Run `manage.py serve --workers N` on a free port; yields (port, pid) once it listens.

    The server runs in a session of its own and is stopped by its process
    group: SIGTERM reaches uvicorn's supervisor and its workers alike. Its
    output goes to LOG (a temporary file by default).
    """
    port = run.free_port()
    log = log or Path(tempfile.mkstemp(suffix=".log")[1])
    python = str(run.VENV_BIN / "python")
    serve = [python, "manage.py", "serve", "--host", run.HOST, "--port", str(port)]
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [*serve, "--workers", str(workers)], cwd=run.ROOT, env=env,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        run.wait_listening(proc, port, log)
        yield port, proc.pid
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=run.STOP_TIMEOUT)


def embedded_env(workdir: Path) -> tuple[dict[str, str], Path]:
    """The embedded default (SQLite in WORKDIR, the in-memory layer) with the bench users."""
    env = run.bench_env(os.urandom(16).hex())
    env.update(DATABASE_URL=f"sqlite:///{workdir / 'embedded.sqlite3'}", DJANGO_HTTPS="0")
    env.pop("REDIS_URL", None)
    return env, migrate_with_users(env, workdir)


def measure(workers: int, args: argparse.Namespace, env: dict[str, str], creds: Path) -> dict:
    """Start `serve --workers N`, run each scenario RUNS times, stop it."""
    results: dict[str, list[Any]] = {key: [] for key in ROWS}
    with serving(workers, env) as (port, _):
        time.sleep(2)  # every worker up
        for scenario in ("sessions", "echo"):
            for _ in range(args.runs):
                metrics = loadgen(port, scenario, args.duration, env, creds)
                for key, (wanted, _) in ROWS.items():
                    if wanted == scenario:
                        results[key].append(metrics.get(key))
    return results


def loadgen(port: int, scenario: str, duration: float, env: dict[str, str], creds: Path) -> dict:
    cmd = [
        str(run.VENV_BIN / "python"), str(run.BENCH / "loadgen.py"),
        "--url", f"ws://{run.HOST}:{port}/ws/", "--creds", str(creds),
        "--scenario", scenario, "--duration", str(duration), "--warmup", "2",
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=run.ROOT, env=env, capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result.get("errors"):
        raise SystemExit(f"{scenario}: errors {result['errors']}")
    return result["metrics"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--no-embedded", action="store_true", help="skip the embedded worker")
    args = parser.parse_args()
    columns: dict[str, Any] = {}
    with run.exclusive():
        workdir = Path(tempfile.mkdtemp(prefix="workers-"))
        env, creds = prepare(workdir)
        for n in (int(n) for n in args.workers.split(",")):
            columns[f"{n} worker{'s' * (n > 1)}"] = measure(n, args, env, creds)
        if not args.no_embedded:
            env, creds = embedded_env(workdir)
            columns[EMBEDDED] = measure(1, args, env, creds)
    print("| scenario | " + " | ".join(columns) + " |")
    print("| --- |" + " --- |" * len(columns))
    for key, (_, label) in ROWS.items():
        cells = [", ".join(f"{v:,.1f}" for v in column[key]) for column in columns.values()]
        print(f"| {label} | " + " | ".join(cells) + " |")
    sessions = {name: statistics.median(c["sessions_per_s"]) for name, c in columns.items()}
    print()
    for label, over, under, target in TARGETS:
        if over in sessions and under in sessions:
            ratio = sessions[over] / sessions[under]
            met = "met" if ratio >= target else "missed"
            print(f"- {label}: {ratio:.2f} (target {target}: {met})")


if __name__ == "__main__":
    main()
