"""A superuser deletes connected users in the admin, in a real Chromium; their sockets close."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests import test_browser
from tests.servers import Database, LiveServer
from tests.test_browser import STEP

pytestmark = [pytest.mark.browser, pytest.mark.server]

# The Chromium and its per-test page, as in test_browser.py.
browser = test_browser.browser
page = test_browser.page

WAIT = 5  # seconds for a socket to hear its withdrawal


@pytest.fixture
def database() -> Database:
    return Database.sqlite()


@pytest.fixture
def server(database: Database) -> Iterator[LiveServer]:
    live = LiveServer(database.env).start()
    yield live
    live.stop()


def authed(server: LiveServer, database: Database, username: str) -> ClientConnection:
    """A socket of USERNAME (a script, not the page), authenticated."""
    access = server.tokens(username, database.passwords[username])["access"]
    ws = connect(server.ws)
    ws.send(json.dumps({"action": "auth", "payload": access}))
    assert json.loads(ws.recv(timeout=WAIT))["payload"]["registered"] is True
    return ws


def assert_deleted(ws: ClientConnection) -> None:
    assert json.loads(ws.recv(timeout=WAIT)) == {
        "action": "disconnect",
        "payload": {"reason": "user_deleted", "reconnect": False},
    }
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=WAIT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403


def sign_in_to_admin(page: Page, server: LiveServer, database: Database) -> None:
    page.goto(server.http + "/admin/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", database.passwords["operator"])
    page.click("input[type=submit]")
    expect(page.locator("#site-name")).to_be_visible(timeout=STEP)


def test_a_superuser_deletes_connected_users_from_the_change_page_and_in_bulk(
    page: Page,
    server: LiveServer,
    database: Database,
) -> None:
    alice, bob = authed(server, database, "alice"), authed(server, database, "bob")
    sign_in_to_admin(page, server, database)

    # From alice's change page: Delete, then confirm.
    page.goto(server.http + "/admin/auth/user/?online=yes")
    page.click("#result_list a:text-is('alice')")
    expect(page.locator("body")).to_contain_text("Live connections", timeout=STEP)
    page.click("a.deletelink")
    expect(page.locator("body")).not_to_contain_text("permission to delete", timeout=STEP)
    page.click("input[type=submit]")
    messages = page.locator(".messagelist")
    expect(messages).to_contain_text("was deleted successfully", timeout=STEP)
    expect(messages).to_contain_text("1 socket closed for alice.")
    assert_deleted(alice)

    # Bob with the bulk action "Delete selected users".
    page.check("#result_list tr:has(a:text-is('bob')) input.action-select")
    page.select_option("select[name=action]", "delete_selected")
    page.click("button[name=index]")
    expect(page.locator("body")).not_to_contain_text("permission to delete", timeout=STEP)
    page.click("input[type=submit]")
    expect(messages).to_contain_text("Successfully deleted 1 user", timeout=STEP)
    expect(messages).to_contain_text("1 socket closed for bob.")
    assert_deleted(bob)


def test_the_admin_offers_no_delete_for_live_server_processes(
    page: Page,
    server: LiveServer,
    database: Database,
) -> None:
    alice = authed(server, database, "alice")
    sign_in_to_admin(page, server, database)
    page.goto(server.http + "/admin/identity/serverprocess/")
    expect(page.locator("#result_list")).to_be_visible(timeout=STEP)
    expect(page.locator("select[name=action] option[value=delete_selected]")).to_have_count(0)
    alice.send(json.dumps({"action": "whoami"}))
    assert json.loads(alice.recv(timeout=WAIT))["payload"]["user"]["username"] == "alice"
    alice.close()
