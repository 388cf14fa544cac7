"""identity as a reusable app: its wheel, in a fresh virtualenv, serving a project that is not this.

The project is README's "Add identity to your own Django project", block for
block: `django-admin startproject mysite` and `startapp notes` from that
virtualenv, the README's settings appended, its asgi.py, urls.py and
notes/realtime.py written as shown; then `migrate`, users, daphne from that
virtualenv on a free port, and a real WebSocket client. The wheel, the
virtualenv and the project are built once for the module (a minute or so).
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from tests.readme import OWN_PROJECT, code_blocks, readme_sections
from tests.servers import ROOT, LiveServer

pytestmark = [pytest.mark.server, pytest.mark.timeout(600)]

TIMEOUT = 10  # seconds for a frame the server must send (a relayed publish included)
PASSWORDS = {"alice": "alice-wheel-pw-7f3k", "operator": "operator-wheel-pw-9q2m"}

# The repository as a checkout has it, minus what is not source: the build
# runs on a copy, as it writes build/ and *.egg-info where it runs.
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "__pycache__", "*.pyc", "build", "dist", "*.egg-info", "*.sqlite3*",
    "staticfiles", ".env", ".dev-secret-key*", ".demo-users.json", ".*_cache", "test-results",
)  # fmt: skip


def run(args: list[Any], cwd: Path, env: dict[str, str] | None = None, timeout: int = 120) -> str:
    """Run a command to completion; its stdout (its output on failure)."""
    result = subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def readme_files() -> dict[str, str]:
    """The README's blocks for your own project, by the path their first line names."""
    blocks = code_blocks(readme_sections()[OWN_PROJECT], "python")
    return {block.split("\n", 1)[0].removeprefix("# ").split(" ")[0]: block for block in blocks}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source") / "repository"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--wheel", "--outdir", out, source], ROOT, timeout=300)
    [built] = out.glob("*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh virtualenv with the wheel and its dependencies (from the configured index).

    Removed afterwards: 100 MiB that pytest would keep for three runs.
    """
    path = tmp_path_factory.mktemp("venv")
    # This pip installs into it (--python): a pip of its own would take 10 s more.
    run([sys.executable, "-m", "venv", "--without-pip", path], path)
    pip = [sys.executable, "-m", "pip", "--python", path / "bin/python", "install"]
    run([*pip, "--quiet", "--no-compile", wheel], path, timeout=480)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def environ(venv: Path) -> dict[str, str]:
    """The other project's environment: its virtualenv first, nothing of this project's."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("DJANGO_", "IDENTITY_", "PYTHON", "VIRTUAL_ENV"))
        and name not in ("DATABASE_URL", "REDIS_URL")
    }
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", PYTHONUNBUFFERED="1")
    return env


@pytest.fixture(scope="module")
def project(venv: Path, environ: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """README's project, migrated, with alice and a superuser `operator`."""
    path = tmp_path_factory.mktemp("mysite")
    python = venv / "bin/python"
    run([venv / "bin/django-admin", "startproject", "mysite", path], path, environ)
    run([python, "manage.py", "startapp", "notes"], path, environ)
    files = readme_files()
    with (path / "mysite/settings.py").open("a") as settings:
        settings.write("\n" + files["mysite/settings.py"])
    for name in ("mysite/asgi.py", "mysite/urls.py", "notes/realtime.py"):
        (path / name).write_text(files[name])
    run([python, "manage.py", "migrate", "--noinput", "-v0"], path, environ)
    users = (
        "from django.contrib.auth import get_user_model; User = get_user_model(); "
        f"User.objects.create_user('alice', password={PASSWORDS['alice']!r}); "
        f"User.objects.create_superuser('operator', password={PASSWORDS['operator']!r})"
    )
    run([python, "manage.py", "shell", "-c", users], path, environ)
    return path


class Daphne(LiveServer):
    """The other project's ASGI application on the daphne of its virtualenv."""

    def __init__(self, env: dict[str, str], cwd: Path, venv: Path) -> None:
        super().__init__(env, cwd=cwd)
        self.venv = venv

    def argv(self) -> list[str]:
        daphne = str(self.venv / "bin/daphne")
        return [daphne, "-b", "127.0.0.1", "-p", str(self.port), "mysite.asgi:application"]


@pytest.fixture(scope="module")
def server(project: Path, venv: Path, environ: dict[str, str]) -> Iterator[Daphne]:
    live = Daphne(environ, project, venv).start()
    yield live
    live.stop()


def publish_from_the_shell(project: Path, venv: Path, environ: dict[str, str]) -> None:
    """README's publish block, run as shown in the project's `manage.py shell`."""
    code = readme_files()["manage.py"]
    run([venv / "bin/python", "manage.py", "shell", "-c", code], project, environ)


async def recv(ws: Any) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(decode=True), TIMEOUT))


