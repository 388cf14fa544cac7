"""A bare ASGI app speaking the benchmarked subset of the identity protocol.

No Django, no Channels: the "Python ceiling" the project is measured against.
It implements `auth` (SimpleJWT-compatible HS256 access tokens, verified with
PyJWT), `whoami`, `logout`, `ping` and `message` on `/ws/`, with the same
envelope, `ref` and error rules as `shared/PROTOCOL.md`. Everything else is
answered `unknown_action`, which the fan-out and presence scenarios read as
"not supported here" and skip.

Configuration (read once at import, since daphne sends no lifespan events):

- `BENCH_JWT_KEY`: the HS256 key (the project's `JWT_SIGNING_KEY`/secret).
- `BENCH_USERS_FILE`: JSON `[{"id": 1, "username": "alice"}, ...]`; users are
  kept in a dict so no message ever touches a database.

Run it with `uvicorn bench.bare_asgi:app` or `daphne bench.bare_asgi:app`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from typing import Any

import jwt

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
User = dict[str, Any]

WS_PATH = "/ws/"
MAX_REF_CHARS = 64
MAX_TEXT_CHARS = 4096
ALGORITHMS = ["HS256"]
REQUIRED_CLAIMS = ["exp", "token_type", "user_id"]


class ProtocolError(Exception):
    """An action failed; `code` is what goes on the wire."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def load_users(path: str | None) -> dict[int, User]:
    """Read the user table: id -> the public `USER` object."""
    if not path:
        return {}
    with open(path, encoding="utf-8") as fh:
        rows = json.load(fh)
    return {int(r["id"]): {"id": int(r["id"]), "username": r["username"]} for r in rows}


SIGNING_KEY = os.environ.get("BENCH_JWT_KEY", "bench-insecure-signing-key")
USERS = load_users(os.environ.get("BENCH_USERS_FILE"))


def validate_token(raw: Any) -> tuple[User, int]:
    """Raw token -> (user, exp), or raise ProtocolError with the auth code."""
    if not isinstance(raw, str) or not raw:
        raise ProtocolError("token_invalid", "the payload must be a non-empty token string")
    try:
        claims = jwt.decode(
            raw, SIGNING_KEY, algorithms=ALGORITHMS, options={"require": REQUIRED_CLAIMS}
        )
    except jwt.ExpiredSignatureError as exc:
        raise ProtocolError("token_expired", "the token has expired") from exc
    except jwt.InvalidTokenError as exc:
        raise ProtocolError("token_invalid", "the token is not valid") from exc
    if claims.get("token_type") != "access":
        raise ProtocolError("token_wrong_type", "use an access token")
    try:
        user = USERS[int(claims["user_id"])]
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError("user_not_found", "the token's user does not exist") from exc
    return user, int(claims["exp"])


def reply(action: str, payload: Any, ref: Any) -> str:
    """Encode a frame; `ref` only when the client sent one."""
    frame: dict[str, Any] = {"action": action, "payload": payload}
    if ref is not None:
        frame["ref"] = ref
    # Compact, like the project's consumer, so both put the same bytes on the wire.
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))


def error(code: str, message: str, action: str | None, ref: Any = None) -> str:
    """Encode an `error` frame."""
    return reply("error", {"code": code, "message": message, "action": action}, ref)


class Connection:
    """Per-socket state and the action handlers."""

    def __init__(self) -> None:
        self.user: User | None = None
        self.expires_at: int | None = None

    def handle(self, text: str) -> str:
        """One text frame in, one reply frame out."""
        try:
            frame = json.loads(text)
        except ValueError:
            return error("invalid_json", "the frame is not JSON", None)
        if not isinstance(frame, dict) or not isinstance(frame.get("action"), str):
            return error("invalid_message", "send an object with a string action", None)
        ref = frame.get("ref")
        if ref is not None and not _valid_ref(ref):
            return error("invalid_message", "ref must be a short string or an integer", None)
        action = frame["action"]
        handler = HANDLERS.get(action)
        if handler is None:
            return error("unknown_action", f"no action {action!r}", action, ref)
        try:
            return handler(self, frame.get("payload"), ref)
        except ProtocolError as exc:
            return error(exc.code, exc.message, action, ref)

    def auth(self, payload: Any, ref: Any) -> str:
        try:
            user, exp = validate_token(payload)
            if self.user is not None and self.user["id"] != user["id"]:
                raise ProtocolError("identity_mismatch", "log out before switching users")
        except ProtocolError as exc:
            err = {"code": exc.code, "message": exc.message}
            return reply("auth", {"registered": False, "error": err}, ref)
        self.user, self.expires_at = user, exp
        return reply("auth", {"registered": True, "user": user, "expires_at": exp}, ref)

    def whoami(self, payload: Any, ref: Any) -> str:
        return reply("whoami", {"user": self.user, "expires_at": self.expires_at}, ref)

    def logout(self, payload: Any, ref: Any) -> str:
        self.user = self.expires_at = None
        return reply("logout", {"registered": False}, ref)

    def ping(self, payload: Any, ref: Any) -> str:
        return reply("pong", payload, ref)

    def message(self, payload: Any, ref: Any) -> str:
        if self.user is None:
            raise ProtocolError("not_authenticated", "authenticate first")
        if not isinstance(payload, str) or len(payload) > MAX_TEXT_CHARS:
            raise ProtocolError("invalid_payload", "text must be a string of at most 4096 chars")
        return reply("message", {"text": payload, "user": self.user}, ref)


HANDLERS: dict[str, Callable[[Connection, Any, Any], str]] = {
    "auth": Connection.auth,
    "whoami": Connection.whoami,
    "logout": Connection.logout,
    "ping": Connection.ping,
    "message": Connection.message,
}


def _valid_ref(ref: Any) -> bool:
    # bool is an int subclass, but `"ref": true` is not a valid ref.
    if isinstance(ref, bool):
        return False
    return isinstance(ref, int) or (isinstance(ref, str) and len(ref) <= MAX_REF_CHARS)


async def websocket(scope: Scope, receive: Receive, send: Send) -> None:
    """Serve one socket until the client goes."""
    event = await receive()
    if event["type"] != "websocket.connect":
        return
    if scope["path"] != WS_PATH:
        await send({"type": "websocket.close", "code": 1000})
        return
    await send({"type": "websocket.accept"})
    conn = Connection()
    while True:
        event = await receive()
        if event["type"] == "websocket.disconnect":
            return
        text = event.get("text")
        if text is None:
            out = error("unsupported_frame", "send text frames", None)
        else:
            out = conn.handle(text)
        await send({"type": "websocket.send", "text": out})


async def http(scope: Scope, receive: Receive, send: Send) -> None:
    """Everything over plain HTTP is a 404: this app is WebSocket only."""
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b""})


async def lifespan(scope: Scope, receive: Receive, send: Send) -> None:
    """Acknowledge uvicorn's lifespan events (the users are loaded at import)."""
    while True:
        event = await receive()
        if event["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif event["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The ASGI entry point."""
    kind = scope["type"]
    if kind == "websocket":
        await websocket(scope, receive, send)
    elif kind == "http":
        await http(scope, receive, send)
    elif kind == "lifespan":
        await lifespan(scope, receive, send)
