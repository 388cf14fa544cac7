"""Usernames PostgreSQL text cannot hold (NUL) are refused as input, never sent to the database."""

from __future__ import annotations

import pytest

from identity.protocol import storable_text
from tests.conftest import access_for
from tests.servers import Database, LiveServer, base_env
from tests.services import postgres_database


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("to", ["a\x00b", "\x00", "alice\x00"], ids=["inside", "alone", "suffix"])
async def test_send_to_a_username_with_a_nul_is_invalid_payload(alice, connect, to):
    client = await connect(access_for(alice))
    reply = await client.request("send", {"to": to, "text": "x"}, ref=1)
    assert reply["action"] == "error"
    assert reply["payload"]["code"] == "invalid_payload", reply
    assert reply["ref"] == 1
    assert (await client.request("ping", "still-open"))["payload"] == "still-open"


@pytest.mark.parametrize(
    ("text", "storable"), [("alice", True), ("é😀", True), ("a\x00b", False), ("a\ud800", False)]
)
def test_only_text_every_database_can_hold_is_storable(text, storable):
    assert storable_text(text) is storable


@pytest.mark.server
@pytest.mark.services
@pytest.mark.parametrize("action", ["disconnect", "revoke"])
def test_a_staff_action_on_a_username_with_a_nul_is_a_404_on_postgresql(action):
    with postgres_database() as url:
        database = Database(base_env(DATABASE_URL=url, REDIS_URL=""))
        server = LiveServer(database.env).start()
        try:
            token = server.tokens("operator", database.passwords["operator"])["access"]
            status, body = server.post(f"/api/users/a%00b/{action}/", None, token)
            assert (status, body.get("code")) == (404, "not_found"), body
        finally:
            server.stop()
