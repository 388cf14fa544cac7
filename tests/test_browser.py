"""The page in a real Chromium against a real server process: sign in, chat, survive a restart.

Screenshots a person would look at go to test-results/browser/.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.servers import ROOT, Database, LiveServer

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

SCREENSHOTS = ROOT / "test-results" / "browser"
VIEWPORTS = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}
# The reconnect backoff at its longest, so a countdown is there to see (and Retry now to skip).
SLOW_BACKOFF = "Math.random = () => 0.999;"
# The state words; any case, so an old page fails on what a test is about, not on this.
ONLINE = re.compile(r"^online$", re.IGNORECASE)


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


@pytest.fixture(scope="module")
def shared_database() -> Database:
    return Database.sqlite()


@pytest.fixture(scope="module")
def shared(shared_database: Database) -> Iterator[LiveServer]:
    """One server for the tests that neither stop it nor withdraw anyone."""
    live = LiveServer(shared_database.env).start()
    yield live
    live.stop()


@pytest.fixture(params=list(VIEWPORTS))
def sized(request: pytest.FixtureRequest, browser: Browser) -> Iterator[Page]:
    """A fresh page at desktop and at phone size (the test id says which)."""
    context = browser.new_context(viewport=VIEWPORTS[request.param])
    yield context.new_page()
    context.close()


def viewport_name(page: Page) -> str:
    size = page.viewport_size or {}
    return next((k for k, v in VIEWPORTS.items() if v == size), "other")


def screenshot(page: Page, name: str) -> None:
    """Keep what the page looks like for a person to check (test-results/ is git-ignored)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}-{viewport_name(page)}.png"), full_page=True)


