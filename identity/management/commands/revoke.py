"""`manage.py revoke USERNAME`: refuse every token issued so far and close the sockets."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from identity import push, withdraw
from identity.layers import LayerUnavailable
from identity.management.commands._identity import get_user
from identity.protocol import Reason


class Command(BaseCommand):
    help = "Revoke every token of a user (refused from now on) and close their sockets."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("username")

    def handle(self, *args: Any, username: str, **options: Any) -> None:
        user = get_user(username)
        withdraw.revoke_tokens(user.pk)
        self.stdout.write(f"{username}: every token issued so far is refused from now on.")
        try:
            closed = withdraw.disconnect(user.pk, Reason.TOKEN_REVOKED)
        except (push.LayerUnreachable, LayerUnavailable) as exc:
            raise CommandError(
                f"The open sockets were NOT closed (they end at their token's expiry). {exc}"
            ) from exc
        self.stdout.write(f"{username}: {closed} socket(s) closed.")
