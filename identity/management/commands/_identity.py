"""Shared by the identity management commands: find the user, report unreachable sockets."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import CommandError


def get_user(username: str) -> Any:
    """The user by username, or a CommandError that says so."""
    user_model = get_user_model()
    try:
        return user_model.objects.get(**{user_model.USERNAME_FIELD: username})
    except user_model.DoesNotExist:
        raise CommandError(f"No user named {username!r}.") from None
