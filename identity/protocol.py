"""The wire contract as data: actions, error codes, close codes, frame builders.

No Django and no I/O here, so the contract is testable alone and every other
module (consumer, push API, views) speaks it through the same names.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any

import orjson

MAX_REF_LENGTH = 64
MAX_TEXT_LENGTH = 4096
MAX_TOPIC_LENGTH = 100
MAX_EVENT_LENGTH = 100
# Topic names (and event names): PROTOCOL.md v2, "Topics".
TOPIC_NAME = re.compile(r"[A-Za-z0-9_.:-]+")


class Action(StrEnum):
    """Client actions, and the push actions the server sends."""

    AUTH = "auth"
    WHOAMI = "whoami"
    LOGOUT = "logout"
    PING = "ping"
    PONG = "pong"
    MESSAGE = "message"
    SEND = "send"
    PRESENCE = "presence"
    ERROR = "error"
    SESSION = "session"
    DIRECT = "direct"
    DISCONNECT = "disconnect"
    # Version 2: topics.
    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"
    PUBLISH = "publish"
    EVENT = "event"
    UNSUBSCRIBED = "unsubscribed"
    MEMBERS = "members"


class ErrorCode(StrEnum):
    """The `code` of an `error` frame or of a failed `auth` reply."""

    INVALID_JSON = "invalid_json"
    INVALID_MESSAGE = "invalid_message"
    UNKNOWN_ACTION = "unknown_action"
    INVALID_PAYLOAD = "invalid_payload"
    NOT_AUTHENTICATED = "not_authenticated"
    UNSUPPORTED_FRAME = "unsupported_frame"
    RATE_LIMITED = "rate_limited"
    USER_NOT_FOUND = "user_not_found"
    TOKEN_INVALID = "token_invalid"
    TOKEN_EXPIRED = "token_expired"
    TOKEN_WRONG_TYPE = "token_wrong_type"
    TOKEN_REVOKED = "token_revoked"
    USER_INACTIVE = "user_inactive"
    IDENTITY_MISMATCH = "identity_mismatch"
    CONNECTION_LIMIT = "connection_limit"
    # Not in PROTOCOL.md's table: the channel layer (Redis) is down; retry later.
    SERVICE_UNAVAILABLE = "service_unavailable"
    # Version 2.
    UNKNOWN_TOPIC = "unknown_topic"
    FORBIDDEN = "forbidden"
    TOPIC_LIMIT = "topic_limit"
    # Not in PROTOCOL.md's table: an application action failed unexpectedly (logged).
    SERVER_ERROR = "server_error"


class CloseCode(IntEnum):
    """WebSocket close codes the server uses."""

    AUTH_TIMEOUT = 4401
    WITHDRAWN = 4403
    TOO_MANY = 4429
    # Not in PROTOCOL.md: the client stopped reading while frames piled up for it.
    SLOW_READER = 4408
    MESSAGE_TOO_BIG = 1009
    # Not in PROTOCOL.md's table (docs/protocol.md: a server error, reconnect
    # with backoff): the server could not write a frame to the socket.
    SERVER_ERROR = 1011


class Reason(StrEnum):
    """The `reason` of a `disconnect` push."""

    AUTH_TIMEOUT = "auth_timeout"
    KICKED = "kicked"
    USER_INACTIVE = "user_inactive"
    USER_DELETED = "user_deleted"
    TOKEN_REVOKED = "token_revoked"
    TOO_MANY_ATTEMPTS = "too_many_attempts"
    RATE_LIMITED = "rate_limited"
    SLOW_READER = "slow_reader"


CLOSE_CODE_FOR_REASON: dict[Reason, CloseCode] = {
    Reason.AUTH_TIMEOUT: CloseCode.AUTH_TIMEOUT,
    Reason.KICKED: CloseCode.WITHDRAWN,
    Reason.USER_INACTIVE: CloseCode.WITHDRAWN,
    Reason.USER_DELETED: CloseCode.WITHDRAWN,
    Reason.TOKEN_REVOKED: CloseCode.WITHDRAWN,
    Reason.TOO_MANY_ATTEMPTS: CloseCode.TOO_MANY,
    Reason.RATE_LIMITED: CloseCode.TOO_MANY,
    Reason.SLOW_READER: CloseCode.SLOW_READER,
}

# PROTOCOL.md: `reconnect` is true only for auth_timeout, false for every other
# reason (slow_reader included, though its token stays valid).
RECONNECT_REASONS = frozenset({Reason.AUTH_TIMEOUT})


class Unsubscribed(StrEnum):
    """The `reason` of an `unsubscribed` push."""

    FORBIDDEN = "forbidden"  # the user no longer passes the topic's check
    IDENTITY = "identity"  # the socket stopped being authenticated as that user


class Refusal(StrEnum):
    """Why a handshake was refused with HTTP 429 (the `code` of the JSON body)."""

    TOO_MANY_ANONYMOUS = "too_many_anonymous"
    HANDSHAKE_RATE = "handshake_rate"


# Actions a socket may use before it has an identity.
ANONYMOUS_ACTIONS = frozenset({Action.AUTH, Action.WHOAMI, Action.LOGOUT, Action.PING})

ERROR_MESSAGES: dict[ErrorCode, str] = {
    ErrorCode.INVALID_JSON: "The frame is not valid JSON.",
    ErrorCode.INVALID_MESSAGE: (
        'Send a JSON object with a string "action" (and an optional string or integer "ref").'
    ),
    ErrorCode.UNKNOWN_ACTION: "No such action; see the protocol for the list.",
    ErrorCode.NOT_AUTHENTICATED: 'This action needs an identity: send "auth" with a token first.',
    ErrorCode.UNSUPPORTED_FRAME: "Binary frames are not supported; send JSON text frames.",
    ErrorCode.RATE_LIMITED: "Too many frames; slow down.",
    # The database or the channel layer (Redis): a client cannot tell them apart, nor need to.
    ErrorCode.SERVICE_UNAVAILABLE: (
        "The server cannot reach a service it depends on right now; try again in a few seconds."
    ),
    ErrorCode.UNKNOWN_TOPIC: "No such topic.",
    ErrorCode.FORBIDDEN: "You may not do that.",
    ErrorCode.TOPIC_LIMIT: "This socket holds as many subscriptions as it may; unsubscribe first.",
    ErrorCode.SERVER_ERROR: "The action failed on the server; it has been logged.",
}


class EnvelopeError(Exception):
    """A frame that is not a valid envelope; `code` goes on the wire."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        action: str | None = None,
        ref: str | int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.action = action
        self.ref = ref


