"""The servers tests start get a Ctrl-C, however the suite itself was started."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.servers import with_default_sigint

SHOW_SIGINT = "import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"


@pytest.fixture
def sigint_ignored() -> Iterator[None]:
    """This process ignores SIGINT, as a suite run with `&` from a shell script does."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def sigint_is_default(argv: list[str]) -> bool:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout
    return out.strip() == "True"


def test_a_process_started_plainly_inherits_the_ignored_sigint(sigint_ignored):
    # Why the helper exists: daphne (Twisted) then never installs its handler.
    assert not sigint_is_default([sys.executable, "-c", SHOW_SIGINT])


def test_a_server_command_gets_sigint_at_its_default_even_so(sigint_ignored):
    assert sigint_is_default(with_default_sigint([sys.executable, "-c", SHOW_SIGINT]))