async def request(ws: Any, action: str, payload: Any, ref: str) -> dict[str, Any]:
    await ws.send(json.dumps({"action": action, "payload": payload, "ref": ref}))
    return await recv(ws)


@pytest.fixture
async def alice(server: Daphne) -> AsyncIterator[Any]:
    """A socket signed in as alice with a token from the project's /api/token/."""
    access = server.tokens("alice", PASSWORDS["alice"])["access"]
    async with websockets.connect(server.ws) as ws:
        reply = await request(ws, "auth", access, "auth")
        assert reply["payload"]["registered"] is True, reply
        yield ws


def test_the_wheel_holds_the_app_its_migrations_templates_and_static_files_only(
    wheel: Path,
) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {name.split("/")[0] for name in names} == {"identity", "identity_server-0.1.0.dist-info"}
    source = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "identity").rglob("*")
        if path.suffix in (".py", ".html", ".js", ".css") and "__pycache__" not in path.parts
    }
    assert source - names == set()
    for kind in ("migrations/", "management/commands/", "templates/admin/", "static/identity/"):
        assert any(name.startswith("identity/" + kind) for name in names), kind
    metadata = next(name for name in names if name.endswith("/METADATA"))
    requires = re.findall(
        r"^Requires-Dist: ([\w-]+)", zipfile.ZipFile(wheel).read(metadata).decode(), re.M
    )
    assert {"Django", "channels", "daphne", "djangorestframework-simplejwt"} <= set(requires)


def test_the_project_imports_identity_from_the_virtualenv_and_nothing_of_this_repository(
    project: Path, venv: Path, environ: dict[str, str]
) -> None:
    code = (
        "import importlib.util, identity; print(identity.__file__); "
        "print([m for m in ('config', 'tests', 'bench') if importlib.util.find_spec(m)])"
    )
    where, found = run([venv / "bin/python", "-c", code], project, environ).splitlines()
    assert Path(where).is_relative_to(venv), where
    assert found == "[]"


def test_the_page_and_the_admin_dashboard_render_from_the_apps_own_templates(
    server: Daphne,
) -> None:
    with urllib.request.urlopen(server.http + "/", timeout=TIMEOUT) as response:
        assert "identity/app.js" in response.read().decode()
    browser = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
    )
    login = server.http + "/admin/login/"
    page = browser.open(login, timeout=TIMEOUT).read().decode()
    [csrf] = re.findall(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    form = {"username": "operator", "password": PASSWORDS["operator"], "next": "/admin/"}
    body = urllib.parse.urlencode({**form, "csrfmiddlewaretoken": csrf}).encode()
    index = browser.open(urllib.request.Request(login, body, {"Referer": login}), timeout=TIMEOUT)
    assert 'href="/admin/identity/dashboard/">Dashboard</a>' in index.read().decode()
    dashboard = browser.open(server.http + "/admin/identity/dashboard/", timeout=TIMEOUT)
    assert "identity-dash" in dashboard.read().decode()


async def test_the_projects_action_replies_with_the_frames_ref(alice: Any) -> None:
    reply = await request(alice, "notes.add", "hello", "n1")
    assert reply == {"action": "notes.add", "payload": {"length": 5, "by": "alice"}, "ref": "n1"}


async def test_the_projects_action_error_is_an_error_frame_with_the_ref(alice: Any) -> None:
    reply = await request(alice, "notes.add", 42, "n2")
    assert reply["action"] == "error", reply
    assert reply["ref"] == "n2"
    assert reply["payload"]["code"] == "invalid_payload"
    assert reply["payload"]["message"] == "A note is a string."


async def test_a_user_may_subscribe_to_their_own_notes_and_not_to_another_users(
    alice: Any,
) -> None:
    own = await request(alice, "subscribe", {"topic": "notes.alice"}, "s1")
    assert own == {
        "action": "subscribe",
        "payload": {"topic": "notes.alice", "subscribed": True},
        "ref": "s1",
    }
    other = await request(alice, "subscribe", {"topic": "notes.bob"}, "s2")
    assert (other["action"], other["payload"]["code"], other["ref"]) == ("error", "forbidden", "s2")


async def test_a_publish_from_the_projects_shell_reaches_the_subscribed_socket(
    alice: Any, project: Path, venv: Path, environ: dict[str, str]
) -> None:
    subscribed = await request(alice, "subscribe", {"topic": "notes.alice"}, "s1")
    assert subscribed["payload"] == {"topic": "notes.alice", "subscribed": True}, subscribed
    await asyncio.to_thread(publish_from_the_shell, project, venv, environ)
    assert await recv(alice) == {
        "action": "event",
        "payload": {"topic": "notes.alice", "event": "added", "data": {"text": "hi"}, "from": None},
    }
