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

    class Meta:
        verbose_name = "identity state"

    def __str__(self) -> str:
        return f"identity of user {self.user_id}"


class ServerProcess(models.Model):
    """A running server process; its heartbeat vouches for its sockets."""

    id = models.CharField(primary_key=True, max_length=100)
    started_at = models.DateTimeField()
    heartbeat_at = models.DateTimeField(db_index=True)

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

    @property
    def last_seen(self):
        """The last time the socket's server process confirmed it alive."""
        return self.server.heartbeat_at
