"""The statements every session runs, in SQL built once from the models.

Each `auth` looks up its user and records its socket; each close removes the
socket. Through the ORM most of that time goes to compiling the queries, not
running them (docs/performance.md). Here the same statements
are rendered once per database vendor from the models' metadata, so they
follow a custom user model and quote names the backend's way, and each call is
one `cursor.execute`. Values go through the fields' own preparation and
converters, as the ORM would apply them.

Everything here is synchronous and runs on the database thread, like the ORM
code in identity.registry that calls it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any, cast

from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import Field
from rest_framework_simplejwt.settings import api_settings

from identity.models import Connection, ServerProcess, UserIdentity

Converter = Callable[[Any, Any, Any], Any]
ColumnConverters = tuple[Any, tuple[Converter, ...]]  # a column, and its converters in order


class OutOfRange(ValueError):
    """A lookup value no row can have (the ORM finds nothing for it either)."""


@dataclass(frozen=True, slots=True)
class UserQuery:
    """SELECT of a user's identity fields and revocation time, by token claim."""

    sql: str
    lookup_field: Field
    attnames: tuple[str, ...]
    converters: tuple[ColumnConverters, ...]


@dataclass(frozen=True, slots=True)
class RegistryStatements:
    """The registry's per-socket statements."""

    count: str
    insert: str
    delete: str
    any_live: str
    lock: str | None  # None where the backend has no row locks (SQLite)


def _q(name: str) -> str:
    return connection.ops.quote_name(name)


def _converters(field: Field, table: str) -> ColumnConverters:
    """The column and what turns its raw value into the field's (as the ORM's compiler)."""
    column = field.get_col(table)
    found = connection.ops.get_db_converters(column) + column.get_db_converters(connection)
    return column, tuple(found)


@cache
def _user_query(vendor: str, user_model: Any, id_field: str) -> UserQuery:
    meta = user_model._meta
    # Every column: the user is the socket's for its life, read in async code
    # (application actions, topic rules), where a deferred field cannot load.
    fields = list(meta.concrete_fields)
    user, ident = meta.db_table, UserIdentity._meta.db_table
    revoked = UserIdentity._meta.get_field("tokens_revoked_at")
    lookup = meta.get_field(id_field)
    columns = ", ".join(f"u.{_q(f.column)}" for f in fields)
    sql = (
        f"SELECT {columns}, i.{_q(revoked.column)} FROM {_q(user)} u"
        f" LEFT JOIN {_q(ident)} i ON i.{_q(UserIdentity._meta.pk.column)} = u.{_q(meta.pk.column)}"
        f" WHERE u.{_q(lookup.column)} = %s"
    )
    converters = tuple(_converters(f, user) for f in [*fields, revoked])
    return UserQuery(sql, lookup, tuple(f.attname for f in fields), converters)


def _convert(values: Sequence[Any], converters: Sequence[ColumnConverters]) -> list[Any]:
    out = []
    for value, (column, chain) in zip(values, converters, strict=True):
        for convert in chain:
            value = convert(value, column, connection)
        out.append(value)
    return out


def _lookup_value(field: Field, value: Any) -> Any:
    """The claim as the field's database value; OutOfRange where no row could match."""
    prepared = field.get_db_prep_value(field.get_prep_value(value), connection)
    if isinstance(prepared, int):
        low, high = connection.ops.integer_field_range(field.get_internal_type())
        if (low is not None and prepared < low) or (high is not None and prepared > high):
            raise OutOfRange(value)
    return prepared


def fetch_user(user_id: Any) -> Any | None:
    """The user whose token claim is `user_id`, with `tokens_revoked_at`; None if none.

    Every concrete field is loaded. Raises ValueError or TypeError for a
    claim the lookup field cannot hold.
    """
    user_model = get_user_model()
    query = _user_query(connection.vendor, user_model, api_settings.USER_ID_FIELD)
    with connection.cursor() as cursor:
        cursor.execute(query.sql, [_lookup_value(query.lookup_field, user_id)])
        row = cursor.fetchone()
    if row is None:
        return None
    *values, revoked_at = _convert(row, query.converters)
    user = user_model.from_db(connection.alias, query.attnames, values)
    user.tokens_revoked_at = revoked_at  # type: ignore[attr-defined]  # read by identity.tokens
    return user


INSERT_FIELDS = (
    "channel_name",
    "user",
    "server",
    "opened_at",
    "authenticated_at",
    "remote_addr",
    "user_agent",
)


