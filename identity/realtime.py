"""Build on the identified socket: application actions and topics.

A project declares them in a module named `realtime.py` in any installed app;
identity imports those modules at startup, as the admin imports `admin.py`:

    from identity.realtime import action, topic, ActionError

    @action("notes.add", permission="notes.add_note")   # permission optional
    async def add_note(socket, payload):                # socket.user is the user
        if not isinstance(payload, str):
            raise ActionError("invalid_payload", "A note is a string.")
        note = await Note.objects.acreate(owner=socket.user, text=payload)
        return {"id": note.pk}                          # the reply's payload

    topic("room.{name}", allow=lambda user, name: user.is_active, presence=True)
    topic("staff.{name}", permission="auth.view_user")

The consumer runs them (identity.consumers); identity.push publishes to topics
from any code. docs/realtime.md has the rules and limits.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from channels.db import database_sync_to_async
from django.db import DatabaseError
from django.utils.module_loading import autodiscover_modules

from identity.protocol import name_ok

__all__ = ["ActionError", "Socket", "action", "topic"]

logger = logging.getLogger(__name__)

# A pattern's parameter matches one segment: no dot, so `room.{name}` never
# matches `room.a.b` (PROTOCOL.md's alphabet otherwise).
PARAMETER = r"[A-Za-z0-9_:-]+"
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")


class ActionError(Exception):
    """Raised by an action handler: answered with an `error` frame of CODE and MESSAGE.

    CODE is a protocol code (`invalid_payload`, `forbidden`, ...) or one of the
    application's own (lower case letters, digits and `_`).
    """

    def __init__(self, code: str, message: str = "") -> None:
        if not CODE.fullmatch(str(code)):
            raise ValueError(f"{code!r} is not an error code: lower case letters, digits, _")
        super().__init__(message or code)
        self.code, self.message = str(code), message or str(code)


@dataclass(frozen=True, slots=True)
class Socket:
    """What an action handler sees of the socket that sent the frame."""

    user: Any  # the identified user (a fresh instance after the user's rights change)
    channel_name: str  # the socket's channel: identity.push can reach it
    topics: frozenset[str]  # the topics it is subscribed to


Handler = Callable[[Socket, Any], Any]


@dataclass(frozen=True, slots=True)
class Action:
    """An application action: a name with a dot, its handler, an optional permission."""

    name: str
    handler: Handler
    permission: str | None
    is_async: bool


@dataclass(frozen=True, slots=True)
class Topic:
    """A declared topic pattern and who may subscribe and publish."""

    pattern: str
    allow: Callable[..., Any] | None = None
    permission: str | None = None
    presence: bool = False
    client_publish: bool = False
    regex: re.Pattern[str] = field(default=re.compile(""), compare=False, repr=False)

    def match(self, name: str) -> dict[str, str] | None:
        """The pattern's parameters if NAME matches it, else None."""
        found = self.regex.fullmatch(name)
        return found.groupdict() if found is not None else None


# Every registration, in order (duplicates included, for the system check).
registered_actions: list[Action] = []
actions: dict[str, Action] = {}
topics: list[Topic] = []


def action(name: str, permission: str | None = None) -> Callable[[Handler], Handler]:
    """Register the decorated `(socket, payload) -> reply payload` as action NAME.

    NAME has a dot (names without one belong to the protocol). A sync handler
    runs in the database thread, as the ORM requires. PERMISSION is a Django
    permission ("app.codename") the user must have, else `forbidden`.
    """

    def register(handler: Handler) -> Handler:
        spec = Action(name, handler, permission, inspect.iscoroutinefunction(handler))
        registered_actions.append(spec)
        actions.setdefault(name, spec)  # the check refuses a second one (identity.E005)
        return handler

    return register


