"""The connection registry: who is connected, where and since when.

Shared by every server process through the database. Each process has an id
and a heartbeat; a socket counts as live only while its process's heartbeat is
fresher than IDENTITY_HEARTBEAT_EXPIRY, so a process killed with SIGKILL stops
counting after that bound even before anyone deletes its rows. The living
processes delete such ghosts on their next heartbeat.

A user's connects and disconnects are serialised by locking their
UserIdentity row, so "first socket" and "last socket" are decided exactly once
across processes (presence pushes, the per-user connection limit).

Everything here is synchronous ORM code; callers in async code wrap it with
database_sync_to_async (see identity.push and identity.consumers).
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from django.db import IntegrityError, transaction
from django.db.models import Count, F, Q, QuerySet
from django.utils import timezone

from identity import conf, sql
from identity.exceptions import ConnectionLimit, UserNotFound
from identity.models import Connection, ServerProcess, TopicMember, UserIdentity

SERVER_ID = f"{socket.gethostname()[:60]}:{os.getpid()}:{secrets.token_hex(4)}"


@dataclass(frozen=True, slots=True)
class OnlineUser:
    """A user with at least one live socket."""

    id: int
    username: str
    connections: int
    version: int = 0  # of the user's latest presence push (identity.push.is_stale)

    def as_dict(self) -> dict[str, object]:
        """The wire form: `{"id", "username", "connections"}`."""
        return {"id": self.id, "username": self.username, "connections": self.connections}


@dataclass(frozen=True, slots=True)
class SocketInfo:
    """Where a socket came from, recorded when it authenticates."""

    channel_name: str
    opened_at: datetime
    remote_addr: str = ""
    user_agent: str = ""


class Arrival(NamedTuple):
    """What `register` decided, under the user's lock."""

    first: bool  # the user's first live socket: `online`
    after_ghosts: bool  # it replaced a dead process's rows: `offline` before `online`
    version: int | None  # that `online`'s version, the `offline` one less (PostgreSQL)


class Departure(NamedTuple):
    """What `leave` decided, under the user's lock."""

    last: bool  # the user's last live socket: `offline`
    left: list[str]  # the presence topics the user left
    version: int | None  # that `offline`'s version (PostgreSQL)


def live_cutoff() -> datetime:
    """Heartbeats older than this mean a dead process."""
    return timezone.now() - timedelta(seconds=conf.heartbeat_expiry())


def live(via: str = "", cutoff: datetime | None = None) -> Q:
    """THE definition of a live socket: its server process beat within the expiry.

    VIA is the path to the Connection from the model queried (e.g.
    "identity_connections__" from a user). identity.sql renders the same
    rule in SQL for the statements of every `auth` and close.
    """
    return Q(**{f"{via}server__heartbeat_at__gte": cutoff or live_cutoff()})


def live_connections() -> QuerySet[Connection]:
    """Connections whose server process is alive."""
    return Connection.objects.filter(live())


def _lock_user(user_id: int, create: bool = True) -> None:
    # The row normally exists (identity.signals creates it with the user); it
    # is missing for a deleted user, whom `create=False` does not bring back.
    if not sql.lock_user(user_id) and create:
        UserIdentity.objects.get_or_create(user_id=user_id)
        sql.lock_user(user_id)


_server_row_exists = False


def _ensure_server() -> None:
    global _server_row_exists
    now = timezone.now()
    ServerProcess.objects.get_or_create(
        id=SERVER_ID, defaults={"started_at": now, "heartbeat_at": now}
    )
    _server_row_exists = True


def register(user_id: int, info: SocketInfo) -> Arrival:
    """Record an authenticated socket: is it the user's first live one, did it replace ghosts?

    Ghosts are the user's rows on a dead process that no heartbeat purged yet.
    A socket that listed presence before that process died saw the user
    online and never saw them go; one that listed it after did not see them
    at all. So a first socket that replaces ghosts is pushed as `offline` and
    then `online` (identity.sessions), and both kinds of subscriber end right.
    """
    global _server_row_exists
    if not _server_row_exists:
        _ensure_server()
    try:
        return _register(user_id, info)
    except IntegrityError:
        # Our process row vanished (purged as dead after a stall, or a test
        # flushed the database): put it back and try once more.
        _server_row_exists = False
        _ensure_server()
        return _register(user_id, info)


def _register(user_id: int, info: SocketInfo) -> Arrival:
    values = {
        "channel_name": info.channel_name,
        "user": user_id,
        "server": SERVER_ID,
        "opened_at": info.opened_at,
        "authenticated_at": timezone.now(),
        "remote_addr": info.remote_addr[:64],
        "user_agent": info.user_agent[:300],
    }
    cutoff, limit = live_cutoff(), conf.max_connections_per_user()
    if sql.in_one_call():
        done = sql.register_call(values, cutoff, limit)
        if done is None:  # no UserIdentity row to lock (identity.signals makes one)
            UserIdentity.objects.get_or_create(user_id=user_id)
            done = sql.register_call(values, cutoff, limit)
    else:
        done = _register_steps(user_id, values, cutoff, limit)
    if done is None:  # deleted meanwhile
        raise UserNotFound("The token's user no longer exists.")
    if not done.inserted:
        raise ConnectionLimit(
            f"This user already has {done.alive} open connection(s), the limit; close one first."
        )
    return Arrival(done.alive == 0, done.alive == 0 and done.ghosts > 0, done.version)


