"""`GET /metrics`: who may read it, and each metric moving when its event happens."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import websockets
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.core.checks import run_checks
from django.db import OperationalError
from django.test import Client as HttpClient
from prometheus_client.parser import text_string_to_metric_families

import tests.realtime_example  # noqa: F401  (an application action: test.echo)
from config.asgi import application
from identity import metrics, push, tokens
from identity.layers import LayerUnavailable
from identity.protocol import Reason
from tests.conftest import TIMEOUT, Client, access_for, adb, make_user
from tests.servers import ROOT, Database, LiveServer, base_env
from tests.services import postgres_database, require_redis

pytestmark = pytest.mark.django_db(transaction=True)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

METRIC_NAMES = {
    "identity_sockets_open",
    "identity_sockets_authenticated",
    "identity_users_online",
    "identity_connects",
    "identity_auth",
    "identity_auth_seconds",
    "identity_disconnects",
    "identity_rate_limited",
    "identity_service_errors",
    "identity_frames_received",
    "identity_frames_sent",
}


def parse(text: str) -> Samples:
    """Every sample of a Prometheus text exposition, by name and labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    """How much one series moved between two readings."""
    return value(after, name, **labels) - value(before, name, **labels)


def read_sync() -> Samples:
    body, _ = metrics.exposition(None)
    return parse(body.decode())


async def read() -> Samples:
    """The metrics as a scrape sees them (the users-online count asks the database)."""
    return await adb(read_sync)()


@pytest.fixture
def http() -> HttpClient:
    return HttpClient()


def bearer(user: Any) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {access_for(user)}"}


# --- who may read it -------------------------------------------------------------


def test_metrics_without_credentials_are_a_json_401(http):
    response = http.get("/metrics")
    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_metrics_for_a_user_who_is_not_staff_are_a_json_403(alice, http):
    response = http.get("/metrics", **bearer(alice))
    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"


def test_metrics_with_an_expired_token_are_a_json_401(http):
    operator = make_user("ops", is_staff=True)
    token = access_for(operator, lifetime=-timedelta(seconds=1))
    response = http.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 401
    assert response.json()["code"] == "token_expired"


def test_a_staff_token_reads_every_metric_in_the_prometheus_text_format(http):
    operator = make_user("ops", is_staff=True)  # staff without any model permission
    response = http.get("/metrics", HTTP_ACCEPT="text/plain", **bearer(operator))
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    families = {family.name for family in text_string_to_metric_families(response.content.decode())}
    assert families >= METRIC_NAMES


def test_a_scraper_asking_for_openmetrics_gets_openmetrics(http, settings):
    settings.IDENTITY_METRICS_ALLOWED_ADDRESSES = ["127.0.0.1"]
    response = http.get("/metrics", HTTP_ACCEPT="application/openmetrics-text; version=1.0.0")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/openmetrics-text")
    assert response.content.endswith(b"# EOF\n")


@pytest.mark.parametrize(
    "accept",
    [
        "application/openmetrics-text; version=abc",
        "application/openmetrics-text; version=1.0.0rc1",
        "text/plain; version=x",
    ],
)
def test_an_accept_header_with_a_version_no_one_can_read_gets_the_text_format(
    http, settings, accept
):
    settings.IDENTITY_METRICS_ALLOWED_ADDRESSES = ["127.0.0.1"]
    response = http.get("/metrics", HTTP_ACCEPT=accept)
    assert response.status_code == 200  # a bad request is never a 500
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    assert {family.name for family in text_string_to_metric_families(response.content.decode())}


def test_an_allowed_address_reads_the_metrics_without_a_token(http, settings):
    settings.IDENTITY_METRICS_ALLOWED_ADDRESSES = ["192.0.2.7", "10.0.0.0/8"]
    for address in ("192.0.2.7", "10.20.30.40", "::ffff:10.1.1.1"):
        assert http.get("/metrics", REMOTE_ADDR=address).status_code == 200, address


