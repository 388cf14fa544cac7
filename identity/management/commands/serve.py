"""`manage.py serve`: the production server, N uvicorn worker processes on one port.

Chosen over daphne by measurement (docs/performance.md); `manage.py runserver`
stays daphne for development. Every worker shares the channel layer (REDIS_URL)
and the database (DATABASE_URL).
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from identity import conf, metrics
from identity.layers import in_process


class Command(BaseCommand):
    help = "Run the production server: uvicorn workers sharing Redis and the database."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument(
            "--workers", type=int, default=int(os.environ.get("WORKERS", os.cpu_count() or 1))
        )
        parser.add_argument(
            "--forwarded-allow-ips",
            default=os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1"),
            help="Proxies trusted for X-Forwarded-For/-Proto.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if settings.DEBUG:
            raise CommandError("DJANGO_DEBUG is on: use `make run` for development.")
        if options["workers"] > 1 and in_process(get_channel_layer()):
            raise CommandError(
                f"{options['workers']} workers need a shared channel layer: set REDIS_URL "
                "(or --workers 1)."
            )
        # Over plain http (DJANGO_HTTPS=0, a local trial) the https warnings are
        # expected: shown, not fatal. Otherwise the deploy check must be clean.
        https = getattr(settings, "HTTPS", True)  # config/settings.py's; other projects: on
        call_command("check", deploy=True, fail_level="WARNING" if https else "ERROR")
        # A scrape of /metrics lands on one worker and must report them all:
        # prometheus_client's multiprocess mode, a fresh directory per start.
        os.environ[metrics.MULTIPROC_ENV] = metrics.fresh_multiprocess_dir()
        uvicorn = shutil.which("uvicorn", path=os.path.dirname(sys.executable)) or "uvicorn"
        argv = [
            uvicorn,
            asgi_target(settings.ASGI_APPLICATION),
            "--host", options["host"],
            "--port", str(options["port"]),
            "--workers", str(options["workers"]),
            "--ws-max-size", str(conf.max_frame_bytes()),
            "--loop", "uvloop",
            # httptools plus a deadline and a size bound on request headers.
            "--http", "identity.uvicorn_compat:GuardedHttpToolsProtocol",
            # websockets-sansio without a false error logged per refused handshake.
            "--ws", "identity.uvicorn_compat:QuietWebSocketProtocol",
            "--lifespan", "off",
            "--proxy-headers",
            "--forwarded-allow-ips", options["forwarded_allow_ips"],
            "--no-access-log",
            # uvicorn logs every WebSocket open at INFO: a log line per connect.
            "--log-level", "warning",
        ]  # fmt: skip
        self.stdout.write(
            f"Serving on http://{options['host']}:{options['port']}/ with "
            f"{options['workers']} uvicorn worker(s)."
        )
        sys.stdout.flush()
        os.execv(uvicorn, argv)


def asgi_target(dotted: str) -> str:
    """uvicorn's `module:attribute` for Django's ASGI_APPLICATION `module.attribute`."""
    module, _, attribute = dotted.rpartition(".")
    return f"{module}:{attribute}"
