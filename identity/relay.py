"""Withdrawals carried by the database, for server processes on the in-memory layer.

The in-memory channel layer lives inside one server process: a management
command, a shell or another server process cannot reach its sockets through
it. They all share the database, though. The requester writes a
WithdrawalRequest per server process holding the sockets; each such process
polls for its own requests (identity.heartbeat), closes the sockets and records
how many; the requester reads that count and deletes the row.

Synchronous ORM code; identity.push and identity.heartbeat wrap it with
database_sync_to_async.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from identity.models import WithdrawalRequest

# Rows nobody collected (the requester died waiting) are purged after this.
STALE_AFTER = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class Status:
    """Where one request stands."""

    started: bool
    closed: int | None  # None until done


def request(
    sockets_by_server: dict[str, int],
    user_id: int,
    reason: str,
    channel_name: str = "",
    offline_username: str = "",
) -> dict[int, str]:
    """Address one withdrawal to each server process; request id -> server id."""
    now = timezone.now()
    ids = {}
    with transaction.atomic():  # all or none: a half-written set would run unawaited
        for server_id, sockets in sockets_by_server.items():
            row = WithdrawalRequest.objects.create(
                server_id=server_id,
                user_id=user_id,
                channel_name=channel_name,
                reason=reason,
                sockets=sockets,
                offline_username=offline_username,
                requested_at=now,
            )
            ids[row.pk] = server_id
    return ids


def statuses(ids: list[int]) -> dict[int, Status]:
    """The requests that still exist, and where each stands."""
    rows = WithdrawalRequest.objects.filter(pk__in=ids).values_list("pk", "started_at", "closed")
    return {pk: Status(started_at is not None, closed) for pk, started_at, closed in rows}


def cancel_unstarted(ids: list[int]) -> None:
    """Withdraw the requests no process has taken up: they will never run."""
    WithdrawalRequest.objects.filter(pk__in=ids, started_at__isnull=True).delete()


def forget(ids: list[int]) -> None:
    """Delete the requests once their outcome is read."""
    WithdrawalRequest.objects.filter(pk__in=ids).delete()


def claim(server_id: str) -> list[WithdrawalRequest]:
    """Take up the requests addressed to SERVER_ID (one indexed query when there are none)."""
    pending = list(WithdrawalRequest.objects.filter(server_id=server_id, started_at__isnull=True))
    now = timezone.now()
    # One by one: a request its requester cancelled in the meantime is skipped.
    return [
        row
        for row in pending
        if WithdrawalRequest.objects.filter(pk=row.pk, started_at__isnull=True).update(
            started_at=now
        )
    ]


def finish(request_id: int, closed: int) -> None:
    """Record how many sockets a request closed."""
    WithdrawalRequest.objects.filter(pk=request_id).update(done_at=timezone.now(), closed=closed)


def purge_stale() -> None:
    """Delete requests left behind by a requester that died waiting."""
    WithdrawalRequest.objects.filter(requested_at__lt=timezone.now() - STALE_AFTER).delete()
