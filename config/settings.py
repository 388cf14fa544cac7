"""Settings, read from the environment (and an optional `.env` file).

Every variable has a working default so a bare checkout runs: SQLite and the
in-memory channel layer. `DATABASE_URL` and `REDIS_URL` switch to PostgreSQL and
Redis. See the configuration table in README.md.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from dotenv import load_dotenv

from config.development import development_secret_key
from identity.conf import DEFAULTS as IDENTITY_DEFAULTS
from identity.conf import LIST_DEFAULTS as IDENTITY_LIST_DEFAULTS
from identity.conf import RATE_DEFAULTS as IDENTITY_RATE_DEFAULTS

BASE_DIR = Path(__file__).resolve().parent.parent
load_dotenv(BASE_DIR / ".env")


def env_str(name: str, default: str = "") -> str:
    """A string variable; empty counts as unset."""
    return os.environ.get(name, "").strip() or default


def env_bool(name: str, default: bool) -> bool:
    """A boolean variable: 1/true/yes/on are true, 0/false/no/off are false."""
    raw = env_str(name).lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), not {raw!r}")


def env_number(name: str, default: float) -> float:
    """A non-negative number of seconds, frames or bytes."""
    raw = env_str(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, not {raw!r}") from None
    if value < 0:
        raise ImproperlyConfigured(f"{name} must not be negative")
    return value


RATE_PERIODS = {"s", "sec", "m", "min", "h", "hour", "d", "day"}


def env_rate(name: str, default: str) -> str | None:
    """A DRF throttle rate "N/period" (e.g. 10/min); set but empty, or 0, turns it off."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    raw = raw.strip()
    if raw in {"", "0"}:
        return None
    count, _, period = raw.partition("/")
    if not count.isdigit() or period not in RATE_PERIODS:
        raise ImproperlyConfigured(f"{name} must look like 10/min (or 0 for no limit), not {raw!r}")
    return None if int(count) == 0 else raw


def env_list(name: str, default: str) -> list[str]:
    """A comma-separated list."""
    return [item.strip() for item in env_str(name, default).split(",") if item.strip()]


DEBUG = env_bool("DJANGO_DEBUG", False)
SECRET_KEY = env_str("DJANGO_SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is not set. Set it, or set DJANGO_DEBUG=1 for development."
        )
    # Random per checkout, kept in the git-ignored .dev-secret-key.
    SECRET_KEY = development_secret_key()

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1")
IDENTITY_ALLOWED_ORIGINS = env_list("IDENTITY_ALLOWED_ORIGINS", "")
CSRF_TRUSTED_ORIGINS = [origin for origin in IDENTITY_ALLOWED_ORIGINS if "://" in origin]

INSTALLED_APPS = [
    "daphne",  # before staticfiles: its runserver replaces Django's
    "identity",  # before the admin: its admin/index.html adds the dashboard link
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework_simplejwt",
    "rest_framework_simplejwt.token_blacklist",
    "channels",
    # This project's own app: its realtime.py declares the page's rooms.
    "config",
]

MIDDLEWARE = [
    "identity.middleware.JSONErrorsMiddleware",  # outermost: sees every error page
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = None
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        # The project's overrides (templates/README.md); identity's own ship inside the app.
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
        # Consumers reach the ORM through database_sync_to_async, which runs
        # every call on one thread per process (thread-sensitive): a persistent
        # connection there is one per process, not one per socket, and saves a
        # connect per `auth`. Health checks replace connections that died.
        conn_max_age=int(env_number("DATABASE_CONN_MAX_AGE", 60)),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several threads (and processes) write the registry: take the write lock
    # when a transaction starts and wait for it, instead of failing with
    # "database is locked" when a reader tries to upgrade. WAL with
    # synchronous=NORMAL makes a commit an append, not an fsync.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )

REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    # channels-redis's pub/sub layer (chosen by measurement: docs/deploy.md),
    # with bounded waits so a Redis outage is an error, not a hang.
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "identity.layers.RedisPubSubChannelLayer",
            "CONFIG": {
                "hosts": [{"address": REDIS_URL, "socket_connect_timeout": 2}],
                # Pub/sub channels ignore Redis database numbers: deployments
                # sharing one Redis keep apart by prefix.
                "prefix": env_str("IDENTITY_REDIS_PREFIX", "identity"),
            },
        }
    }
else:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "identity.layers.InMemoryChannelLayer",
            # A socket stays in its groups as long as it lives (Channels' default
            # drops members after a day).
            "CONFIG": {"group_expiry": 10 * 365 * 86400},
        }
    }

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = DEBUG
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# The cache holds the sign-in throttles' counts. A table in the default
# database, because every server process already shares it (PostgreSQL, or
# the SQLite file) while REDIS_URL is optional; a sign-in checks a password
# hash anyway, so one more indexed query is noise. `migrate` creates the table
# (identity/apps.py). MAX_ENTRIES is high because culling drops arbitrary
# keys: a low cap would let a flood of usernames wipe the counts.
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.db.DatabaseCache",
        "LOCATION": "identity_cache",
        "OPTIONS": {"MAX_ENTRIES": 100_000},
    }
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["identity.authentication.IdentityJWTAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": [],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["identity.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "identity.api.exception_handler",
    "UNAUTHENTICATED_USER": None,
}

SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(seconds=env_number("JWT_ACCESS_TOKEN_LIFETIME", 300)),
    "REFRESH_TOKEN_LIFETIME": timedelta(seconds=env_number("JWT_REFRESH_TOKEN_LIFETIME", 86400)),
    "ROTATE_REFRESH_TOKENS": True,
    "BLACKLIST_AFTER_ROTATION": True,
    "UPDATE_LAST_LOGIN": False,
    "ALGORITHM": "HS256",
    "SIGNING_KEY": env_str("JWT_SIGNING_KEY", SECRET_KEY),
    "TOKEN_REFRESH_SERIALIZER": "identity.api.TokenRefreshSerializer",
    "TOKEN_BLACKLIST_SERIALIZER": "identity.api.TokenBlacklistSerializer",
}

# The identity app's knobs: each IDENTITY_* variable of the environment, over
# the defaults that identity.conf owns (what each one means is said there).
for _name, _default in IDENTITY_DEFAULTS.items():
    globals()[_name] = env_number(_name, _default)
for _rate_name, _rate in IDENTITY_RATE_DEFAULTS.items():
    globals()[_rate_name] = env_rate(_rate_name, _rate)
for _list_name, _list in IDENTITY_LIST_DEFAULTS.items():
    globals()[_list_name] = env_list(_list_name, _list)

# Daphne (runserver) enforces the frame limit itself and closes with 1009:
# an ASGI app cannot send 1009 through daphne.
DAPHNE_WEBSOCKET_MAX_MESSAGE_SIZE = int(globals()["IDENTITY_MAX_FRAME_BYTES"])
DAPHNE_WEBSOCKET_MAX_FRAME_SIZE = DAPHNE_WEBSOCKET_MAX_MESSAGE_SIZE

# Production (DEBUG off) assumes HTTPS, terminated here or at a proxy that sets
# X-Forwarded-Proto. DJANGO_HTTPS=0 is for trying `make serve` over plain http.
HTTPS = env_bool("DJANGO_HTTPS", not DEBUG)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
if HTTPS:
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = True
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]  # load balancers probe over plain http
    SECURE_REDIRECT_EXEMPT += [r"^metrics$"]  # Prometheus scrapes each machine (docs/deploy.md)
    SECURE_HSTS_SECONDS = int(env_number("DJANGO_HSTS_SECONDS", 31536000))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("DJANGO_HSTS_PRELOAD", True)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "identity": {"handlers": ["console"], "level": env_str("IDENTITY_LOG_LEVEL", "INFO")},
        # Django's own logging prints a 500's traceback only with DEBUG on (and
        # mails it to ADMINS, which is empty): without this a production 500
        # leaves no trace. Not propagated, so DEBUG does not print it twice.
        "django.request": {"handlers": ["console"], "level": "ERROR", "propagate": False},
    },
}
