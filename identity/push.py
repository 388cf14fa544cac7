"""The server-side API: reach or disconnect a user's sockets from any Django code.

Views, signals, the admin, management commands and the shell call these; they
work across every server process that shares the channel layer. Each function
has an async form and a sync form (suffix `_sync`) for sync code.

    from identity import push
    push.send_to_user_sync(user.pk, "direct", {"from": ..., "text": "hi"})
    closed = push.disconnect_user_sync(user.pk, push.Reason.KICKED)
    for entry in push.online_users_sync(): print(entry.username, entry.connections)
    push.publish_sync("room.lobby", "notice", {"text": "back in 5"})
    push.recheck_user_sync(user.pk)   # after a change to rules of your own
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
from collections import Counter
from typing import Any

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.db import DatabaseError

from identity import conf, metrics, registry, relay
from identity.layers import LayerUnavailable, in_process, release
from identity.protocol import (
    Action,
    Reason,
    encode,
    event_push,
    frame,
    members_push,
    name_ok,
    user_payload,
)

__all__ = [
    "ACK_EVENT",
    "DISCONNECT_EVENT",
    "PRESENCE_EVENT",
    "PRESENCE_GROUP",
    "PUSH_EVENT",
    "RECHECK_EVENT",
    "TOPIC_EVENT",
    "EventTooLarge",
    "LayerUnreachable",
    "Reason",
    "disconnect_connection",
    "disconnect_user",
    "online_users",
    "publish",
    "push_members",
    "push_presence",
    "recheck_user",
    "send_to_user",
    "topic_group",
    "user_group",
]

logger = logging.getLogger(__name__)

# Channel-layer event types; the consumer's handlers are named after them
# (`identity.disconnect` -> `identity_disconnect`).
DISCONNECT_EVENT = "identity.disconnect"
PUSH_EVENT = "identity.push"
PRESENCE_EVENT = "identity.presence"
# The key of a push that states a user's state (presence, topic members): of
# several with one key, the latest says all a client needs.
MERGE = "merge"
# A socket's answer to a withdrawal that named a `reply_to` channel.
ACK_EVENT = "identity.withdrawn"
# A frame for a topic's subscribers (`event`, `members`); `topic` names it.
TOPIC_EVENT = "identity.topic"
# Check the user's subscriptions again: their rights changed.
RECHECK_EVENT = "identity.recheck"

ACK_TIMEOUT = 2.0  # seconds the sockets have to acknowledge a withdrawal
RELAY_TIMEOUT = 3.0  # seconds another process has to take up a request (identity.relay)
RELAY_POLL = 0.05  # seconds between the requester's looks at its requests

PRESENCE_GROUP = "identity.presence"


def user_group(user_id: int) -> str:
    """The channel-layer group holding every authenticated socket of a user."""
    return f"identity.user.{user_id}"


def topic_group(topic: str) -> str:
    """The channel-layer group of a topic's subscribers.

    A digest: group names allow neither `:` nor 100 characters, topic names do.
    """
    return "identity.topic." + hashlib.blake2b(topic.encode(), digest_size=16).hexdigest()


class EventTooLarge(ValueError):
    """An `event` push would be a frame over IDENTITY_MAX_FRAME_BYTES: refused, not sent.

    A socket never gets a frame larger than it may send, and daphne will not
    write one: it fails the send, and the socket stops hearing anything.
    """


class LayerUnreachable(LayerUnavailable):
    """Sockets live in a server process that did not take up the withdrawal in time.

    On the in-memory channel layer only the database reaches another process
    (identity.relay); this is raised when that process did not answer.
    `closed` is how many sockets were closed elsewhere (0: nothing was).
    """

    def __init__(self, closed: int, missed: str) -> None:
        head = "nothing closed" if closed == 0 else f"only {closed} socket(s) closed"
        super().__init__(f"{head}: {missed}")
        self.closed, self.missed = closed, missed


def _elsewhere(server_id: str) -> bool:
    """Whether a socket of that process is out of this process's channel layer's reach."""
    # The in-memory layer lives inside one process; Redis reaches them all.
    return server_id != registry.SERVER_ID and in_process(get_channel_layer())


def _split(connections: list[Any]) -> tuple[int, dict[str, int]]:
    """How many sockets this process's layer reaches; per other process, those it does not."""
    elsewhere = Counter(c.server_id for c in connections if _elsewhere(c.server_id))
    return len(connections) - sum(elsewhere.values()), dict(elsewhere)


