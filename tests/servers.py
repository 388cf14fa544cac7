"""Real server processes for tests: started on free 127.0.0.1 ports, stopped by PID."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0
# Runs the command line after it with SIGINT back at its default (see with_default_sigint).
DEFAULT_SIGINT_THEN_EXEC = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def with_default_sigint(argv: list[str]) -> list[str]:
    """ARGV as a terminal would run it: SIGINT at its default, whatever this process has.

    A suite started in the background by a shell without job control (`make
    test &` in a script, a CI runner) runs with SIGINT ignored, and what it
    starts inherits that. Daphne (Twisted) keeps an ignored SIGINT ignored, as
    a background job should: a test's Ctrl-C never reached `runserver`, which
    was SIGKILLed and never ran its atexit.
    """
    return [sys.executable, "-c", DEFAULT_SIGINT_THEN_EXEC, *argv]


def base_env(**overrides: str) -> dict[str, str]:
    """The environment of a server process: the caller's, minus the test settings."""
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DJANGO_DEBUG="1",
        DJANGO_ALLOWED_HOSTS="localhost,127.0.0.1",
        PYTHONUNBUFFERED="1",
        # Tests open many sockets from 127.0.0.1: the per-address limits
        # (identity.guard) are off unless a test turns them on.
        IDENTITY_MAX_ANONYMOUS_PER_ADDRESS="0",
        IDENTITY_HANDSHAKE_RATE="0",
    )
    env.update(overrides)
    return env


def manage(env: dict[str, str], *args: str) -> str:
    """Run a management command in its own process; its stdout."""
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


class Database:
    """A migrated database with the demo users, shared by the server processes."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.passwords_file = Path(tempfile.mkstemp(suffix=".json")[1])
        self.passwords_file.unlink()
        manage(env, "migrate", "--noinput", "-v0")
        manage(env, "demo_users", "--file", str(self.passwords_file))
        self.passwords: dict[str, str] = json.loads(self.passwords_file.read_text())

    @classmethod
    def sqlite(cls, **env: str) -> Database:
        path = Path(tempfile.mkdtemp()) / "live.sqlite3"
        return cls(base_env(DATABASE_URL=f"sqlite:///{path}", **env))


class LiveServer:
    """One server process (runserver = daphne by default) on a free port."""

    def __init__(
        self, env: dict[str, str], command: list[str] | None = None, cwd: Path = ROOT
    ) -> None:
        self.env, self.cwd = env, cwd
        self.port = free_port()
        self.command = command or ["manage.py", "runserver", "--noreload"]
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = Path(tempfile.mkstemp(prefix="server-", suffix=".log")[1])

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/"

    def argv(self) -> list[str]:
        """The server's command line, listening on 127.0.0.1:port."""
        args = [sys.executable, *self.command]
        if self.command[:2] == ["manage.py", "runserver"]:
            return [*args, f"127.0.0.1:{self.port}"]
        return [*args, "--host", "127.0.0.1", "--port", str(self.port)]

    def start(self) -> LiveServer:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                with_default_sigint(self.argv()),
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.output()}")
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(self.http + "/healthz", timeout=1) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.05)  # polling a port that is not open yet: nothing to await
        raise RuntimeError(f"server not ready in {START_TIMEOUT}s:\n{self.output()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
        """Stop the process by its PID (SIGKILL to simulate a crash; after TIMEOUT s anyway)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def post(self, path: str, body: Any, token: str | None = None) -> tuple[int, Any]:
        """A JSON POST; (status, decoded body)."""
        return self.request("POST", path, body, token)

    def request(
        self, method: str, path: str, body: Any = None, token: str | None = None
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.http + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def tokens(self, username: str, password: str) -> dict[str, str]:
        status, body = self.post("/api/token/", {"username": username, "password": password})
        assert status == 200, body
        return body
