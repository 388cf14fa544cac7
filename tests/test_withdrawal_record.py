"""Each withdrawal leaves a Withdrawal row: whose sockets, what, why, by whom, how many closed."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.db import OperationalError

from identity import push, withdraw
from identity.models import Withdrawal
from tests.conftest import access_for, adb, as_request
from tests.test_withdrawal import assert_withdrawn

pytestmark = pytest.mark.django_db(transaction=True)


def rows() -> list[tuple]:
    return list(
        Withdrawal.objects.order_by("id").values_list(
            "username", "what", "reason", "actor", "closed", "failed"
        )
    )


async def test_a_command_kick_is_recorded_with_its_actor_and_count(alice, connect):
    client = await connect(access_for(alice))
    await as_request(call_command, "disconnect", "alice", stdout=StringIO())
    await assert_withdrawn(client, "kicked")
    assert await adb(rows)() == [("alice", "kick", "kicked", "command", 1, False)]


async def test_an_admin_revoke_is_recorded_and_says_tokens_were_revoked(
    alice, admin_client, connect
):
    client = await connect(access_for(alice))
    response = await admin_client.post(
        "/admin/auth/user/",
        {"action": "revoke_users", "_selected_action": [alice.pk]},
        follow=True,
    )
    assert "Tokens of alice revoked; 1 socket closed for alice." in response.content.decode()
    await assert_withdrawn(client, "token_revoked")
    assert await adb(rows)() == [
        ("alice", "revoke (tokens revoked)", "token_revoked", "admin operator", 1, False)
    ]


async def test_a_deactivation_by_a_signal_is_recorded_once(alice, connect):
    client = await connect(access_for(alice))
    alice.is_active = False
    with withdraw.acting_as("test"):
        await as_request(alice.save)
    await assert_withdrawn(client, "user_inactive")
    assert await adb(rows)() == [("alice", "deactivation", "user_inactive", "test", 1, False)]


async def test_a_failed_withdrawal_is_recorded_as_failed_with_why(alice, monkeypatch):
    def unreachable(*args, **kwargs):
        raise push.LayerUnreachable(0, "server x did not answer")

    monkeypatch.setattr(push, "disconnect_user_sync", unreachable)
    with pytest.raises(push.LayerUnreachable):
        await as_request(withdraw.disconnect, alice.pk, push.Reason.KICKED, "alice")
    record = await adb(Withdrawal.objects.get)()
    assert (record.failed, record.closed) == (True, 0)
    assert record.detail == "nothing closed for alice: server x did not answer"


async def test_a_record_that_cannot_be_written_does_not_stop_the_withdrawal(
    alice, connect, monkeypatch, caplog
):
    client = await connect(access_for(alice))

    def broken(self, *args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(Withdrawal, "save", broken)
    closed = await as_request(withdraw.disconnect, alice.pk, push.Reason.KICKED, "alice")
    assert closed == 1
    await assert_withdrawn(client, "kicked")
    assert "could not record the kick of alice" in caplog.text


async def test_a_record_waits_out_a_busy_database(alice, connect, monkeypatch, caplog):
    # The sockets just closed write the registry at that moment (SQLite: "locked").
    client = await connect(access_for(alice))
    real_save, attempts = Withdrawal.save, []

    def busy_twice(self, *args, **kwargs):
        attempts.append(1)
        if len(attempts) <= 2:
            raise OperationalError("database table is locked")
        real_save(self, *args, **kwargs)

    monkeypatch.setattr(Withdrawal, "save", busy_twice)
    assert await as_request(withdraw.disconnect, alice.pk, push.Reason.KICKED, "alice") == 1
    await assert_withdrawn(client, "kicked")
    assert len(attempts) == 3 and "could not record" not in caplog.text
    assert await adb(rows)() == [("alice", "kick", "kicked", "code", 1, False)]