async def send_to_user(user_id: int, action: str, payload: Any) -> None:
    """Push a frame to every open socket of a user, on every process."""
    await get_channel_layer().group_send(
        user_group(user_id), {"type": PUSH_EVENT, "frame": frame(action, payload)}
    )


async def disconnect_user(
    user_id: int,
    reason: Reason,
    connections: list[Any] | None = None,
    offline_username: str = "",
) -> int:
    """Close every socket of a user with `disconnect` REASON; the number of sockets closed.

    CONNECTIONS are the user's registry rows when the caller read them already
    (a deleted user's rows are gone by the time their sockets are told);
    OFFLINE_USERNAME asks processes reached through the database to push
    `offline` for that user afterwards. Raises LayerUnreachable when a process
    holding sockets did not answer (its `closed` says what did close).
    """
    if connections is None:
        connections = await database_sync_to_async(registry.user_connections)(user_id)
    here, elsewhere = _split(connections)
    closing_here = withdraw_here(user_group(user_id), reason, here, group=True)
    if not elsewhere:
        return await closing_here
    relayed = _relay(elsewhere, user_id, reason, offline_username=offline_username)
    closed_here, (closed_there, missed) = await asyncio.gather(closing_here, relayed)
    closed = closed_here + closed_there
    if missed:
        raise LayerUnreachable(closed, missed)
    return closed


async def disconnect_connection(channel_name: str, reason: Reason) -> int:
    """Close one socket, named by its channel, with `disconnect` REASON; 1 if it closed, else 0."""
    owner = await database_sync_to_async(registry.connection_owner)(channel_name)
    if owner is not None and _elsewhere(owner[1]):
        user_id, server_id = owner
        closed, missed = await _relay({server_id: 1}, user_id, reason, channel_name=channel_name)
        if missed:
            raise LayerUnreachable(closed, missed)
        return closed
    return await withdraw_here(channel_name, reason, expected=1, group=False)


async def withdraw_here(target: str, reason: Reason, expected: int, group: bool) -> int:
    """Withdraw a group's or one channel's sockets through this process's layer.

    Each socket acknowledges on a reply channel; the number that gave up an
    identity, counted until EXPECTED answered or ACK_TIMEOUT passed.
    """
    layer = get_channel_layer()
    reply_to = await layer.new_channel()
    event = {"type": DISCONNECT_EVENT, "reason": str(reason), "reply_to": reply_to}
    try:
        if group:
            await layer.group_send(target, event)
        else:
            await layer.send(target, event)
        return await _count_acks(layer, reply_to, expected)
    finally:
        await release(layer, reply_to)


async def _count_acks(layer: Any, reply_to: str, expected: int) -> int:
    answered: set[str] = set()
    closed: set[str] = set()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ACK_TIMEOUT
    while len(answered) < expected:
        try:
            ack = await asyncio.wait_for(layer.receive(reply_to), deadline - loop.time())
        except TimeoutError:
            break
        if ack.get("type") != ACK_EVENT:
            continue
        answered.add(ack["channel"])
        if ack.get("closed"):
            closed.add(ack["channel"])
    if len(answered) < expected:
        # Ghost rows (a process that died) or a socket too stalled to answer.
        logger.warning(
            "%d of %d registered socket(s) did not acknowledge within %ss",
            expected - len(answered),
            expected,
            ACK_TIMEOUT,
        )
    return len(closed)


