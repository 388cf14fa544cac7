"""Property-based fuzzing of live servers, the fast fixed-seed run (`make fuzz` runs it long).

Each test starts its own server (tests/fuzz.py): hostile frames and HTTP bodies
from hypothesis, derandomized so every run tries the same inputs, while three
honest sockets keep chatting. The two xfail tests hold properties the server
does not keep, each for a reason given in its mark.
"""

from __future__ import annotations

import pytest
from hypothesis import strategies as st

from tests.fuzz import (
    CATEGORIES,
    DAPHNE,
    MULTIPART_TYPES,
    UVICORN,
    Fuzz,
    Violation,
    deep_http_examples,
    hostile_examples,
    hostile_of,
    http_examples,
    huge_echo_frames,
    huge_ref_frames,
    valid_refs,
)

pytestmark = pytest.mark.server

FRAME_EXAMPLES = 300  # inputs of one to three frames each
HTTP_EXAMPLES = 150
KNOWN_EXAMPLES = 15  # a known failure shows in the first few


@pytest.fixture(scope="module")
def known():
    """One daphne without honest sockets, shared by the known failures that need no settings."""
    fuzz = Fuzz(DAPHNE, honest=False).start()
    yield fuzz
    fuzz.stop()


def fuzz_shared(fuzz: Fuzz, strategy, max_examples: int, title: str) -> None:
    """Run `strategy` on the shared server; raise Violation for the failures it added."""
    before, tried = len(fuzz.failures), fuzz.stats["inputs"]
    fuzz.run(strategy, max_examples)
    print(fuzz.summary(title))
    assert fuzz.stats["inputs"] - tried == max_examples  # every input was tried
    fuzz.assert_clean(since=before)


def fuzzed(fuzz: Fuzz, strategy, max_examples: int, title: str) -> Fuzz:
    """Run `strategy` against `fuzz`, stop it, print the table; the failures stay on `fuzz`."""
    try:
        fuzz.run(strategy, max_examples)
    finally:
        fuzz.stop()
        print(fuzz.summary(title))
    return fuzz


def test_hostile_frames_and_http_bodies_keep_the_protocol_on_daphne():
    fuzz = Fuzz(DAPHNE).start()
    try:
        fuzz.run(hostile_examples(fuzz.tokens), FRAME_EXAMPLES)
        fuzz.run(http_examples(), HTTP_EXAMPLES)
    finally:
        fuzz.stop()
        print(fuzz.summary("(fixed seed)"))
    fuzz.assert_clean()
    assert fuzz.stats["inputs"] == FRAME_EXAMPLES + HTTP_EXAMPLES  # every input was tried


def test_hostile_frames_keep_the_protocol_on_uvicorn():
    fuzz = Fuzz(UVICORN).start()
    # Invalid UTF-8: test_invalid_utf8_frames_leave_no_traceback_on_uvicorn.
    strategy = hostile_examples(fuzz.tokens, exclude=frozenset({"invalid_utf8"}))
    fuzzed(fuzz, strategy, FRAME_EXAMPLES // 2, "(fixed seed)")
    fuzz.assert_clean()
    assert fuzz.stats["inputs"] == FRAME_EXAMPLES // 2  # every input was tried


def test_invalid_utf8_frames_leave_no_traceback_on_uvicorn():
    fuzz = Fuzz(UVICORN, honest=False).start()
    strategy = hostile_examples(fuzz.tokens, exclude=CATEGORIES - {"invalid_utf8"})
    fuzzed(fuzz, strategy, KNOWN_EXAMPLES, "invalid UTF-8")
    assert fuzz.stats["inputs"] == KNOWN_EXAMPLES
    fuzz.assert_clean()


def test_deeply_nested_http_bodies_are_400_not_500(known):
    fuzz_shared(known, deep_http_examples(), KNOWN_EXAMPLES, "deep JSON")


@pytest.mark.xfail(
    strict=True,
    raises=Violation,
    reason="daphne only: twisted.web parses a multipart/form-data body itself and answers a "
    "malformed one 400 with an empty body before Django sees it (uvicorn, the production "
    "server, answers 415 with JSON); runserver is for development",
)
def test_multipart_bodies_get_json_errors(known):
    strategy = http_examples(content_types=MULTIPART_TYPES)
    fuzz_shared(known, strategy, KNOWN_EXAMPLES, "multipart")


def test_rate_limited_errors_carry_the_ref():
    fuzz = Fuzz(DAPHNE, honest=False, IDENTITY_RATE_LIMIT="0.01", IDENTITY_RATE_BURST="3").start()
    floods = st.lists(valid_refs.filter(lambda r: r is not None), min_size=5, max_size=6)
    fuzzed(fuzz, floods, KNOWN_EXAMPLES, "rate limit")
    assert fuzz.stats["ws flood"] == KNOWN_EXAMPLES
    fuzz.assert_clean()


def test_integer_refs_past_64_bits_are_carried(known):
    fuzz_shared(known, hostile_of(huge_ref_frames()), KNOWN_EXAMPLES, "huge refs")


@pytest.mark.xfail(
    strict=True,
    raises=Violation,
    reason="documented in docs/protocol.md section 8: pong echoes an integer past 64 bits as "
    "the float orjson reads it as (the same number to a JavaScript client)",
)
def test_ping_echoes_integers_past_64_bits_unchanged(known):
    strategy = hostile_of(huge_echo_frames())
    fuzz_shared(known, strategy, KNOWN_EXAMPLES, "huge payloads")
