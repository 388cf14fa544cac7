"""`POST /api/token/` throttles failed sign-ins per account and per address (real servers)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from django.core.exceptions import ImproperlyConfigured

from config.settings import env_rate
from tests.servers import Database, LiveServer, base_env
from tests.services import postgres_database

pytestmark = pytest.mark.server

LIMIT = 5
ACCOUNT_ONLY = {
    "IDENTITY_LOGIN_RATE_PER_ACCOUNT": f"{LIMIT}/min",
    "IDENTITY_LOGIN_RATE_PER_ADDRESS": "",
    "REDIS_URL": "",
}


def sign_in(server: LiveServer, username: str, password: str, **headers: str):
    """(status, Retry-After header, decoded body) of one sign-in."""
    body = json.dumps({"username": username, "password": password}).encode()
    request = urllib.request.Request(server.http + "/api/token/", data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    for name, value in headers.items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers.get("Retry-After"), json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Retry-After"), json.loads(exc.read())


@pytest.fixture(scope="module")
def accounts():
    database = Database.sqlite(**ACCOUNT_ONLY)
    live = LiveServer(database.env).start()
    live.passwords = database.passwords
    yield live
    live.stop()


def assert_throttled(answer) -> None:
    status, retry_after, body = answer
    assert (status, body.get("code")) == (429, "throttled"), answer
    assert retry_after is not None and 1 <= int(retry_after) <= 60, retry_after


def test_wrong_passwords_for_one_account_end_in_429_with_retry_after(accounts):
    statuses = [sign_in(accounts, "alice", f"guess-{n}")[0] for n in range(LIMIT)]
    assert statuses == [401] * LIMIT
    assert_throttled(sign_in(accounts, "alice", "one-more-guess"))
    # Even the right password waits: a guesser cannot tell it from a wrong one.
    assert_throttled(sign_in(accounts, "alice", accounts.passwords["alice"]))
    # Other accounts on the same address are not affected (the address limit is off).
    assert sign_in(accounts, "operator", accounts.passwords["operator"])[0] == 200


def test_correct_sign_ins_do_not_spend_the_account_allowance(accounts):
    for _ in range(2 * LIMIT):
        assert sign_in(accounts, "bob", accounts.passwords["bob"])[0] == 200
    statuses = [sign_in(accounts, "bob", f"guess-{n}")[0] for n in range(LIMIT)]
    assert statuses == [401] * LIMIT
    assert_throttled(sign_in(accounts, "bob", "one-more-guess"))


def test_wrong_passwords_from_one_address_end_in_429_whatever_x_forwarded_for_says():
    database = Database.sqlite(
        IDENTITY_LOGIN_RATE_PER_ACCOUNT="0",
        IDENTITY_LOGIN_RATE_PER_ADDRESS=f"{LIMIT}/min",
        REDIS_URL="",
    )
    server = LiveServer(database.env).start()
    try:
        for n in range(LIMIT):
            forwarded = {"X-Forwarded-For": f"10.0.0.{n}"}
            assert sign_in(server, f"user-{n}", "guess", **forwarded)[0] == 401
        assert_throttled(
            sign_in(server, "someone-else", "guess", **{"X-Forwarded-For": "10.9.9.9"})
        )
    finally:
        server.stop()


@pytest.mark.services
def test_server_processes_on_postgresql_share_the_account_count():
    with postgres_database() as url:
        database = Database(base_env(DATABASE_URL=url, **ACCOUNT_ONLY))
        first = LiveServer(database.env).start()
        second = LiveServer(database.env).start()
        try:
            answers = [sign_in(server, "alice", "guess")[0] for server in [first, second] * 2]
            assert answers == [401] * 4
            assert sign_in(first, "alice", "guess")[0] == 401  # the fifth, on either process
            assert_throttled(sign_in(second, "alice", "guess"))
            assert_throttled(sign_in(first, "alice", "guess"))
        finally:
            first.stop()
            second.stop()


@pytest.mark.parametrize(
    ("raw", "rate"), [("10/min", "10/min"), ("3/s", "3/s"), ("0", None), ("", None)]
)
def test_a_login_rate_is_n_per_period_and_0_or_empty_turns_it_off(monkeypatch, raw, rate):
    monkeypatch.setenv("IDENTITY_LOGIN_RATE_PER_ACCOUNT", raw)
    assert env_rate("IDENTITY_LOGIN_RATE_PER_ACCOUNT", "7/h") == rate


@pytest.mark.parametrize("raw", ["ten/min", "10", "10/fortnight", "-1/min"])
def test_a_malformed_login_rate_is_refused_at_startup(monkeypatch, raw):
    monkeypatch.setenv("IDENTITY_LOGIN_RATE_PER_ACCOUNT", raw)
    with pytest.raises(ImproperlyConfigured, match="IDENTITY_LOGIN_RATE_PER_ACCOUNT"):
        env_rate("IDENTITY_LOGIN_RATE_PER_ACCOUNT", "7/h")
