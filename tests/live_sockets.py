"""A real WebSocket client for the topic tests against live servers.

A background task reads every frame as it arrives and notes when, so a test
can wait for one push while others queue behind it, and can time a push from
an event in another process (time.monotonic is one clock for the machine).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar

import websockets

from tests.servers import ROOT, LiveServer, manage

TIMEOUT = 5.0  # seconds a frame the server owes may take on two busy cores
MISSING = object()
_refs = itertools.count()


class ServerClosed(AssertionError):
    """The server closed the socket while the test waited for a frame."""


class LiveSocket:
    """One WebSocket: frames in arrival order, each with its time of arrival."""

    # Closed after each test by `closes_live_sockets` (tests/conftest.py).
    unclosed: ClassVar[set[LiveSocket]] = set()

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.unclosed.add(self)
        self.queue: asyncio.Queue[tuple[float, dict[str, Any]] | None] = asyncio.Queue()
        self.held: deque[tuple[float, dict[str, Any]]] = deque()  # read while awaiting a reply
        self.reader = asyncio.ensure_future(self._read())

    @classmethod
    async def open(cls, server: LiveServer, token: str | None = None) -> LiveSocket:
        """A socket on SERVER, authenticated with TOKEN if given."""
        sock = cls(await websockets.connect(server.ws, max_size=None, open_timeout=TIMEOUT))
        if token is not None:
            reply = await sock.request("auth", token)
            assert reply["payload"]["registered"] is True, reply
        return sock

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                self.queue.put_nowait((time.monotonic(), json.loads(message)))
        except websockets.ConnectionClosed:
            pass
        finally:
            self.queue.put_nowait(None)

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code

    async def send(self, action: str, payload: Any = MISSING, ref: Any = MISSING) -> None:
        frame: dict[str, Any] = {"action": action}
        if payload is not MISSING:
            frame["payload"] = payload
        if ref is not MISSING:
            frame["ref"] = ref
        await self.ws.send(json.dumps(frame))

    async def _take(self, timeout: float) -> tuple[float, dict[str, Any]]:
        item = await asyncio.wait_for(self.queue.get(), timeout)
        if item is None:
            self.queue.put_nowait(None)  # closed for every later read too
            raise ServerClosed(f"the server closed the socket ({self.close_code})")
        return item

    async def next_timed(self, timeout: float = TIMEOUT) -> tuple[float, dict[str, Any]]:
        """The next frame and when it arrived."""
        return self.held.popleft() if self.held else await self._take(timeout)

    async def next(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        return (await self.next_timed(timeout))[1]

    async def request(self, action: str, payload: Any = MISSING, timeout: float = TIMEOUT) -> Any:
        """Send a frame with a fresh ref; its answer. Pushes read meanwhile wait in `held`."""
        ref = f"t{next(_refs)}"
        await self.send(action, payload, ref)
        while True:
            item = await self._take(timeout)
            if item[1].get("ref") == ref:
                return item[1]
            self.held.append(item)

    async def until(
        self, wanted: Callable[[dict[str, Any]], bool], timeout: float = TIMEOUT
    ) -> tuple[list[dict[str, Any]], dict[str, Any], float]:
        """Read up to the first frame WANTED accepts: (the frames before it, it, when it came)."""
        before = []
        deadline = time.monotonic() + timeout
        while True:
            stamp, frame = await self.next_timed(max(deadline - time.monotonic(), 0.001))
            if wanted(frame):
                return before, frame, stamp
            before.append(frame)

    async def drain(self) -> list[dict[str, Any]]:
        """Every frame that arrived before the answer to a ping sent now."""
        pong = await self.request("ping", "drain")
        assert pong["action"] == "pong", pong
        frames = [frame for _, frame in self.held]
        self.held.clear()
        return frames

    async def subscribe(self, topic: str) -> dict[str, Any]:
        """Subscribe; the reply's payload (it must succeed)."""
        reply = await self.request("subscribe", {"topic": topic})
        assert reply["action"] == "subscribe" and reply["payload"]["subscribed"], reply
        return reply["payload"]

    async def publish(self, topic: str, event: str, data: Any) -> None:
        reply = await self.request("publish", {"topic": topic, "event": event, "data": data})
        assert reply == {"action": "publish", "payload": {"topic": topic}, "ref": reply["ref"]}

    async def close(self) -> None:
        self.unclosed.discard(self)
        try:
            await self.ws.close()
        finally:
            self.reader.cancel()


def is_event(topic: str, event: str | None = None) -> Callable[[dict[str, Any]], bool]:
    """A frame test: an `event` push on TOPIC (named EVENT, if given)."""
    return lambda frame: (
        frame["action"] == "event"
        and frame["payload"]["topic"] == topic
        and (event is None or frame["payload"]["event"] == event)
    )


def is_members(topic: str, event: str, username: str) -> Callable[[dict[str, Any]], bool]:
    """A frame test: the `members` push of USERNAME's EVENT (join/leave) on TOPIC."""

    def test(frame: dict[str, Any]) -> bool:
        if frame["action"] != "members" or "ref" in frame:
            return False
        user = frame["payload"]["user"]
        return frame["payload"] == {"topic": topic, "event": event, "user": user} and (
            set(user) == {"id", "username"} and user["username"] == username
        )

    return test


def ended(topic: str, reason: str = "forbidden") -> dict[str, Any]:
    """The `unsubscribed` push that ends TOPIC for REASON."""
    return {"action": "unsubscribed", "payload": {"topic": topic, "reason": reason}}


def usernames(members: list[dict[str, Any]]) -> list[str]:
    return [member["username"] for member in members]


async def shell(env: dict[str, str], code: str) -> str:
    """`manage.py shell -c CODE` in its own process, awaited while the sockets keep reading."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "manage.py",
        "shell",
        "-c",
        code,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return out.decode()


MINT = """
from django.contrib.auth import get_user_model
from rest_framework_simplejwt.tokens import AccessToken
for user in get_user_model().objects.all():
    print('TOKEN', user.get_username(), AccessToken.for_user(user))
"""


def prepare(env: dict[str, str], setup: str) -> dict[str, str]:
    """Run SETUP in a management shell; then an access token for every user, by username.

    Minted as the sign-in endpoint would, without hashing a password per user.
    """
    out = manage(env, "shell", "-c", setup + MINT)
    lines = [line.split() for line in out.splitlines() if line.startswith("TOKEN ")]
    return {username: token for _, username, token in lines}


def stamp_of(out: str, label: str = "AT") -> float:
    """The time.monotonic() a shell printed as `LABEL <seconds>`."""
    line = next(line for line in out.splitlines() if line.startswith(label + " "))
    return float(line.split()[1])
