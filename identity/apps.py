from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.core.management import call_command
from django.db.models.signals import post_migrate


class IdentityConfig(AppConfig):
    name = "identity"
    verbose_name = "Identity"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Imported for what they register: checks (metrics_api's too) and receivers.
        from identity import checks, metrics_api, realtime, signals  # noqa: F401
        from identity.daphne_compat import patch_daphne

        patch_daphne()
        realtime.autodiscover()  # every installed app's realtime.py, as the admin's admin.py
        post_migrate.connect(create_cache_table, sender=self)


def create_cache_table(using: str = "default", verbosity: int = 1, **kwargs: Any) -> None:
    """Every `migrate` creates the database cache table the sign-in throttles use.

    createcachetable skips tables that exist, and follows CACHES as it is now,
    which a migration written once would not.
    """
    call_command("createcachetable", database=using, verbosity=max(0, verbosity - 1))