@dataclass(frozen=True, slots=True)
class Envelope:
    """A validated client frame."""

    action: str
    payload: Any
    ref: str | int | None


def parse_envelope(content: Any) -> Envelope:
    """Validate a decoded client frame; raise EnvelopeError if it is not an envelope."""
    if not isinstance(content, dict):
        raise EnvelopeError(ErrorCode.INVALID_MESSAGE, ERROR_MESSAGES[ErrorCode.INVALID_MESSAGE])
    ref = content.get("ref")
    action = content.get("action")
    if not _valid_ref(ref):
        raise EnvelopeError(
            ErrorCode.INVALID_MESSAGE,
            f'"ref" must be a string of at most {MAX_REF_LENGTH} characters or an integer.',
            action if isinstance(action, str) else None,
        )
    if not isinstance(action, str):
        # The ref is valid, so the error carries it (rule 1).
        raise EnvelopeError(
            ErrorCode.INVALID_MESSAGE, ERROR_MESSAGES[ErrorCode.INVALID_MESSAGE], None, ref
        )
    return Envelope(action, content.get("payload"), ref)


def decode(text: str) -> Any:
    """A client frame's JSON; raises orjson.JSONDecodeError if it is not JSON."""
    content = orjson.loads(text)
    # orjson reads integers past 64 bits as floats; a ref comes back exactly as sent.
    if type(content) is dict and type(content.get("ref")) is float:
        with contextlib.suppress(RecursionError):
            content = json.loads(text)
    return content


def encode(content: Any) -> str:
    """A server frame as text (raises orjson.JSONEncodeError if nested past 255 levels)."""
    try:
        return orjson.dumps(content).decode()
    except orjson.JSONEncodeError as exc:
        if "64-bit" not in str(exc):
            raise
        # An integer ref past 64 bits, carried back exactly.
        return json.dumps(content, ensure_ascii=False, separators=(",", ":"))


def peek(text: str) -> tuple[str | None, str | int | None]:
    """The action and valid `ref` of a raw frame, where it has them (to answer a refusal)."""
    try:
        content = decode(text)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(content, dict):
        return None, None
    action, ref = content.get("action"), content.get("ref")
    return (action if isinstance(action, str) else None), (ref if _valid_ref(ref) else None)


def _valid_ref(ref: Any) -> bool:
    if ref is None:
        return True
    if isinstance(ref, bool):  # bool is an int subclass, but not a ref
        return False
    if isinstance(ref, int):
        return True
    return isinstance(ref, str) and len(ref) <= MAX_REF_LENGTH


def frame(action: str, payload: Any, ref: str | int | None = None) -> dict[str, Any]:
    """A server frame; `ref` is present only when the client's frame had one."""
    out: dict[str, Any] = {"action": action, "payload": payload}
    if ref is not None:
        out["ref"] = ref
    return out


def error_frame(
    code: ErrorCode | str,
    message: str | None = None,
    action: str | None = None,
    ref: str | int | None = None,
) -> dict[str, Any]:
    """An `error` frame answering a failed action."""
    text = message or ERROR_MESSAGES[ErrorCode(code)]
    payload = {"code": str(code), "message": text, "action": action}
    return frame(Action.ERROR, payload, ref)


