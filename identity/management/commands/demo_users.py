"""Create the demo users once (passwords kept in an ignored file) and print them."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

DEMO_USERS = [
    ("alice", {}),
    ("bob", {}),
    ("operator", {"is_staff": True, "is_superuser": True}),
]


class Command(BaseCommand):
    help = "Create two ordinary demo users and one staff user; print their credentials."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--file",
            default=str(Path(settings.BASE_DIR) / ".demo-users.json"),
            help="Where the generated passwords are kept (git-ignored).",
        )

    def handle(self, *args: Any, file: str, **options: Any) -> None:
        path = Path(file)
        passwords: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
        for username, flags in DEMO_USERS:
            passwords.setdefault(username, secrets.token_urlsafe(12))
            self._ensure(username, passwords[username], flags)
        path.write_text(json.dumps(passwords, indent=2))
        path.chmod(0o600)
        self.stdout.write(f"Demo users (passwords kept in {path}):")
        for username, flags in DEMO_USERS:
            role = "staff, admin" if flags else "user"
            self.stdout.write(f"  {username:<10} {passwords[username]:<20} ({role})")

    def _ensure(self, username: str, password: str, flags: dict[str, Any]) -> None:
        user_model = get_user_model()
        user = user_model.objects.filter(username=username).first()
        if user is None:
            user_model.objects.create_user(username=username, password=password, **flags)
        elif not user.check_password(password) or not user.is_active:
            # Someone changed it in the admin: put back what the file promises.
            user.set_password(password)
            user.is_active = True
            user.save()