async def _relay(
    sockets_by_server: dict[str, int],
    user_id: int,
    reason: Reason,
    channel_name: str = "",
    offline_username: str = "",
) -> tuple[int, str]:
    """Have other processes withdraw through the database; (closed, what was missed).

    The second item is empty when every process answered, else a sentence
    saying which sockets were not closed.
    """
    try:
        ids = await database_sync_to_async(relay.request)(
            sockets_by_server, user_id, str(reason), channel_name, offline_username
        )
    except DatabaseError as exc:
        count = sum(sockets_by_server.values())
        return 0, f"{count} socket(s) held by other server process(es): no request sent ({exc})"
    try:
        done = await _await_relayed(list(ids))
    finally:
        await database_sync_to_async(relay.forget)(list(ids))
    closed = sum(done.values())
    silent = [server for pk, server in ids.items() if pk not in done]
    if not silent:
        return closed, ""
    count = sum(sockets_by_server[server] for server in silent)
    return closed, (
        f"{count} socket(s) held by server process(es) {', '.join(silent)} were not closed: "
        f"no answer within {RELAY_TIMEOUT:g}s (on the in-memory channel layer only the "
        "database reaches another process; is it stalled or stopped?)"
    )


async def _await_relayed(ids: list[int]) -> dict[int, int]:
    """Wait for the requests to be done; request id -> sockets closed, for those done."""
    statuses = database_sync_to_async(relay.statuses)
    loop = asyncio.get_running_loop()
    deadline, cancelled = loop.time() + RELAY_TIMEOUT, False
    while True:
        current = await statuses(ids)
        done = {pk: s.closed for pk, s in current.items() if s.closed is not None}
        if len(done) == len(current):  # all done, or the rest cancelled
            return done
        if loop.time() < deadline:
            await asyncio.sleep(RELAY_POLL)
        elif cancelled:
            return done
        else:
            # Too late: unstarted requests must never run now; started ones
            # (a process mid-withdrawal) get the time their sockets have to answer.
            await database_sync_to_async(relay.cancel_unstarted)(ids)
            cancelled, deadline = True, loop.time() + ACK_TIMEOUT + RELAY_POLL


async def online_users() -> list[registry.OnlineUser]:
    """Who is online now, across every process."""
    return await database_sync_to_async(registry.online_users)()


async def push_presence(
    event: str, user_id: int, username: str, version: int | None = None
) -> None:
    """Tell the sockets that asked `presence` that a user came or went.

    VERSION orders one user's pushes as the registry decided them
    (identity.registry.Arrival); None for a push that needs no order.
    """
    payload = {"event": event, "user": user_payload(user_id, username)}
    await get_channel_layer().group_send(
        PRESENCE_GROUP,
        {
            "type": PRESENCE_EVENT,
            "frame": frame(Action.PRESENCE, payload),
            # A socket past its backlog keeps the latest push per MERGE key
            # (identity.consumers.IdentityConsumer.deliver).
            MERGE: f"presence.{user_id}",
            "user_id": user_id,
            "version": version,
        },
    )


# The latest presence version each user's pushes reached this process with,
# the most recent users last; a few seconds' worth is all an out-of-order push
# needs, so the oldest half goes past SEEN_USERS.
_seen_versions: dict[int, int] = {}
SEEN_USERS = 100_000


def is_stale(message: dict[str, Any]) -> bool:
    """Whether a presence push is older than one this process already delivered.

    Two processes publish one user's `online` and `offline` after their
    transactions commit, so Redis can carry them in the other order; every
    process reads the same order, and each drops the older here, once for all
    its sockets.
    """
    version = message.get("version")
    if version is None:
        return False
    if version < _seen_versions.get(message["user_id"], 0):
        return True
    _raise_floor(message["user_id"], version)
    return False


def listed(users: list[registry.OnlineUser]) -> None:
    """A `presence` list was read: a push older than a user's version in it is stale.

    Without this a process that had no presence subscriber when a user's
    newer push passed (a worker just started) would take an older one that
    arrives after the list for news.
    """
    for user in users:
        if user.version > _seen_versions.get(user.id, 0):
            _raise_floor(user.id, user.version)


