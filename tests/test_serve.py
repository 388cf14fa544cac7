"""`manage.py serve` (what `make serve` runs): uvicorn workers on Redis and PostgreSQL."""

from __future__ import annotations

import json
import secrets
import urllib.request

import pytest
import websockets

from tests.servers import Database, LiveServer, base_env
from tests.services import postgres_database, require_redis

pytestmark = [pytest.mark.server, pytest.mark.services]


@pytest.fixture(scope="module")
def production():
    redis_url = require_redis()
    with postgres_database() as database_url:
        env = base_env(
            DJANGO_DEBUG="0",
            DJANGO_HTTPS="0",  # plain http on loopback, as a local trial would
            DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
            DATABASE_URL=database_url,
            REDIS_URL=redis_url,
            IDENTITY_REDIS_PREFIX=f"serve{secrets.token_hex(4)}",
        )
        database = Database(env)
        from tests.servers import manage

        manage(env, "collectstatic", "--noinput", "-v0")
        server = LiveServer(env, ["manage.py", "serve", "--workers", "2"])
        server.start()
        try:
            yield database, server
        finally:
            server.stop()


def test_serve_refuses_debug_mode():
    from tests.servers import manage

    with pytest.raises(RuntimeError, match="DJANGO_DEBUG is on"):
        manage(base_env(DJANGO_DEBUG="1"), "serve")


def test_serve_refuses_several_workers_without_redis():
    from tests.servers import manage

    env = base_env(DJANGO_DEBUG="0", DJANGO_SECRET_KEY=secrets.token_urlsafe(50), REDIS_URL="")
    with pytest.raises(RuntimeError, match="set REDIS_URL"):
        manage(env, "serve", "--workers", "2")


def test_the_production_server_serves_page_static_files_and_health(production):
    _, server = production
    with urllib.request.urlopen(server.http + "/", timeout=5) as page:
        html = page.read().decode()
    assert "client.js" in html or "app.js" in html
    with urllib.request.urlopen(server.http + "/static/identity/client.js", timeout=5) as js:
        assert js.status == 200
    assert server.request("GET", "/healthz") == (
        200,
        {"status": "ok", "database": "ok", "channel_layer": "ok"},
    )


async def test_sockets_on_both_workers_reach_each_other(production):
    database, server = production
    tokens = {
        name: server.tokens(name, database.passwords[name])["access"] for name in ("alice", "bob")
    }
    sockets = []
    for name in ("alice", "bob", "bob", "bob", "bob"):
        ws = await websockets.connect(server.ws)
        await ws.send(json.dumps({"action": "auth", "payload": tokens[name]}))
        assert json.loads(await ws.recv())["payload"]["registered"] is True
        sockets.append(ws)
    alice, bobs = sockets[0], sockets[1:]
    await alice.send(json.dumps({"action": "send", "payload": {"to": "bob", "text": "hi"}}))
    assert json.loads(await alice.recv())["payload"] == {"to": "bob", "online": True}
    for ws in bobs:
        assert json.loads(await ws.recv())["payload"]["text"] == "hi"
    oversize = '{"action":"ping","payload":"' + "x" * 70000 + '"}'
    await alice.send(oversize)
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await alice.recv()
    assert closed.value.rcvd.code == 1009
    for ws in bobs:
        await ws.close()
