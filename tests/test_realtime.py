"""identity.realtime's registry: patterns, discovery, and the system check on registrations."""

from __future__ import annotations

import pytest
from django.core.checks import run_checks

from identity import realtime
from identity.realtime import ActionError, action, topic


@pytest.fixture
def scratch(monkeypatch):
    """Registrations made in a test are forgotten after it."""
    monkeypatch.setattr(realtime, "registered_actions", list(realtime.registered_actions))
    monkeypatch.setattr(realtime, "actions", dict(realtime.actions))
    monkeypatch.setattr(realtime, "topics", list(realtime.topics))


def e005(settings) -> list[str]:
    return [m.msg for m in run_checks() if m.id == "identity.E005"]


def test_the_projects_realtime_module_was_discovered_at_startup():
    assert realtime.find_topic("room.lobby") is not None
    assert realtime.find_topic("room.staff") is not None


def test_a_pattern_parameter_matches_one_segment_only(scratch):
    spec = topic("order.{id}.{part}")
    assert spec.match("order.42.lines") == {"id": "42", "part": "lines"}
    assert spec.match("order.42") is None
    assert spec.match("order.4.2.lines") is None
    assert spec.match("order.a:b-c_d.x") == {"id": "a:b-c_d", "part": "x"}


def test_the_literal_parts_of_a_pattern_are_literal(scratch):
    spec = topic("a.b")
    assert spec.match("a.b") == {}
    assert spec.match("aXb") is None  # the dot is no wildcard


def test_the_first_declared_pattern_that_matches_wins(scratch):
    first = topic("zz.{name}")
    topic("zz.special")
    found = realtime.find_topic("zz.special")
    assert found is not None and found[0] is first


def test_two_handlers_for_one_name_are_refused_by_the_system_check(scratch, settings):
    @action("dup.name")
    async def one(socket, payload):
        return 1

    @action("dup.name")
    async def two(socket, payload):
        return 2

    messages = e005(settings)
    assert any("'dup.name'" in m and "already registered" in m for m in messages)
    assert realtime.actions["dup.name"].handler is one  # the first one runs meanwhile


def test_an_action_name_without_a_dot_is_refused_by_the_system_check(scratch, settings):
    @action("nodot")
    async def handler(socket, payload):
        return 1

    assert any("'nodot'" in m and "has a dot" in m for m in e005(settings))


@pytest.mark.parametrize(
    "pattern", ["room/{name}", "room.{name}.{name}", "", "r" * 101, "room.{na-me}", "room.{"]
)
def test_a_bad_pattern_is_refused_where_it_is_declared(scratch, pattern):
    with pytest.raises(ValueError, match="topic pattern"):
        topic(pattern)
    assert pattern not in [t.pattern for t in realtime.topics]


def test_the_registrations_of_this_project_pass_the_check(settings):
    assert e005(settings) == []


def test_an_action_error_code_is_a_code():
    assert ActionError("out_of_stock", "none").code == "out_of_stock"
    assert ActionError("forbidden").message == "forbidden"
    with pytest.raises(ValueError):
        ActionError("Not A Code", "x")
