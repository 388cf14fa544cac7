"""Actions and topics the realtime tests use, declared with the public API.

Imported by the test modules that need them; the registry is per process, so
they exist for the whole run, beside the project's rooms (config/realtime.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

from django.contrib.auth import get_user_model

from identity import push
from identity.realtime import ActionError, Socket, action, topic

# Who may read `notes.<owner>`: the owner only (a sync rule with a parameter).
topic("notes.{owner}", allow=lambda user, owner: user.get_username() == owner)
# A permission, presence, clients may publish.
topic("ops.{name}", permission="auth.change_user", presence=True, client_publish=True)


async def _in_group(user: Any, name: str) -> bool:
    return await user.groups.filter(name=name).aexists()


# An async rule: members of the Django group of the same name.
topic("team.{name}", allow=_in_group, presence=True, client_publish=True)
# Open, no presence, server-side publishing only.
topic("news", client_publish=False)

# A rule of the application's own, re-checked with push.recheck_user.
BANNED: set[str] = set()
topic("chat.{room}", allow=lambda user, room: user.get_username() not in BANNED)


@action("test.echo")
async def echo(socket: Socket, payload: Any) -> Any:
    return {"payload": payload, "user": socket.user.get_username(), "topics": sorted(socket.topics)}


@action("test.profile")
async def profile(socket: Socket, payload: Any) -> Any:
    """Any field of the user, read in async code (no query: it is all loaded at `auth`)."""
    user = socket.user
    return {"email": user.email, "staff": user.is_staff, "joined": user.date_joined.year}


@action("test.count_users")
def count_users(socket: Socket, payload: Any) -> Any:
    """A sync handler: runs in the database thread, so the ORM works."""
    return {"users": get_user_model().objects.count()}


@action("test.refuse")
async def refuse(socket: Socket, payload: Any) -> Any:
    raise ActionError("invalid_payload", "Refused on purpose.")


@action("test.own_code")
async def own_code(socket: Socket, payload: Any) -> Any:
    raise ActionError("out_of_stock", "Nothing left.")


@action("test.crash")
async def crash(socket: Socket, payload: Any) -> Any:
    raise RuntimeError("a bug in the application")


@action("test.unencodable")
async def unencodable(socket: Socket, payload: Any) -> Any:
    return {"when": object()}


@action("test.staff_only", permission="auth.change_user")
async def staff_only(socket: Socket, payload: Any) -> Any:
    return "ok"


@action("test.slow")
async def slow(socket: Socket, payload: Any) -> Any:
    await asyncio.sleep(0)
    return payload


# A rule with a bug: it raises for names it does not expect.
topic("broken.{n}", allow=lambda user, n: int(n) > 0)


class Gate:
    """Holds `test.gate` handlers until the test opens it; one per test (its events bind a loop)."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.opened = asyncio.Event()
        self.cancelled = asyncio.Event()


# Set by the tests' `gate` fixture (tests/conftest.py).
GATE: Gate | None = None


@action("test.gate")
async def wait_at_gate(socket: Socket, payload: Any) -> Any:
    """Holds its socket until the test opens the gate: a long application action."""
    assert GATE is not None, "use the `gate` fixture"
    GATE.entered.set()
    try:
        await GATE.opened.wait()
    except asyncio.CancelledError:
        GATE.cancelled.set()
        raise
    return payload


@action("test.stubborn_gate")
async def wait_at_gate_whatever_happens(socket: Socket, payload: Any) -> Any:
    """`test.gate` that swallows its cancellation: only the gate ends it."""
    assert GATE is not None, "use the `gate` fixture"
    GATE.entered.set()
    while not GATE.opened.is_set():
        try:
            await GATE.opened.wait()
        except asyncio.CancelledError:
            GATE.cancelled.set()
    return payload


@action("test.huge")
async def huge(socket: Socket, payload: Any) -> Any:
    return "x" * 70_000  # over the 64 KiB frame limit once encoded


@action("test.push_huge")
async def push_huge(socket: Socket, payload: Any) -> Any:
    """Server code pushing its user a frame over the 64 KiB frame limit."""
    await push.send_to_user(socket.user.pk, "notice", "x" * 70_000)
    return "pushed"


@action("test.wait")
async def wait(socket: Socket, payload: Any) -> Any:
    """Answers after PAYLOAD seconds (a client can go meanwhile)."""
    await asyncio.sleep(float(payload))
    return payload