def _raise_floor(user_id: int, version: int) -> None:
    """VERSION is the latest of USER_ID's pushes here; the user moves to the most recent end."""
    _seen_versions.pop(user_id, None)
    _seen_versions[user_id] = version
    if len(_seen_versions) > SEEN_USERS:
        for old in list(itertools.islice(_seen_versions, SEEN_USERS // 2)):
            del _seen_versions[old]


async def publish(topic: str, event: str, data: Any, sender: dict[str, Any] | None = None) -> None:
    """Push `event` EVENT with DATA to every socket subscribed to TOPIC, on every process.

    SENDER is the `from` of the push (a USER dict; None when the server
    publishes). DATA must be JSON, and the push at most IDENTITY_MAX_FRAME_BYTES
    (else EventTooLarge). Events published from one process arrive in the
    order they were published.
    """
    if not name_ok(topic, 100) or not name_ok(event, 100):
        raise ValueError(f"{topic!r} / {event!r}: names are 1-100 characters of A-Z a-z 0-9 _.:-")
    # Encoded once here, not once per subscriber; DATA that is not JSON
    # raises TypeError in the caller instead of being dropped at each socket.
    text, limit = encode(event_push(topic, event, data, sender)), conf.max_frame_bytes()
    if len(text) > limit // 4 and (size := len(text.encode())) > limit:
        raise EventTooLarge(f"The event would be a {size}-byte frame, over the {limit}-byte limit.")
    try:
        await _group_send(topic_group(topic), {"type": TOPIC_EVENT, "topic": topic, "text": text})
    except DatabaseError as exc:
        # Only the relay to other processes touches the database, after this
        # process's subscribers have the event: a caller told it failed would
        # publish again, and they would get it twice. Events are at most once.
        metrics.service_error(exc)
        logger.warning(
            "could not relay an event of %s to the other processes", topic, exc_info=True
        )


async def push_members(topic: str, event: str, user_id: int, username: str) -> None:
    """Tell a presence topic's subscribers that a user joined or left it."""
    payload = members_push(topic, event, user_payload(user_id, username))
    message = {
        "type": TOPIC_EVENT,
        "topic": topic,
        "text": encode(payload),
        "user_id": user_id,
        MERGE: f"members.{topic}.{user_id}",
    }
    await _group_send(topic_group(topic), message)


async def recheck_user(user_id: int) -> None:
    """Check every open subscription of a user again, on every process.

    Called for you when the user's groups, permissions or flags change through
    the ORM; call it after a change your own topic rules depend on.
    """
    await _group_send(user_group(user_id), {"type": RECHECK_EVENT})


async def _group_send(group: str, message: dict[str, Any]) -> None:
    """group_send here, and on the in-memory layer through the database to the other processes."""
    layer = get_channel_layer()
    await layer.group_send(group, message)
    if in_process(layer):
        # Usually one process and a fresh list: no hop to the database thread.
        servers = relay.known_servers(registry.SERVER_ID)
        if servers is None or servers:
            await database_sync_to_async(_relay_elsewhere)(group, message)


def _relay_elsewhere(group: str, message: dict[str, Any]) -> None:
    servers = relay.other_servers(registry.SERVER_ID, registry.live_cutoff())
    if servers:
        relay.broadcast(servers, group, message)


send_to_user_sync = async_to_sync(send_to_user)
publish_sync = async_to_sync(publish)
push_members_sync = async_to_sync(push_members)
recheck_user_sync = async_to_sync(recheck_user)
disconnect_user_sync = async_to_sync(disconnect_user)
disconnect_connection_sync = async_to_sync(disconnect_connection)


def online_users_sync() -> list[registry.OnlineUser]:
    """Who is online now, across every process (sync code: one database read)."""
    return registry.online_users()


push_presence_sync = async_to_sync(push_presence)
