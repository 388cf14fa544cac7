"""`manage.py online`: who is connected, across every server process."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from identity import registry


class Command(BaseCommand):
    help = "List online users and their live sockets (all server processes)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--sockets", action="store_true", help="Also list each socket.")

    def handle(self, *args: Any, sockets: bool = False, **options: Any) -> None:
        users = registry.online_users()
        if not users:
            self.stdout.write("Nobody is online.")
            return
        self.stdout.write(f"{'USER':<24} {'ID':>6} {'SOCKETS':>8}")
        for user in users:
            self.stdout.write(f"{user.username:<24} {user.id:>6} {user.connections:>8}")
            if sockets:
                for conn in registry.user_connections(user.id):
                    self.stdout.write(
                        f"    since {conn.opened_at:%Y-%m-%d %H:%M:%S} from "
                        f"{conn.remote_addr or '?'} on {conn.server_id}"
                    )
        total = sum(u.connections for u in users)
        self.stdout.write(f"{len(users)} user(s), {total} socket(s).")
