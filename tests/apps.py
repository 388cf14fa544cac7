"""The test topics and actions as an installed app, for real servers that need them."""

from __future__ import annotations

from django.apps import AppConfig


class RealtimeExampleConfig(AppConfig):
    """Declares tests/realtime_example.py's topics where tests/settings_with_test_topics.py runs."""

    name = "tests"
    label = "realtime_example"

    def ready(self) -> None:
        import tests.realtime_example  # noqa: F401  (registers on import)
