"""The page's rooms (config/realtime.py) in a real Chromium against a real server process.

Two people meet in the lobby, only staff see the staff room, and taking
"Staff status" away in the admin removes the room from that person's page.
Screenshots go to test-results/rooms/ (git-ignored).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from tests import test_browser
from tests.servers import ROOT, Database, LiveServer, manage
from tests.test_browser import ONLINE, RECONNECT, STEP, serious_violations, sign_in
from tests.test_browser_delete import sign_in_to_admin

pytestmark = [pytest.mark.browser, pytest.mark.server]

# The Chromium, and a database and server of each test's own (tests change users).
browser = test_browser.browser
database = test_browser.database
server = test_browser.server

SHOTS = ROOT / "test-results" / "rooms"
# PROTOCOL.md: a change of rights re-checks open subscriptions within one second.
REMOVED_WITHIN = 5_000
STAFF_ROOM_GONE = "You no longer have access to the staff room."

LOBBY, STAFF = "#room-lobby-section", "#room-staff-section"
STALE = re.compile(r"\bstale\b")


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def make_staff_user(database: Database, username: str) -> str:
    """A staff user who is not a superuser; their password."""
    password = secrets.token_urlsafe(12)
    code = (
        "from django.contrib.auth import get_user_model; "
        f"get_user_model().objects.create_user({username!r}, password={password!r}, is_staff=True)"
    )
    manage(database.env, "shell", "-c", code)
    return password


@pytest.fixture
def person(browser: Browser) -> Iterator[Callable[..., Page]]:
    """Sign someone in on the page, in a browser context of their own."""
    contexts = []

    def _person(server: LiveServer, username: str, password: str) -> Page:
        context = browser.new_context()
        contexts.append(context)
        page = context.new_page()
        sign_in(page, server, username, password)
        expect(page.locator("#conn-state")).to_have_text(ONLINE, timeout=STEP)
        return page

    yield _person
    for context in contexts:
        context.close()


def take_staff_status_away(
    admin: Page, server: LiveServer, database: Database, username: str
) -> None:
    """The operator, in the admin: the user's change page, untick "Staff status", save."""
    sign_in_to_admin(admin, server, database)
    admin.goto(server.http + "/admin/auth/user/")
    admin.click(f"#result_list a:text-is('{username}')")
    admin.uncheck("#id_is_staff")
    admin.click("input[name=_save]")
    expect(admin.locator(".messagelist")).to_contain_text("changed successfully", timeout=STEP)
    admin.close()


def room_status(page: Page, room: str, status: str) -> None:
    """Wait until the page has settled the room (joined, refused, removed, absent)."""
    expect(page.locator(room)).to_have_attribute("data-status", status, timeout=STEP)


def write(page: Page, room: str, text: str) -> None:
    page.locator(f"{room} .room-input").fill(text)
    page.locator(f"{room} .room-input").press("Enter")


def test_two_people_meet_in_the_lobby_and_only_staff_see_the_staff_room(
    person: Callable[..., Page], server: LiveServer, database: Database
) -> None:
    alice = person(server, "alice", database.passwords["alice"])
    operator = person(server, "operator", database.passwords["operator"])

    # Each sees the other among the lobby's members.
    expect(alice.locator(f"{LOBBY} .room-members")).to_contain_text("operator", timeout=STEP)
    expect(operator.locator(f"{LOBBY} .room-members")).to_contain_text("alice", timeout=STEP)

    # A message written by one appears on the other's page, with its author and a time.
    write(alice, LOBBY, "hello from alice")
    line = operator.locator(f"{LOBBY} .room-messages li").last
    expect(line).to_contain_text("alice: hello from alice", timeout=STEP)
    expect(line.locator("time")).to_have_attribute("datetime", re.compile(r"^\d{4}-"))
    write(operator, LOBBY, "hello, alice")
    expect(alice.locator(f"{LOBBY} .room-messages")).to_contain_text(
        "operator: hello, alice", timeout=STEP
    )
    expect(alice.locator(f"{LOBBY} .room-input")).to_have_value("")

    # The staff room: shown to the operator, refused to alice and not shown.
    room_status(operator, STAFF, "joined")
    expect(operator.locator(STAFF)).to_be_visible()
    expect(operator.locator(f"{STAFF} .room-members")).to_contain_text("operator")
    room_status(alice, STAFF, "refused")
    expect(alice.locator(STAFF)).to_be_hidden()
    expect(alice.locator("#rooms-note")).to_be_hidden()

    for page, name in ((alice, "alice"), (operator, "operator")):
        assert serious_violations(page) == [], name
        shot(page, f"lobby-{name}")


