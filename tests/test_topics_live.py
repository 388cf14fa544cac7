"""Topics through one real server on the embedded default: SQLite and the in-memory layer.

A management shell is another process: its publishes, re-checks and leaves
reach the server's sockets only through the database (identity.relay), which
the server polls every IDENTITY_WITHDRAWAL_POLL seconds.
"""

from __future__ import annotations

import pytest

from tests.live_sockets import LiveSocket, ended, is_event, is_members, prepare, shell, stamp_of
from tests.servers import Database, LiveServer

pytestmark = [pytest.mark.server, pytest.mark.usefixtures("closes_live_sockets")]

BOUND = 1.0  # seconds: PROTOCOL.md v2 rule 2, and what the relay promises a publish
# Arrival times are taken by this test's own event loop on two cores shared
# with the server and the shell: the bound under test is the server's.
READ_MARGIN = 0.25

SETUP = """
from django.contrib.auth.models import User
User.objects.create_user('carol', is_staff=True)
User.objects.create_user('dora')
"""


@pytest.fixture(scope="module")
def live():
    # The embedded default on purpose (REDIS_URL empty even when the suite runs
    # on Redis), with the default withdrawal poll.
    database = Database.sqlite(
        DJANGO_SETTINGS_MODULE="tests.settings_with_test_topics",
        REDIS_URL="",
        JWT_ACCESS_TOKEN_LIFETIME="3600",
    )
    tokens = prepare(database.env, SETUP)
    server = LiveServer(database.env).start()
    server.tokens_by_user = tokens
    yield server
    server.stop()


async def socket(server: LiveServer, username: str, *topics: str) -> LiveSocket:
    sock = await LiveSocket.open(server, server.tokens_by_user[username])
    for topic in topics:
        await sock.subscribe(topic)
    return sock


async def test_a_publish_from_a_management_shell_arrives_within_a_second(live):
    sock = await socket(live, "alice", "chat.relay")
    out = await shell(
        live.env,
        "import time\nfrom identity import push\n"
        "print('AT', time.monotonic())\n"
        "push.publish_sync('chat.relay', 'notice', [1, 'two'])",
    )
    arrived, event = await sock.next_timed()
    assert event == {
        "action": "event",
        "payload": {"topic": "chat.relay", "event": "notice", "data": [1, "two"], "from": None},
    }
    assert arrived - stamp_of(out) < BOUND + READ_MARGIN, arrived - stamp_of(out)
    assert await sock.drain() == []  # once


async def test_staff_taken_away_in_a_shell_ends_the_staff_room_within_a_second(live):
    sock = await socket(live, "carol", "room.staff", "chat.carol")
    out = await shell(
        live.env,
        "import time\nfrom django.contrib.auth.models import User\n"
        "from identity import push\n"
        "user = User.objects.get(username='carol'); user.is_staff = False\n"
        "print('AT', time.monotonic())\n"
        "user.save()\n"
        "push.publish_sync('room.staff', 'secret', None)\n"
        "push.publish_sync('chat.carol', 'after', None)",
    )
    arrived, push = await sock.next_timed()
    assert push == ended("room.staff")
    assert arrived - stamp_of(out) < BOUND + READ_MARGIN, arrived - stamp_of(out)
    # The staff room's event was relayed before this one: it never reached her.
    before, _, _ = await sock.until(is_event("chat.carol", "after"))
    assert before == []


async def test_a_user_deleted_in_a_shell_leaves_the_lobby_once(live):
    watcher = await socket(live, "bob", "room.lobby")
    dora = await socket(live, "dora", "room.lobby")
    await watcher.until(is_members("room.lobby", "join", "dora"))
    await shell(
        live.env,
        "from django.contrib.auth.models import User\nfrom identity import push\n"
        "User.objects.get(username='dora').delete()\n"
        "push.publish_sync('room.lobby', 'after', None)",
    )
    before, _, _ = await watcher.until(is_event("room.lobby", "after"))
    assert before == [
        {
            "action": "members",
            "payload": {
                "topic": "room.lobby",
                "event": "leave",
                "user": before[0]["payload"]["user"],
            },
        }
    ]
    assert before[0]["payload"]["user"]["username"] == "dora"
    assert (await dora.next())["payload"]["reason"] == "user_deleted"
    rejoined = await socket(live, "alice")
    assert [m["username"] for m in (await rejoined.subscribe("room.lobby"))["members"]] == [
        "alice",
        "bob",
    ]
