"""Settings of real servers that serve the test topics beside the project's rooms.

The project's own settings, plus tests/realtime_example.py's topics: one that
needs a Django permission (`ops.{name}`), one per Django group (`team.{name}`),
one with a parameter (`notes.{owner}`). config/realtime.py keeps to its two
rooms.
"""

from config.settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "tests.apps.RealtimeExampleConfig"]  # noqa: F405
