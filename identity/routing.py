from __future__ import annotations

from channels.security.websocket import WebsocketDenier
from django.urls import path, re_path

from identity.consumers import IdentityConsumer

websocket_urlpatterns = [
    path("ws/", IdentityConsumer.as_asgi()),
    # Any other path is refused at the handshake (403), never an exception.
    re_path(r"", WebsocketDenier.as_asgi()),
]
