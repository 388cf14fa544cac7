"""Shared fixtures: users, tokens, and WebSocket clients on the real ASGI app."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import ThreadSensitiveContext, sync_to_async
from channels.db import database_sync_to_async
from channels.layers import channel_layers, get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connections
from django.test import AsyncClient
from rest_framework_simplejwt.tokens import AccessToken, RefreshToken

from config.asgi import application
from tests.live_sockets import LiveSocket

TIMEOUT = 3  # seconds to wait for a frame the server must send


@pytest.fixture(autouse=True)
def fresh_channel_layer() -> None:
    """Each test gets a new in-memory layer (its queues belong to one event loop)."""
    channel_layers.backends.clear()


@pytest.fixture
async def closes_live_sockets() -> AsyncIterator[None]:
    """Close the LiveSockets a test opened, however it ended.

    For the modules that talk to real servers (tests/live_sockets.py): they
    name it in their `pytestmark` with `pytest.mark.usefixtures`.
    """
    yield
    for sock in list(LiveSocket.unclosed):
        await sock.close()


def make_user(username: str, **extra: Any) -> Any:
    return get_user_model().objects.create_user(
        username=username, password=extra.pop("password", "pw-" + username), **extra
    )


@pytest.fixture
def alice(transactional_db: None) -> Any:
    return make_user("alice", email="alice@example.com")


@pytest.fixture
def bob(transactional_db: None) -> Any:
    return make_user("bob", email="bob@example.com")


def grant(user: Any, *actions: str) -> Any:
    """Give the user the model permissions to `actions` ("view", "change") users."""
    opts = get_user_model()._meta
    codenames = [f"{action}_{opts.model_name}" for action in actions]
    user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label=opts.app_label, codename__in=codenames)
    )
    return user


@pytest.fixture
def staff(transactional_db: None) -> Any:
    """An operator: staff, allowed to view and change users (not a superuser)."""
    return grant(make_user("operator", is_staff=True), "view", "change")


def access_for(user: Any, lifetime: timedelta | None = None) -> str:
    token = AccessToken.for_user(user)
    if lifetime is not None:
        token.set_exp(lifetime=lifetime)
    return str(token)


def refresh_for(user: Any) -> str:
    return str(RefreshToken.for_user(user))


class Client:
    """A WebSocket client on the ASGI app with protocol helpers."""

    def __init__(self, communicator: WebsocketCommunicator) -> None:
        self.communicator = communicator
        self.closed_with: int | None = None

    async def send(self, action: str, payload: Any = None, **extra: Any) -> None:
        await self.communicator.send_json_to({"action": action, "payload": payload, **extra})

    async def send_text(self, text: str) -> None:
        await self.communicator.send_to(text_data=text)

    async def receive(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        return await self.communicator.receive_json_from(timeout=timeout)

    async def receive_besides(self, action: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The next frame that is not an ACTION push.

        On Redis a `members` push published just before a socket subscribed can
        still reach it (docs/realtime.md): tests of other frames skip those.
        """
        while True:
            got = await self.receive(timeout)
            if got["action"] != action:
                return got

    async def request(self, action: str, payload: Any = None, **extra: Any) -> dict[str, Any]:
        await self.send(action, payload, **extra)
        return await self.receive()

    async def auth(self, token: str) -> dict[str, Any]:
        reply = await self.request("auth", token)
        assert reply["action"] == "auth", reply
        return reply["payload"]

    async def receive_close(self, timeout: float = TIMEOUT) -> int:
        """Wait for the server to close; the close code."""
        output = await self.communicator.receive_output(timeout)
        assert output["type"] == "websocket.close", output
        self.closed_with = output.get("code", 1000)
        # daphne (autobahn) accepts only a plain int; an IntEnum becomes 1011.
        assert type(self.closed_with) is int, type(self.closed_with)
        return self.closed_with

    async def assert_silent(self) -> None:
        assert await self.communicator.receive_nothing(timeout=0.2)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.communicator.disconnect()


async def open_client(
    headers: list[tuple[bytes, bytes]] | None = None, path: str = "/ws/"
) -> tuple[bool, Client]:
    communicator = WebsocketCommunicator(application, path, headers=headers or [])
    connected, _ = await communicator.connect(timeout=TIMEOUT)
    return connected, Client(communicator)


@pytest.fixture
async def connect() -> AsyncIterator[Callable[..., Any]]:
    """Open authenticated-or-not clients; all closed at the end of the test."""
    clients: list[Client] = []

    async def _connect(token: str | None = None, **kwargs: Any) -> Client:
        connected, client = await open_client(**kwargs)
        assert connected
        clients.append(client)
        if token is not None:
            reply = await client.auth(token)
            assert reply["registered"] is True, reply
        return client

    yield _connect
    for client in clients:
        await client.close()
    # A Redis layer holds connections per event loop: close them with the loop.
    await get_channel_layer().flush()


adb = database_sync_to_async


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The gate `test.gate` waits at (tests/realtime_example.py); opened when the test ends."""
    import tests.realtime_example as example

    opened = example.Gate()
    monkeypatch.setattr(example, "GATE", opened)
    yield opened
    opened.opened.set()


@contextlib.asynccontextmanager
async def request_thread() -> AsyncIterator[None]:
    """Run the sync code awaited inside on a thread of its own, as Django runs a request's.

    The sockets' registry calls run on the process's one thread-sensitive
    thread (ASGIHandler gives each request another). Sync code that waits for
    sockets to acknowledge a withdrawal must not hold that thread, or they
    cannot finish closing until it gives up; requests, commands and the shell
    never do, a bare `adb(...)` in a test would.
    """
    async with ThreadSensitiveContext():
        try:
            yield
        finally:
            # The thread goes with the context: its database connection too.
            await sync_to_async(connections.close_all)()


async def as_request(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run sync code as a request would (see request_thread)."""
    async with request_thread():
        return await adb(call)(*args, **kwargs)


class RequestClient(AsyncClient):
    """Django's AsyncClient, with each request's sync code on its own thread (request_thread)."""

    async def request(self, **request: Any) -> Any:
        async with request_thread():
            return await super().request(**request)


@pytest.fixture
async def admin_client(staff: Any) -> RequestClient:
    """The admin as a superuser sees it (the `staff` operator, promoted)."""
    staff.is_superuser = True
    await adb(staff.save)()
    client = RequestClient()
    await client.aforce_login(staff)
    return client