def _register_steps(
    user_id: int, values: dict[str, object], cutoff: datetime, limit: int
) -> sql.Registered:
    """What identity_register does (migration 0005), a statement at a time."""
    with transaction.atomic():
        _lock_user(user_id)
        total, alive = sql.count_connections(user_id, cutoff)
        ghosts = total - alive
        if ghosts:
            Connection.objects.filter(user_id=user_id).exclude(live(cutoff=cutoff)).delete()
        if limit and alive >= limit:
            return sql.Registered(alive, ghosts, inserted=False)
        sql.insert_connection(values)
        return sql.Registered(alive, ghosts, inserted=True)


def unregister(channel_name: str, user_id: int) -> bool:
    """Forget a user's socket; True if it was their last live one.

    False too when the socket was not registered (never was, or its user was
    deleted and the row went with them).
    """
    return leave(channel_name, user_id, presence=False).last


def leave(channel_name: str, user_id: int, presence: bool) -> Departure:
    """Forget a socket: is it its user's last, which presence topics did the user leave?

    With PRESENCE (the socket ever joined a presence topic) its topic rows go
    too, whichever topics the socket still counts as its own: a row whose
    unsubscribe or subscribe failed halfway is not left behind. A topic is
    left when this was the user's last live socket in it.
    """
    if sql.in_one_call():
        return Departure(*sql.leave_call(channel_name, user_id, presence, live_cutoff()))
    with transaction.atomic():
        _lock_user(user_id, create=False)
        left = _leave_topics(channel_name, user_id) if presence else []
        deleted = sql.delete_connection(channel_name)
        last = deleted and not sql.has_live_connection(user_id, live_cutoff())
        return Departure(last, left, None)


def join_topic(
    user_id: int, channel_name: str, topic: str
) -> tuple[bool, bool, list[tuple[int, str]]]:
    """Record a socket in a presence topic: (the user's first live socket there?,
    did it replace ghosts?, members), ghosts as for `register`: `leave` then `join`.

    Members are the (id, username) of users with a live socket in the topic,
    this one included, by username.
    """
    global _server_row_exists
    if not _server_row_exists:
        _ensure_server()
    with transaction.atomic():
        _lock_user(user_id)
        cutoff = live_cutoff()
        mine = TopicMember.objects.filter(topic=topic, user_id=user_id)
        alive = mine.filter(live(cutoff=cutoff)).count()
        ghosts = mine.exclude(live(cutoff=cutoff)).delete()[0]  # a dead process's rows
        TopicMember.objects.get_or_create(
            topic=topic,
            channel_name=channel_name,
            defaults={"user_id": user_id, "server_id": SERVER_ID},
        )
        return alive == 0, alive == 0 and ghosts > 0, topic_members(topic, cutoff)


def leave_topic(user_id: int, channel_name: str, topic: str) -> bool:
    """Forget a socket in a presence topic; True if it was the user's last live one there."""
    with transaction.atomic():
        _lock_user(user_id, create=False)
        return bool(_leave_topics(channel_name, user_id, topic))


def _leave_topics(channel_name: str, user_id: int, topic: str | None = None) -> list[str]:
    """Under the user's lock: delete the socket's rows (in TOPIC, or all); topics the user left."""
    rows = TopicMember.objects.filter(channel_name=channel_name)
    if topic is not None:
        rows = rows.filter(topic=topic)
    held = set(rows.values_list("topic", flat=True))
    if not held:
        return []
    rows.delete()
    still = set(
        TopicMember.objects.filter(user_id=user_id, topic__in=held)
        .filter(live())
        .values_list("topic", flat=True)
    )
    return sorted(held - still)


def topic_members(topic: str, cutoff: datetime | None = None) -> list[tuple[int, str]]:
    """The (id, username) of users with a live socket in a presence topic, by username.

    This process's own sockets count even while its heartbeat is late (a
    database outage longer than the expiry): they are open, whatever others
    conclude, and a subscriber is always among the members it is told of.
    """
    rows = (
        TopicMember.objects.filter(live(cutoff=cutoff) | Q(server_id=SERVER_ID), topic=topic)
        .values_list("user_id", "user__username")
        .distinct()
        .order_by("user__username")
    )
    return list(rows)


def user_topics(user_id: int) -> list[str]:
    """The presence topics a user has a live socket in."""
    rows = TopicMember.objects.filter(live(), user_id=user_id).values_list("topic", flat=True)
    return sorted(set(rows))


