"""Development mode: a random secret key per checkout, and the `.env` that `make run` leaves."""

from __future__ import annotations

import multiprocessing
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from dotenv import dotenv_values

from config.development import KEY_FILE, development_secret_key, write_env
from tests.servers import ROOT, base_env, manage

OLD_FIXED_KEY = "django-insecure-development-key-do-not-use-in-production"


def _race_for_key(barrier, path: str, keys) -> None:
    barrier.wait(timeout=30)  # both processes ask at the same moment
    keys.put(development_secret_key(Path(path)))


def test_two_processes_starting_together_get_the_same_key(tmp_path):
    path = tmp_path / ".dev-secret-key"
    context = multiprocessing.get_context("spawn")
    barrier, keys = context.Barrier(2), context.Queue()
    workers = [
        context.Process(target=_race_for_key, args=(barrier, str(path), keys)) for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    first, second = keys.get(timeout=60), keys.get(timeout=60)
    for worker in workers:
        worker.join(timeout=30)
    assert first == second == path.read_text().strip()
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_the_key_is_random_private_and_not_the_old_fixed_string(tmp_path):
    key = development_secret_key(tmp_path / "key")
    assert key != OLD_FIXED_KEY and len(key) >= 50
    assert stat.S_IMODE((tmp_path / "key").stat().st_mode) == 0o600
    assert development_secret_key(tmp_path / "key") == key  # kept, not regenerated
    assert development_secret_key(tmp_path / "other") != key


def settings_env(**values: str) -> dict[str, str]:
    """A process environment with nothing of the suite's; empty means unset (and beats .env)."""
    return base_env(
        **{"DJANGO_DEBUG": "", "DJANGO_SECRET_KEY": "", "JWT_SIGNING_KEY": "", **values}
    )


def test_debug_settings_without_a_secret_use_the_checkouts_key_file():
    code = "from django.conf import settings; print(settings.SECRET_KEY)"
    env = settings_env(DJANGO_DEBUG="1")
    out = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {code}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True,
    ).stdout.strip()  # fmt: skip
    assert out == KEY_FILE.read_text().strip()
    assert out != OLD_FIXED_KEY
    assert stat.S_IMODE(KEY_FILE.stat().st_mode) == 0o600
    assert subprocess.run(["git", "check-ignore", "-q", str(KEY_FILE)], cwd=ROOT).returncode == 0


@pytest.fixture
def migrated_database() -> str:
    url = f"sqlite:///{Path(tempfile.mkdtemp()) / 'dev.sqlite3'}"
    manage(base_env(DATABASE_URL=url), "migrate", "--noinput", "-v0")
    return url


def online(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "online"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_manage_online_runs_with_the_env_file_make_run_writes(tmp_path, migrated_database):
    assert write_env(tmp_path / ".env") is True
    values = {k: v for k, v in dotenv_values(tmp_path / ".env").items() if v is not None}
    assert values == {"DJANGO_DEBUG": "1"}
    result = online(settings_env(DATABASE_URL=migrated_database, **values))
    assert result.returncode == 0, result.stderr
    assert "Nobody is online." in result.stdout


def test_without_it_production_mode_refuses_in_one_line(migrated_database):
    result = online(settings_env(DATABASE_URL=migrated_database))
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.endswith(
        "DJANGO_SECRET_KEY is not set. Set it, or set DJANGO_DEBUG=1 for development."
    )


def test_an_existing_env_file_is_never_overwritten(tmp_path):
    (tmp_path / ".env").write_text("DJANGO_DEBUG=0\n")
    assert write_env(tmp_path / ".env") is False
    assert (tmp_path / ".env").read_text() == "DJANGO_DEBUG=0\n"


def test_make_run_writes_the_env_file_before_anything_else():
    plan = subprocess.run(
        ["make", "-n", "run"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    ).stdout.splitlines()
    steps = [line for line in plan if "manage.py" in line or "config.development" in line]
    assert "-m config.development" in steps[0], plan
    assert os.path.exists(ROOT / ".gitignore")
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert ".env" in ignored and ".dev-secret-key" in ignored
