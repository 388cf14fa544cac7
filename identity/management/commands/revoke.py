"""`manage.py revoke USERNAME`: refuse every token issued so far and close the sockets."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from identity import withdraw
from identity.layers import LayerUnavailable
from identity.management.commands._identity import get_user

REVOKED = "{}: every token issued so far is refused from now on."


class Command(BaseCommand):
    help = "Revoke every token of a user (refused from now on) and close their sockets."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("username")

    def handle(self, *args: Any, username: str, **options: Any) -> None:
        user = get_user(username)
        try:
            with withdraw.acting_as("command"):
                closed = withdraw.revoke(user.pk, username)
        except LayerUnavailable as exc:
            self.stdout.write(REVOKED.format(username))
            raise CommandError(
                f"{withdraw.failure(username, exc)} (open sockets end at their token's expiry)"
            ) from exc
        self.stdout.write(REVOKED.format(username))
        self.stdout.write(f"{withdraw.outcome(username, closed)}.")
