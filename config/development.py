"""Development conveniences: a secret key of this checkout's own, and the `.env` of `make run`.

`python -m config.development` (run by `make run`) writes `.env` with
DJANGO_DEBUG=1 unless one exists, so every documented command works in the
clone `make run` made. Production stays strict: without DJANGO_SECRET_KEY and
with DEBUG off the settings refuse to load.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
import tempfile
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
KEY_FILE = BASE_DIR / ".dev-secret-key"
ENV_FILE = BASE_DIR / ".env"
ENV_TEXT = """\
# Written by `make run` (git-ignored): development mode for every manage.py
# command in this checkout. Delete it, or set DJANGO_DEBUG=0 and
# DJANGO_SECRET_KEY, for anything else (`make serve` refuses debug mode).
DJANGO_DEBUG=1
"""


def development_secret_key(path: Path = KEY_FILE) -> str:
    """This checkout's random development key, created (mode 0600) on first use.

    A fixed key in the source would let anyone who reads it forge tokens for a
    developer's server. Two processes starting together agree: each writes a
    temporary file and hard-links it into place, which never overwrites, so
    the first link wins and both read the winner.
    """
    if not path.exists():
        _create_exclusively(path, secrets.token_urlsafe(50) + "\n")
    key = path.read_text().strip()
    if not key:
        raise ImproperlyConfigured(f"{path} is empty; delete it to get a new development key.")
    return key


def _create_exclusively(path: Path, text: str) -> None:
    """Write `text` to `path` (0600) unless it exists; never a half-written file."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")  # 0600
    try:
        with os.fdopen(fd, "w") as file:
            file.write(text)
        with contextlib.suppress(FileExistsError):  # another process was first
            os.link(temporary, path)
    finally:
        os.unlink(temporary)


def write_env(path: Path = ENV_FILE) -> bool:
    """Leave a development `.env` unless one exists; whether it was written."""
    if path.exists():
        return False
    _create_exclusively(path, ENV_TEXT)
    return True


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else ENV_FILE
    if write_env(path):
        print(f"Wrote {path} (DJANGO_DEBUG=1) for development; delete it for anything else.")


if __name__ == "__main__":
    main()
