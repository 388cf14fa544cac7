"""`manage.py disconnect USERNAME`: close every socket of a user (`kicked`, 4403)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from identity import withdraw
from identity.layers import LayerUnavailable
from identity.management.commands._identity import get_user
from identity.protocol import Reason


class Command(BaseCommand):
    help = "Close every socket of a user with disconnect `kicked` (the token stays valid)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("username")

    def handle(self, *args: Any, username: str, **options: Any) -> None:
        user = get_user(username)
        try:
            with withdraw.acting_as("command"):
                closed = withdraw.disconnect(user.pk, Reason.KICKED, username)
        except LayerUnavailable as exc:
            raise CommandError(withdraw.failure(username, exc)) from exc
        self.stdout.write(f"{withdraw.outcome(username, closed)}.")
