"""Deleting a connected user in the admin: allowed, and it closes their sockets."""

from __future__ import annotations

import pytest

from identity.models import Connection, ServerProcess
from tests.conftest import access_for, adb, refresh_for
from tests.test_withdrawal import assert_withdrawn

pytestmark = pytest.mark.django_db(transaction=True)


async def watching(connect, user):
    """A socket of USER that asked `presence`."""
    watcher = await connect(access_for(user))
    await watcher.request("presence")
    return watcher


async def test_deleting_a_connected_user_from_their_page(alice, bob, admin_client, connect):
    await adb(refresh_for)(alice)  # an outstanding JWT, deleted with her
    watcher = await watching(connect, bob)
    client = await connect(access_for(alice))
    assert (await watcher.receive())["payload"]["event"] == "online"
    url = f"/admin/auth/user/{alice.pk}/delete/"
    confirm = (await admin_client.get(url)).content.decode()
    assert "Are you sure" in confirm and "permission to delete" not in confirm
    done = await admin_client.post(url, {"post": "yes"}, follow=True)
    page = done.content.decode()
    assert "was deleted successfully" in page
    assert "1 socket closed for alice." in page
    await assert_withdrawn(client, "user_deleted")
    assert (await watcher.receive())["payload"] == {
        "event": "offline",
        "user": {"id": alice.pk, "username": "alice"},
    }
    assert not await adb(type(alice).objects.filter(username="alice").exists)()


async def test_deleting_connected_users_with_the_bulk_action(alice, bob, admin_client, connect):
    sockets = {
        "alice": [await connect(access_for(alice)), await connect(access_for(alice))],
        "bob": [await connect(access_for(bob))],
    }
    form = {"action": "delete_selected", "_selected_action": [alice.pk, bob.pk]}
    confirm = (await admin_client.post("/admin/auth/user/", form)).content.decode()
    assert "Are you sure" in confirm and "permission to delete" not in confirm
    done = await admin_client.post("/admin/auth/user/", {**form, "post": "yes"}, follow=True)
    page = done.content.decode()
    assert "Successfully deleted 2 users." in page
    assert "2 sockets closed for alice." in page and "1 socket closed for bob." in page
    for clients in sockets.values():
        for client in clients:
            await assert_withdrawn(client, "user_deleted")
    assert await adb(Connection.objects.count)() == 0


async def test_deleting_an_offline_user_says_they_had_no_socket(alice, admin_client):
    done = await admin_client.post(
        f"/admin/auth/user/{alice.pk}/delete/", {"post": "yes"}, follow=True
    )
    assert "User alice had no open socket." in done.content.decode()


async def test_neither_a_connection_nor_a_server_process_can_be_deleted_alone(
    alice, admin_client, connect
):
    # A bare row delete would leave the socket open and unlisted.
    await connect(access_for(alice))
    connection = await adb(Connection.objects.get)()
    for model, pk in [("connection", connection.pk), ("serverprocess", connection.server_id)]:
        listing = (await admin_client.get(f"/admin/identity/{model}/")).content.decode()
        assert "delete_selected" not in listing, model
        refused = await admin_client.post(f"/admin/identity/{model}/{pk}/delete/", {"post": "yes"})
        assert refused.status_code in (302, 403), model
    assert await adb(Connection.objects.count)() == 1
    assert await adb(ServerProcess.objects.count)() == 1