def purge_dead_members() -> list[tuple[int, str, str]]:
    """Delete the topic rows of dead processes; (user id, username, topic) of leaves.

    Runs before purge_dead_servers (whose delete would take these rows
    silently): a topic is left when the user has no live socket left in it.
    """
    dead = TopicMember.objects.exclude(live()).values_list("user_id", "user__username", "topic")
    left = []
    for user_id, username, topic in set(dead):
        with transaction.atomic():
            _lock_user(user_id, create=False)
            mine = TopicMember.objects.filter(user_id=user_id, topic=topic)
            deleted = mine.exclude(live()).delete()[0]
            if deleted and not mine.filter(live()).exists():
                left.append((user_id, username, topic))
    return sorted(left)


def online_users() -> list[OnlineUser]:
    """Every user with a live socket, with their socket count, by username."""
    rows = (
        live_connections()
        .values("user_id", "user__username", "user__identity__presence_version")
        .annotate(connections=Count("channel_name"))
        .order_by("user__username")
    )
    return [
        OnlineUser(
            r["user_id"],
            r["user__username"],
            r["connections"],
            r["user__identity__presence_version"] or 0,
        )
        for r in rows
    ]


def user_connections(user_id: int) -> list[Connection]:
    """The live sockets of one user."""
    return list(live_connections().filter(user_id=user_id).select_related("server"))


def connection_owner(channel_name: str) -> tuple[int, str] | None:
    """The (user id, server process id) of a live socket; None if not registered."""
    return (
        live_connections()
        .filter(channel_name=channel_name)
        .values_list("user_id", "server_id")
        .first()
    )


def is_online(user_id: int) -> bool:
    """Whether the user has a live socket on any process."""
    return sql.has_live_connection(user_id, live_cutoff())


def heartbeat() -> list[tuple[int, str, int]]:
    """Vouch for this process's sockets, purge dead processes.

    Returns the (id, username, version) of users whose last socket went with
    a dead process, so the caller can push `offline` for them.
    """
    now = timezone.now()
    ServerProcess.objects.update_or_create(
        id=SERVER_ID,
        defaults={"heartbeat_at": now},
        create_defaults={"started_at": now, "heartbeat_at": now},
    )
    return purge_dead_servers()


# A heartbeat that old marks a process that said goodbye.
RETIRED = datetime(2000, 1, 1, tzinfo=UTC)


def retire() -> None:
    """This process is exiting: its sockets stop counting now, not at the heartbeat expiry.

    Its rows stay for a living process's next heartbeat to purge, which also
    pushes `offline` for the users who went with it.
    """
    ServerProcess.objects.filter(id=SERVER_ID).update(heartbeat_at=RETIRED)


def purge_dead_servers() -> list[tuple[int, str, int]]:
    """Delete the rows of processes whose heartbeat expired; users who went offline,
    as (id, username, version of their `offline`).

    One transaction whatever the number of rows: a killed worker leaves
    thousands, and a purge a user at a time kept this process's single
    database thread (its `auth`s and its own heartbeat) busy for tens of
    seconds, long enough for its own heartbeat to expire in turn (the soak,
    docs/deploy.md). The affected users' rows are locked together, so a
    user's `offline` is still decided once against any `auth` of theirs.
    """
    cutoff = live_cutoff()
    with transaction.atomic():
        # A process whose topic rows are still there waits for purge_dead_members
        # (run first on every beat) to push their `leave`: it may have expired
        # between that call and this one, and its delete would take them silently.
        # Another living process purging the same dead one skips it.
        dead = list(
            ServerProcess.objects.filter(heartbeat_at__lt=cutoff)
            .exclude(id__in=TopicMember.objects.values("server_id"))
            # NO KEY: an `auth` inserting a row that points at it is not blocked.
            .select_for_update(skip_locked=True, no_key=True)
            .values_list("id", flat=True)
        )
        if not dead:
            return []
        affected = Connection.objects.filter(server_id__in=dead).values("user_id")
        users = dict(
            UserIdentity.objects.filter(user_id__in=affected)
            .order_by("user_id")
            .select_for_update(of=("self",))
            .values_list("user_id", "user__username")
        )
        # Only the processes locked above are this purge's: a late one it
        # skipped (another purger's, or one writing its heartbeat right now)
        # keeps its rows, and its users stay online.
        still = set(
            Connection.objects.filter(user_id__in=affected)
            .exclude(server_id__in=dead)
            .values_list("user_id", flat=True)
        )
        Connection.objects.filter(server_id__in=dead).delete()
        ServerProcess.objects.filter(id__in=dead).delete()
        gone = [uid for uid in users if uid not in still]
        bumped = UserIdentity.objects.filter(user_id__in=gone)
        bumped.update(presence_version=F("presence_version") + 1)
        versions = dict(bumped.values_list("user_id", "presence_version"))
    return sorted((uid, users[uid], versions[uid]) for uid in gone)


def online_count() -> int:
    """How many users have a live socket, on every process (the metrics' users online)."""
    return live_connections().values("user_id").distinct().count()
