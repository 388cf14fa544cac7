"""A server process of a project without this project's rooms (config/realtime.py).

The identity app in someone else's Django project: the page's Rooms section
must hide itself when the server knows no `room.*` topic.
"""

from config.settings import *  # noqa: F403

INSTALLED_APPS = [app for app in INSTALLED_APPS if app != "config"]  # noqa: F405
