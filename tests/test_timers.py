"""Socket deadlines on one loop timer: order, cancelling, and no pile-up of cancelled ones."""

from __future__ import annotations

import asyncio

from identity import timers


async def test_deadlines_fire_in_time_order_whatever_order_they_were_set_in():
    done = asyncio.Event()
    fired = []
    for name, delay in [("c", 0.06), ("a", 0.02), ("b", 0.04)]:
        timers.call_later(delay, lambda name=name: fired.append(name))
    timers.call_later(0.08, done.set)
    await asyncio.wait_for(done.wait(), 3)
    assert fired == ["a", "b", "c"]


async def test_an_earlier_deadline_set_later_is_not_held_up_by_the_armed_one():
    soon = asyncio.Event()
    loop = asyncio.get_running_loop()
    timers.call_later(60, lambda: None)  # arms the loop timer a minute out
    start = loop.time()
    timers.call_later(0.01, soon.set)
    await asyncio.wait_for(soon.wait(), 3)
    assert loop.time() - start < 30


async def test_a_cancelled_deadline_never_fires():
    done = asyncio.Event()
    fired = []
    entry = timers.call_later(0.01, lambda: fired.append("cancelled"))
    entry.cancel()
    entry.cancel()  # twice is harmless
    timers.call_later(0.03, done.set)
    await asyncio.wait_for(done.wait(), 3)
    assert fired == []


async def test_cancelled_deadlines_are_dropped_before_they_pile_up():
    entries = [timers.call_later(3600, lambda: None) for _ in range(1000)]
    wheel = entries[0].owner
    for entry in entries[:990]:
        entry.cancel()
    assert len(wheel.heap) <= 2 * 10 + timers.COMPACT_AFTER
    assert all(entry in wheel.heap for entry in entries[990:])
    for entry in entries[990:]:
        entry.cancel()


async def test_a_failing_callback_does_not_stop_the_others(caplog):
    done = asyncio.Event()

    def boom():
        raise RuntimeError("boom")

    timers.call_later(0.01, boom)
    timers.call_later(0.01, done.set)
    await asyncio.wait_for(done.wait(), 3)
    assert "deadline callback failed" in caplog.text
