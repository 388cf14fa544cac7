"""Deadlines for every socket, on one event-loop timer.

Each socket has at most one deadline pending: the `auth` timeout while it is
anonymous, then `expiring`, then `expired`. Rather than a loop timer per
socket (a TimerHandle, its arguments and a copy of the context, for as long as
the socket lives), a deadline is a small entry in one heap per loop, and only
the earliest has a loop timer (docs/performance.md has what that saves).

Cancelled entries leave the heap when they come up, or all at once when they
outnumber the live ones, so sockets that closed cost nothing for long.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections.abc import Callable

logger = logging.getLogger(__name__)

COMPACT_AFTER = 64  # cancelled entries tolerated before the heap is rebuilt


class Deadline:
    """One pending call; `cancel()` makes sure it never happens."""

    __slots__ = ("callback", "owner", "seq", "when")

    def __init__(self, owner: Deadlines, when: float, seq: int, callback: Callable[[], None]):
        self.owner, self.when, self.seq = owner, when, seq
        self.callback: Callable[[], None] | None = callback

    def __lt__(self, other: Deadline) -> bool:
        return (self.when, self.seq) < (other.when, other.seq)

    def cancel(self) -> None:
        """Drop the call if it has not happened yet (idempotent)."""
        if self.callback is not None:
            self.callback = None
            self.owner.forget_one()


class Deadlines:
    """The deadlines of one event loop, earliest first."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.heap: list[Deadline] = []
        self.cancelled = 0
        self.handle: asyncio.TimerHandle | None = None
        self.counter = itertools.count()  # ties keep the order they were set in

    def call_later(self, delay: float, callback: Callable[[], None]) -> Deadline:
        """Call `callback()` on the loop after `delay` seconds."""
        entry = Deadline(self, self.loop.time() + delay, next(self.counter), callback)
        heapq.heappush(self.heap, entry)
        if self.heap[0] is entry:
            self.arm()
        return entry

    def forget_one(self) -> None:
        self.cancelled += 1
        if self.cancelled > COMPACT_AFTER and self.cancelled * 2 > len(self.heap):
            self.heap = [entry for entry in self.heap if entry.callback is not None]
            heapq.heapify(self.heap)
            self.cancelled = 0
            self.arm()

    def arm(self) -> None:
        """One loop timer, for the earliest entry."""
        if self.handle is not None:
            self.handle.cancel()
        self.handle = self.loop.call_at(self.heap[0].when, self.fire) if self.heap else None

    def fire(self) -> None:
        self.handle = None
        now = self.loop.time()
        while self.heap and self.heap[0].when <= now:
            entry = heapq.heappop(self.heap)
            callback, entry.callback = entry.callback, None
            if callback is None:
                self.cancelled -= 1
                continue
            try:
                callback()
            except Exception:
                logger.exception("deadline callback failed")
        self.arm()


_current: Deadlines | None = None


def call_later(delay: float, callback: Callable[[], None]) -> Deadline:
    """Call `callback()` after `delay` seconds on the running loop; returns a cancellable entry."""
    global _current
    loop = asyncio.get_running_loop()
    if _current is None or _current.loop is not loop:
        _current = Deadlines(loop)  # a new loop (tests run one per test)
    return _current.call_later(delay, callback)
