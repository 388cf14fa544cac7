"""Anonymous floods: how many idle anonymous sockets one address may hold, and
how accurately the auth timeout (close 4401) closes them.

Starts the project (daphne through `manage.py runserver`, or uvicorn through
`manage.py serve --workers 1`) on its own SQLite file with the per-address
limits off, opens SOCKETS sockets from 127.0.0.1 that never authenticate, and
records for each the time from the server's 101 to the server's close frame.
Prints one table row per flood (two in a row per server, to tell memory kept
for reuse from a leak): sockets, seconds to open them all, server RSS before /
with the sockets open / after they closed, how late the 4401 came (min /
median / max, seconds past IDENTITY_AUTH_TIMEOUT, counted from the 101), and
the longest wait from TCP connect to the 101 (the handshake backlog).

The client is a bare asyncio protocol (one small object per socket, no
websockets library), so the client's own event loop does not add lateness.

With --limits the server keeps the default per-address limits (50 anonymous,
20 handshakes/s, burst 40) and the table counts the refused handshakes (429).

Run: .venv/bin/python bench/anonymous.py [--sockets 8000] [--server daphne|uvicorn|both]
     [--rounds 2] [--limits]
Talks only to 127.0.0.1; bounded in time (about 40 s per server).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import resource
import secrets
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import Database, LiveServer  # noqa: E402

AUTH_TIMEOUT = 10.0
CONNECT_CONCURRENCY = 200  # handshakes in flight at once
SETTLE = 3.0  # seconds after the last close before the RSS is read again


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def raise_open_files(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


class Anonymous(asyncio.Protocol):
    """One socket that completes the handshake and waits for the server's close."""

    def __init__(self, opened: asyncio.Future[None]) -> None:
        self.opened = opened
        self.connect_at = time.monotonic()
        self.buffer = b""
        self.open_at: float | None = None
        self.close_at: float | None = None
        self.close_code: int | None = None
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        key = base64.b64encode(os.urandom(16))
        transport.write(  # type: ignore[attr-defined]
            b"GET /ws/ HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: " + key + b"\r\n\r\n"
        )

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.open_at is None:
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            if not head.startswith(b"HTTP/1.1 101"):
                self.fail(head.split(b"\r\n", 1)[0].decode())
                return
            self.open_at = time.monotonic()
            self.buffer = rest
            self.opened.set_result(None)
        self.read_frames()

    def read_frames(self) -> None:
        # Server frames are unmasked; a `disconnect` push may precede the close.
        while len(self.buffer) >= 2:
            opcode, length = self.buffer[0] & 0x0F, self.buffer[1] & 0x7F
            start = 2 if length < 126 else 4
            if length == 126 and len(self.buffer) >= 4:
                length = int.from_bytes(self.buffer[2:4], "big")
            if len(self.buffer) < start + length:
                return
            end = start + length
            payload, self.buffer = self.buffer[start:end], self.buffer[end:]
            if opcode == 0x8 and self.close_at is None:
                self.close_at = time.monotonic()
                self.close_code = int.from_bytes(payload[:2], "big") if payload else None
                self.transport.close()

    def fail(self, why: str) -> None:
        self.open_at = -1.0  # answered: not a socket
        if not self.opened.done():
            self.opened.set_exception(RuntimeError(why))
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(RuntimeError(f"lost before open: {exc}"))
        if not self.done.done():
            self.done.set_result(None)


async def open_all(port: int, count: int) -> tuple[list[Anonymous], int]:
    """The sockets the server accepted, and how many handshakes it refused."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one() -> Anonymous | None:
        async with gate:
            opened = loop.create_future()
            _, protocol = await loop.create_connection(lambda: Anonymous(opened), "127.0.0.1", port)
            try:
                await asyncio.wait_for(opened, 30)
            except RuntimeError as exc:
                if "429" not in str(exc):
                    raise
                return None
            return protocol

    results = await asyncio.gather(*(one() for _ in range(count)))
    accepted = [s for s in results if s is not None]
    return accepted, count - len(accepted)


async def measure(server: LiveServer, count: int) -> dict[str, float]:
    assert server.process is not None
    pid = server.process.pid
    before = rss_mib(pid)
    started = time.monotonic()
    sockets, refused = await open_all(server.port, count)
    opened_in = time.monotonic() - started
    peak = rss_mib(pid)
    await asyncio.wait_for(
        asyncio.gather(*(s.done for s in sockets)), AUTH_TIMEOUT + opened_in + 30
    )
    await asyncio.sleep(SETTLE)
    after = rss_mib(pid)
    late = sorted(s.close_at - s.open_at - AUTH_TIMEOUT for s in sockets if s.close_at)
    waits = [s.open_at - s.connect_at for s in sockets if s.open_at]
    codes = {s.close_code for s in sockets}
    return {
        "opened_in": opened_in,
        "before": before,
        "peak": peak,
        "after": after,
        "min": late[0],
        "median": statistics.median(late),
        "max": late[-1],
        "wait": max(waits),
        "closed": len(late),
        "refused": refused,
        "codes": ",".join(str(c) for c in sorted(codes, key=str)),
    }


def start(kind: str, limits: bool) -> LiveServer:
    limits_off = {"IDENTITY_AUTH_TIMEOUT": str(AUTH_TIMEOUT)}
    if limits:  # the defaults, not the test servers' "off"
        limits_off.update(IDENTITY_MAX_ANONYMOUS_PER_ADDRESS="50", IDENTITY_HANDSHAKE_RATE="20")
    else:
        limits_off.update(IDENTITY_MAX_ANONYMOUS_PER_ADDRESS="0", IDENTITY_HANDSHAKE_RATE="0")
    secret = secrets.token_urlsafe(50)
    database = Database.sqlite(
        DJANGO_DEBUG="0", DJANGO_HTTPS="0", DJANGO_SECRET_KEY=secret, **limits_off
    )
    if kind == "daphne":
        return LiveServer(database.env).start()
    return LiveServer(database.env, ["manage.py", "serve", "--workers", "1"]).start()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=8000)
    parser.add_argument(
        "--limits", action="store_true", help="keep the per-address limits at their defaults"
    )
    parser.add_argument("--rounds", type=int, default=2, help="floods in a row per server")
    parser.add_argument("--server", choices=["daphne", "uvicorn", "both"], default="both")
    args = parser.parse_args()
    raise_open_files(2 * args.sockets + 1000)  # the server process inherits it
    kinds = ["daphne", "uvicorn"] if args.server == "both" else [args.server]
    header = (
        f"{'server':8} {'sockets':>7} {'refused':>7} {'open s':>6} {'RSS before':>10} "
        f"{'RSS open':>8} {'RSS after':>9} {'late min':>8} {'median':>6} {'max':>6} "
        f"{'101 wait':>8} codes"
    )
    rows = []
    for kind in kinds:
        server = start(kind, args.limits)
        try:
            results = [asyncio.run(measure(server, args.sockets)) for _ in range(args.rounds)]
        finally:
            server.stop()
        rows += [
            f"{kind:8} {int(r['closed']):>7} {r['refused']:>7} {r['opened_in']:>6.1f} "
            f"{r['before']:>8.0f}MB {r['peak']:>6.0f}MB {r['after']:>7.0f}MB "
            f"{r['min']:>7.2f}s {r['median']:>5.2f}s "
            f"{r['max']:>5.2f}s {r['wait']:>7.2f}s {r['codes']}"
            for r in results
        ]
    print(header)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
