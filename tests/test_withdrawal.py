"""Every way a user stops being valid closes their sockets with 4403 (PROTOCOL.md).

Each path: the socket gets `disconnect` REASON and close 4403, the old token is
refused with the matching `auth` error, and a fresh token works where it should.
"""

from __future__ import annotations

import logging
import time

import pytest
from django.test import AsyncClient

from identity import push, withdraw
from identity.models import Connection
from tests.conftest import RequestClient, access_for, adb, as_request, make_user

pytestmark = pytest.mark.django_db(transaction=True)


async def assert_withdrawn(client, reason: str) -> None:
    assert await client.receive() == {
        "action": "disconnect",
        "payload": {"reason": reason, "reconnect": False},
    }
    assert await client.receive_close() == 4403


async def auth_error(connect, token: str) -> str | None:
    client = await connect()
    reply = await client.auth(token)
    return None if reply["registered"] else reply["error"]["code"]


async def wait_for_next_second(moment: int) -> None:
    """Tokens carry `iat` in whole seconds: one issued in the revocation's second is refused."""
    while int(time.time()) <= moment:
        await adb(time.sleep)(0.05)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_deactivation_closes_every_socket_with_user_inactive(alice, bob, connect):
    token = access_for(alice)
    sockets = [await connect(token), await connect(token)]
    bystander = await connect(access_for(bob))
    alice.is_active = False
    await as_request(alice.save)
    for client in sockets:
        await assert_withdrawn(client, "user_inactive")
    await bystander.assert_silent()
    assert await auth_error(connect, token) == "user_inactive"
    alice.is_active = True
    await as_request(alice.save)
    assert await auth_error(connect, access_for(alice)) is None


async def test_update_queryset_of_is_active_is_not_a_save_but_auth_still_refuses(alice, connect):
    # QuerySet.update sends no signal; the next auth still sees is_active=False.
    token = access_for(alice)
    await adb(lambda: type(alice).objects.filter(pk=alice.pk).update(is_active=False))()
    assert await auth_error(connect, token) == "user_inactive"


async def test_deletion_closes_sockets_with_user_deleted_and_pushes_offline(alice, bob, connect):
    watcher = await connect(access_for(bob))
    await watcher.request("presence")
    token = access_for(alice)
    client = await connect(token)
    assert (await watcher.receive())["payload"]["event"] == "online"
    alice_id = alice.pk
    await as_request(alice.delete)
    await assert_withdrawn(client, "user_deleted")
    assert (await watcher.receive())["payload"] == {
        "event": "offline",
        "user": {"id": alice_id, "username": "alice"},
    }
    await watcher.assert_silent()
    assert await auth_error(connect, token) == "user_not_found"


