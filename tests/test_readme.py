"""The README's Python examples run as shown, against a real server process."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.readme import OWN_PROJECT, code_blocks, readme_sections
from tests.servers import ROOT, Database, LiveServer

pytestmark = pytest.mark.server

SHELL_MARK = "# python manage.py shell"

# This project's examples; those of another project are tests/test_wheel.py's.
BLOCKS = [
    block
    for title, text in readme_sections().items()
    if title != OWN_PROJECT
    for block in code_blocks(text, "python")
]
SCRIPTS = [block for block in BLOCKS if not block.startswith(SHELL_MARK)]
SHELL_SNIPPETS = [block for block in BLOCKS if block.startswith(SHELL_MARK)]


@pytest.fixture(scope="module")
def database() -> Database:
    return Database.sqlite()


@pytest.fixture(scope="module")
def server(database: Database) -> Iterator[LiveServer]:
    live = LiveServer(database.env).start()
    yield live
    live.stop()


def run(args: list[str], env: dict[str, str], code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=ROOT, env=env, input=code, capture_output=True, text=True, timeout=60
    )


def test_the_readme_has_both_kinds_of_python_example() -> None:
    assert SCRIPTS, "no standalone Python example in README.md"
    assert SHELL_SNIPPETS, f"no Python example starting {SHELL_MARK!r} in README.md"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: f"line-{len(s.splitlines())}")
def test_each_readme_script_runs_as_shown(
    script: str, server: LiveServer, database: Database
) -> None:
    # The variables the example's first line documents, nothing else.
    env = {
        **database.env,
        "IDENTITY_URL": server.http,
        "IDENTITY_PASSWORD": database.passwords["alice"],
    }
    result = run([sys.executable, "-"], env, script)
    assert result.returncode == 0, result.stderr
    assert "'registered': True" in result.stdout, result.stdout


@pytest.mark.parametrize("snippet", SHELL_SNIPPETS, ids=lambda s: f"line-{len(s.splitlines())}")
def test_each_readme_shell_snippet_runs_in_manage_py_shell(
    snippet: str, server: LiveServer, database: Database
) -> None:
    # Run last in this module: the snippet revokes alice's tokens. With the
    # in-memory layer it only works while her sockets are not held by the
    # server process (the README says so), hence the same database, no socket.
    result = run([sys.executable, "manage.py", "shell"], database.env, snippet)
    assert result.returncode == 0, result.stderr
    status, body = server.post(
        "/api/token/", {"username": "alice", "password": database.passwords["alice"]}
    )
    assert status == 200, body  # a revocation refuses old tokens, not new sign-ins