@cache
def _registry(vendor: str) -> RegistryStatements:
    conn, server = Connection._meta, ServerProcess._meta
    cf = {f.name: _q(f.column) for f in conn.concrete_fields}
    heartbeat = _q(server.get_field("heartbeat_at").column)
    joined = (
        f"FROM {_q(conn.db_table)} c INNER JOIN {_q(server.db_table)} s"
        f" ON s.{_q(server.pk.column)} = c.{cf['server']} WHERE c.{cf['user']} = %s"
    )
    insert_columns = ", ".join(cf[name] for name in INSERT_FIELDS)
    ident = UserIdentity._meta
    lock = None
    if connection.features.has_select_for_update:
        lock = f"SELECT 1 FROM {_q(ident.db_table)} WHERE {_q(ident.pk.column)} = %s FOR UPDATE"
    return RegistryStatements(
        count=f"SELECT COUNT(*), COUNT(CASE WHEN s.{heartbeat} >= %s THEN 1 END) {joined}",
        insert=(
            f"INSERT INTO {_q(conn.db_table)} ({insert_columns})"
            f" VALUES ({', '.join(['%s'] * len(INSERT_FIELDS))})"
        ),
        delete=f"DELETE FROM {_q(conn.db_table)} WHERE {cf['channel_name']} = %s",
        # "Live" as identity.registry.live() defines it: a heartbeat since the cutoff.
        any_live=f"SELECT 1 {joined} AND s.{heartbeat} >= %s LIMIT 1",
        lock=lock,
    )


def _statements() -> RegistryStatements:
    return _registry(connection.vendor)


def _when(value: datetime) -> Any:
    return connection.ops.adapt_datetimefield_value(value)


def lock_user(user_id: int) -> bool:
    """Lock the user's UserIdentity row until the transaction ends; False if it is missing.

    True without locking where the backend has no row locks (SQLite, whose
    `BEGIN IMMEDIATE` already serialises every writer).
    """
    statement = _statements().lock
    if statement is None:
        return True
    with connection.cursor() as cursor:
        cursor.execute(statement, [user_id])
        return cursor.fetchone() is not None


def count_connections(user_id: int, live_since: datetime) -> tuple[int, int]:
    """(all, live) registry rows of a user; live ones have a heartbeat since `live_since`."""
    with connection.cursor() as cursor:
        cursor.execute(_statements().count, [_when(live_since), user_id])
        total, live = cursor.fetchone()
    return total, live


def insert_connection(values: dict[str, Any]) -> None:
    """One registry row; `values` has a value for each of INSERT_FIELDS."""
    with connection.cursor() as cursor:
        cursor.execute(_statements().insert, _insert_params(values))


def _insert_params(values: dict[str, Any]) -> list[Any]:
    meta = Connection._meta
    fields = [cast(Field, meta.get_field(name)) for name in INSERT_FIELDS]  # concrete columns
    return [field.get_db_prep_save(values[field.name], connection) for field in fields]


def delete_connection(channel_name: str) -> bool:
    """Remove a socket's registry row; True if there was one."""
    with connection.cursor() as cursor:
        cursor.execute(_statements().delete, [channel_name])
        return cursor.rowcount > 0


def in_one_call() -> bool:
    """Whether `register_call` and `leave_call` exist here (PostgreSQL: migration 0005).

    Elsewhere identity.registry runs the same steps one statement at a time.
    """
    return connection.vendor == "postgresql"


@dataclass(frozen=True, slots=True)
class Registered:
    """What `register_call` found and did, under the user's lock."""

    alive: int  # the user's live sockets before this one
    ghosts: int  # their rows of dead processes, now deleted
    inserted: bool  # False when IDENTITY_MAX_CONNECTIONS_PER_USER refused it
    version: int | None = None  # of the `online` it causes (PostgreSQL only)


def register_call(values: dict[str, Any], live_since: datetime, limit: int) -> Registered | None:
    """Record a socket in one round trip (identity_register); None if the user has no
    UserIdentity row to lock (the caller creates it and calls again).

    `values` as for `insert_connection`; `limit` 0 means no per-user limit.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT o_alive, o_ghosts, o_inserted, o_version"
            " FROM identity_register(%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [*_insert_params(values), _when(live_since), limit],
        )
        alive, ghosts, inserted, version = cursor.fetchone()
    return None if alive is None else Registered(alive, ghosts, inserted, version)


def leave_call(
    channel_name: str, user_id: int, presence: bool, live_since: datetime
) -> tuple[bool, list[str], int | None]:
    """Forget a socket, and with PRESENCE its topic rows, in one round trip (identity_leave).

    (Was it the user's last live socket?, the topics it was their last live
    socket in, the version of the `offline` it causes.)
    """
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT o_last, o_left, o_version FROM identity_leave(%s, %s, %s, %s)",
            [channel_name, user_id, presence, _when(live_since)],
        )
        last, left, version = cursor.fetchone()
    return bool(last), sorted(left), version


def has_live_connection(user_id: int, live_since: datetime) -> bool:
    """Whether the user has a registry row on a process alive since `live_since`."""
    with connection.cursor() as cursor:
        cursor.execute(_statements().any_live, [user_id, _when(live_since)])
        return cursor.fetchone() is not None