def auth_failure(code: ErrorCode, message: str) -> dict[str, Any]:
    """The payload of a failed `auth` reply."""
    return {"registered": False, "error": {"code": str(code), "message": message}}


def user_payload(user_id: int, username: str) -> dict[str, Any]:
    """The only fields of a user that ever go on the wire."""
    return {"id": user_id, "username": username}


def disconnect_push(reason: Reason) -> dict[str, Any]:
    """The push sent just before the server closes a socket."""
    return frame(
        Action.DISCONNECT, {"reason": str(reason), "reconnect": reason in RECONNECT_REASONS}
    )


def validate_text(payload: Any) -> str:
    """`message` text: a string of at most MAX_TEXT_LENGTH code points."""
    if not isinstance(payload, str):
        raise EnvelopeError(ErrorCode.INVALID_PAYLOAD, "The payload must be a string of text.")
    if len(payload) > MAX_TEXT_LENGTH:
        raise EnvelopeError(
            ErrorCode.INVALID_PAYLOAD, f"The text is longer than {MAX_TEXT_LENGTH} characters."
        )
    return payload


def storable_text(value: str) -> bool:
    """Whether a database can hold the string: no NUL, no lone surrogate."""
    # PostgreSQL text refuses NUL; a lone surrogate (JSON's "\\ud800") is not UTF-8.
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def validate_send(payload: Any) -> tuple[str, str]:
    """`send` payload: {"to": USERNAME, "text": TEXT}."""
    if not isinstance(payload, dict) or not isinstance(payload.get("to"), str):
        raise EnvelopeError(
            ErrorCode.INVALID_PAYLOAD, 'The payload must be {"to": USERNAME, "text": TEXT}.'
        )
    to = payload["to"]
    # A username the database cannot hold is bad input, not a database outage.
    if not to or len(to) > 150 or not storable_text(to):
        raise EnvelopeError(ErrorCode.INVALID_PAYLOAD, '"to" must be a username.')
    return to, validate_text(payload.get("text"))


def validate_topic(payload: Any) -> str:
    """`subscribe`/`unsubscribe` payload: {"topic": NAME}."""
    if not isinstance(payload, dict):
        raise EnvelopeError(ErrorCode.INVALID_PAYLOAD, 'The payload must be {"topic": NAME}.')
    return topic_name(payload.get("topic"))


def topic_name(name: Any) -> str:
    """A topic name: 1-100 characters from A-Z a-z 0-9 _ . : -."""
    if not isinstance(name, str) or not name_ok(name, MAX_TOPIC_LENGTH):
        raise EnvelopeError(
            ErrorCode.INVALID_PAYLOAD,
            f'"topic" must be 1-{MAX_TOPIC_LENGTH} characters from A-Z, a-z, 0-9 and _.:-',
        )
    return name


def name_ok(name: str, limit: int) -> bool:
    """Whether NAME is 1-LIMIT characters of the topic alphabet."""
    return 0 < len(name) <= limit and TOPIC_NAME.fullmatch(name) is not None


def validate_publish(payload: Any) -> tuple[str, str, Any]:
    """`publish` payload: {"topic": NAME, "data": ANY, "event": optional NAME}."""
    if not isinstance(payload, dict) or "data" not in payload:
        raise EnvelopeError(
            ErrorCode.INVALID_PAYLOAD, 'The payload must be {"topic": NAME, "data": ANY}.'
        )
    event = payload.get("event", DEFAULT_EVENT)
    if not isinstance(event, str) or not name_ok(event, MAX_EVENT_LENGTH):
        raise EnvelopeError(
            ErrorCode.INVALID_PAYLOAD,
            f'"event" must be 1-{MAX_EVENT_LENGTH} characters from A-Z, a-z, 0-9 and _.:-',
        )
    return topic_name(payload.get("topic")), event, payload["data"]


# The event name of a client's `publish` that names none.
DEFAULT_EVENT = "message"


def event_push(topic: str, event: str, data: Any, sender: dict[str, Any] | None) -> dict[str, Any]:
    """The `event` push: something was published to TOPIC."""
    return frame(Action.EVENT, {"topic": topic, "event": event, "data": data, "from": sender})


def members_push(topic: str, event: str, user: dict[str, Any]) -> dict[str, Any]:
    """The `members` push: a user's first socket joined / last socket left TOPIC."""
    return frame(Action.MEMBERS, {"topic": topic, "event": event, "user": user})


def unsubscribed_push(topic: str, reason: Unsubscribed) -> dict[str, Any]:
    """The `unsubscribed` push: the server ended a subscription."""
    return frame(Action.UNSUBSCRIBED, {"topic": topic, "reason": str(reason)})
