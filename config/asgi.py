"""ASGI entry point: HTTP goes to Django, /ws/ to the identity consumer."""

from __future__ import annotations

import os

from channels.routing import ProtocolTypeRouter
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# Build Django first: importing the routing loads models.
django_asgi_app = get_asgi_application()

from identity.guard import Guard  # noqa: E402
from identity.origins import OriginValidator  # noqa: E402
from identity.routing import websocket_application  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # The guard first: refused-Origin handshakes count toward the rate too.
        "websocket": Guard(OriginValidator(websocket_application)),
    }
)