async def test_a_deleted_users_leave_that_cannot_be_pushed_is_logged_with_its_cause(
    alice, connect, monkeypatch, caplog
):
    client = await connect(access_for(alice))
    assert (await client.request("subscribe", {"topic": "room.lobby"}))["payload"]["subscribed"]

    def refused(*args):
        raise RuntimeError("the layer refused it")

    monkeypatch.setattr(push, "push_members_sync", refused)
    with caplog.at_level(logging.WARNING, logger="identity"):
        await as_request(alice.delete)
        await assert_withdrawn(client, "user_deleted")
    logged = [r for r in caplog.records if "could not push leave" in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None


async def test_a_password_change_revokes_tokens_and_closes_sockets(alice, connect):
    token = access_for(alice)
    client = await connect(token)
    alice.set_password("a-new-password-123")
    await as_request(alice.save)
    await assert_withdrawn(client, "token_revoked")
    assert await auth_error(connect, token) == "token_revoked"
    revoked_at = int(time.time())
    await wait_for_next_second(revoked_at)
    assert await auth_error(connect, access_for(alice)) is None


async def test_saving_without_changing_the_password_withdraws_nothing(alice, connect):
    client = await connect(access_for(alice))
    alice.email = "new@example.com"
    await as_request(alice.save)
    await client.assert_silent()
    assert (await client.request("whoami"))["payload"]["user"]["username"] == "alice"


async def test_revoke_refuses_access_and_refresh_tokens_issued_before(alice, connect):
    from rest_framework_simplejwt.token_blacklist.models import OutstandingToken
    from rest_framework_simplejwt.tokens import RefreshToken

    refresh = await adb(RefreshToken.for_user)(alice)
    token = access_for(alice)
    client = await connect(token)
    closed = await as_request(withdraw.revoke, alice.pk)
    assert closed == 1
    await assert_withdrawn(client, "token_revoked")
    assert await auth_error(connect, token) == "token_revoked"
    blacklisted = await adb(
        lambda: OutstandingToken.objects.filter(
            jti=refresh["jti"], blacklistedtoken__isnull=False
        ).exists()
    )()
    assert blacklisted


async def test_kick_closes_sockets_but_the_same_token_may_come_back(alice, connect):
    token = access_for(alice)
    client = await connect(token)
    assert await push.disconnect_user(alice.pk, push.Reason.KICKED) == 1
    await assert_withdrawn(client, "kicked")
    assert await auth_error(connect, token) is None


async def test_kicking_one_connection_leaves_the_others(alice, connect):
    token = access_for(alice)
    first = await connect(token)
    second = await connect(token)
    channels = await adb(
        lambda: list(
            Connection.objects.order_by("authenticated_at").values_list("channel_name", flat=True)
        )
    )()
    await push.disconnect_connection(channels[0], push.Reason.KICKED)
    await assert_withdrawn(first, "kicked")
    await second.assert_silent()
    assert (await second.request("whoami"))["payload"]["user"]["username"] == "alice"
    assert await adb(Connection.objects.count)() == 1


async def test_staff_api_revoke_and_disconnect(alice, staff, connect):
    client = await connect(access_for(alice))
    http = RequestClient()
    response = await http.post("/api/users/alice/disconnect/", headers=bearer(access_for(staff)))
    assert response.status_code == 200
    assert response.json() == {"username": "alice", "connections": 1}
    await assert_withdrawn(client, "kicked")
    client = await connect(access_for(alice))
    response = await http.post("/api/users/alice/revoke/", headers=bearer(access_for(staff)))
    assert response.json() == {"username": "alice", "connections": 1}
    await assert_withdrawn(client, "token_revoked")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/online/"),
        ("post", "/api/users/alice/disconnect/"),
        ("post", "/api/users/alice/revoke/"),
        ("post", "/api/users/nobody/revoke/"),
    ],
)
async def test_staff_endpoints_authz(alice, staff, connect, method, path):
    http = AsyncClient()
    call = getattr(http, method)
    anonymous = await call(path)
    assert anonymous.status_code == 401
    assert anonymous.json()["detail"]
    garbage = await call(path, headers=bearer("not-a-token"))
    assert garbage.status_code == 401
    refused = await call(path, headers=bearer(access_for(alice)))
    assert refused.status_code == 403  # whatever the username
    assert refused.json()["detail"]
    allowed = await call(path, headers=bearer(access_for(staff)))
    assert allowed.status_code == (404 if "nobody" in path else 200)
    assert isinstance(allowed.json(), dict)
    if "nobody" in path:
        assert allowed.json()["code"] == "not_found"


async def test_a_revoked_staff_token_no_longer_reaches_the_api(staff):
    token = access_for(staff)
    await adb(withdraw.revoke_tokens)(staff.pk)
    response = await AsyncClient().get("/api/online/", headers=bearer(token))
    assert response.status_code == 401
    assert response.json()["code"] == "token_revoked"


async def test_online_endpoint_lists_the_same_as_presence(alice, staff, connect):
    client = await connect(access_for(alice))
    await connect(access_for(alice))
    response = await AsyncClient().get("/api/online/", headers=bearer(access_for(staff)))
    presence = await client.request("presence")
    assert response.json() == presence["payload"]
    assert response.json() == {"users": [{"id": alice.pk, "username": "alice", "connections": 2}]}


async def test_a_withdrawn_user_on_many_sockets_leaves_others_alone(connect, transactional_db):
    users = [await adb(make_user)(f"u{n}") for n in range(3)]
    sockets = {u.username: await connect(access_for(u)) for u in users}
    await push.disconnect_user(users[0].pk, push.Reason.KICKED)
    await assert_withdrawn(sockets["u0"], "kicked")
    for name in ("u1", "u2"):
        await sockets[name].assert_silent()
