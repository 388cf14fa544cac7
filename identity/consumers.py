"""The WebSocket consumer: one instance per socket, holding who is on it.

Thin by design: it validates frames (identity.protocol), asks identity.tokens
and identity.registry (through identity.sessions) who the user is, and keeps
the per-socket state: user, expiry, timers, attempt and rate counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, ClassVar

import orjson
from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import get_channel_layer
from django.db import DatabaseError

from identity import (
    conf,
    counters,
    guard,
    heartbeat,
    metrics,
    push,
    realtime,
    registry,
    sessions,
    timers,
)
from identity.exceptions import IdentityError, IdentityMismatch, ServiceUnavailable
from identity.layers import LayerUnavailable, attach
from identity.logs import throttled
from identity.protocol import (
    ANONYMOUS_ACTIONS,
    CLOSE_CODE_FOR_REASON,
    Action,
    CloseCode,
    Envelope,
    EnvelopeError,
    ErrorCode,
    Reason,
    Unsubscribed,
    auth_failure,
    decode,
    disconnect_push,
    encode,
    error_frame,
    frame,
    parse_envelope,
    peek,
    unsubscribed_push,
    user_payload,
    validate_publish,
    validate_send,
    validate_text,
    validate_topic,
)

logger = logging.getLogger(__name__)

RATE_WINDOW = 10.0  # seconds over which refused frames are counted
EVENT_BACKLOG = 100  # pushes waiting on one socket before more are dropped (or merged)
# A withdrawal waits this long for the frame in hand; if that frame's handler is
# then stuck writing to a client that does not read, it goes ahead without it.
STUCK_AFTER = 0.5  # seconds
# How long the goodbye (`disconnect` and the close frame) may wait for a client
# that does not read before the socket is dropped without it.
GOODBYE_TIMEOUT = 30.0  # seconds


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


async def uncancellable(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run COROUTINE to its end, even if the caller is cancelled meanwhile (then re-raise)."""
    task = asyncio.ensure_future(coroutine)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


class Withdrawn(Exception):
    """The socket was withdrawn while an application action ran: it gets no reply."""


