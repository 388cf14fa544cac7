"""Test settings: the project's settings with short timers and a fixed secret."""

import os

os.environ.setdefault(
    "DJANGO_SECRET_KEY", "test-secret-key-only-for-the-test-suite-" + "0123456789" * 4
)
os.environ.setdefault("DJANGO_DEBUG", "0")
os.environ.setdefault("DJANGO_HTTPS", "0")  # the test client speaks plain http

from config.settings import *  # noqa: F403

# The suite signs in (and fails to) far more often than a person; the
# throttle's own tests run servers with the limits on.
IDENTITY_LOGIN_RATE_PER_ACCOUNT = None
IDENTITY_LOGIN_RATE_PER_ADDRESS = None
# Tests drive the heartbeat themselves (identity.heartbeat.beat_once).
IDENTITY_HEARTBEAT_INTERVAL = 0
IDENTITY_HEARTBEAT_EXPIRY = 3600
# The whole suite connects from one address through one application instance:
# the per-address limits (identity.guard) are off unless a test turns them on.
IDENTITY_MAX_ANONYMOUS_PER_ADDRESS = 0
IDENTITY_HANDSHAKE_RATE = 0
# The withdrawal-request poll too (identity.heartbeat.poll_once).
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
