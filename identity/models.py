"""What the identity layer stores: revocations, server processes, live sockets."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class UserIdentity(models.Model):
    """Per-user identity state: when tokens were last revoked.

    The row is also the lock that serialises a user's connects and disconnects
    across processes, so presence transitions are pushed exactly once.
    """

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        primary_key=True,
        on_delete=models.CASCADE,
        related_name="identity",
    )
    # Tokens whose `iat` (whole seconds) is at or before this are refused.
    tokens_revoked_at = models.BigIntegerField(null=True, blank=True)
    # Bumped under the row's lock at each `online`/`offline` on PostgreSQL: two
    # processes' pushes for one user can reach Redis out of the order their
    # transactions took, and a receiving process drops the older (identity.push).
    presence_version = models.BigIntegerField(default=0)

    class Meta:
        verbose_name = "identity state"

    def __str__(self) -> str:
        return f"identity of user {self.user_id}"


class ServerProcess(models.Model):
    """A running server process; its heartbeat vouches for its sockets."""

    id = models.CharField(primary_key=True, max_length=100)
    started_at = models.DateTimeField()
    heartbeat_at = models.DateTimeField(db_index=True)

    class Meta:
        verbose_name_plural = "server processes"

    def __str__(self) -> str:
        return self.id


class Connection(models.Model):
    """One authenticated socket, as long as it stays authenticated."""

    channel_name = models.CharField(primary_key=True, max_length=200)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="identity_connections"
    )
    server = models.ForeignKey(ServerProcess, on_delete=models.CASCADE, related_name="connections")
    opened_at = models.DateTimeField()
    authenticated_at = models.DateTimeField()
    remote_addr = models.CharField(max_length=64, blank=True)
    user_agent = models.CharField(max_length=300, blank=True)

    class Meta:
        indexes = [models.Index(fields=["user", "server"])]

    def __str__(self) -> str:
        return f"{self.user_id} on {self.server_id}"


class WithdrawalRequest(models.Model):
    """A withdrawal carried by the database to the server process holding the sockets.

    On the in-memory channel layer no other process can reach a server's
    sockets; the database can. The requesting process writes one row per server
    process, that process (identity.heartbeat's poller) closes the sockets and
    records how many, and the requester reads the count and deletes the row.
    """

    server_id = models.CharField(max_length=100)
    # No foreign key: the user may be deleted by the time the request runs.
    user_id = models.BigIntegerField()
    # One socket (its channel), or blank for every socket of the user.
    channel_name = models.CharField(max_length=200, blank=True)
    reason = models.CharField(max_length=32)
    # How many live sockets the requester saw there: the executor stops waiting
    # for acknowledgements once that many answered.
    sockets = models.IntegerField(default=0)
    # Set for a deleted user: their sockets leave no registry row whose removal
    # would push `offline`, so the executing process pushes it for this name.
    offline_username = models.CharField(max_length=150, blank=True)
    requested_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True, blank=True)
    done_at = models.DateTimeField(null=True, blank=True)
    closed = models.IntegerField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["server_id", "started_at"])]

    def __str__(self) -> str:
        target = self.channel_name or f"user {self.user_id}"
        return f"{self.reason} {target} on {self.server_id}"


class MinuteCount(models.Model):
    """How many times something happened in one minute, across server processes.

    Each process counts in memory and adds its counts here with its heartbeat
    (identity.counters), so the socket path never waits on this table.
    """

    minute = models.DateTimeField()  # the minute's start, UTC
    kind = models.CharField(max_length=32)  # "connect" or "auth_failure"
    code = models.CharField(max_length=32, blank=True)  # the error code of a failure
    n = models.IntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["minute", "kind", "code"], name="minute_kind_code")
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.code} at {self.minute:%H:%M}: {self.n}"


class Withdrawal(models.Model):
    """A withdrawal as it happened: whose sockets, why, by whom, how many closed."""

    at = models.DateTimeField(db_index=True)
    # No foreign key: the record outlives a deleted user.
    user_id = models.BigIntegerField()
    username = models.CharField(max_length=150)
    what = models.CharField(max_length=64)  # "kick", "revoke", "deactivation", ...
    reason = models.CharField(max_length=32)
    actor = models.CharField(max_length=200)
    closed = models.IntegerField(default=0)
    failed = models.BooleanField(default=False)
    detail = models.CharField(max_length=300, blank=True)  # why it failed

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.what} of {self.username} by {self.actor}"


class TopicMember(models.Model):
    """A socket subscribed to a topic that keeps presence (identity.realtime).

    Live like a Connection: while its server process's heartbeat is fresh. The
    user's identity row serialises joins and leaves, so a user's first socket
    in a topic and their last are decided exactly once across processes.
    """

    topic = models.CharField(max_length=100)
    channel_name = models.CharField(max_length=200)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="identity_topics"
    )
    server = models.ForeignKey(
        ServerProcess, on_delete=models.CASCADE, related_name="topic_members"
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["topic", "channel_name"], name="topic_member_once")
        ]
        # A close deletes its socket's rows by channel name.
        indexes = [models.Index(fields=["topic", "user"]), models.Index(fields=["channel_name"])]

    def __str__(self) -> str:
        return f"{self.user_id} in {self.topic}"


class RelayedEvent(models.Model):
    """A channel-layer group message carried by the database to another server process.

    The in-memory layer's counterpart of a Redis group_send for `publish` and
    `recheck_user` from a shell, a command or another process (identity.relay).
    """

    server_id = models.CharField(max_length=100, db_index=True)
    group = models.CharField(max_length=100)
    message = models.JSONField()
    created_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.message.get('type')} for {self.group} on {self.server_id}"
