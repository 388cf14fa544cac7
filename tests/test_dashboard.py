"""The operator's dashboard: rendered on the server, refreshed from a staff-only endpoint."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.test import AsyncClient
from django.utils import timezone

from identity import heartbeat, registry
from identity.models import MinuteCount, ServerProcess
from tests import test_counters
from tests.conftest import access_for, adb, as_request, grant, make_user
from tests.test_withdrawal import assert_withdrawn

pytestmark = pytest.mark.django_db(transaction=True)

empty_counter = test_counters.empty_counter
PAGE, DATA = "/admin/identity/dashboard/", "/admin/identity/dashboard/data/"


def text(html: str) -> str:
    return " ".join(html.split())


async def test_the_page_shows_who_is_online_without_javascript(alice, bob, admin_client, connect):
    await connect(access_for(alice))
    await connect(access_for(alice))
    page = text((await admin_client.get(PAGE)).content.decode())
    assert '<strong id="users-online">1</strong> user online' in page
    assert '<strong id="open-sockets">2</strong> open sockets' in page
    assert f'<a href="/admin/auth/user/{alice.pk}/change/">alice</a></td><td>2</td>' in page
    assert ">bob<" not in page


async def test_the_chart_draws_the_last_hour_and_says_it_in_words(admin_client):
    start = timezone.now().replace(second=0, microsecond=0)
    await adb(MinuteCount.objects.create)(minute=start, kind="connect", code="", n=4)
    await adb(MinuteCount.objects.create)(
        minute=start - timedelta(minutes=5), kind="auth_failure", code="token_expired", n=2
    )
    page = text((await admin_client.get(PAGE)).content.decode())
    assert '<svg class="identity-chart"' in page and 'aria-labelledby="chart-summary"' in page
    assert "<title>this minute: 4 connects</title>" in page
    assert "<title>5 min ago: 2 auth failures</title>" in page
    assert "In the last hour: 4 connects and 2 auth failures (2 token_expired)." in page


async def test_server_processes_show_their_heartbeat_age_and_state(admin_client):
    await adb(registry.heartbeat)()
    old = timezone.now() - timedelta(hours=2)
    await adb(ServerProcess.objects.create)(id="gone:1", started_at=old, heartbeat_at=old)
    page = text((await admin_client.get(PAGE)).content.decode())
    assert f'<td>{registry.SERVER_ID}</td><td class="state-live">live</td>' in page
    assert '<td>gone:1</td><td class="state-stale">stale</td><td><time' in page
    assert ">2 h ago</time>" in page


async def test_withdrawals_are_listed_with_who_why_and_by_whom(alice, admin_client, connect):
    client = await connect(access_for(alice))
    await as_request(call_command, "disconnect", "alice", stdout=StringIO())
    await assert_withdrawn(client, "kicked")
    page = text((await admin_client.get(PAGE)).content.decode())
    assert "<td>alice</td><td>kick</td><td>kicked</td><td>command</td><td>1</td>" in page


async def test_the_data_endpoint_follows_connects_and_disconnects(alice, admin_client, connect):
    before = (await admin_client.get(DATA)).json()
    assert (before["users_online"], before["open_sockets"]) == (0, 0)
    assert "Nobody is online." in before["html"]
    client = await connect(access_for(alice))
    await heartbeat.beat_once()
    during = (await admin_client.get(DATA)).json()
    assert (during["users_online"], during["open_sockets"], during["connects"]) == (1, 1, 1)
    assert ">alice</a>" in during["html"]
    await client.close()
    after = (await admin_client.get(DATA)).json()
    assert (after["users_online"], after["open_sockets"]) == (0, 0)


async def test_only_staff_who_may_view_users_see_the_dashboard(transactional_db):
    viewer = await adb(lambda: grant(make_user("viewer", is_staff=True), "view"))()
    staff_only = await adb(lambda: make_user("staffer", is_staff=True))()
    member = await adb(lambda: grant(make_user("member"), "view"))()
    expected = {viewer: (200, 200), staff_only: (403, 403), member: (302, 302)}
    for user, statuses in expected.items():
        client = AsyncClient()
        await client.aforce_login(user)
        got = ((await client.get(PAGE)).status_code, (await client.get(DATA)).status_code)
        assert got == statuses, user
    assert (await AsyncClient().get(DATA)).status_code == 302  # to the admin's sign-in


async def test_the_admin_index_links_the_dashboard_for_those_who_may_view_users(
    admin_client, transactional_db
):
    page = (await admin_client.get("/admin/")).content.decode()
    assert 'href="/admin/identity/dashboard/">Dashboard</a>' in page
    clerk = await adb(lambda: grant(make_user("clerk", is_staff=True), "view"))()
    plain = await adb(lambda: make_user("plain", is_staff=True))()
    for user, shown in ((clerk, True), (plain, False)):
        client = AsyncClient()
        await client.aforce_login(user)
        page = (await client.get("/admin/")).content.decode()
        assert ("/admin/identity/dashboard/" in page) is shown


async def test_garbage_sent_to_the_data_endpoint_is_refused_or_ignored(admin_client):
    posted = await admin_client.post(DATA, data=b"\xff{[", content_type="application/json")
    assert posted.status_code == 405  # read-only: nothing is done with a body
    odd = await admin_client.get(DATA + "?since=%00%ff&x=" + "9" * 5000)
    assert odd.status_code == 200 and odd.json()["users_online"] == 0
