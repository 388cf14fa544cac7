"""The WebSocket consumer: one instance per socket, holding who is on it.

Thin by design: it validates frames (identity.protocol), asks identity.tokens
and identity.registry (through identity.sessions) who the user is, and keeps
the per-socket state: user, expiry, timers, attempt and rate counters.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, ClassVar

import orjson
from channels.consumer import get_handler_name
from channels.exceptions import ChannelFull, StopConsumer
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import get_channel_layer
from django.db import DatabaseError

from identity import conf, heartbeat, push, registry, sessions, timers
from identity.exceptions import IdentityError, IdentityMismatch, ServiceUnavailable
from identity.layers import LayerUnavailable, attach
from identity.protocol import (
    ANONYMOUS_ACTIONS,
    CLOSE_CODE_FOR_REASON,
    Action,
    CloseCode,
    Envelope,
    EnvelopeError,
    ErrorCode,
    Reason,
    auth_failure,
    disconnect_push,
    error_frame,
    frame,
    parse_envelope,
    user_payload,
    validate_send,
    validate_text,
)

logger = logging.getLogger(__name__)

RATE_WINDOW = 10.0  # seconds over which refused frames are counted
EVENT_BACKLOG = 100  # channel-layer events waiting on one socket before more are dropped


class TokenBucket:
    """Per-socket frame allowance: `burst` at once, refilled at `rate` per second."""

    __slots__ = ("burst", "rate", "refusals", "stamp", "tokens")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.stamp = burst, time.monotonic()
        self.refusals: deque[float] | None = None  # most sockets never need one

    def take(self) -> bool:
        """Take one token; False if the bucket is empty."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        if self.refusals is None:
            self.refusals = deque()
        self.refusals.append(now)
        while self.refusals[0] < now - RATE_WINDOW:
            self.refusals.popleft()
        return False

    def flooding(self) -> bool:
        """True once refusals in the window exceed the burst."""
        return self.refusals is not None and len(self.refusals) > self.burst


