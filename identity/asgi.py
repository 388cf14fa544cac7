"""The WebSocket side of a project's ASGI application, in one import.

Import it after Django is set up (importing it loads models), as channels'
sample project imports its routing:

    django_asgi_app = get_asgi_application()

    from identity.asgi import websocket_app  # noqa: E402

    application = ProtocolTypeRouter({"http": django_asgi_app, "websocket": websocket_app})

config/asgi.py is the sample.
"""

from __future__ import annotations

from identity.guard import Guard
from identity.origins import OriginValidator
from identity.routing import websocket_application

__all__ = ["websocket_app"]

# `/ws/` to the identity consumer, any other path refused (identity.routing);
# a foreign Origin refused (identity.origins); the guard first, so refused-Origin
# handshakes count toward the per-address rate too (identity.guard).
websocket_app = Guard(OriginValidator(websocket_application))
