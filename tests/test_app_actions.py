"""Application actions (PROTOCOL.md v2): names with a dot, registered in a realtime.py."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import pytest
from django.test import override_settings

import tests.realtime_example  # noqa: F401  (the actions below)
from identity import push, realtime
from tests.conftest import access_for, adb, grant, make_user

pytestmark = pytest.mark.django_db(transaction=True)


async def test_an_async_action_answers_with_its_return_value_and_the_ref(alice, connect):
    client = await connect(access_for(alice))
    reply = await client.request("test.echo", {"n": 1}, ref="a1")
    assert reply == {
        "action": "test.echo",
        "payload": {"payload": {"n": 1}, "user": "alice", "topics": []},
        "ref": "a1",
    }


async def test_a_sync_action_runs_where_the_orm_works(alice, bob, connect):
    client = await connect(access_for(alice))
    reply = await client.request("test.count_users", None, ref=2)
    assert reply == {"action": "test.count_users", "payload": {"users": 2}, "ref": 2}


async def test_an_async_action_reads_any_field_of_the_socket_user(transactional_db, connect):
    carol = await adb(make_user)("carol", email="carol@example.com", is_staff=True)
    client = await connect(access_for(carol))
    reply = await client.request("test.profile", None, ref="p")
    assert reply["payload"] == {
        "email": "carol@example.com",
        "staff": True,
        "joined": carol.date_joined.year,
    }


async def test_a_reply_without_a_ref_has_no_ref_key(alice, connect):
    client = await connect(access_for(alice))
    reply = await client.request("test.echo", "x")
    assert "ref" not in reply


async def test_an_action_error_is_the_protocols_error_frame(alice, connect):
    client = await connect(access_for(alice))
    reply = await client.request("test.refuse", None, ref="r")
    assert reply == {
        "action": "error",
        "payload": {
            "code": "invalid_payload",
            "message": "Refused on purpose.",
            "action": "test.refuse",
        },
        "ref": "r",
    }


async def test_an_application_may_name_its_own_error_codes(alice, connect):
    client = await connect(access_for(alice))
    reply = await client.request("test.own_code", None)
    assert reply["payload"]["code"] == "out_of_stock"
    assert reply["payload"]["message"] == "Nothing left."


async def test_a_crashing_action_is_logged_and_answered_never_1011(alice, connect, caplog):
    client = await connect(access_for(alice))
    with caplog.at_level(logging.ERROR, logger="identity.consumers"):
        reply = await client.request("test.crash", None, ref="c")
    assert reply["action"] == "error"
    assert reply["payload"]["code"] == "server_error"
    assert reply["ref"] == "c"
    assert "a bug in the application" not in str(reply)  # no traceback on the wire
    assert any("test.crash" in r.getMessage() and r.exc_info for r in caplog.records)
    assert (await client.request("test.echo", 1))["action"] == "test.echo"  # still open


async def test_a_reply_that_is_not_json_is_a_server_error(alice, connect, caplog):
    client = await connect(access_for(alice))
    with caplog.at_level(logging.ERROR, logger="identity.consumers"):
        reply = await client.request("test.unencodable", None, ref="u")
    assert reply["payload"]["code"] == "server_error"
    assert reply["ref"] == "u"


async def test_an_action_that_needs_a_permission_is_forbidden_without_it(alice, connect):
    client = await connect(access_for(alice))
    reply = await client.request("test.staff_only", None, ref="f")
    assert reply["payload"] == {
        "code": "forbidden",
        "message": "You may not run this action.",
        "action": "test.staff_only",
    }
    assert reply["ref"] == "f"


async def test_an_action_that_needs_a_permission_runs_with_it(alice, connect):
    await adb(grant)(alice, "change")
    client = await connect(access_for(alice))
    assert (await client.request("test.staff_only", None))["payload"] == "ok"


async def test_a_permission_granted_while_connected_counts_at_once(alice, connect):
    client = await connect(access_for(alice))
    assert (await client.request("test.staff_only"))["payload"]["code"] == "forbidden"
    await adb(grant)(alice, "change")  # re-read by the re-check the change triggers
    # The re-check pushes nothing to a socket without subscriptions: ask until
    # it has run (on Redis it comes back through the server), for at most 3 s.
    deadline = time.monotonic() + 3
    while (reply := await client.request("test.staff_only"))["payload"] != "ok":
        assert time.monotonic() < deadline, reply
        await asyncio.sleep(0.02)


async def test_application_actions_need_an_identity(connect):
    client = await connect()
    reply = await client.request("test.echo", None, ref="n")
    assert reply["payload"]["code"] == "not_authenticated"
    assert reply["ref"] == "n"


async def test_an_unknown_name_with_a_dot_is_unknown_action(alice, connect):
    client = await connect(access_for(alice))
    reply = await client.request("test.nothing", None, ref="x")
    assert reply["payload"]["code"] == "unknown_action"
    assert reply["ref"] == "x"


@override_settings(IDENTITY_RATE_LIMIT=1, IDENTITY_RATE_BURST=2)
async def test_application_actions_share_the_sockets_rate_limit(alice, connect):
    client = await connect(access_for(alice))
    codes = []
    for n in range(4):
        reply = await client.request("test.echo", n, ref=n)
        codes.append(reply["payload"].get("code") if reply["action"] == "error" else "ok")
        assert reply["ref"] == n
    assert "rate_limited" in codes


async def test_an_integer_ref_past_64_bits_comes_back_exactly(alice, connect):
    client = await connect(access_for(alice))
    ref = 2**70 + 1
    await client.send_text(f'{{"action": "test.echo", "payload": 1, "ref": {ref}}}')
    raw = await client.communicator.receive_from()
    assert f'"ref":{ref}' in raw
    assert json.loads(raw)["action"] == "test.echo"


async def test_a_reply_over_the_frame_limit_is_a_server_error(alice, connect, caplog):
    client = await connect(access_for(alice))
    with caplog.at_level(logging.ERROR, logger="identity.consumers"):
        reply = await client.request("test.huge", None, ref="h")
    assert reply["payload"]["code"] == "server_error"
    assert reply["ref"] == "h"
    assert any("over 65536 bytes" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)


KICKED = {"action": "disconnect", "payload": {"reason": "kicked", "reconnect": False}}
WITHDRAWN_WITHIN = 1.0  # seconds: PROTOCOL.md, a withdrawal happens within one second


async def kick_during(action: str, user: Any, connect: Any, gate: Any) -> Any:
    """Kick USER while ACTION waits at the gate: at once, counted, no reply first."""
    client = await connect(access_for(user))
    await client.send(action, "late", ref="g")
    await asyncio.wait_for(gate.entered.wait(), 3)
    started = time.monotonic()
    assert await push.disconnect_user(user.pk, push.Reason.KICKED) == 1
    assert await client.receive() == KICKED
    assert await client.receive_close() == 4403
    assert time.monotonic() - started < WITHDRAWN_WITHIN
    return client


async def test_a_withdrawal_cancels_a_running_action_instead_of_waiting_for_it(
    alice, connect, gate
):
    await kick_during("test.gate", alice, connect, gate)
    assert gate.cancelled.is_set()


async def test_a_handler_that_ignores_its_cancellation_is_not_waited_for_and_its_reply_dropped(
    alice, connect, gate
):
    client = await kick_during("test.stubborn_gate", alice, connect, gate)
    gate.opened.set()  # the handler returns at last: its reply is not written
    await client.assert_silent()


async def test_a_handler_that_starts_after_the_withdrawal_came_is_cancelled_too(
    alice, connect, gate, monkeypatch
):
    checking, checked = asyncio.Event(), asyncio.Event()
    may_run = realtime.may_run

    async def slow_check(spec: Any, user: Any) -> bool:  # the permission check, before the handler
        checking.set()
        await checked.wait()
        return await may_run(spec, user)

    monkeypatch.setattr(realtime, "may_run", slow_check)
    client = await connect(access_for(alice))
    await client.send("test.gate", "late", ref="g")
    await asyncio.wait_for(checking.wait(), 3)
    kick = asyncio.ensure_future(push.disconnect_user(alice.pk, push.Reason.KICKED))
    await asyncio.sleep(0.05)  # the withdrawal waits for the frame in hand
    checked.set()
    assert await asyncio.wait_for(kick, WITHDRAWN_WITHIN) == 1
    assert await client.receive() == KICKED
    assert await client.receive_close() == 4403
    await asyncio.wait_for(gate.cancelled.wait(), 1)  # not left running
