"""Test settings: the project's settings with short timers and a fixed secret."""

import os

os.environ.setdefault(
    "DJANGO_SECRET_KEY", "test-secret-key-only-for-the-test-suite-" + "0123456789" * 4
)
os.environ.setdefault("DJANGO_DEBUG", "0")
os.environ.setdefault("DJANGO_HTTPS", "0")  # the test client speaks plain http

from config.settings import *  # noqa: F403

# Tests drive the heartbeat themselves (identity.heartbeat.beat_once).
IDENTITY_HEARTBEAT_INTERVAL = 0
IDENTITY_HEARTBEAT_EXPIRY = 3600
# and the withdrawal-request poll (identity.heartbeat.poll_once).
IDENTITY_WITHDRAWAL_POLL = 0
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True
# Persistent connections would outlive each test in the ORM's worker thread and
# keep pytest-django from dropping the PostgreSQL test database.
DATABASES["default"]["CONN_MAX_AGE"] = 0  # noqa: F405
