"""The page in a real Chromium against a real server process: sign in, chat, survive a restart."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.servers import Database, LiveServer

pytestmark = [pytest.mark.browser, pytest.mark.server]

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Milliseconds. Generous for a 2-core CI machine; expect() returns as soon as it holds.
STEP = 10_000
# A restart costs the server's start-up plus up to one full-jitter backoff delay.
RECONNECT = 45_000


def chromium_path() -> str:
    """Debian's chromium; skip without it unless the run requires every service."""
    path = shutil.which("chromium")
    if path is None:
        reason = "chromium is not installed (apt-get install chromium)"
        if os.environ.get("REQUIRE_SERVICES") == "1":
            pytest.fail(f"REQUIRE_SERVICES=1 but {reason}")
        pytest.skip(reason)
    return path


@pytest.fixture
def database() -> Database:
    """One database per test: the socket registry lives there, and a stopped server's
    sockets would otherwise stay registered into the next test."""
    return Database.sqlite()


@pytest.fixture
def server(database: Database) -> Iterator[LiveServer]:
    live = LiveServer(database.env).start()
    yield live
    live.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = chromium_path()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh context per test: its own sessionStorage, so no identity leaks between tests."""
    context = browser.new_context()
    yield context.new_page()
    context.close()


def sign_in(page: Page, server: LiveServer, username: str, password: str) -> None:
    page.goto(server.http + "/")
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("#signin-form button[type=submit]")


def sign_in_as_alice(page: Page, server: LiveServer, database: Database) -> None:
    sign_in(page, server, "alice", database.passwords["alice"])
    expect(page.locator("#signed-in")).to_contain_text("Signed in as alice", timeout=STEP)
    expect(page.locator("#conn-state")).to_contain_text("online", timeout=STEP)


def say(page: Page, text: str) -> None:
    page.fill("#message-input", text)
    page.press("#message-input", "Enter")


def test_a_signed_in_page_chats_survives_a_reload_and_a_server_restart(
    page: Page, server: LiveServer, database: Database
) -> None:
    state, log = page.locator("#conn-state"), page.locator("#log")
    sign_in_as_alice(page, server, database)
    expect(page.locator("#online-list")).to_contain_text("alice", timeout=STEP)

    say(page, "hello from the browser")
    expect(log).to_contain_text("alice: hello from the browser", timeout=STEP)

    # sessionStorage keeps the tokens for this tab: no sign-in form after a reload.
    page.reload()
    expect(page.locator("#signed-in")).to_contain_text("Signed in as alice", timeout=STEP)
    expect(state).to_contain_text("online", timeout=STEP)

    server.stop()
    expect(state).to_contain_text("offline", timeout=STEP)
    server.start()  # same port, same database: the stored tokens stay valid
    expect(state).to_contain_text("online", timeout=RECONNECT)
    expect(page.locator("#signed-in")).to_contain_text("Signed in as alice")

    # The new socket carries the identity: the server names the sender again.
    say(page, "back after the restart")
    expect(log).to_contain_text("alice: back after the restart", timeout=STEP)
    expect(page.locator("#signin-form")).to_be_hidden()


def test_wrong_credentials_keep_the_form_and_say_why(page: Page, server: LiveServer) -> None:
    sign_in(page, server, "alice", "not-the-password")
    expect(page.locator("#signin-error")).not_to_be_empty(timeout=STEP)
    expect(page.locator("#signin-form")).to_be_visible()
    expect(page.locator("#conn-state")).to_contain_text("offline")


def test_a_kick_returns_to_the_sign_in_form_with_the_reason(
    page: Page, server: LiveServer, database: Database
) -> None:
    sign_in_as_alice(page, server, database)
    staff = server.tokens("operator", database.passwords["operator"])["access"]
    status, body = server.post("/api/users/alice/disconnect/", None, token=staff)
    assert status == 200, body

    expect(page.locator("#signin-error")).to_contain_text("administrator", timeout=STEP)
    expect(page.locator("#signin-form")).to_be_visible()
    expect(page.locator("#conn-state")).to_contain_text("offline")
    # The tokens are gone: a reload does not sign back in.
    page.reload()
    expect(page.locator("#signin-form")).to_be_visible()


def test_sign_out_forgets_the_identity(page: Page, server: LiveServer, database: Database) -> None:
    sign_in_as_alice(page, server, database)
    page.click("#signout")
    expect(page.locator("#signin-form")).to_be_visible(timeout=STEP)
    expect(page.locator("#signin-error")).to_be_empty()
    page.reload()
    expect(page.locator("#signin-form")).to_be_visible()
    expect(page.locator("#conn-state")).to_contain_text("offline")


def test_deactivating_a_user_in_the_admin_drops_their_page_at_once(
    browser: Browser, page: Page, server: LiveServer, database: Database
) -> None:
    sign_in_as_alice(page, server, database)
    operator = browser.new_context().new_page()
    operator.goto(server.http + "/admin/")
    operator.fill("#id_username", "operator")
    operator.fill("#id_password", database.passwords["operator"])
    operator.click("input[type=submit]")
    operator.goto(server.http + "/admin/auth/user/?online=yes")
    expect(operator.locator("#result_list")).to_contain_text("alice", timeout=STEP)
    operator.click("#result_list a:text-is('alice')")
    expect(operator.locator("body")).to_contain_text("Live connections", timeout=STEP)
    operator.uncheck("#id_is_active")
    operator.click("input[name=_save]")
    expect(operator.locator(".messagelist")).to_contain_text("changed successfully", timeout=STEP)

    expect(page.locator("#signin-error")).to_contain_text("deactivated", timeout=STEP)
    expect(page.locator("#signin-form")).to_be_visible()
    # The old identity is refused from now on: signing in again fails.
    sign_in(page, server, "alice", database.passwords["alice"])
    expect(page.locator("#signin-error")).not_to_be_empty(timeout=STEP)
    operator.context.close()
