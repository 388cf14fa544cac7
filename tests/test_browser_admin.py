"""The operator's admin in a real Chromium against a real server process.

Screenshots go to test-results/ (git-ignored), where a person looks after a run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Locator, Page, expect
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection

from tests import test_browser, test_browser_delete
from tests.servers import ROOT, Database, LiveServer
from tests.test_browser import STEP
from tests.test_browser_delete import WAIT, authed, sign_in_to_admin

pytestmark = [pytest.mark.browser, pytest.mark.server]

browser = test_browser.browser
database = test_browser_delete.database
server = test_browser_delete.server

SHOTS = ROOT / "test-results" / "admin"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
RECENTLY = re.compile(r"^(just now|\d+ s ago)$")


def shot(page: Page, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


@pytest.fixture
def desktop(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport=DESKTOP)
    yield context.new_page()
    context.close()


@pytest.fixture
def phone(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    yield context.new_page()
    context.close()


def assert_in_viewport(page: Page, locator: Locator) -> None:
    """The element is drawn wholly inside the viewport, without scrolling, and not hidden.

    The box alone is not enough: a column scrolled out of the list's own
    scrolling box keeps a box inside the viewport, under the filter sidebar.
    So the point at the box's centre must show this element too.
    """
    box = locator.bounding_box()
    size = page.viewport_size
    assert box is not None and size is not None
    assert box["x"] >= 0 and box["y"] >= 0, box
    assert box["x"] + box["width"] <= size["width"], (box, size)
    assert box["y"] + box["height"] <= size["height"], (box, size)
    shown = locator.evaluate(
        """(element) => {
            const box = element.getBoundingClientRect();
            const top = document.elementFromPoint(box.x + box.width / 2, box.y + box.height / 2);
            return top !== null && (element === top || element.contains(top));
        }"""
    )
    assert shown, f"{locator} is covered or scrolled out of its box"


def assert_kicked(ws: ClientConnection) -> None:
    assert json.loads(ws.recv(timeout=WAIT)) == {
        "action": "disconnect",
        "payload": {"reason": "kicked", "reconnect": False},
    }
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=WAIT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403


def test_the_user_list_shows_online_and_sockets_within_the_viewport(
    desktop: Page, server: LiveServer, database: Database
) -> None:
    sockets = [authed(server, database, "alice"), authed(server, database, "alice")]
    sign_in_to_admin(desktop, server, database)
    desktop.goto(server.http + "/admin/auth/user/")
    alice = desktop.locator("#result_list tr:has(a:text-is('alice'))")
    expect(alice.locator("td.field-live_sockets")).to_have_text("2", timeout=STEP)
    shot(desktop, "user-list-1280x800")
    for column in ("column-online", "column-live_sockets", "column-online_since"):
        assert_in_viewport(desktop, desktop.locator(f"#result_list th.{column}"))
    for cell in ("field-online", "field-live_sockets", "field-online_since"):
        assert_in_viewport(desktop, alice.locator(f"td.{cell}"))
    expect(alice.locator("td.field-online_since time")).to_have_text(RECENTLY)
    for ws in sockets:
        ws.close()


def test_the_user_page_shows_live_connections_first_and_close_closes_the_socket(
    desktop: Page, server: LiveServer, database: Database
) -> None:
    first, second = authed(server, database, "alice"), authed(server, database, "alice")
    sign_in_to_admin(desktop, server, database)
    desktop.goto(server.http + "/admin/auth/user/")
    desktop.click("#result_list a:text-is('alice')")
    table = desktop.locator("fieldset:has(h2:text-is('Live connections')) table")
    expect(table.locator("tr")).to_have_count(3, timeout=STEP)  # a header and two sockets
    shot(desktop, "user-page-1280x800")
    headings = desktop.locator("fieldset.module h2").all_inner_texts()
    assert headings[0].lower() == "live connections", headings
    close = table.locator(".button:text-is('Close')").first
    assert_in_viewport(desktop, close)
    expect(table.locator("time").first).to_have_attribute(
        "title", re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$")
    )
    close.click()
    expect(desktop.locator(".messagelist")).to_contain_text(
        "1 socket closed for alice.", timeout=STEP
    )
    # Sockets are listed oldest first: the first one closed, the other stays.
    assert_kicked(first)
    expect(table.locator("tr")).to_have_count(2)
    second.send(json.dumps({"action": "whoami"}))
    assert json.loads(second.recv(timeout=WAIT))["payload"]["user"]["username"] == "alice"
    second.close()


def test_deactivating_says_how_many_sockets_closed(
    desktop: Page, server: LiveServer, database: Database
) -> None:
    sockets = [authed(server, database, "bob"), authed(server, database, "bob")]
    sign_in_to_admin(desktop, server, database)
    desktop.goto(server.http + "/admin/auth/user/")
    desktop.click("#result_list a:text-is('bob')")
    desktop.uncheck("#id_is_active")
    desktop.click("input[name=_continue]")
    messages = desktop.locator(".messagelist")
    expect(messages).to_contain_text("User bob was deactivated; 2 sockets closed.", timeout=STEP)
    shot(desktop, "deactivated-1280x800")
    for ws in sockets:
        assert json.loads(ws.recv(timeout=WAIT))["payload"]["reason"] == "user_inactive"


def test_the_dashboard_follows_sockets_live_and_lists_withdrawals(
    desktop: Page, phone: Page, server: LiveServer, database: Database
) -> None:
    sign_in_to_admin(desktop, server, database)
    assert_in_viewport(desktop, desktop.locator("a:text-is('Dashboard')"))
    shot(desktop, "admin-index-1280x800")
    desktop.click("a:text-is('Dashboard')")
    online = desktop.locator("#online-users")
    expect(online).to_contain_text("Nobody is online.", timeout=STEP)
    reloads: list[str] = []
    desktop.on("framenavigated", lambda frame: reloads.append(frame.url))

    alice = authed(server, database, "alice")
    expect(online).to_contain_text("alice", timeout=STEP)
    expect(desktop.locator("#open-sockets")).to_have_text("1")
    # The counts arrive with the server's heartbeat, a few seconds late.
    expect(desktop.locator("#connects-hour")).to_have_text("1", timeout=STEP)
    expect(desktop.locator("#server-processes .state-live")).to_have_count(1)
    expect(desktop.locator("#server-processes td time").first).to_have_text(RECENTLY)
    shot(desktop, "dashboard-1280x800")

    # A withdrawal from the user's page: kicked from the dashboard, listed with actor and reason.
    page = desktop.context.new_page()
    page.goto(server.http + "/admin/auth/user/")
    page.click("#result_list a:text-is('alice')")
    page.locator("fieldset:has(h2:text-is('Live connections')) .button:text-is('Close')").click()
    expect(page.locator(".messagelist")).to_contain_text("1 socket closed for alice.", timeout=STEP)
    page.close()
    assert_kicked(alice)
    expect(online).to_contain_text("Nobody is online.", timeout=STEP)
    row = desktop.locator("#withdrawals tbody tr").first
    expect(row).to_contain_text("alice", timeout=STEP)
    expect(row).to_contain_text("kicked")
    expect(row).to_contain_text("admin operator")
    assert reloads == [], reloads  # all of it without a reload
    shot(desktop, "dashboard-after-kick-1280x800")
    desktop.screenshot(path=str(SHOTS / "dashboard-after-kick-1280x800-full.png"), full_page=True)

    bob = authed(server, database, "bob")
    sign_in_to_admin(phone, server, database)
    phone.goto(server.http + "/admin/identity/dashboard/")
    expect(phone.locator("#online-users")).to_contain_text("bob", timeout=STEP)
    assert_in_viewport(phone, phone.locator("#users-online"))
    shot(phone, "dashboard-390x844")
    phone.screenshot(path=str(SHOTS / "dashboard-390x844-full.png"), full_page=True)
    width = phone.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page scrolls sideways: {width}px wide"
    bob.close()
