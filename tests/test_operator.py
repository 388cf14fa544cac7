"""The operator's console: admin list, connection page, actions; management commands."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.test import AsyncClient

from identity.models import Connection
from tests.conftest import access_for, adb, as_request
from tests.test_withdrawal import assert_withdrawn

pytestmark = pytest.mark.django_db(transaction=True)


async def test_the_user_list_shows_online_state_and_socket_count(alice, bob, admin_client, connect):
    await connect(access_for(alice))
    await connect(access_for(alice))
    page = (await admin_client.get("/admin/auth/user/")).content.decode()
    assert "sockets" in page
    online = (await admin_client.get("/admin/auth/user/?online=yes")).content.decode()
    assert ">alice<" in online and ">bob<" not in online
    assert '<td class="field-live_sockets">2</td>' in online
    offline = (await admin_client.get("/admin/auth/user/?online=no")).content.decode()
    assert ">bob<" in offline and ">alice<" not in offline


async def test_the_user_page_lists_live_connections_with_a_close_button(
    alice, admin_client, connect
):
    await connect(access_for(alice), headers=[(b"user-agent", b"TestAgent/1.0")])
    page = (await admin_client.get(f"/admin/auth/user/{alice.pk}/change/")).content.decode()
    assert "live connections" in page.lower()
    assert "TestAgent/1.0" in page
    assert "/connections/" in page and "/close/" in page


async def test_closing_one_connection_from_the_admin(alice, admin_client, connect):
    first = await connect(access_for(alice))
    second = await connect(access_for(alice))
    channel = await adb(
        lambda: Connection.objects.order_by("authenticated_at").first().channel_name
    )()
    url = f"/admin/auth/user/{alice.pk}/connections/{channel}/close/"
    confirm = await admin_client.get(url)
    assert confirm.status_code == 200
    assert b"Close connection" in confirm.content
    done = await admin_client.post(url)
    assert done.status_code == 302
    await assert_withdrawn(first, "kicked")
    await second.assert_silent()


async def test_admin_action_disconnect_says_how_many_sockets_closed(
    alice, bob, admin_client, connect
):
    sockets = [await connect(access_for(alice)), await connect(access_for(alice))]
    bystander = await connect(access_for(bob))
    response = await admin_client.post(
        "/admin/auth/user/",
        {"action": "disconnect_users", "_selected_action": [alice.pk]},
        follow=True,
    )
    assert "2 sockets closed for alice." in response.content.decode()
    for client in sockets:
        await assert_withdrawn(client, "kicked")
    await bystander.assert_silent()


async def test_admin_action_revoke_closes_and_refuses_old_tokens(alice, admin_client, connect):
    token = access_for(alice)
    client = await connect(token)
    response = await admin_client.post(
        "/admin/auth/user/",
        {"action": "revoke_users", "_selected_action": [alice.pk]},
        follow=True,
    )
    assert "1 socket closed for alice." in response.content.decode()
    await assert_withdrawn(client, "token_revoked")
    again = await connect()
    assert (await again.auth(token))["error"]["code"] == "token_revoked"


async def test_non_staff_cannot_reach_the_admin(alice):
    client = AsyncClient()
    await client.aforce_login(alice)
    response = await client.get("/admin/auth/user/")
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


async def test_the_online_command_prints_a_table(alice, connect):
    await connect(access_for(alice))
    out = StringIO()
    await adb(call_command)("online", "--sockets", stdout=out)
    text = out.getvalue()
    assert "alice" in text and "1 user(s), 1 socket(s)." in text


async def test_the_online_command_with_nobody(transactional_db):
    out = StringIO()
    await adb(call_command)("online", stdout=out)
    assert out.getvalue().strip() == "Nobody is online."


async def test_the_disconnect_command_closes_the_sockets(alice, connect):
    client = await connect(access_for(alice))
    out = StringIO()
    await as_request(call_command, "disconnect", "alice", stdout=out)
    assert out.getvalue() == "1 socket closed for alice.\n"
    await assert_withdrawn(client, "kicked")


async def test_the_revoke_command_revokes_and_closes(alice, connect):
    token = access_for(alice)
    client = await connect(token)
    out = StringIO()
    await as_request(call_command, "revoke", "alice", stdout=out)
    assert out.getvalue() == (
        "alice: every token issued so far is refused from now on.\n1 socket closed for alice.\n"
    )
    await assert_withdrawn(client, "token_revoked")


@pytest.mark.parametrize("command", ["disconnect", "revoke"])
async def test_commands_refuse_an_unknown_user(command, transactional_db):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="No user named 'ghost'"):
        await adb(call_command)(command, "ghost")
