"""Withdrawing identities: revoke tokens, kick, and react to user changes.

Sync functions for views, signals, the admin and commands. Sockets are told
only after the database change commits, so a socket's own cleanup never races
the change that closed it (and presence is pushed exactly once).

Every withdrawal is logged once at INFO on the `identity` loggers: what, whom,
who did it (`acting_as`), the reason and how many sockets closed; and recorded
as a Withdrawal row, which the admin's dashboard lists.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

from django.contrib.auth import get_user_model
from django.db import OperationalError, transaction
from django.utils import timezone
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken

from identity import push
from identity.layers import LayerUnavailable
from identity.models import UserIdentity, Withdrawal
from identity.protocol import Reason

logger = logging.getLogger(__name__)

# Takes (succeeded, sentence): how a withdrawal that the caller cannot await
# (a signal's, after commit) reaches the operator, e.g. as an admin message.
Report = Callable[[bool, str], None]

_actor: ContextVar[tuple[str, Report | None] | None] = ContextVar("identity_actor", default=None)

# The verb of each reason, for the log.
WHAT = {
    Reason.KICKED: "kick",
    Reason.TOKEN_REVOKED: "revoke",
    Reason.USER_INACTIVE: "deactivation",
    Reason.USER_DELETED: "delete",
}

# Seconds between attempts to record a withdrawal the database was too busy to take.
RECORD_RETRIES = (0.05, 0.1, 0.2, 0.4)


@contextlib.contextmanager
def acting_as(actor: str, report: Report | None = None) -> Iterator[None]:
    """Name who withdraws in this block (the log says so); REPORT hears signal-driven ones."""
    token = _actor.set((actor, report))
    try:
        yield
    finally:
        _actor.reset(token)


def current_actor() -> tuple[str, Report | None]:
    """Who withdraws now: named by `acting_as`, else "shell" in `manage.py shell`, else "code"."""
    named = _actor.get()
    if named is not None:
        return named
    return ("shell" if sys.argv[1:2] == ["shell"] else "code"), None


def outcome(username: str, closed: int) -> str:
    """What a withdrawal did, in words: "2 sockets closed for alice"."""
    if closed == 0:
        return f"{username} had no open socket"
    return f"{closed} socket{'s' if closed != 1 else ''} closed for {username}"


def revoked(username: str, closed: int) -> str:
    """What a revoke did: "Tokens of alice revoked; 2 sockets closed for alice"."""
    return f"Tokens of {username} revoked; {outcome(username, closed)}"


def deactivated(username: str, closed: int) -> str:
    """What a deactivation did: "alice was deactivated; 2 sockets closed"."""
    if closed == 0:
        return f"{username} was deactivated; they had no open socket"
    return f"{username} was deactivated; {closed} socket{'s' if closed != 1 else ''} closed"


def failure(username: str, exc: Exception) -> str:
    """What a failed withdrawal did: "nothing closed for alice: WHY"."""
    if isinstance(exc, push.LayerUnreachable) and exc.closed:
        return f"only {outcome(username, exc.closed)}: {exc.missed}"
    if isinstance(exc, push.LayerUnreachable):
        return f"nothing closed for {username}: {exc.missed}"
    return f"nothing closed for {username}: {exc}"  # the channel layer (Redis) is down


def revoke_tokens(user_id: int) -> None:
    """Refuse every token issued to the user so far; blacklist their refresh tokens."""
    with transaction.atomic():
        UserIdentity.objects.update_or_create(
            user_id=user_id, defaults={"tokens_revoked_at": int(time.time())}
        )
        outstanding = OutstandingToken.objects.filter(user_id=user_id).exclude(
            blacklistedtoken__isnull=False
        )
        BlacklistedToken.objects.bulk_create(
            [BlacklistedToken(token=token) for token in outstanding], ignore_conflicts=True
        )


def disconnect(user_id: int, reason: Reason, username: str | None = None) -> int:
    """Close the user's sockets with REASON; the number of sockets closed.

    Raises LayerUnreachable when a process holding some did not answer, and
    LayerUnavailable when the channel layer (Redis) is down.
    """
    return _withdraw(user_id, username, reason, WHAT.get(reason, str(reason)))


def revoke(user_id: int, username: str | None = None) -> int:
    """Revoke the user's tokens and close their sockets; the number of sockets closed."""
    revoke_tokens(user_id)
    return _withdraw(user_id, username, Reason.TOKEN_REVOKED, "revoke (tokens revoked)")


