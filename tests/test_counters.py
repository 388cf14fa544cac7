"""Connects and auth failures are counted in memory per minute and flushed with the heartbeat."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from identity import counters, heartbeat
from identity.models import MinuteCount
from tests.conftest import access_for, adb

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def empty_counter() -> None:
    """Counts left in this process's memory by earlier tests are not this test's."""
    counters._counts.clear()


def this_minute() -> datetime:
    return datetime.fromtimestamp(int(time.time()) // 60 * 60, tz=UTC)


def stored() -> dict[tuple[str, str], int]:
    return {(row.kind, row.code): row.n for row in MinuteCount.objects.all()}


def test_counting_touches_no_database_until_the_flush(django_assert_num_queries):
    with django_assert_num_queries(0):
        counters.count(counters.CONNECT)
        counters.count(counters.CONNECT)
        counters.count(counters.AUTH_FAILURE, "token_expired")
    assert sorted(counters.pending().values()) == [1, 2]
    assert MinuteCount.objects.count() == 0
    counters.flush()
    assert stored() == {("connect", ""): 2, ("auth_failure", "token_expired"): 1}
    assert counters.pending() == {}


def test_a_second_flush_adds_to_the_rows_another_process_wrote():
    MinuteCount.objects.create(minute=this_minute(), kind="connect", code="", n=5)
    counters.count(counters.CONNECT)
    counters.flush()
    counters.count(counters.CONNECT)
    counters.flush()
    assert stored() == {("connect", ""): 7}


def test_counts_a_failed_flush_could_not_write_wait_for_the_next(monkeypatch):
    counters.count(counters.CONNECT)

    def broken(*args):
        raise RuntimeError("database down")

    monkeypatch.setattr(counters, "_add", broken)
    with pytest.raises(RuntimeError):
        counters.flush()
    monkeypatch.undo()
    counters.flush()
    assert stored() == {("connect", ""): 1}


def test_the_flush_forgets_minutes_older_than_two_hours():
    old = this_minute() - timedelta(hours=3)
    MinuteCount.objects.create(minute=old, kind="connect", code="", n=9)
    counters.flush()
    assert MinuteCount.objects.count() == 0


def test_the_last_hour_has_one_slot_per_minute_the_current_minute_last():
    now = timezone.now()
    start = now.replace(second=0, microsecond=0)
    MinuteCount.objects.create(minute=start, kind="connect", code="", n=3)
    MinuteCount.objects.create(minute=start - timedelta(minutes=59), kind="connect", code="", n=2)
    MinuteCount.objects.create(minute=start - timedelta(minutes=60), kind="connect", code="", n=99)
    MinuteCount.objects.create(minute=start, kind="auth_failure", code="token_invalid", n=1)
    MinuteCount.objects.create(minute=start, kind="auth_failure", code="token_expired", n=4)
    series = counters.last_hour(now)
    assert len(series["connect"]) == 60 == len(series["auth_failure"])
    assert series["connect"][-1] == 3 and series["connect"][0] == 2 and sum(series["connect"]) == 5
    assert series["auth_failure"][-1] == 5
    assert counters.failures_by_code(now) == [("token_expired", 4), ("token_invalid", 1)]


async def test_sockets_count_their_connects_and_auth_failures_by_code(alice, connect):
    await connect(access_for(alice))
    anonymous = await connect()
    await anonymous.auth("not-a-token")
    await anonymous.auth(access_for(alice, lifetime=-timedelta(minutes=1)))
    await heartbeat.beat_once()  # the flush rides the heartbeat
    assert await adb(stored)() == {
        ("connect", ""): 2,
        ("auth_failure", "token_invalid"): 1,
        ("auth_failure", "token_expired"): 1,
    }