def topic(
    pattern: str,
    allow: Callable[..., Any] | None = None,
    permission: str | None = None,
    presence: bool = False,
    client_publish: bool = False,
) -> Topic:
    """Declare the topics named by PATTERN (`room.{name}`) and who may use them.

    A user may subscribe (and publish, if CLIENT_PUBLISH) when they have
    PERMISSION (if given) and ALLOW(user, **parameters) is true (if given;
    sync or async). PRESENCE keeps the topic's members and pushes their
    join and leave. Every check runs again when the user's rights change.
    """
    problem = pattern_problem(pattern)
    if problem is not None:  # at import of the realtime.py: the traceback names the line
        raise ValueError(f"topic pattern {pattern!r}: {problem}")
    spec = Topic(pattern, allow, permission, presence, client_publish, compile_pattern(pattern))
    topics.append(spec)
    return spec


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """`room.{name}` -> a regex with one named group per parameter."""
    parts, end = [], 0
    for placeholder in PLACEHOLDER.finditer(pattern):
        parts.append(re.escape(pattern[end : placeholder.start()]))
        parts.append(f"(?P<{placeholder.group(1)}>{PARAMETER})")
        end = placeholder.end()
    parts.append(re.escape(pattern[end:]))
    return re.compile("".join(parts))


def find_topic(name: str) -> tuple[Topic, dict[str, str]] | None:
    """The first declared topic whose pattern matches NAME, with its parameters."""
    for spec in topics:
        params = spec.match(name)
        if params is not None:
            return spec, params
    return None


def pattern_problem(pattern: str) -> str | None:
    """Why PATTERN cannot name topics, or None (for the system check)."""
    literal = PLACEHOLDER.sub("x", pattern)
    if not name_ok(literal, 100) or "{" in literal or "}" in literal:
        return "use 1-100 characters from A-Z a-z 0-9 _.:- and {parameter} placeholders"
    names = PLACEHOLDER.findall(pattern)
    if len(names) != len(set(names)):
        return "a parameter appears twice"
    return None


async def allowed(spec: Topic, params: dict[str, str], user: Any) -> bool:
    """Whether USER may subscribe to (and publish on) a topic of SPEC with PARAMS.

    A rule that raises refuses (and is logged): a bug in a rule must not open
    a topic, nor end the socket that asked. A database outage is raised.
    """
    try:
        return await _check(spec, params, user)
    except DatabaseError:
        raise
    except Exception:
        logger.exception("the rule of topic pattern %r failed: refused", spec.pattern)
        return False


async def _check(spec: Topic, params: dict[str, str], user: Any) -> bool:
    if not user.is_active:
        return False
    if spec.permission is not None and not await _has_perm(user, spec.permission):
        return False
    if spec.allow is None:
        return True
    if inspect.iscoroutinefunction(spec.allow):
        verdict = await spec.allow(user, **params)
    else:  # it may read the database
        verdict = await database_sync_to_async(spec.allow)(user, **params)
        if inspect.isawaitable(verdict):  # a lambda that returns a coroutine
            verdict = await verdict
    return bool(verdict)


@database_sync_to_async
def _has_perm(user: Any, permission: str) -> bool:
    return bool(user.has_perm(permission))


async def may_run(spec: Action, user: Any) -> bool:
    """Whether USER has the action's permission (if it names one)."""
    return spec.permission is None or await _has_perm(user, spec.permission)


def autodiscover() -> None:
    """Import the `realtime` module of every installed app that has one."""
    autodiscover_modules("realtime")


def problems() -> list[tuple[str, str]]:
    """(what, why) for each bad action registration: the system check reports them."""
    found: list[tuple[str, str]] = []
    seen: dict[str, Handler] = {}
    for spec in registered_actions:
        where = f"{spec.handler.__module__}.{spec.handler.__qualname__}"
        if "." not in spec.name or not name_ok(spec.name, 100):
            found.append(
                (
                    f"action {spec.name!r} ({where})",
                    "an application action's name has a dot and 1-100 characters "
                    "from A-Z a-z 0-9 _.:-",
                )
            )
        if spec.name in seen and seen[spec.name] is not spec.handler:
            first = seen[spec.name]
            found.append(
                (
                    f"action {spec.name!r} ({where})",
                    f"already registered by {first.__module__}.{first.__qualname__}",
                )
            )
        seen.setdefault(spec.name, spec.handler)
    return found
