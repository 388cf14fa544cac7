"""Hostile HTTP through a real server process: deep JSON, hidden 500s, bad-claim tokens.

Production mode (DJANGO_DEBUG=0) on purpose: that is where a 500 used to
leave no trace, and where the JSON error pages must hold.
"""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.error
import urllib.request
from pathlib import Path

import jwt
import pytest

from tests.servers import Database, LiveServer

pytestmark = pytest.mark.server

SECRET = "live-test-secret-key-" + "0123456789" * 4
PRODUCTION = {
    "DJANGO_DEBUG": "0",
    "DJANGO_HTTPS": "0",  # urllib speaks plain http
    "DJANGO_SECRET_KEY": SECRET,
    "REDIS_URL": "",  # one process: the embedded default even when the suite runs on Redis
}
TOKEN_URLS = ["/api/token/", "/api/token/refresh/", "/api/token/blacklist/"]
DEEP_BODIES = {"arrays": b"[" * 100_000, "objects": b'{"a":' * 50_000}


@pytest.fixture(scope="module")
def database() -> Database:
    return Database.sqlite(**PRODUCTION)


@pytest.fixture(scope="module")
def server(database):
    live = LiveServer(database.env).start()
    yield live
    live.stop()


def post_raw(
    server: LiveServer, path: str, body: bytes | None, token: str = "", method: str = "POST"
) -> tuple[int, dict]:
    """Send raw bytes as JSON; (status, decoded JSON body, or {"not_json": ...})."""
    request = urllib.request.Request(server.http + path, data=body, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, _json(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, _json(exc.read())


def _json(raw: bytes) -> dict:
    try:
        return json.loads(raw)
    except ValueError:
        return {"not_json": raw[:200].decode(errors="replace")}


@pytest.mark.parametrize("shape", DEEP_BODIES)
@pytest.mark.parametrize("url", TOKEN_URLS)
def test_a_deeply_nested_token_body_is_a_400_parse_error(server, url, shape):
    status, body = post_raw(server, url, DEEP_BODIES[shape])
    assert (status, body.get("code")) == (400, "parse_error"), body


def forged(**claims) -> str:
    now = int(time.time())
    base = {"token_type": "access", "exp": now + 300, "iat": now, "jti": "j" * 32}
    return jwt.encode({**base, **claims}, SECRET, algorithm="HS256")


def operator_id(database: Database) -> str:
    with sqlite3.connect(database.env["DATABASE_URL"].removeprefix("sqlite:///")) as db:
        return str(db.execute("SELECT id FROM auth_user WHERE username='operator'").fetchone()[0])


@pytest.mark.parametrize(
    "claims",
    [{"exp": "9999999999"}, {"iat": "1"}, {"exp": 10**20}, {"user_id": ["1"]}],
    ids=["exp-string", "iat-string", "exp-out-of-range", "user_id-list"],
)
def test_a_signed_bearer_token_with_mistyped_claims_is_a_401_token_invalid(
    server, database, claims
):
    token = forged(**{"user_id": operator_id(database), **claims})
    status, body = server.request("GET", "/api/online/", token=token)
    assert (status, body.get("code")) == (401, "token_invalid"), body


def test_a_refresh_token_with_an_exp_string_is_a_401_not_a_500(server, database):
    token = forged(token_type="refresh", user_id=operator_id(database), exp="9999999999")
    for url in ("/api/token/refresh/", "/api/token/blacklist/"):
        status, body = server.post(url, {"refresh": token})
        assert status == 401 and body.get("code"), (url, body)


@pytest.fixture(params=["production", "debug"])
def fragile_server(request):
    """A server whose user table the test may break, in production and in debug mode."""
    env = {**PRODUCTION, "DJANGO_DEBUG": "1" if request.param == "debug" else "0"}
    database = Database.sqlite(**env)
    live = LiveServer(database.env).start()
    live.database_path = Path(database.env["DATABASE_URL"].removeprefix("sqlite:///"))
    yield live
    live.stop()


def test_a_500_is_json_and_logged_with_its_traceback_in_every_mode(fragile_server):
    with sqlite3.connect(fragile_server.database_path) as db:
        db.execute("ALTER TABLE auth_user RENAME TO auth_user_gone")
    status, body = post_raw(fragile_server, "/api/token/", b'{"username": "a", "password": "x"}')
    assert (status, body.get("code")) == (500, "server_error")
    log = fragile_server.output()
    assert "Internal Server Error: /api/token/" in log
    assert "Traceback (most recent call last)" in log
    assert "no such table: auth_user" in log


def test_an_unknown_api_path_is_a_json_404_in_debug_mode_too(fragile_server):
    status, body = post_raw(fragile_server, "/api/nothing/", None, method="GET")
    assert (status, body.get("code")) == (404, "not_found"), body
