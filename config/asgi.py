"""ASGI entry point: HTTP goes to Django, /ws/ to the identity consumer."""

from __future__ import annotations

import os

from channels.routing import ProtocolTypeRouter
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# Build Django first: importing identity.asgi loads models.
django_asgi_app = get_asgi_application()

from identity.asgi import websocket_app  # noqa: E402

application = ProtocolTypeRouter({"http": django_asgi_app, "websocket": websocket_app})