def kick_connection(channel_name: str, user_id: int, username: str) -> int:
    """Close one socket of a user with `kicked`; 1 if it closed, 0 if it had gone."""
    actor, _ = current_actor()
    what = f"kick of one socket of {username} (user {user_id}) by {actor}, reason kicked"
    try:
        closed = push.disconnect_connection_sync(channel_name, Reason.KICKED)
    except LayerUnavailable as exc:
        logger.warning("%s: %s", what, failure(username, exc))
        record(user_id, username, "kick of one socket", Reason.KICKED, actor, exc)
        raise
    logger.info("%s: %s", what, outcome(username, closed))
    record(user_id, username, "kick of one socket", Reason.KICKED, actor, closed)
    return closed


def _withdraw(
    user_id: int,
    username: str | None,
    reason: Reason,
    verb: str,
    connections: list[Any] | None = None,
    offline_username: str = "",
    actor: str | None = None,
) -> int:
    username = username or _username(user_id)
    actor = actor or current_actor()[0]
    what = f"{verb} of {username} (user {user_id}) by {actor}, reason {reason}"
    try:
        closed = push.disconnect_user_sync(user_id, reason, connections, offline_username)
    except LayerUnavailable as exc:
        logger.warning("%s: %s", what, failure(username, exc))
        record(user_id, username, verb, reason, actor, exc)
        raise
    logger.info("%s: %s", what, outcome(username, closed))
    record(user_id, username, verb, reason, actor, closed)
    return closed


def record(
    user_id: int, username: str, what: str, reason: str, actor: str, result: int | Exception
) -> None:
    """Keep a Withdrawal row for the dashboard; never fail the withdrawal for it."""
    failed = isinstance(result, Exception)
    closed = getattr(result, "closed", 0) if isinstance(result, Exception) else result
    detail = failure(username, result)[:300] if isinstance(result, Exception) else ""
    row = Withdrawal(
        at=timezone.now(),
        user_id=user_id,
        username=username,
        what=what[:64],
        reason=str(reason),
        actor=actor[:200],
        closed=closed,
        failed=failed,
        detail=detail,
    )
    for pause in (*RECORD_RETRIES, None):
        try:
            # A savepoint: a failed insert must not spoil the caller's transaction.
            with transaction.atomic():
                row.save()
            return
        except OperationalError:
            # The sockets just closed are leaving the registry now: on SQLite
            # their writes can hold the lock past its busy timeout (at once,
            # on an in-memory database).
            if pause is None or transaction.get_connection().in_atomic_block:
                break
            time.sleep(pause)
        except Exception:
            break
    logger.warning("could not record the %s of %s", what, username, exc_info=True)


def _username(user_id: int) -> str:
    user_model = get_user_model()
    name = (
        user_model.objects.filter(pk=user_id).values_list(user_model.USERNAME_FIELD, flat=True)
    ).first()
    return name or f"user {user_id}"


def disconnect_on_commit(user_id: int, reason: Reason, username: str | None = None) -> None:
    """Close the user's sockets once the current transaction commits (signals)."""
    actor, report = current_actor()
    verb = "password change" if reason is Reason.TOKEN_REVOKED else WHAT[reason]

    def after_commit() -> None:
        _withdraw_reported(
            report,
            username or _username(user_id),
            lambda name: _withdraw(user_id, name, reason, verb, actor=actor),
            deactivated if reason is Reason.USER_INACTIVE else revoked,
        )

    transaction.on_commit(after_commit)


def delete_on_commit(user_id: int, username: str, connections: list[Any]) -> None:
    """Close a deleted user's sockets (rows read before the delete) once it commits."""
    actor, report = current_actor()

    def after_commit() -> None:
        closed = _withdraw_reported(
            report,
            username,
            lambda name: _withdraw(
                user_id, name, Reason.USER_DELETED, "delete", connections, name, actor
            ),
        )
        if closed:
            # Their sockets' rows went with the user, so no socket's own cleanup
            # pushes `offline`; processes reached through the database push it
            # themselves (`offline_username`), this one here.
            try:
                push.push_presence_sync("offline", user_id, username)
            except Exception:
                logger.warning("could not push offline for deleted user %s", user_id, exc_info=True)

    transaction.on_commit(after_commit)


def _withdraw_reported(
    report: Report | None,
    username: str,
    run: Callable[[str], int],
    say: Callable[[str, int], str] = outcome,
) -> int:
    """Run a withdrawal nobody awaits: report it (in SAY's words), log (never raise) a failure."""
    try:
        closed = run(username)
    except LayerUnavailable as exc:
        if report is not None:
            report(False, failure(username, exc))
        return getattr(exc, "closed", 0)
    except Exception:
        logger.exception("%s: could not close sockets", username)
        if report is not None:
            report(False, f"{username}: nothing closed: an error occurred (see the log)")
        return 0
    if report is not None:
        report(True, say(username, closed))
    return closed