def test_taking_staff_status_away_in_the_admin_removes_the_staff_room_for_good(
    browser: Browser,
    person: Callable[..., Page],
    server: LiveServer,
    database: Database,
) -> None:
    carol = person(server, "carol", make_staff_user(database, "carol"))
    operator = person(server, "operator", database.passwords["operator"])
    room_status(carol, STAFF, "joined")
    expect(operator.locator(f"{STAFF} .room-members")).to_contain_text("carol", timeout=STEP)
    write(operator, STAFF, "staff only")
    expect(carol.locator(f"{STAFF} .room-messages")).to_contain_text(
        "operator: staff only", timeout=STEP
    )
    carol.locator(f"{STAFF} .room-input").focus()  # she is about to write there

    take_staff_status_away(browser.new_page(), server, database, "carol")

    # Her page drops the room and says why; focus goes to the note, not to nowhere.
    expect(carol.locator(STAFF)).to_be_hidden(timeout=REMOVED_WITHIN)
    expect(carol.locator("#rooms-note")).to_have_text(STAFF_ROOM_GONE)
    expect(carol.locator("#rooms-note")).to_be_focused()
    room_status(carol, STAFF, "removed")
    expect(carol.locator(f"{STAFF} .room-messages li")).to_have_count(0)
    # The lobby stays, and the others see her leave the staff room only.
    expect(carol.locator(LOBBY)).to_be_visible()
    expect(operator.locator(f"{STAFF} .room-members")).not_to_contain_text(
        "carol", timeout=REMOVED_WITHIN
    )
    expect(operator.locator(f"{LOBBY} .room-members")).to_contain_text("carol")
    assert serious_violations(carol) == []
    shot(carol, "staff-room-removed")

    # A new server process knows no subscription: her page joins the lobby again
    # by itself, and does not ask for the staff room it lost.
    subscribed: list[str] = []
    carol.on(
        "websocket",
        lambda ws: ws.on("framesent", lambda frame: subscribed.extend(subscribe_topics(frame))),
    )
    server.restart()
    expect(carol.locator("#conn-state")).to_have_text(ONLINE, timeout=RECONNECT)
    # Grey from the lost connection until the server has listed the room again.
    expect(carol.locator(f"{LOBBY} .room-members")).not_to_have_class(STALE, timeout=STEP)
    expect(operator.locator("#conn-state")).to_have_text(ONLINE, timeout=RECONNECT)
    write(operator, LOBBY, "after the restart")
    expect(carol.locator(f"{LOBBY} .room-messages")).to_contain_text(
        "operator: after the restart", timeout=STEP
    )
    assert subscribed == ["room.lobby"]
    expect(carol.locator("#rooms-note")).to_have_text(STAFF_ROOM_GONE)
    expect(carol.locator(STAFF)).to_be_hidden()


def subscribe_topics(frame: str | bytes) -> list[str]:
    """The topic of a `subscribe` frame the page sent, or nothing."""
    message = json.loads(frame)
    if message.get("action") != "subscribe":
        return []
    return [message["payload"]["topic"]]


def test_without_the_rooms_on_the_server_the_rooms_section_hides_itself(
    person: Callable[..., Page], database: Database
) -> None:
    env = {**database.env, "DJANGO_SETTINGS_MODULE": "tests.settings_without_rooms"}
    bare = LiveServer(env).start()
    try:
        alice = person(bare, "alice", database.passwords["alice"])
        room_status(alice, LOBBY, "absent")
        room_status(alice, STAFF, "absent")
        expect(alice.locator("#rooms")).to_be_hidden()
        # The other message flows work as before, and focus lands on the first of them.
        expect(alice.locator("#direct-to")).to_be_focused()
        alice.fill("#message-input", "still here")
        alice.press("#message-input", "Enter")
        expect(alice.locator("#log")).to_contain_text("alice: still here", timeout=STEP)
    finally:
        bare.stop()
