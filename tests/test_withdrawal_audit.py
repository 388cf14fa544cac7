"""Each withdrawal says what it did, and is logged once with who did it to whom."""

from __future__ import annotations

import logging
import sys
from io import StringIO

import pytest
from django.core.management import call_command

from tests import test_withdrawal_acks
from tests.conftest import RequestClient, access_for, adb, as_request
from tests.test_withdrawal import assert_withdrawn, bearer
from tests.test_withdrawal_acks import add_ghost

pytestmark = pytest.mark.django_db(transaction=True)

short_acks = test_withdrawal_acks.short_acks


def withdrawal_logs(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("identity") and " of " in r.message]


def assert_logged_once(caplog, message: str, token: str | None = None) -> None:
    records = withdrawal_logs(caplog)
    assert [(r.levelno, r.getMessage()) for r in records] == [(logging.INFO, message)]
    if token is not None:
        assert token not in caplog.text


async def test_a_command_kick_is_logged_once_with_who_whom_why_and_count(alice, connect, caplog):
    token = access_for(alice)
    client = await connect(token)
    caplog.set_level(logging.INFO, logger="identity")
    out = StringIO()
    await as_request(call_command, "disconnect", "alice", stdout=out)
    await assert_withdrawn(client, "kicked")
    assert out.getvalue() == "1 socket closed for alice.\n"
    assert_logged_once(
        caplog,
        f"kick of alice (user {alice.pk}) by command, reason kicked: 1 socket closed for alice",
        token,
    )


async def test_a_command_for_a_user_with_no_socket_says_so(alice, caplog):
    caplog.set_level(logging.INFO, logger="identity")
    out = StringIO()
    await as_request(call_command, "disconnect", "alice", stdout=out)
    assert out.getvalue() == "alice had no open socket.\n"
    assert_logged_once(
        caplog,
        f"kick of alice (user {alice.pk}) by command, reason kicked: alice had no open socket",
    )


async def test_a_staff_api_revoke_is_logged_with_the_staff_user(alice, staff, connect, caplog):
    token = access_for(alice)
    client = await connect(token)
    caplog.set_level(logging.INFO, logger="identity")
    staff_token = access_for(staff)
    response = await RequestClient().post("/api/users/alice/revoke/", headers=bearer(staff_token))
    assert response.json() == {"username": "alice", "connections": 1}
    await assert_withdrawn(client, "token_revoked")
    assert_logged_once(
        caplog,
        f"revoke (tokens revoked) of alice (user {alice.pk}) by staff API user operator, "
        "reason token_revoked: 1 socket closed for alice",
        staff_token,
    )


async def test_an_admin_deactivation_is_logged_with_the_admin_and_reported(
    alice, admin_client, connect, caplog
):
    client = await connect(access_for(alice))
    caplog.set_level(logging.INFO, logger="identity")
    page = await admin_client.get(f"/admin/auth/user/{alice.pk}/change/")
    form = page.context["adminform"].form
    data = {k: v for k, v in form.initial.items() if v is not None and k != "password"}
    data.update(
        {
            "is_active": "",
            "date_joined_0": alice.date_joined.strftime("%Y-%m-%d"),
            "date_joined_1": alice.date_joined.strftime("%H:%M:%S"),
            "_save": "Save",
        }
    )
    data.pop("date_joined", None)
    data.pop("last_login", None)
    data.pop("groups", None)
    data.pop("user_permissions", None)
    done = await admin_client.post(f"/admin/auth/user/{alice.pk}/change/", data, follow=True)
    assert "User alice was deactivated; 1 socket closed." in done.content.decode()
    await assert_withdrawn(client, "user_inactive")
    assert_logged_once(
        caplog,
        f"deactivation of alice (user {alice.pk}) by admin operator, reason user_inactive: "
        "1 socket closed for alice",
    )


async def test_a_delete_from_the_shell_is_logged_as_the_shell(alice, connect, caplog, monkeypatch):
    client = await connect(access_for(alice))
    monkeypatch.setattr(sys, "argv", ["manage.py", "shell"])
    caplog.set_level(logging.INFO, logger="identity")
    user_id = alice.pk
    await as_request(alice.delete)
    await assert_withdrawn(client, "user_deleted")
    assert_logged_once(
        caplog,
        f"delete of alice (user {user_id}) by shell, reason user_deleted: "
        "1 socket closed for alice",
    )


async def test_the_admin_close_button_says_when_nothing_closed(
    alice, admin_client, caplog, short_acks
):
    await adb(add_ghost)(alice.pk)
    url = f"/admin/auth/user/{alice.pk}/connections/specific.ghost!nobody/close/"
    done = await admin_client.post(url, follow=True)
    assert "Nothing closed: that socket of alice had already gone." in done.content.decode()


async def test_the_admin_action_says_who_had_no_socket(alice, bob, admin_client, connect):
    client = await connect(access_for(alice))
    response = await admin_client.post(
        "/admin/auth/user/",
        {"action": "disconnect_users", "_selected_action": [alice.pk, bob.pk]},
        follow=True,
    )
    page = response.content.decode()
    assert "1 socket closed for alice." in page and "User bob had no open socket." in page
    await assert_withdrawn(client, "kicked")