def test_an_address_outside_the_allowed_ones_needs_a_staff_token(alice, http, settings):
    settings.IDENTITY_METRICS_ALLOWED_ADDRESSES = ["10.0.0.0/8"]
    assert http.get("/metrics", REMOTE_ADDR="192.0.2.1").status_code == 401
    assert http.get("/metrics", REMOTE_ADDR="192.0.2.1", **bearer(alice)).status_code == 403


def test_x_forwarded_for_does_not_make_an_address_allowed(http, settings):
    # REMOTE_ADDR is the client, as for the sign-in throttle; a trusted proxy's
    # X-Forwarded-For reaches it only through the server's --proxy-headers.
    settings.IDENTITY_METRICS_ALLOWED_ADDRESSES = ["10.0.0.0/8"]
    response = http.get("/metrics", REMOTE_ADDR="192.0.2.1", HTTP_X_FORWARDED_FOR="10.0.0.1")
    assert response.status_code == 401


def test_no_address_is_allowed_by_default(http):
    assert http.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 401


def test_metrics_answer_get_only(http, settings):
    settings.IDENTITY_METRICS_ALLOWED_ADDRESSES = ["127.0.0.1"]
    response = http.post("/metrics")
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"


def test_a_bad_allowed_address_fails_the_system_check_and_is_ignored(http, settings):
    settings.IDENTITY_METRICS_ALLOWED_ADDRESSES = ["10.0.0.0/33", "localhost", "192.0.2.7"]
    errors = [message for message in run_checks() if message.id == "identity.E101"]
    assert [error.msg.split("'")[1] for error in errors] == ["10.0.0.0/33", "localhost"]
    assert http.get("/metrics", REMOTE_ADDR="192.0.2.7").status_code == 200
    assert http.get("/metrics", REMOTE_ADDR="10.0.0.1").status_code == 401


def test_good_allowed_addresses_pass_the_system_check(settings):
    settings.IDENTITY_METRICS_ALLOWED_ADDRESSES = "10.0.0.0/8, 192.0.2.7,2001:db8::/32"
    assert [message for message in run_checks() if message.id == "identity.E101"] == []