class IdentityConsumer(AsyncJsonWebsocketConsumer):
    """Authenticates a socket with a SimpleJWT access token and serves the protocol."""

    # Action -> handler method name; looked up per frame instead of holding
    # seven bound methods on every socket.
    HANDLERS: ClassVar[dict[str, str]] = {
        Action.AUTH: "on_auth",
        Action.WHOAMI: "on_whoami",
        Action.LOGOUT: "on_logout",
        Action.PING: "on_ping",
        Action.MESSAGE: "on_message",
        Action.SEND: "on_send",
        Action.PRESENCE: "on_presence",
    }

    # The consumer leaves its groups itself (forget_identity); no list per socket.
    groups: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.user: Any = None
        self.expires_at: int | None = None
        self.subscribed = False
        self.closing = False
        self.failed_auths = 0
        self.opened_at = time.time()
        rate, burst = conf.rate_limit(), conf.rate_burst()
        # Either set to 0 turns the limit off (a zero burst would refuse everything).
        self.bucket = TokenBucket(rate, burst) if rate > 0 and burst > 0 else None
        # One timer at a time: `auth` timeout while anonymous, then `expiring`,
        # then `expired` (each arms the next).
        self.timer: timers.Deadline | None = None
        self.timer_callback: Callable[[], Awaitable[None]] | None = None
        self.tasks: set[asyncio.Future[None]] | None = None  # created on first event or timer
        # Held while anything runs on this socket: a client frame, a channel-layer
        # event or a timer see the socket one at a time, as Channels' own loop would.
        self.lock = asyncio.Lock()

    # --- transport ------------------------------------------------------------

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        # Channels' AsyncConsumer.__call__, minus a task blocked on the channel
        # layer and an asyncio.wait per frame: layer events come in through
        # `deliver` (identity.layers.attach) and client frames through this loop.
        self.scope, self.base_send = scope, send
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        try:
            self.channel_name = await self.channel_layer.new_channel()
        except LayerUnavailable:
            # The socket never opened: refuse the handshake instead of a 500.
            logger.warning("channel layer unavailable: handshake refused")
            await receive()
            await send({"type": "websocket.close"})
            return
        detach = attach(self.channel_layer, self.channel_name, self.deliver)
        try:
            while True:
                message = await receive()
                async with self.lock:
                    await self.dispatch(message)
        except StopConsumer:
            pass
        finally:
            await detach()

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels runs close_old_connections through a thread hop before every
        # handler; no handler here touches the ORM outside database_sync_to_async
        # (which does that itself), so the hop would be pure cost per frame.
        if message["type"] == "websocket.receive":  # the hot path: no name lookup
            await self.websocket_receive(message)
            return
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def websocket_connect(self, message: dict[str, Any]) -> None:
        await self.accept()
        heartbeat.ensure_running()
        self.start_timer(conf.auth_timeout(), self.on_auth_timeout)

    async def websocket_receive(self, message: dict[str, Any]) -> None:
        if self.closing:
            return
        text = message.get("text")
        if text is not None and self.too_big(text):
            await self.close_socket(code=CloseCode.MESSAGE_TOO_BIG)
        elif not await self.within_rate():
            return
        elif text is None:
            await self.send_json(error_frame(ErrorCode.UNSUPPORTED_FRAME))
        else:
            await self.handle_text(text)

    @staticmethod
    def too_big(text: str) -> bool:
        """Over the frame limit in UTF-8 bytes (encoding only when it could be)."""
        limit = conf.max_frame_bytes()
        return len(text) > limit // 4 and len(text.encode()) > limit

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        self.closing = True
        self.cancel_timer()
        await self.forget_identity()
        raise StopConsumer()

    @classmethod
    async def decode_json(cls, text_data: str) -> Any:
        return orjson.loads(text_data)

    async def send_json(self, content: Any, close: bool = False) -> None:
        # Straight to the server: the generic consumer's send() re-checks
        # arguments and adds two awaits per frame.
        await self.base_send({"type": "websocket.send", "text": orjson.dumps(content).decode()})
        if close:
            await self.close(close)

    async def within_rate(self) -> bool:
        """Take a token from the socket's bucket; answer (and maybe close) if empty."""
        if self.bucket is None or self.bucket.take():
            return True
        await self.send_json(error_frame(ErrorCode.RATE_LIMITED))
        if self.bucket.flooding():
            await self.close_socket(Reason.RATE_LIMITED)
        return False

    async def handle_text(self, text: str) -> None:
        """Decode, validate and dispatch one client frame."""
        try:
            content = await self.decode_json(text)
        except orjson.JSONDecodeError:  # also: nested past 1,024 levels, ints past 64 bits
            await self.send_json(error_frame(ErrorCode.INVALID_JSON))
            return
        try:
            envelope = parse_envelope(content)
        except EnvelopeError as exc:
            await self.send_json(error_frame(exc.code, exc.message, exc.action, exc.ref))
            return
        await self.run_action(envelope)

    async def run_action(self, envelope: Envelope) -> None:
        name = self.HANDLERS.get(envelope.action)
        handler = getattr(self, name) if name is not None else None
        try:
            if handler is None:
                raise EnvelopeError(ErrorCode.UNKNOWN_ACTION, f"No action {envelope.action!r}.")
            if self.user is None and envelope.action not in ANONYMOUS_ACTIONS:
                raise EnvelopeError(
                    ErrorCode.NOT_AUTHENTICATED,
                    f'"{envelope.action}" needs an identity: send "auth" with a token first.',
                )
            await handler(envelope)
        except EnvelopeError as exc:
            await self.send_json(error_frame(exc.code, exc.message, envelope.action, envelope.ref))
        except orjson.JSONEncodeError:
            # Decodable but nested too deeply to encode again (a ping echo past
            # orjson's 255 levels).
            message = "The payload is nested too deeply."
            code = ErrorCode.INVALID_PAYLOAD
            await self.send_json(error_frame(code, message, envelope.action, envelope.ref))
        except (LayerUnavailable, DatabaseError):
            logger.warning("service unavailable during %r", envelope.action, exc_info=True)
            code = ErrorCode.SERVICE_UNAVAILABLE
            await self.send_json(error_frame(code, None, envelope.action, envelope.ref))

    async def reply(self, envelope: Envelope, payload: Any, action: str | None = None) -> None:
        await self.send_json(frame(action or envelope.action, payload, envelope.ref))

    async def close_socket(self, reason: Reason | None = None, code: int | None = None) -> None:
        """Send `disconnect` REASON (if any) and close; nothing is processed after."""
        if self.closing:
            return
        self.closing = True
        self.cancel_timer()
        if reason is not None:
            await self.send_json(disconnect_push(reason))
            code = CLOSE_CODE_FOR_REASON[reason]
        # A plain int: autobahn (daphne) refuses an IntEnum as a close code.
        await self.close(code=int(code) if code is not None else None)
        # Leave the registry now, not when the client finishes the closing
        # handshake: a withdrawn socket must not count as online meanwhile.
        await self.forget_identity()

    # --- actions --------------------------------------------------------------

    async def on_auth(self, envelope: Envelope) -> None:
        try:
            user, expires_at = await self.verify(envelope.payload)
        except ServiceUnavailable as exc:
            # The server's fault, not the client's: no attempt is counted.
            await self.reply(envelope, auth_failure(exc.code, exc.message))
            return
        except DatabaseError:
            logger.warning("database unavailable during auth", exc_info=True)
            failure = ServiceUnavailable("The server cannot reach its database; try again.")
            await self.reply(envelope, auth_failure(failure.code, failure.message))
            return
        except IdentityError as exc:
            await self.reply(envelope, auth_failure(exc.code, exc.message))
            await self.count_failed_auth()
            return
        self.failed_auths = 0
        self.set_identity(user, expires_at)
        await self.reply(envelope, self.auth_success())
        if 0 < expires_at - time.time() <= conf.expiry_notice():
            await self.push_expiring()

    async def verify(self, raw: Any) -> tuple[Any, int]:
        """Resolve the token's user; register the socket if it was anonymous."""
        if self.user is None:
            user, token = await sessions.open_session(raw, self.socket_info())
            return user, token.expires_at
        user, token = await sessions.check_token(raw)
        if user.pk != self.user.pk:
            raise IdentityMismatch()
        return self.user, token.expires_at

    def auth_success(self) -> dict[str, Any]:
        return {"registered": True, "user": self.user_wire(), "expires_at": self.expires_at}

    async def count_failed_auth(self) -> None:
        self.failed_auths += 1
        if self.failed_auths >= conf.max_auth_attempts():
            await self.close_socket(Reason.TOO_MANY_ATTEMPTS)

    async def on_whoami(self, envelope: Envelope) -> None:
        user = self.user_wire() if self.user is not None else None
        await self.reply(envelope, {"user": user, "expires_at": self.expires_at})

    async def on_logout(self, envelope: Envelope) -> None:
        if self.user is not None:
            await self.drop_identity()
        await self.reply(envelope, {"registered": False})

    async def on_ping(self, envelope: Envelope) -> None:
        await self.reply(envelope, envelope.payload, Action.PONG)

    async def on_message(self, envelope: Envelope) -> None:
        text = validate_text(envelope.payload)
        await self.reply(envelope, {"text": text, "user": self.user_wire()})

    async def on_send(self, envelope: Envelope) -> None:
        to, text = validate_send(envelope.payload)
        recipient = await sessions.find_recipient(to)
        if recipient is None:
            raise EnvelopeError(ErrorCode.USER_NOT_FOUND, f"No user named {to!r}.")
        recipient_id, online = recipient
        await push.send_to_user(
            recipient_id, Action.DIRECT, {"from": self.user_wire(), "text": text}
        )
        await self.reply(envelope, {"to": to, "online": online})

    async def on_presence(self, envelope: Envelope) -> None:
        if not self.subscribed:
            await self.channel_layer.group_add(push.PRESENCE_GROUP, self.channel_name)
            self.subscribed = True
        users = await push.online_users()
        await self.reply(envelope, {"users": [u.as_dict() for u in users]})

    # --- identity state -------------------------------------------------------

    def user_wire(self) -> dict[str, Any]:
        return user_payload(self.user.pk, self.user.get_username())

    def socket_info(self) -> registry.SocketInfo:
        headers = dict(self.scope.get("headers") or [])
        client = self.scope.get("client") or ("", 0)
        return registry.SocketInfo(
            channel_name=self.channel_name,
            opened_at=datetime.fromtimestamp(self.opened_at, tz=UTC),
            remote_addr=str(client[0] or ""),
            user_agent=headers.get(b"user-agent", b"").decode("latin-1"),
        )

    def set_identity(self, user: Any, expires_at: int) -> None:
        self.user, self.expires_at = user, expires_at
        self.scope["user"] = user
        remaining, notice = expires_at - time.time(), conf.expiry_notice()
        if 0 < notice < remaining:  # a notice of 0 turns the `expiring` hint off
            self.start_timer(remaining - notice, self.on_expiring)
        else:
            self.start_timer(remaining, self.on_expired)

    async def drop_identity(self) -> None:
        """Back to anonymous: leave the user's groups, the registry, and rearm the timeout."""
        self.cancel_timer()
        await self.forget_identity()
        if not self.closing:
            self.start_timer(conf.auth_timeout(), self.on_auth_timeout)

    async def forget_identity(self) -> None:
        user, subscribed = self.user, self.subscribed
        if user is None:
            return
        self.user = self.expires_at = None
        self.subscribed = False
        self.scope.pop("user", None)
        groups = [push.user_group(user.pk)] + ([push.PRESENCE_GROUP] if subscribed else [])
        try:
            for group in groups:
                await self.channel_layer.group_discard(group, self.channel_name)
        except LayerUnavailable:
            # Pushes to a channel nobody reads are dropped; nothing else to undo.
            logger.warning("channel layer unavailable: %s left its groups late", self.channel_name)
        await sessions.close_session(self.channel_name, user.pk, user.get_username())

    # --- timers and channel-layer events ----------------------------------------

    def start_timer(self, delay: float, callback: Callable[[], Awaitable[None]]) -> None:
        """Run `callback` after `delay` seconds, replacing the socket's timer."""
        self.cancel_timer()
        if delay <= 0:
            return
        self.timer, self.timer_callback = timers.call_later(delay, self.fire_timer), callback

    def fire_timer(self) -> None:
        callback, self.timer, self.timer_callback = self.timer_callback, None, None
        if callback is not None:
            self.spawn(self.run_timer(callback))

    async def run_timer(self, callback: Callable[[], Awaitable[None]]) -> None:
        async with self.lock:
            if self.closing:
                return
            try:
                await callback()
            except Exception:
                logger.exception("identity timer failed")

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = self.timer_callback = None

    def deliver(self, message: dict[str, Any]) -> None:
        """Take a channel-layer event; it is handled after whatever the socket is doing.

        Past EVENT_BACKLOG waiting events, pushes are refused (the layer drops
        them, as it would for a full channel); a withdrawal never is.
        """
        backed_up = self.tasks is not None and len(self.tasks) >= EVENT_BACKLOG
        if backed_up and message.get("type") != push.DISCONNECT_EVENT:
            raise ChannelFull(self.channel_name)
        self.spawn(self.handle_event(message))

    async def handle_event(self, message: dict[str, Any]) -> None:
        async with self.lock:
            try:
                await self.dispatch(message)
            except Exception:
                logger.exception("identity event %r failed", message.get("type"))

    def spawn(self, coroutine: Awaitable[None]) -> None:
        # Keep a reference: the loop holds tasks only weakly.
        task = asyncio.ensure_future(coroutine)
        if self.tasks is None:
            self.tasks = set()
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def on_auth_timeout(self) -> None:
        if self.user is None:
            await self.close_socket(Reason.AUTH_TIMEOUT)

    async def on_expiring(self) -> None:
        if self.user is not None and self.expires_at is not None:
            await self.push_expiring()
            self.start_timer(self.expires_at - time.time(), self.on_expired)

    async def push_expiring(self) -> None:
        await self.send_json(
            frame(Action.SESSION, {"event": "expiring", "expires_at": self.expires_at})
        )

    async def on_expired(self) -> None:
        if self.user is None:
            return
        await self.drop_identity()
        await self.send_json(frame(Action.SESSION, {"event": "expired"}))

    # --- channel-layer events (identity.push) -----------------------------------

    async def identity_disconnect(self, event: dict[str, Any]) -> None:
        """The server withdrew this socket's identity: push the reason and close."""
        withdrawn = self.user is not None
        if withdrawn:  # else logged out since the event was sent: nothing to withdraw
            await self.close_socket(Reason(event["reason"]))
        await self.acknowledge_withdrawal(event, withdrawn)

    async def acknowledge_withdrawal(self, event: dict[str, Any], closed: bool) -> None:
        """Tell the withdrawal's sender (its `reply_to`) whether this socket gave up an identity."""
        if not event.get("reply_to"):
            return
        ack = {"type": push.ACK_EVENT, "channel": self.channel_name, "closed": closed}
        try:
            await self.channel_layer.send(event["reply_to"], ack)
        except Exception:  # the sender counts it as unanswered; the socket is closed anyway
            logger.warning(
                "could not acknowledge a withdrawal of %s", self.channel_name, exc_info=True
            )

    async def identity_push(self, event: dict[str, Any]) -> None:
        """A frame for every socket of this user (e.g. `direct`)."""
        if self.user is not None and not self.closing:
            await self.send_json(event["frame"])

    async def identity_presence(self, event: dict[str, Any]) -> None:
        """A presence change, for sockets that asked `presence`."""
        if self.subscribed and not self.closing:
            await self.send_json(event["frame"])
