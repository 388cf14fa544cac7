from __future__ import annotations

from django.apps import AppConfig


class IdentityConfig(AppConfig):
    name = "identity"
    verbose_name = "Identity"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from identity import checks, signals  # noqa: F401  (registers checks and receivers)
        from identity.daphne_compat import patch_daphne

        patch_daphne()