class IdentityConsumer(AsyncJsonWebsocketConsumer):
    """Authenticates a socket with a SimpleJWT access token and serves the protocol.

    One socket's life: client frames come in through `serve`, one at a time
    under `lock`; channel-layer events through `deliver` (pushes queue behind
    the frame in hand, at most EVENT_BACKLOG; a withdrawal goes ahead of them);
    timers through `fire_timer`. Every write goes through `transmit` (answers
    to client frames through `answer`): a frame the server cannot write ends
    the socket (`lose`, close 1011); an answer it cannot write becomes a
    `server_error`.
    However the socket ends, `end` leaves the registry and the groups.

    What a Channels reader should know: this is an AsyncJsonWebsocketConsumer
    that keeps the user on the instance (`self.user`, and `scope["user"]` for
    code that looks there), but it replaces `__call__`, `dispatch`, `send_json`
    and every `websocket_*` handler, so Channels' `connect`, `receive_json`,
    `disconnect` and `groups` hooks are never called. That is what keeps an
    idle socket to a dict entry and a frame to one dispatch
    (docs/performance.md). To extend it, write a `realtime.py` in your app
    (identity.realtime: actions with a dot in their name, and topics) and push
    to sockets through identity.push; protocol actions are in HANDLERS, each
    an `on_<action>` method taking the Envelope.
    """

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
        Action.SUBSCRIBE: "on_subscribe",
        Action.UNSUBSCRIBE: "on_unsubscribe",
        Action.PUBLISH: "on_publish",
    }

    # The consumer leaves its groups itself (forget_identity); no list per socket.
    groups: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.user: Any = None
        self.expires_at: int | None = None
        self.subscribed = False
        # Whether this socket ever joined a presence topic (TopicMember rows to remove).
        self.presence_rows = False
        # Presence and members pushes past the backlog, the latest per user (merge()).
        self.merged: dict[str, dict[str, Any]] | None = None
        # Topic name -> its declaration, while subscribed (identity.realtime).
        self.topics: dict[str, realtime.Topic] | None = None
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
        self.tasks: set[asyncio.Future[None]] | None = None  # timers and withdrawals
        self.pushes: set[asyncio.Future[None]] | None = None  # pushes waiting to be written
        # Held while anything runs on this socket: a client frame, a channel-layer
        # event or a timer see the socket one at a time, as Channels' own loop would.
        self.lock = asyncio.Lock()
        self.sending = 0  # sends in progress; one seen from elsewhere is blocked on the client
        self.gone = False  # the server could not write: the connection is lost
        self.slow = False  # closed for not reading
        self.recheck_pending = False  # a re-check waits for the socket (deliver)
        self.main: asyncio.Task[Any] | None = None
        self.action: asyncio.Future[Any] | None = None  # an application handler running

    # --- transport ------------------------------------------------------------

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        # Channels' AsyncConsumer.__call__, minus a task blocked on the channel
        # layer and an asyncio.wait per frame: layer events come in through
        # `deliver` (identity.layers.attach) and client frames through this loop.
        self.scope, self.base_send = scope, send
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        try:
            self.channel_name = await self.channel_layer.new_channel()
        except LayerUnavailable as exc:
            metrics.CONNECTS.inc(ErrorCode.SERVICE_UNAVAILABLE)
            metrics.service_error(exc)
            # The socket never opened: refuse the handshake instead of a 500.
            logger.warning("channel layer unavailable: handshake refused")
            await receive()
            await send({"type": "websocket.close"})
            return
        self.main = asyncio.current_task()
        # Events arrive in whatever context sent them (a sync view's thread
        # context, whose executor is gone by the time a database call runs);
        # the socket's own tasks run in the socket's context instead.
        self.context = contextvars.copy_context()
        detach = attach(self.channel_layer, self.channel_name, self.deliver)
        metrics.SOCKETS_OPEN.inc()
        try:
            await self.serve(receive)
        finally:
            metrics.SOCKETS_OPEN.dec()
            # However the socket ends (close, reset, a failed send, cancellation,
            # server shutdown), it leaves the registry, its groups and its timers
            # (forget_identity finishes leaving the registry even if cancelled).
            await self.end(detach)

    async def serve(self, receive: Any) -> None:
        """Take client frames one at a time until the socket ends."""
        try:
            while True:
                message = await receive()
                async with self.lock:
                    await self.dispatch(message)
        except StopConsumer:
            pass
        except asyncio.CancelledError:
            if not self.closing:  # cancelled by the server, not by our own goodbye
                raise
        except Exception:
            if not self.closing:  # a handler that lost a race with a withdrawal is no bug
                logger.exception("socket %s failed", self.channel_name)

    async def end(self, detach: Callable[[], Awaitable[None]]) -> None:
        self.closing = True
        self.cancel_timer()
        for task in [*(self.pushes or ()), *(self.tasks or ())]:
            if task is not asyncio.current_task():
                task.cancel()
        try:
            await self.forget_identity()
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
        counters.count(counters.CONNECT)
        metrics.CONNECTS.inc(metrics.ACCEPTED)
        heartbeat.ensure_running()
        self.start_timer(conf.auth_timeout(), self.on_auth_timeout)

    async def websocket_receive(self, message: dict[str, Any]) -> None:
        metrics.FRAMES.received += 1
        if self.closing:
            return
        text = message.get("text")
        if text is not None and self.too_big(text):
            await self.close_socket(code=CloseCode.MESSAGE_TOO_BIG)
        elif not await self.within_rate(text):
            return
        elif text is None:
            await self.answer(error_frame(ErrorCode.UNSUPPORTED_FRAME))
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

    async def send_json(self, content: Any, close: bool = False) -> None:
        await self.transmit({"type": "websocket.send", "text": self.encoded(content)})
        if close:
            await self.transmit({"type": "websocket.close"})

    @staticmethod
    def encoded(content: Any) -> str:
        """A frame's text (raises orjson.JSONEncodeError if nested past 255 levels)."""
        try:  # the hot path: orjson straight, without a call to protocol.encode
            return orjson.dumps(content).decode()
        except orjson.JSONEncodeError:
            return encode(content)  # an integer ref past 64 bits (or it raises again)

    async def answer(self, content: dict[str, Any]) -> None:
        """Answer the client's frame; if the server will not write it, `server_error` instead.

        Daphne refuses a frame over the frame limit and keeps the connection
        (uvicorn writes it): a `ping` echo that grew in encoding, an error
        quoting a long action twice, a `presence` list of thousands. Bad input
        must not cost the client its socket.
        """
        if self.gone:
            return
        failure = await self.hand_over({"type": "websocket.send", "text": self.encoded(content)})
        if failure is None:
            return
        error = error_frame(ErrorCode.SERVER_ERROR, None, None, content.get("ref"))
        if await self.hand_over({"type": "websocket.send", "text": encode(error)}) is not None:
            await self.lose(failure)  # not even that: the connection is gone
            return
        message = "socket %s: an answer was not written (%r): server_error instead"
        throttled(logger, "answer-refused", message, self.channel_name, failure)

    async def transmit(self, message: dict[str, Any]) -> None:
        """Hand a message to the server; if it cannot write it, the socket ends (`lose`)."""
        if self.gone:
            return
        failure = await self.hand_over(message)
        if failure is not None:
            await self.lose(failure)

    async def hand_over(self, message: dict[str, Any]) -> Exception | None:
        """Give MESSAGE to the server; what it raised if it would not write it.

        Straight to the server: the generic consumer's send() re-checks
        arguments and adds two awaits per frame.
        """
        self.sending += 1
        try:
            await self.base_send(message)
        except Exception as exc:
            return exc
        finally:
            self.sending -= 1
        if message["type"] == "websocket.send":
            metrics.FRAMES.sent += 1
        return None

    async def lose(self, failure: Exception) -> None:
        """The server could not write to the socket: leave the registry now, close with 1011.

        Reset by the client or closed already, the server delivers
        `websocket.disconnect` next. But daphne also refuses a frame over the
        frame limit and keeps the connection open: no disconnect would ever
        come, and the socket stayed open, silent and online. The close makes
        it come (a server error: clients reconnect with backoff).
        """
        if self.gone:
            return
        self.gone = self.closing = True
        throttled(
            logger, "send-failed", "socket %s lost while sending: %r", self.channel_name, failure
        )
        self.cancel_timer()
        await self.forget_identity()  # `offline` if it was the user's last socket
        close = {"type": "websocket.close", "code": int(CloseCode.SERVER_ERROR)}
        with contextlib.suppress(Exception):  # the connection may be gone already
            await self.base_send(close)

    async def within_rate(self, text: str | None) -> bool:
        """Take a token from the socket's bucket; answer (and maybe close) if empty."""
        if self.bucket is None or self.bucket.take():
            return True
        metrics.RATE_LIMITED.inc(metrics.SOCKET_FRAMES)
        # Not processed, but answered with its ref: a client's pending request must not hang.
        action, ref = peek(text) if text is not None else (None, None)
        await self.answer(error_frame(ErrorCode.RATE_LIMITED, None, action, ref))
        if self.bucket.flooding():
            await self.close_socket(Reason.RATE_LIMITED)
        return False

    async def handle_text(self, text: str) -> None:
        """Decode, validate and dispatch one client frame."""
        try:
            content = decode(text)
        except orjson.JSONDecodeError:  # also: nested past 1,024 levels
            await self.answer(error_frame(ErrorCode.INVALID_JSON))
            return
        try:
            envelope = parse_envelope(content)
        except EnvelopeError as exc:
            await self.answer(error_frame(exc.code, exc.message, exc.action, exc.ref))
            return
        await self.run_action(envelope)

    async def run_action(self, envelope: Envelope) -> None:
        name = self.HANDLERS.get(envelope.action)
        handler = getattr(self, name) if name is not None else None
        try:
            if handler is None:
                if "." in envelope.action and envelope.action in realtime.actions:
                    handler = self.on_application_action
                else:
                    raise EnvelopeError(ErrorCode.UNKNOWN_ACTION, f"No action {envelope.action!r}.")
            if self.user is None and envelope.action not in ANONYMOUS_ACTIONS:
                raise EnvelopeError(
                    ErrorCode.NOT_AUTHENTICATED,
                    f'"{envelope.action}" needs an identity: send "auth" with a token first.',
                )
            await handler(envelope)
        except EnvelopeError as exc:
            await self.answer(error_frame(exc.code, exc.message, envelope.action, envelope.ref))
        except orjson.JSONEncodeError:
            # Decodable but nested too deeply to encode again (a ping echo past
            # orjson's 255 levels).
            message = "The payload is nested too deeply."
            code = ErrorCode.INVALID_PAYLOAD
            await self.answer(error_frame(code, message, envelope.action, envelope.ref))
        except (LayerUnavailable, DatabaseError) as exc:
            metrics.service_error(exc)
            logger.warning("service unavailable during %r", envelope.action, exc_info=True)
            code = ErrorCode.SERVICE_UNAVAILABLE
            await self.answer(error_frame(code, None, envelope.action, envelope.ref))
        except Exception:
            if self.closing:  # lost a race with a withdrawal: nobody to answer
                raise
            # Our bug: logged, answered, and the socket goes on serving.
            logger.exception("action %r failed", envelope.action)
            code = ErrorCode.SERVER_ERROR
            await self.answer(error_frame(code, None, envelope.action, envelope.ref))

    async def reply(self, envelope: Envelope, payload: Any, action: str | None = None) -> None:
        await self.answer(frame(action or envelope.action, payload, envelope.ref))

    async def close_socket(self, reason: Reason | None = None, code: int | None = None) -> bool:
        """Leave the registry, send `disconnect` REASON (if any) and close.

        Nothing is processed after. False if the socket was closing already.
        """
        if self.closing:
            return False
        self.closing = True
        self.cancel_timer()
        # Leave the registry before writing anything: a client that does not
        # read must not keep counting as online while the goodbye waits on it.
        await self.forget_identity()
        if reason is not None:
            code = CLOSE_CODE_FOR_REASON[reason]
        await self.goodbye(reason, code)
        return True

    async def goodbye(self, reason: Reason | None, code: int | None) -> None:
        """Write `disconnect` and the close frame; drop the socket if they are never read."""
        # A plain int: autobahn (daphne) refuses an IntEnum as a close code.
        close = {"type": "websocket.close", "code": int(code) if code is not None else 1000}
        try:
            async with asyncio.timeout(GOODBYE_TIMEOUT):
                if reason is not None:
                    metrics.DISCONNECTS.inc(reason)
                    await self.send_json(disconnect_push(reason))
                await self.transmit(close)
        except TimeoutError:
            throttled(
                logger, "goodbye", "socket %s never read its close: dropped", self.channel_name
            )
            if self.main is not None:
                self.main.cancel()

    # --- actions --------------------------------------------------------------

    async def on_auth(self, envelope: Envelope) -> None:
        try:
            user, expires_at = await self.verify(envelope.payload)
        except ServiceUnavailable as exc:
            # The server's fault, not the client's: no attempt is counted.
            metrics.service_error(exc)
            await self.refuse_auth(envelope, exc)
            return
        except DatabaseError as exc:
            metrics.service_error(exc)
            logger.warning("database unavailable during auth", exc_info=True)
            failure = ServiceUnavailable("The server cannot reach its database; try again.")
            await self.refuse_auth(envelope, failure)
            return
        except IdentityError as exc:
            await self.refuse_auth(envelope, exc)
            await self.count_failed_auth()
            return
        self.failed_auths = 0
        self.set_identity(user, expires_at)
        metrics.AUTHS.inc(metrics.SUCCESS)
        await self.reply(envelope, self.auth_success())
        if 0 < expires_at - time.time() <= conf.expiry_notice():
            await self.push_expiring()

    async def refuse_auth(self, envelope: Envelope, exc: IdentityError) -> None:
        counters.count(counters.AUTH_FAILURE, str(exc.code))
        metrics.AUTHS.inc(exc.code)
        await self.reply(envelope, auth_failure(exc.code, exc.message))

    @metrics.timed(metrics.AUTH_SECONDS)
    async def verify(self, raw: Any) -> tuple[Any, int]:
        """Resolve the token's user; register the socket if it was anonymous."""
        if self.user is None:
            user, token = await sessions.open_session(raw, self.socket_info())
            metrics.SOCKETS_AUTHENTICATED.inc()
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
            await sessions.subscribe_presence(self.channel_name)
            self.subscribed = True
        users = await push.online_users()
        push.listed(users)
        await self.reply(envelope, {"users": [u.as_dict() for u in users]})

    # --- application actions and topics (identity.realtime) --------------------

    async def on_application_action(self, envelope: Envelope) -> None:
        """Run the handler a `realtime.py` registered; its return value is the reply."""
        spec = realtime.actions[envelope.action]
        if not await realtime.may_run(spec, self.user):
            raise EnvelopeError(ErrorCode.FORBIDDEN, "You may not run this action.")
        socket = realtime.Socket(self.user, self.channel_name, frozenset(self.topics or ()))
        try:
            result = await self.run_handler(spec, socket, envelope.payload)
            text = encode(frame(envelope.action, result, envelope.ref))
            if self.too_big(text):
                # daphne will not write a frame over the limit, uvicorn would: the
                # same answer on both, with the application's bug logged.
                raise ValueError(f"the reply is over {conf.max_frame_bytes()} bytes")
        except Withdrawn:
            return  # the socket is closing: no reply
        except realtime.ActionError as exc:
            error = error_frame(exc.code, exc.message, envelope.action, envelope.ref)
            await self.answer(error)
            return
        except Exception:
            # The application's bug: logged here, never a traceback on the wire.
            logger.exception("action %r failed", envelope.action)
            code = ErrorCode.SERVER_ERROR
            await self.answer(error_frame(code, None, envelope.action, envelope.ref))
            return
        await self.transmit({"type": "websocket.send", "text": text})

    async def run_handler(
        self, spec: realtime.Action, socket: realtime.Socket, payload: Any
    ) -> Any:
        """The handler's return value; it runs as a task of its own, which a withdrawal cancels.

        Raises Withdrawn once the socket is withdrawn meanwhile (its reply would
        come after the close).
        """
        if spec.is_async:
            call = spec.handler(socket, payload)
        else:  # a thread cannot be stopped: cancelled, its reply is dropped (docs/realtime.md)
            call = database_sync_to_async(spec.handler)(socket, payload)
        task = self.action = asyncio.ensure_future(call)
        try:
            await asyncio.wait([task])
        except asyncio.CancelledError:
            task.cancel()  # the socket itself is cancelled (a server shutting down)
            raise
        finally:
            self.action = None
        # Only withdraw() cancels the task; and a withdrawal that went ahead of a
        # handler ignoring its cancellation has closed the socket already.
        if task.cancelling() or self.closing:
            raise Withdrawn()
        return task.result()

    async def on_subscribe(self, envelope: Envelope) -> None:
        name = validate_topic(envelope.payload)
        spec = self.topics.get(name) if self.topics else None
        if spec is not None:  # subscribed already: changes nothing (PROTOCOL.md v2 rule 4)
            members = await sessions.topic_members(name) if spec.presence else None
        else:
            spec = await self.authorize(name)
            limit = conf.max_topics_per_socket()
            if limit and len(self.topics or ()) >= limit:
                raise EnvelopeError(
                    ErrorCode.TOPIC_LIMIT,
                    f"A socket may hold {conf.max_topics_per_socket()} subscriptions; "
                    "unsubscribe first.",
                )
            # Set first: a join that fails halfway may leave a row for the close to remove.
            self.presence_rows = self.presence_rows or spec.presence
            members = await sessions.join_topic(
                self.channel_name, self.user.pk, self.user.get_username(), name, spec.presence
            )
            if self.topics is None:
                self.topics = {}
            self.topics[name] = spec
        reply: dict[str, Any] = {"topic": name, "subscribed": True}
        if members is not None:
            reply["members"] = members
        await self.reply(envelope, reply)

    async def on_unsubscribe(self, envelope: Envelope) -> None:
        name = validate_topic(envelope.payload)
        await self.leave_topic(name)
        await self.reply(envelope, {"topic": name, "subscribed": False})

    async def on_publish(self, envelope: Envelope) -> None:
        name, event, data = validate_publish(envelope.payload)
        spec = self.topics.get(name) if self.topics else None
        if spec is None:  # a subscriber passed the check, and every re-check since
            spec = await self.authorize(name)
        if not spec.client_publish:
            raise EnvelopeError(ErrorCode.FORBIDDEN, "Clients may not publish to this topic.")
        try:
            await push.publish(name, event, data, self.user_wire())
        except push.EventTooLarge as exc:
            raise EnvelopeError(ErrorCode.INVALID_PAYLOAD, str(exc)) from exc
        await self.reply(envelope, {"topic": name})

    async def authorize(self, name: str) -> realtime.Topic:
        """The declaration of topic NAME if this user may use it; EnvelopeError otherwise."""
        found = realtime.find_topic(name)
        if found is None:
            raise EnvelopeError(ErrorCode.UNKNOWN_TOPIC, f"No topic {name!r}.")
        spec, params = found
        if not await realtime.allowed(spec, params, self.user):
            raise EnvelopeError(ErrorCode.FORBIDDEN, f"You may not use topic {name!r}.")
        return spec

    async def leave_topic(self, name: str) -> bool:
        """End this socket's subscription to NAME; False if it had none."""
        spec = self.topics.pop(name, None) if self.topics else None
        if spec is None:
            return False
        user = self.user
        await sessions.leave_topic(
            self.channel_name, user.pk, user.get_username(), name, spec.presence
        )
        return True

    async def recheck(self) -> None:
        """The user's rights changed: re-read them, end subscriptions they no longer allow."""
        user = await sessions.fresh_user(self.user.pk)
        if user is None or self.user is None or self.closing:
            return  # deleted or deactivated: the withdrawal is on its way
        self.user = self.scope["user"] = user
        for name, spec in list((self.topics or {}).items()):
            if await self.still_allowed(name, spec, user):
                continue
            if await self.leave_topic(name) and not self.closing:
                await self.send_json(unsubscribed_push(name, Unsubscribed.FORBIDDEN))

    @staticmethod
    async def still_allowed(name: str, spec: realtime.Topic, user: Any) -> bool:
        """A re-check of one subscription; one that cannot be decided ends (logged)."""
        found = realtime.find_topic(name)
        try:
            return found is not None and await realtime.allowed(spec, found[1], user)
        except Exception:
            logger.warning("could not re-check %s: ended", name, exc_info=True)
            return False

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
        guard.authenticated(self.scope)  # stops counting as anonymous (identity.guard)
        remaining, notice = expires_at - time.time(), conf.expiry_notice()
        if 0 < notice < remaining:  # a notice of 0 turns the `expiring` hint off
            self.start_timer(remaining - notice, self.on_expiring)
        else:
            self.start_timer(remaining, self.on_expired)

    async def drop_identity(self) -> None:
        """Back to anonymous: leave the user's groups, the registry, and rearm the timeout."""
        self.cancel_timer()
        topics = await self.forget_identity()
        if not self.closing:
            for name in topics:  # PROTOCOL.md v2: not sent when the socket is closing
                await self.send_json(unsubscribed_push(name, Unsubscribed.IDENTITY))
            self.start_timer(conf.auth_timeout(), self.on_auth_timeout)

    async def forget_identity(self) -> list[str]:
        """Leave the user's groups, topics and the registry; the topics that ended."""
        user, subscribed, topics = self.user, self.subscribed, self.topics or {}
        presence_rows = self.presence_rows
        if user is None:
            return []
        metrics.SOCKETS_AUTHENTICATED.dec()
        guard.anonymous(self.scope)  # counts as anonymous again (identity.guard)
        self.user = self.expires_at = self.topics = None
        self.subscribed = self.presence_rows = False
        self.scope.pop("user", None)
        # A server shutting down cancels the socket once and exits when it
        # returns: leaving the registry must not stop halfway.
        session = sessions.close_session(
            self.channel_name,
            user.pk,
            user.get_username(),
            subscribed,
            topics,
            presence_rows,
        )
        await uncancellable(session)
        return list(topics)

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

        A withdrawal goes ahead of every push still waiting. Past EVENT_BACKLOG
        waiting pushes, more are dropped, except presence and members pushes,
        merged to the latest per user (merge()); a socket whose writes are
        blocked on a client that does not read is closed (`slow_reader`, 4408).
        A re-check is never dropped: it is not a push but a change of rights.
        """
        kind = message.get("type")
        if kind == push.DISCONNECT_EVENT:
            reason = Reason(message["reason"])
            self.spawn(self.withdraw(reason, message.get("reply_to")))
        elif self.closing or (kind == push.PRESENCE_EVENT and push.is_stale(message)):
            pass  # the socket is going, or a newer push about that user came first
        elif kind == push.RECHECK_EVENT:
            # Outside the backlog, or a full queue would keep a forbidden topic
            # open. One waiting re-check reads the rights when it runs, so it
            # stands for any number that arrive meanwhile.
            if not self.recheck_pending:
                self.recheck_pending = True
                self.spawn(self.handle_event(message))
        elif self.pushes is not None and len(self.pushes) >= EVENT_BACKLOG:
            self.overflow(message)
        elif self.merged is not None and push.MERGE in message:
            self.merge(message)  # after the merged ones it follows, never before
        else:
            task = self.task(self.handle_event(message))
            if self.pushes is None:
                self.pushes = set()
            self.pushes.add(task)
            task.add_done_callback(self.pushes.discard)

    def overflow(self, message: dict[str, Any]) -> None:
        if self.sending and not self.slow:
            self.slow = True  # one withdrawal is enough
            self.spawn(self.withdraw(Reason.SLOW_READER))
        if push.MERGE in message:
            self.merge(message)
            return
        kind = message.get("type")
        throttled(
            logger, "backlog", "%s is backed up: a %r push was dropped", self.channel_name, kind
        )

    def merge(self, message: dict[str, Any]) -> None:
        """Keep a presence or members push past the backlog: the latest per user.

        A burst (a worker's thousands of users reconnecting at once) would
        otherwise drop transitions and leave the client's list wrong for good;
        the latest state of each user, sent once the backlog has drained,
        leaves it right. Bounded by the users, not by the pushes.
        """
        if self.merged is None:
            self.merged = {}
            self.spawn(self.send_merged())
        key = message[push.MERGE]
        self.merged.pop(key, None)
        self.merged[key] = message

    async def send_merged(self) -> None:
        async with self.lock:  # queued behind the backlog, ahead of later pushes
            merged, self.merged = self.merged or {}, None
            for message in merged.values():
                try:
                    await self.dispatch(message)
                except Exception:
                    logger.exception("identity event %r failed", message.get("type"))

    async def handle_event(self, message: dict[str, Any]) -> None:
        async with self.lock:
            try:
                await self.dispatch(message)
            except Exception:
                logger.exception("identity event %r failed", message.get("type"))

    def task(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A task of this socket's, in the socket's context."""
        return asyncio.get_running_loop().create_task(coroutine, context=self.context.copy())

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        # Keep a reference: the loop holds tasks only weakly.
        task = self.task(coroutine)
        if self.tasks is None:
            self.tasks = set()
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def withdraw(self, reason: Reason, reply_to: str | None = None) -> None:
        """The server withdraws this socket's identity: leave, push REASON, close.

        Waiting pushes are dropped. The frame in hand is finished first, unless
        its handler is stuck writing to a client that does not read, or it is
        an application action: that is cancelled (run_handler).
        """
        for task in list(self.pushes or ()):
            task.cancel()
        if self.action is not None:
            # The application's code may await anything for any time (or
            # forever): a kick or a revoke must not wait for it.
            self.action.cancel()
        locked = await self.lock_unless_stuck()
        try:
            # Logged out (or closing) since the event was sent: nothing to withdraw.
            withdrawing = self.user is not None and not self.closing
            # Acknowledged before leaving the registry: that takes the database
            # thread, which sync code waiting for this answer may be holding.
            if reply_to:
                await self.acknowledge(reply_to, withdrawing)
            if withdrawing:
                await self.close_socket(reason)
        finally:
            if locked:
                self.lock.release()

    async def lock_unless_stuck(self) -> bool:
        """Take the lock; give up (False) once its holder is stuck in a send or a handler.

        An application handler still running after STUCK_AFTER started since
        withdraw() cancelled, or ignores its cancellation: it is cancelled (again)
        and not waited for; its late reply is dropped (run_handler).
        """
        while True:
            try:
                async with asyncio.timeout(STUCK_AFTER):
                    await self.lock.acquire()
                return True
            except TimeoutError:
                if self.action is not None:
                    self.action.cancel()
                    return False
                if self.sending:
                    return False

    async def acknowledge(self, reply_to: str, closed: bool) -> None:
        """Tell whoever asked for the withdrawal whether this socket gave up an identity."""
        ack = {"type": push.ACK_EVENT, "channel": self.channel_name, "closed": closed}
        try:
            await self.channel_layer.send(reply_to, ack)
        except Exception as exc:
            throttled(logger, "ack", "could not acknowledge a withdrawal: %r", exc)

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

    async def identity_push(self, event: dict[str, Any]) -> None:
        """A frame for every socket of this user (e.g. `direct`)."""
        if self.user is not None and not self.closing:
            await self.send_json(event["frame"])

    async def identity_presence(self, event: dict[str, Any]) -> None:
        """A presence change, for sockets that asked `presence`."""
        if self.subscribed and not self.closing:
            await self.send_json(event["frame"])

    async def identity_topic(self, event: dict[str, Any]) -> None:
        """An `event` or `members` push, for sockets subscribed to its topic.

        Not the user's own `join`: their subscribe reply listed them already.
        """
        mine = self.topics is not None and event["topic"] in self.topics
        if mine and not self.closing and event.get("user_id") != self.user.pk:
            await self.transmit({"type": "websocket.send", "text": event["text"]})

    async def identity_recheck(self, event: dict[str, Any]) -> None:
        """The user's rights changed (identity.push.recheck_user)."""
        self.recheck_pending = False  # one arriving from now on reads the rights anew
        if self.user is not None and not self.closing:
            await self.recheck()
