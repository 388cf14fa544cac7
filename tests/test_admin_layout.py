"""The admin laid out for the operator's questions, each message saying what happened."""

from __future__ import annotations

import re

import pytest

from identity.models import Connection, ServerProcess
from tests.conftest import access_for, adb
from tests.test_withdrawal import assert_withdrawn

pytestmark = pytest.mark.django_db(transaction=True)

MICROSECONDS = re.compile(r"\d\d:\d\d:\d\d\.\d{6}")
RELATIVE = re.compile(r'title="\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC">(just now|\d+ s ago)</time>')


def column_headers(page: str) -> list[str]:
    head = page.split('<table id="result_list">', 1)[1].split("</thead>", 1)[0]
    return [
        re.sub(r"<[^>]+>", "", cell).strip()
        for cell in re.findall(r'<th scope="col"[^>]*>(.*?)</th>', head, re.S)
    ]


async def test_the_user_list_asks_who_is_online_how_many_sockets_since_when(
    alice, bob, admin_client, connect
):
    await connect(access_for(alice))
    page = (await admin_client.get("/admin/auth/user/")).content.decode()
    headers = [h for h in column_headers(page) if h]  # the checkbox column has no name
    assert headers == ["Username", "Online", "Sockets", "Online since", "Active", "Staff status"]
    assert 'class="field-online_since"><time datetime=' in page
    assert RELATIVE.search(page) and not MICROSECONDS.search(page)


async def test_names_and_email_stay_searchable(alice, bob, admin_client):
    page = (await admin_client.get("/admin/auth/user/?q=alice@example.com")).content.decode()
    assert ">alice<" in page and ">bob<" not in page


async def test_the_user_page_starts_with_live_connections_and_a_close_button(
    alice, admin_client, connect
):
    ua = b"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/131.0.0.0 Safari/537.36"
    await connect(access_for(alice), headers=[(b"user-agent", ua)])
    page = (await admin_client.get(f"/admin/auth/user/{alice.pk}/change/")).content.decode()
    assert page.index("Live connections") < page.index("Personal info")
    assert page.index("Live connections") < page.index("Permissions")
    assert "Chrome 131 on Linux" in page and f'title="{ua.decode()}"' in page
    assert re.search(r'<button type="submit" class="button" formaction="[^"]+/close/"', page)
    assert RELATIVE.search(page) and not MICROSECONDS.search(page)


async def test_the_close_button_posts_the_change_form_to_the_close_view(
    alice, admin_client, connect
):
    # The button submits the whole change form (with its CSRF token) to the close view.
    client = await connect(access_for(alice))
    page = await admin_client.get(f"/admin/auth/user/{alice.pk}/change/")
    url = re.search(r'formaction="([^"]+)"', page.content.decode()).group(1)
    form = {k: v for k, v in page.context["adminform"].form.initial.items() if v is not None}
    done = await admin_client.post(url, {**form, "_close_connection": ""}, follow=True)
    assert "1 socket closed for alice." in done.content.decode()
    await assert_withdrawn(client, "kicked")


async def test_the_connection_page_is_the_close_confirmation(alice, admin_client, connect):
    client = await connect(access_for(alice))
    channel = await adb(lambda: Connection.objects.get().channel_name)()
    listing = (await admin_client.get("/admin/identity/connection/")).content.decode()
    assert "/close/" in listing and "/change/" not in listing
    response = await admin_client.get(f"/admin/identity/connection/{channel}/change/", follow=True)
    assert b'id="close-connection"' in response.content
    done = await admin_client.post(response.redirect_chain[-1][0], follow=True)
    assert "1 socket closed for alice." in done.content.decode()
    await assert_withdrawn(client, "kicked")


async def test_the_close_page_tells_the_truth_about_keeping_a_user_out(
    alice, admin_client, connect
):
    await connect(access_for(alice))
    channel = await adb(lambda: Connection.objects.get().channel_name)()
    page = await admin_client.get(f"/admin/auth/user/{alice.pk}/connections/{channel}/close/")
    text = " ".join(page.content.decode().split())
    assert "signing in with the password still works" in text
    assert "To keep the user out, deactivate them." in text
    assert not MICROSECONDS.search(text)


async def test_server_processes_are_spelled_so(admin_client):
    assert ServerProcess._meta.verbose_name_plural == "server processes"
    page = (await admin_client.get("/admin/")).content.decode()
    assert "Server processes" in page and "Server processs" not in page


async def test_deactivating_in_the_admin_says_how_many_sockets_closed(alice, admin_client, connect):
    sockets = [await connect(access_for(alice)), await connect(access_for(alice))]
    page = await admin_client.get(f"/admin/auth/user/{alice.pk}/change/")
    form = page.context["adminform"].form
    data = {
        k: v
        for k, v in form.initial.items()
        if v is not None and k not in {"password", "last_login", "groups", "user_permissions"}
    }
    data.update(
        is_active="",
        date_joined_0=alice.date_joined.strftime("%Y-%m-%d"),
        date_joined_1=alice.date_joined.strftime("%H:%M:%S"),
        _save="Save",
    )
    data.pop("date_joined")
    done = await admin_client.post(f"/admin/auth/user/{alice.pk}/change/", data, follow=True)
    assert "User alice was deactivated; 2 sockets closed." in done.content.decode()
    for client in sockets:
        await assert_withdrawn(client, "user_inactive")