def test_the_allowed_addresses_are_read_from_the_environment():
    show = (
        "import django; django.setup(); from identity import conf; "
        "print(conf.metrics_allowed_addresses())"
    )
    env = base_env(IDENTITY_METRICS_ALLOWED_ADDRESSES=" 10.0.0.0/8, 192.0.2.7 ,")
    result = subprocess.run(
        [sys.executable, "-c", show], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['10.0.0.0/8', '192.0.2.7']"


# --- each metric moves with its event ---------------------------------------------


async def open_from(address: str) -> tuple[bool, Client]:
    """A socket from a client address of its own (the guard counts per address)."""
    communicator = WebsocketCommunicator(application, "/ws/")
    communicator.scope["client"] = (address, 40000)
    connected, _ = await communicator.connect(timeout=TIMEOUT)
    return connected, Client(communicator)


async def test_a_socket_counts_as_open_until_it_closes_and_its_connect_as_accepted(connect):
    before = await read()
    client = await connect()
    during = await read()
    assert moved(before, during, "identity_sockets_open") == 1
    assert moved(before, during, "identity_connects_total", outcome="accepted") == 1
    await client.close()
    assert moved(before, await read(), "identity_sockets_open") == 0


async def test_an_auth_counts_its_outcome_its_time_its_socket_and_its_user(alice, connect):
    before = await read()
    first = await connect(access_for(alice))
    second = await connect(access_for(alice))
    during = await read()
    assert moved(before, during, "identity_auth_total", outcome="success") == 2
    assert moved(before, during, "identity_auth_seconds_count") == 2
    assert moved(before, during, "identity_auth_seconds_sum") > 0
    assert moved(before, during, "identity_sockets_authenticated") == 2
    assert moved(before, during, "identity_users_online") == 1
    await first.request("logout")
    await second.close()
    after = await read()
    assert moved(before, after, "identity_sockets_authenticated") == 0
    assert moved(before, after, "identity_users_online") == 0
    assert moved(before, after, "identity_sockets_open") == 1  # the logged-out one


async def test_a_refused_auth_counts_under_its_error_code(alice, connect):
    client = await connect()
    before = await read()
    await client.auth("garbage")
    await client.auth(access_for(alice, lifetime=-timedelta(seconds=1)))
    after = await read()
    assert moved(before, after, "identity_auth_total", outcome="token_invalid") == 1
    assert moved(before, after, "identity_auth_total", outcome="token_expired") == 1
    assert moved(before, after, "identity_auth_total", outcome="success") == 0
    assert moved(before, after, "identity_auth_seconds_count") == 2
    assert moved(before, after, "identity_sockets_authenticated") == 0


async def test_frames_in_and_out_are_counted(alice, connect):
    client = await connect(access_for(alice))
    before = await read()
    for n in range(3):
        assert (await client.request("ping", n))["action"] == "pong"
    await client.send_text("not json")
    assert (await client.receive())["payload"]["code"] == "invalid_json"
    # An application action's reply is written its own way (identity.realtime).
    assert (await client.request("test.echo", 1))["action"] == "test.echo"
    after = await read()
    assert moved(before, after, "identity_frames_received_total") == 5
    assert moved(before, after, "identity_frames_sent_total") == 5


async def test_a_frame_over_the_sockets_allowance_counts_as_rate_limited(connect, settings):
    settings.IDENTITY_RATE_LIMIT, settings.IDENTITY_RATE_BURST = 0.001, 1
    client = await connect()
    before = await read()
    assert (await client.request("ping"))["action"] == "pong"
    assert (await client.request("ping"))["payload"]["code"] == "rate_limited"
    after = await read()
    assert moved(before, after, "identity_rate_limited_total", limit="socket_frames") == 1


async def test_handshakes_over_an_addresss_rate_count_as_refused_connects(settings):
    settings.IDENTITY_HANDSHAKE_RATE, settings.IDENTITY_HANDSHAKE_BURST = 0.001, 1
    address = f"198.51.100.{secrets.randbelow(250) + 1}"
    before = await read()
    opened = [await open_from(address) for _ in range(3)]
    after = await read()
    for _, client in opened:
        await client.close()
    refused = sum(not connected for connected, _ in opened)
    assert refused >= 2  # the burst lets one through at most
    assert moved(before, after, "identity_connects_total", outcome="handshake_rate") == refused
    assert moved(before, after, "identity_rate_limited_total", limit="handshake_rate") == refused


async def test_too_many_anonymous_sockets_count_as_refused_connects(settings):
    settings.IDENTITY_MAX_ANONYMOUS_PER_ADDRESS = 1
    before = await read()
    first, held = await open_from("203.0.113.9")
    second, refused = await open_from("203.0.113.9")
    after = await read()
    await held.close()
    await refused.close()
    assert (first, second) == (True, False)
    assert moved(before, after, "identity_connects_total", outcome="too_many_anonymous") == 1
    assert moved(before, after, "identity_connects_total", outcome="accepted") == 1
    assert moved(before, after, "identity_rate_limited_total", limit="too_many_anonymous") == 1


async def test_a_foreign_origin_counts_as_a_refused_connect(connect):
    before = await read()
    communicator = WebsocketCommunicator(
        application, "/ws/", headers=[(b"origin", b"https://evil.example")]
    )
    connected, _ = await communicator.connect(timeout=TIMEOUT)
    assert connected is False
    after = await read()
    assert moved(before, after, "identity_connects_total", outcome="origin_refused") == 1
    assert moved(before, after, "identity_connects_total", outcome="accepted") == 0


async def test_server_closes_count_by_reason(alice, connect, settings):
    settings.IDENTITY_MAX_AUTH_ATTEMPTS = 1
    kicked = await connect(access_for(alice))
    guesser = await connect()
    before = await read()
    assert await push.disconnect_user(alice.pk, Reason.KICKED) == 1
    assert (await kicked.receive())["payload"]["reason"] == "kicked"
    assert await kicked.receive_close() == 4403
    await guesser.auth("garbage")
    assert (await guesser.receive())["action"] == "disconnect"
    assert await guesser.receive_close() == 4429
    after = await read()
    assert moved(before, after, "identity_disconnects_total", reason="kicked") == 1
    assert moved(before, after, "identity_disconnects_total", reason="too_many_attempts") == 1
    assert moved(before, after, "identity_disconnects_total", reason="auth_timeout") == 0


def database_down(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(*args: Any) -> Any:
        raise OperationalError("database is down")

    monkeypatch.setattr(tokens, "load_user", failing)


def channel_layer_down(monkeypatch: pytest.MonkeyPatch) -> None:
    async def unavailable(*args: Any) -> None:
        raise LayerUnavailable("channel layer unavailable during group_add")

    monkeypatch.setattr(get_channel_layer(), "group_add", unavailable)


@pytest.mark.parametrize(
    ("break_service", "service", "other"),
    [
        (database_down, "database", "channel_layer"),
        (channel_layer_down, "channel_layer", "database"),
    ],
    ids=["database", "channel_layer"],
)
async def test_a_service_error_on_a_socket_is_counted_under_its_service(
    alice, connect, monkeypatch, break_service, service, other
):
    client = await connect()
    before = await read()
    break_service(monkeypatch)
    assert (await client.auth(access_for(alice)))["error"]["code"] == "service_unavailable"
    monkeypatch.undo()
    after = await read()
    assert moved(before, after, "identity_service_errors_total", service=service) == 1
    assert moved(before, after, "identity_service_errors_total", service=other) == 0
    assert moved(before, after, "identity_auth_total", outcome="service_unavailable") == 1


def test_sign_ins_refused_by_the_throttle_count_as_rate_limited(http, settings):
    settings.IDENTITY_LOGIN_RATE_PER_ACCOUNT = "1/min"
    # The throttle's counts live in the cache table, which outlives a test.
    username = f"guesser-{secrets.token_hex(4)}"
    before = read_sync()
    statuses = [
        http.post(
            "/api/token/", {"username": username, "password": "x"}, content_type="application/json"
        ).status_code
        for _ in range(2)
    ]
    after = read_sync()
    assert statuses == [401, 429]
    assert moved(before, after, "identity_rate_limited_total", limit="login_account") == 1
    assert moved(before, after, "identity_rate_limited_total", limit="login_address") == 0


# --- `manage.py serve --workers 2` on PostgreSQL and Redis -------------------------


@pytest.fixture(scope="module")
def services_env() -> Iterator[tuple[dict[str, str], str, dict[str, str]]]:
    """A migrated PostgreSQL database with the demo users, and the env to serve it."""
    redis_url = require_redis()
    with postgres_database() as database_url:
        env = base_env(
            DJANGO_DEBUG="0",
            DJANGO_HTTPS="0",
            DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
            DATABASE_URL=database_url,
            REDIS_URL=redis_url,
            IDENTITY_REDIS_PREFIX=f"metrics{secrets.token_hex(4)}",
            IDENTITY_METRICS_ALLOWED_ADDRESSES="127.0.0.1",
            # Each worker copies its frame counts into the shared files on its heartbeat.
            IDENTITY_HEARTBEAT_INTERVAL="1",
        )
        yield env, database_url, Database(env).passwords


@pytest.fixture
def two_workers(services_env) -> Iterator[tuple[LiveServer, str, dict[str, str]]]:
    env, database_url, passwords = services_env
    server = LiveServer(env, ["manage.py", "serve", "--workers", "2"]).start()
    try:
        yield server, database_url, passwords
    finally:
        server.stop()


def scrape(server: LiveServer) -> Samples:
    with urllib.request.urlopen(server.http + "/metrics", timeout=5) as response:
        return parse(response.read().decode())


def worker_of(server: LiveServer, pid: int) -> bool:
    """Whether PID is a uvicorn worker of SERVER (a child of its supervisor)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    assert server.process is not None
    return f"PPid:\t{server.process.pid}\n" in status


def sockets_per_worker(server: LiveServer, database_url: str) -> dict[int, int]:
    """Authenticated sockets per living worker, from the registry (server ids: host:pid:nonce)."""
    import psycopg

    with psycopg.connect(database_url) as db:
        rows = db.execute("SELECT server_id FROM identity_connection").fetchall()
    pids = Counter(int(server_id.rsplit(":", 2)[1]) for (server_id,) in rows)
    return {pid: n for pid, n in pids.items() if worker_of(server, pid)}


@pytest.fixture
async def sockets_on_both_workers(two_workers) -> AsyncIterator[tuple[LiveServer, str, list[Any]]]:
    """Alice's authenticated sockets (each sent one ping) until both workers hold some."""
    server, database_url, passwords = two_workers
    token = server.tokens("alice", passwords["alice"])["access"]
    sockets: list[Any] = []
    try:
        while len(sockets_per_worker(server, database_url)) < 2:
            assert len(sockets) < 64, "the kernel gave every socket to one worker"
            ws = await websockets.connect(server.ws)
            sockets.append(ws)
            await ws.send(json.dumps({"action": "auth", "payload": token}))
            assert json.loads(await ws.recv())["payload"]["registered"] is True
        for ws in sockets:
            await ws.send(json.dumps({"action": "ping"}))
            assert json.loads(await ws.recv())["action"] == "pong"
        yield server, database_url, sockets
    finally:
        for ws in sockets:
            with contextlib.suppress(Exception):
                await ws.close()


async def scrapes_until(server: LiveServer, seen: Callable[[Samples], bool]) -> Samples:
    """Scrape until one satisfies SEEN (a worker's frames arrive with its heartbeat)."""
    deadline = time.monotonic() + 10
    while not seen(samples := scrape(server)):
        assert time.monotonic() < deadline, samples
        await asyncio.sleep(0.1)
    return samples


@pytest.mark.server
@pytest.mark.services
async def test_every_scrape_counts_the_sockets_and_frames_of_both_workers(
    sockets_on_both_workers,
):
    server, _, sockets = sockets_on_both_workers
    n = len(sockets)

    def both_workers(samples: Samples) -> bool:
        return (
            value(samples, "identity_sockets_open") == n
            and value(samples, "identity_sockets_authenticated") == n
            and value(samples, "identity_users_online") == 1
            and value(samples, "identity_auth_total", outcome="success") == n
            and value(samples, "identity_frames_received_total") == 2 * n  # auth, ping
            and value(samples, "identity_frames_sent_total") == 2 * n
        )

    await scrapes_until(server, both_workers)
    # A scrape lands on either worker: each must report both.
    for _ in range(12):
        assert both_workers(scrape(server))


@pytest.mark.server
@pytest.mark.services
async def test_a_killed_workers_sockets_leave_the_gauges_and_its_counts_stay(
    sockets_on_both_workers,
):
    server, database_url, sockets = sockets_on_both_workers
    counts = sockets_per_worker(server, database_url)
    victim, survivor = sorted(counts)
    before = await scrapes_until(
        server, lambda s: value(s, "identity_frames_received_total") == 2 * len(sockets)
    )
    os.kill(victim, signal.SIGKILL)

    def survivor_only(samples: Samples) -> bool:
        return (
            value(samples, "identity_sockets_open") == counts[survivor]
            and value(samples, "identity_sockets_authenticated") == counts[survivor]
        )

    await scrapes_until(server, survivor_only)
    for _ in range(6):
        samples = scrape(server)
        assert survivor_only(samples)
        # Counters of the dead worker stay in the totals: they never go down.
        for name, labels in [
            ("identity_frames_received_total", {}),
            ("identity_auth_total", {"outcome": "success"}),
        ]:
            assert value(samples, name, **labels) >= value(before, name, **labels)


def test_each_serve_start_gets_a_fresh_directory_and_stopped_servers_ones_go(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    first, second = metrics.fresh_multiprocess_dir(), metrics.fresh_multiprocess_dir()
    assert first != second
    assert os.listdir(first) == os.listdir(second) == []
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale = Path(first).parent / f"{gone.pid}-left"
    stale.mkdir()
    (stale / "counter_1.db").write_bytes(b"")
    metrics.fresh_multiprocess_dir()
    assert not stale.exists()
    assert Path(first).is_dir()  # this process is alive: its directories stay
