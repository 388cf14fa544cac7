"""Memory under churn: does the project's server grow while sockets come and go?

Starts the project on uvicorn (its own SQLite file, pinned to core 0 where
taskset exists), then for a bounded time (60 s by default) keeps CONCURRENCY
workers opening a socket, authenticating, echoing once and closing, and samples
the server's RSS every few seconds. Prints the RSS table and the growth from
the first sample after warm-up to the last.

Run: .venv/bin/python bench/churn.py [--seconds 60] [--concurrency 50]
Talks only to 127.0.0.1; bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import websockets

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_EVERY = 5.0
WARMUP = 10.0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pinned(core: int, argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(core), *argv] if shutil.which("taskset") else argv


def start_server(workdir: Path) -> tuple[subprocess.Popen, int, list[dict]]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_DEBUG": "0",
        "DJANGO_HTTPS": "0",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DATABASE_URL": f"sqlite:///{workdir / 'churn.sqlite3'}",
        "IDENTITY_RATE_LIMIT": "0",
        # One load generator plays every client from one address.
        "IDENTITY_MAX_ANONYMOUS_PER_ADDRESS": "0",
        "IDENTITY_HANDSHAKE_RATE": "0",
        "IDENTITY_LOGIN_RATE_PER_ACCOUNT": "0",
        "IDENTITY_LOGIN_RATE_PER_ADDRESS": "0",
        "PYTHONPATH": str(ROOT),
    }
    env.pop("REDIS_URL", None)
    python = sys.executable
    subprocess.run([python, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    creds = workdir / "creds.json"
    subprocess.run(
        [python, "bench/project_users.py", "--count", "200", "--out", str(creds)],
        cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    port = free_port()
    uvicorn = str(Path(python).with_name("uvicorn"))
    argv = [uvicorn, "config.asgi:application", "--host", "127.0.0.1", "--port", str(port),
            "--lifespan", "off", "--no-access-log", "--log-level", "warning",
            "--loop", "uvloop", "--http", "httptools", "--ws", "websockets-sansio"]  # fmt: skip
    server = subprocess.Popen(pinned(0, argv), cwd=ROOT, env=env)
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("server did not start") from None
            time.sleep(0.1)
    return server, port, json.loads(creds.read_text())["users"]


async def churn(url: str, users: list[dict], seconds: float, concurrency: int, pid: int) -> dict:
    stop = time.monotonic() + seconds
    counts = {"sessions": 0, "errors": 0}

    async def worker(n: int) -> None:
        while time.monotonic() < stop:
            user = users[(n + counts["sessions"]) % len(users)]
            try:
                async with websockets.connect(url) as ws:
                    await ws.send(json.dumps({"action": "auth", "payload": user["token"]}))
                    assert json.loads(await ws.recv())["payload"]["registered"] is True
                    await ws.send(json.dumps({"action": "message", "payload": "x"}))
                    assert json.loads(await ws.recv())["payload"]["text"] == "x"
                counts["sessions"] += 1
            except Exception:
                counts["errors"] += 1

    async def sampler() -> list[tuple[float, int]]:
        samples, start = [], time.monotonic()
        while time.monotonic() < stop:
            samples.append((time.monotonic() - start, rss_kib(pid)))
            await asyncio.sleep(SAMPLE_EVERY)
        samples.append((time.monotonic() - start, rss_kib(pid)))
        return samples

    results = await asyncio.gather(sampler(), *(worker(n) for n in range(concurrency)))
    return {"samples": results[0], **counts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="churn-"))
    server, port, users = start_server(workdir)
    try:
        if hasattr(os, "sched_setaffinity") and shutil.which("taskset"):
            os.sched_setaffinity(0, {1})  # the load on the other core
        result = asyncio.run(
            churn(f"ws://127.0.0.1:{port}/ws/", users, args.seconds, args.concurrency, server.pid)
        )
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)
    print("| seconds | server RSS KiB |")
    print("| --- | --- |")
    for at, rss in result["samples"]:
        print(f"| {at:.0f} | {rss:,} |")
    after_warmup = [rss for at, rss in result["samples"] if at >= WARMUP]
    growth = after_warmup[-1] - after_warmup[0] if len(after_warmup) > 1 else 0
    print(
        f"\n{result['sessions']:,} sessions, {result['errors']} errors; RSS growth from "
        f"{WARMUP:.0f} s to the end: {growth:+,} KiB"
    )


if __name__ == "__main__":
    main()
