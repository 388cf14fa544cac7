"""Withdrawals and group messages carried by the database, for the in-memory layer.

The in-memory channel layer lives inside one server process: a management
command, a shell or another server process cannot reach its sockets through
it. They all share the database, though. The requester writes a
WithdrawalRequest per server process holding the sockets; each such process
polls for its own requests (identity.heartbeat), closes the sockets and records
how many; the requester reads that count and deletes the row.

Topic events and re-checks (identity.push.publish, recheck_user) travel the
same way, without an answer: `broadcast` writes one RelayedEvent per other
live server process, whose poller hands it to its own layer's group_send.

Synchronous ORM code; identity.push and identity.heartbeat wrap it with
database_sync_to_async.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from identity.models import RelayedEvent, ServerProcess, WithdrawalRequest

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
    """Delete requests left behind by a requester that died waiting, and stale events."""
    cutoff = timezone.now() - STALE_AFTER
    WithdrawalRequest.objects.filter(requested_at__lt=cutoff).delete()
    RelayedEvent.objects.filter(created_at__lt=cutoff).delete()


# How long a process trusts its list of the other live server processes: a
# process that started since may miss a relayed event for that long.
SERVERS_TTL = 1.0  # seconds
_servers: tuple[float, list[str]] = (0.0, [])


def other_servers(own_id: str, live_since: Any) -> list[str]:
    """The ids of the live server processes other than OWN_ID (cached for SERVERS_TTL)."""
    global _servers
    stamp, servers = _servers
    if time.monotonic() - stamp > SERVERS_TTL:
        rows = ServerProcess.objects.filter(heartbeat_at__gte=live_since)
        servers = list(rows.values_list("id", flat=True))
        _servers = (time.monotonic(), servers)
    return [server for server in servers if server != own_id]


def known_servers(own_id: str) -> list[str] | None:
    """other_servers from the cache, without the database; None once it is stale."""
    stamp, servers = _servers
    if time.monotonic() - stamp > SERVERS_TTL:
        return None
    return [server for server in servers if server != own_id]


def broadcast(servers: list[str], group: str, message: dict[str, Any]) -> None:
    """Have each of SERVERS group_send MESSAGE to GROUP through its own layer."""
    now = timezone.now()
    RelayedEvent.objects.bulk_create(
        RelayedEvent(server_id=server, group=group, message=message, created_at=now)
        for server in servers
    )


def claim_events(server_id: str) -> list[tuple[str, dict[str, Any]]]:
    """Take the (group, message) relayed to SERVER_ID, oldest first."""
    rows = list(
        RelayedEvent.objects.filter(server_id=server_id)
        .order_by("pk")
        .values_list("pk", "group", "message")
    )
    if not rows:
        return []
    RelayedEvent.objects.filter(pk__in=[pk for pk, _, _ in rows]).delete()
    return [(group, message) for _, group, message in rows]
