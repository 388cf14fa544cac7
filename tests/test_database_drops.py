"""The per-socket calls when PostgreSQL drops the server's connection (a restart, a kill).

identity.sessions.hop skips Django's ping before each call; a connection the
database dropped meanwhile costs a second try on a new connection, not a
failed `auth` or a ghost row. PostgreSQL only: SQLite has no server to drop
it. These run in the suite's PostgreSQL pass (`make test-services`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import psycopg
import pytest
from django.db import connection

from identity.models import Connection
from tests.conftest import access_for, adb

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        connection.vendor != "postgresql",
        reason="needs DATABASE_URL on PostgreSQL (make test-services runs it)",
    ),
]


@pytest.fixture
async def persistent_connection() -> AsyncIterator[None]:
    """The database thread keeps its connection between calls, as in production
    (tests/settings.py closes it after each)."""

    def keep_for(seconds: int) -> None:
        connection.close()
        connection.settings_dict["CONN_MAX_AGE"] = seconds

    await adb(keep_for)(60)
    yield
    await adb(keep_for)(0)


def database_thread_backend() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def terminate(pid: int) -> None:
    """End one backend from a connection of our own, and wait until it is gone."""
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    with psycopg.connect(**params, autocommit=True) as admin:
        row = admin.execute("SELECT pg_terminate_backend(%s, 5000)", [pid]).fetchone()
    assert row == (True,)


async def test_an_auth_and_a_close_after_the_connection_was_dropped(
    persistent_connection, alice, bob, connect
):
    watcher = await connect(access_for(bob))
    await watcher.request("presence")
    await terminate_database_thread()

    client = await connect()
    reply = await client.auth(access_for(alice))
    assert reply["registered"] is True, reply
    alice_dict = {"id": alice.pk, "username": "alice"}
    assert (await watcher.receive())["payload"] == {"event": "online", "user": alice_dict}

    await terminate_database_thread()
    await client.close()
    assert (await watcher.receive())["payload"] == {"event": "offline", "user": alice_dict}
    assert not await adb(Connection.objects.filter(user=alice).exists)()


async def terminate_database_thread() -> None:
    # The consumers' calls run on the database thread (database_sync_to_async):
    # its connection is the one to drop, from a connection of our own.
    pid = await adb(database_thread_backend)()
    await adb(terminate)(pid)
