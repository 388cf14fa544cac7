"""The staff API asks for the permissions the admin asks for (view users, change users)."""

from __future__ import annotations

import pytest
from django.test import AsyncClient

from tests.conftest import access_for, adb, grant, make_user
from tests.servers import Database, LiveServer, manage

pytestmark = pytest.mark.django_db(transaction=True)

ONLINE = ("get", "/api/online/")
DISCONNECT = ("post", "/api/users/alice/disconnect/")
REVOKE = ("post", "/api/users/alice/revoke/")
REVOKE_NOBODY = ("post", "/api/users/nobody/revoke/")


async def call(endpoint: tuple[str, str], user) -> tuple[int, dict]:
    method, path = endpoint
    headers = {"Authorization": f"Bearer {access_for(user)}"}
    response = await getattr(AsyncClient(), method)(path, headers=headers)
    return response.status_code, response.json()


@pytest.fixture
def bare_staff(transactional_db):
    return make_user("helper", is_staff=True)


@pytest.mark.parametrize("endpoint", [ONLINE, DISCONNECT, REVOKE, REVOKE_NOBODY])
async def test_staff_without_model_permissions_get_403_whatever_the_username(
    alice, bare_staff, endpoint
):
    status, body = await call(endpoint, bare_staff)
    assert (status, body["code"]) == (403, "permission_denied"), body


async def test_staff_who_may_view_users_see_who_is_online_but_cannot_withdraw(alice, bare_staff):
    await adb(grant)(bare_staff, "view")
    assert (await call(ONLINE, bare_staff))[0] == 200
    for endpoint in (DISCONNECT, REVOKE):
        assert (await call(endpoint, bare_staff))[0] == 403


async def test_staff_who_may_change_users_may_do_everything(alice, bare_staff):
    await adb(grant)(bare_staff, "change")
    for endpoint in (ONLINE, DISCONNECT, REVOKE):
        assert (await call(endpoint, bare_staff))[0] == 200
    assert (await call(REVOKE_NOBODY, bare_staff))[0] == 404


async def test_a_non_staff_user_with_the_permissions_is_still_refused(alice):
    await adb(grant)(alice, "view", "change")
    for endpoint in (ONLINE, DISCONNECT, REVOKE):
        assert (await call(endpoint, alice))[0] == 403


async def test_the_admin_offers_no_withdrawal_to_staff_who_may_only_view_users(
    alice, bare_staff, connect
):
    await adb(grant)(bare_staff, "view")
    client = await connect(access_for(alice))
    admin = AsyncClient()
    await admin.aforce_login(bare_staff)
    page = (await admin.get("/admin/auth/user/")).content.decode()
    assert "disconnect_users" not in page and "revoke_users" not in page
    for action in ("disconnect_users", "revoke_users"):
        await admin.post("/admin/auth/user/", {"action": action, "_selected_action": [alice.pk]})
    await client.assert_silent()


@pytest.mark.server
def test_a_staff_user_without_permissions_cannot_withdraw_a_superuser_on_a_real_server():
    database = Database.sqlite(REDIS_URL="")
    create = "from django.contrib.auth.models import User; "
    create += "User.objects.create_user('helper', password='helper-pw-0123', is_staff=True)"
    manage(database.env, "shell", "-c", create)
    server = LiveServer(database.env).start()
    try:
        token = server.tokens("helper", "helper-pw-0123")["access"]
        for action in ("disconnect", "revoke"):
            status, body = server.post(f"/api/users/operator/{action}/", None, token)
            assert (status, body.get("code")) == (403, "permission_denied"), body
        operator = server.tokens("operator", database.passwords["operator"])["access"]
        assert server.request("GET", "/api/online/", token=operator)[0] == 200
    finally:
        server.stop()