def serious_violations(page: Page) -> list[str]:
    """axe-core's serious and critical findings, one line each."""
    results = Axe().run(page)
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']]}"
        for v in results.response["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def sign_in(page: Page, server: LiveServer, username: str, password: str) -> None:
    page.goto(server.http + "/")
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("#signin-form button[type=submit]")


def sign_in_as_alice(page: Page, server: LiveServer, database: Database) -> None:
    sign_in(page, server, "alice", database.passwords["alice"])
    expect(page.locator("#signed-in")).to_contain_text("Signed in as alice", timeout=STEP)
    expect(page.locator("#conn-state")).to_have_text(ONLINE, timeout=STEP)


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
    expect(state).to_have_text(ONLINE, timeout=STEP)

    server.stop()
    expect(state).to_have_text("Reconnecting", timeout=STEP)
    server.start()  # same port, same database: the stored tokens stay valid
    expect(state).to_have_text(ONLINE, timeout=RECONNECT)
    expect(page.locator("#signed-in")).to_contain_text("Signed in as alice")

    # The new socket carries the identity: the server names the sender again.
    say(page, "back after the restart")
    expect(log).to_contain_text("alice: back after the restart", timeout=STEP)
    expect(page.locator("#signin-form")).to_be_hidden()


def test_wrong_credentials_keep_the_form_and_say_why(page: Page, shared: LiveServer) -> None:
    sign_in(page, shared, "alice", "not-the-password")
    expect(page.locator("#signin-error")).to_have_text("Wrong username or password.", timeout=STEP)
    expect(page.locator("#signin-form")).to_be_visible()
    expect(page.locator("#conn-state")).to_have_text("Not signed in")


def test_a_kick_returns_to_the_sign_in_form_with_the_reason(
    page: Page, shared: LiveServer, shared_database: Database
) -> None:
    sign_in_as_alice(page, shared, shared_database)
    staff = shared.tokens("operator", shared_database.passwords["operator"])["access"]
    status, body = shared.post("/api/users/alice/disconnect/", None, token=staff)
    assert status == 200, body

    expect(page.locator("#signin-error")).to_contain_text("administrator", timeout=STEP)
    expect(page.locator("#signin-form")).to_be_visible()
    expect(page.locator("#conn-state")).to_have_text("Not signed in")
    # The tokens are gone: a reload does not sign back in.
    page.reload()
    expect(page.locator("#signin-form")).to_be_visible()


def test_sign_out_forgets_the_identity(
    page: Page, shared: LiveServer, shared_database: Database
) -> None:
    sign_in_as_alice(page, shared, shared_database)
    page.click("#signout")
    expect(page.locator("#signin-form")).to_be_visible(timeout=STEP)
    expect(page.locator("#signin-error")).to_be_empty()
    page.reload()
    expect(page.locator("#signin-form")).to_be_visible()
    expect(page.locator("#conn-state")).to_have_text("Not signed in")


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


# ---- the README's JavaScript example and signIn() (item 6) -------------------


def readme_javascript() -> str:
    """The README's first JavaScript block, as a reader would paste it."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"^```js\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)
    assert blocks, "no ```js block in README.md"
    return blocks[0]


def blank_page_on(page: Page, server: LiveServer) -> None:
    """A document of the server's origin without the page's app, to import client.js into.

    A served one: Chromium refuses a routed (fulfilled) document's WebSocket to
    127.0.0.1 (ERR_BLOCKED_BY_LOCAL_NETWORK_ACCESS_CHECKS).
    """
    page.goto(server.http + "/healthz")


def test_the_readme_javascript_example_runs_as_written(
    page: Page, shared: LiveServer, shared_database: Database
) -> None:
    snippet = readme_javascript()
    assert '"her-password"' in snippet
    snippet = snippet.replace('"her-password"', repr(shared_database.passwords["alice"]))
    logged: list[str] = []
    errors: list[str] = []
    page.on("console", lambda message: logged.append(message.text))
    page.on("pageerror", lambda error: errors.append(str(error)))
    blank_page_on(page, shared)

    page.add_script_tag(content=snippet, type="module")

    deadline = time.monotonic() + STEP / 1000
    while "alice hello" not in logged and not errors and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    assert not errors, errors
    assert "signed in as alice" in logged
    assert "alice hello" in logged, logged


SIGN_IN_WITH = """async ([options, password]) => {
  const { IdentityClient } = await import("/static/identity/client.js");
  const client = new IdentityClient(options);
  try {
    const { user } = await client.signIn("alice", password, { timeout: 3000 });
    return { resolved: user.username, state: client.state };
  } catch (err) {
    return { name: err.name, code: err.code, message: err.message, signedIn: client.signedIn };
  }
}"""


def test_sign_in_resolves_signed_in_and_rejects_when_the_socket_cannot_open(
    page: Page, shared: LiveServer, shared_database: Database
) -> None:
    blank_page_on(page, shared)
    password = shared_database.passwords["alice"]

    assert page.evaluate(SIGN_IN_WITH, [{}, password]) == {"resolved": "alice", "state": "online"}
    # Nothing listens on port 1: the old signIn() resolved here all the same.
    nowhere: dict[str, Any] = {"wsUrl": "ws://127.0.0.1:1/ws/"}
    assert page.evaluate(SIGN_IN_WITH, [nowhere, password]) == {
        "name": "IdentityError",
        "code": "connection_failed",
        "message": "Could not connect to the server.",
        "signedIn": False,
    }


def test_sign_in_rejects_with_the_auth_error(
    page: Page, shared: LiveServer, shared_database: Database
) -> None:
    blank_page_on(page, shared)
    # A socket that refuses every `auth` the way the server does for a deactivated user.
    outcome = page.evaluate(
        """async (password) => {
          const { IdentityClient } = await import("/static/identity/client.js");
          class Refusing {
            constructor() {
              this.readyState = 0;
              setTimeout(() => { this.readyState = 1; this.onopen(); });
            }
            send(data) {
              const { ref } = JSON.parse(data);
              const error = { code: "user_inactive", message: "This account is inactive." };
              const reply = { action: "auth", payload: { registered: false, error }, ref };
              setTimeout(() => this.onmessage({ data: JSON.stringify(reply) }));
            }
            close() { this.readyState = 3; }
          }
          const client = new IdentityClient({ WebSocket: Refusing });
          const dropped = [];
          client.on("signedout", ({ reason }) => dropped.push(reason));
          try {
            await client.signIn("alice", password);
            return "resolved";
          } catch (err) {
            return [err.name, err.code, err.message, client.signedIn, client.state, dropped];
          }
        }""",
        shared_database.passwords["alice"],
    )
    assert outcome == [
        "IdentityError",
        "user_inactive",
        "This account is inactive.",
        False,
        "offline",
        [],  # nobody was signed in, so nobody is signed out
    ]


# ---- the offline state (item 7) -------------------------------------------------


def test_a_first_visit_says_calmly_that_nobody_is_signed_in(
    sized: Page, shared: LiveServer
) -> None:
    page = sized
    page.goto(shared.http + "/")
    expect(page.locator("#conn-state")).to_have_text("Not signed in")
    expect(page.locator("#conn")).to_have_attribute("data-state", "signedout")
    expect(page.locator("#retry-now")).to_be_hidden()
    expect(page.locator("#tab-note")).to_contain_text("Each tab signs in on its own")
    # The dot is grey, not the red of an error.
    dot = page.evaluate(
        "getComputedStyle(document.querySelector('#conn-state'), '::before').backgroundColor"
    )
    assert dot == "rgb(91, 100, 119)", dot
    screenshot(page, "first-visit")


def test_losing_the_connection_is_said_calmly_and_sending_waits_for_it(
    browser: Browser, server: LiveServer, database: Database
) -> None:
    for name, viewport in VIEWPORTS.items():
        context = browser.new_context(viewport=viewport)
        context.add_init_script(SLOW_BACKOFF)
        page = context.new_page()
        sign_in_as_alice(page, server, database)
        expect(page.locator("#online-list")).to_contain_text("alice", timeout=STEP)
        expect(page.locator("#message-send")).to_be_enabled()

        server.stop()
        state, countdown = page.locator("#conn-state"), page.locator("#conn-countdown")
        expect(state).to_have_text("Reconnecting", timeout=STEP)
        # Backoff at its longest: a countdown of several seconds comes within a few tries.
        expect(countdown).to_have_text(re.compile(r"^in ([3-9]|\d\d) s…$"), timeout=RECONNECT)
        expect(page.locator("#retry-now")).to_be_visible()
        expect(page.locator("#message-send")).to_be_disabled()
        expect(page.locator("#direct-send")).to_be_disabled()
        expect(page.locator("#offline-note")).to_be_visible()
        expect(page.locator("#online-note")).to_be_visible()
        expect(page.locator("#online-list")).to_have_class(re.compile(r"\bstale\b"))
        dot = page.evaluate(
            "getComputedStyle(document.querySelector('#online-list li'), '::before').color"
        )
        assert dot == "rgb(91, 100, 119)", dot  # grey, not the green of "online"

        # Only state changes are announced: the countdown ticks outside the live region.
        assert (
            page.locator("#conn-countdown").evaluate("e => e.closest('[aria-live],[role=status]')")
            is None
        )
        page.evaluate("""() => {
          window.announced = 0;
          new MutationObserver((changes) => { window.announced += changes.length; })
            .observe(document.querySelector('#conn-state'),
                     { childList: true, characterData: true, subtree: true });
        }""")
        before = countdown.text_content()
        page.wait_for_timeout(1300)
        assert countdown.text_content() != before  # it did tick
        assert page.evaluate("window.announced") == 0
        assert serious_violations(page) == []
        screenshot(page, "reconnecting")

        # Retry now tries at once; with the server still down the next wait is longer.
        page.click("#retry-now")
        expect(countdown).to_have_text(re.compile(r"^in ([5-9]|\d\d) s…$"), timeout=STEP)
        server.start()
        # ...and skips the seconds still left of it.
        page.click("#retry-now", timeout=2_000)
        expect(state).to_have_text(ONLINE, timeout=3_000)
        expect(page.locator("#message-send")).to_be_enabled()
        expect(page.locator("#online-list")).not_to_have_class(re.compile(r"\bstale\b"))
        expect(page.locator("#online-note")).to_be_hidden()
        say(page, f"back on {name}")
        expect(page.locator("#log")).to_contain_text(f"alice: back on {name}", timeout=STEP)
        context.close()


# ---- the page as people meet it (item 8) ----------------------------------------


def sign_in_to_shared(page: Page, server: LiveServer, database: Database) -> None:
    sign_in(page, server, "alice", database.passwords["alice"])
    expect(page.locator("#conn-state")).to_have_text(ONLINE, timeout=STEP)
    expect(page.locator("#online-list")).to_contain_text("alice", timeout=STEP)


def test_every_field_has_a_visible_label_and_fits_the_screen(
    sized: Page, shared: LiveServer, shared_database: Database
) -> None:
    page = sized
    page.goto(shared.http + "/")
    for label in ("Username", "Password"):
        expect(page.get_by_label(label, exact=True)).to_be_visible()
    sign_in_to_shared(page, shared, shared_database)
    width = (page.viewport_size or {})["width"]
    fields = ("Message to everyone in the lobby", "To", "Direct message", "Text to echo")
    for label in fields:
        field = page.get_by_role("textbox", name=label, exact=True)
        expect(field).to_be_visible()
        # A visible label, not a placeholder that vanishes (or is cut) as one types.
        for_label = page.locator(f"label[for='{field.get_attribute('id')}']")
        expect(for_label).to_have_text(label)
        box = field.bounding_box()
        assert box is not None
        assert box["x"] >= 0 and box["x"] + box["width"] <= width
        if width < 600:
            # Phones: every field on a line of its own, wide enough to read.
            assert box["width"] >= 300, (label, box)


def test_no_serious_accessibility_violations_signed_out_and_signed_in(
    sized: Page, shared: LiveServer, shared_database: Database
) -> None:
    page = sized
    page.goto(shared.http + "/")
    expect(page.locator("#signin-form")).to_be_visible()
    assert serious_violations(page) == []
    screenshot(page, "signed-out")

    sign_in_to_shared(page, shared, shared_database)
    say(page, "hello, accessibly")
    expect(page.locator("#log")).to_contain_text("hello, accessibly", timeout=STEP)
    assert serious_violations(page) == []
    screenshot(page, "signed-in")


def test_after_signing_in_the_lobby_box_has_focus_and_lines_have_a_time(
    page: Page, shared: LiveServer, shared_database: Database
) -> None:
    sign_in_to_shared(page, shared, shared_database)
    # The shared chat, not the echo: text typed at once goes where others see it.
    expect(page.locator("#room-lobby-input")).to_be_focused()
    page.keyboard.type("hello with a time")
    page.keyboard.press("Enter")
    line = page.locator("#room-lobby-messages li").last
    expect(line).to_contain_text("alice: hello with a time", timeout=STEP)
    stamp = line.locator("time")
    expect(stamp).to_have_text(re.compile(r"\d\d:\d\d:\d\d"))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp.get_attribute("datetime"))


def test_choosing_a_name_in_online_now_addresses_the_direct_message(
    page: Page, shared: LiveServer, shared_database: Database
) -> None:
    sign_in_to_shared(page, shared, shared_database)
    page.locator("#online-list").get_by_role("button", name="alice").click()
    expect(page.locator("#direct-to")).to_have_value("alice")
    expect(page.locator("#direct-text")).to_be_focused()
    page.keyboard.type("a note to myself")
    page.keyboard.press("Enter")
    expect(page.locator("#log")).to_contain_text("a note to myself", timeout=STEP)


def test_signing_out_leaves_nothing_of_the_last_person_in_the_fields(
    page: Page, shared: LiveServer, shared_database: Database
) -> None:
    sign_in_to_shared(page, shared, shared_database)
    page.fill("#message-input", "a draft")
    page.fill("#direct-to", "bob")
    page.fill("#direct-text", "another draft")
    page.click("#signout")
    expect(page.locator("#signin-form")).to_be_visible(timeout=STEP)
    for field in ("#username", "#password", "#message-input", "#direct-to", "#direct-text"):
        expect(page.locator(field)).to_have_value("")
    expect(page.locator("#log li")).to_have_count(0)


def test_the_page_loads_without_a_failed_request(page: Page, shared: LiveServer) -> None:
    failed: list[str] = []
    page.on("requestfailed", lambda r: failed.append(f"failed {r.url}"))
    page.on("response", lambda r: r.status >= 400 and failed.append(f"{r.status} {r.url}"))
    page.goto(shared.http + "/")
    expect(page.locator("#signin-form")).to_be_visible()
    page.wait_for_load_state("networkidle")
    assert failed == []  # a missing favicon was a 404 on every load
    assert page.locator("link[rel=icon]").count() == 1


def test_too_many_failed_sign_ins_say_how_long_to_wait(page: Page, shared: LiveServer) -> None:
    # The per-account limit is 10 failures a minute; a name of its own keeps
    # the other tests' accounts (and the per-address allowance of 30) clear.
    for _ in range(10):
        status, _body = shared.post("/api/token/", {"username": "mallory", "password": "guess"})
        assert status == 401
    sign_in(page, shared, "mallory", "guess")
    expect(page.locator("#signin-error")).to_have_text(
        re.compile(r"^Too many attempts, try again in \d+ s\.$"), timeout=STEP
    )
