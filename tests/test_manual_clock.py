"""ManualClock (durably_testing): time moves only in ``advance``, and every sleep
ends at its deadline on the clock, counted from the call to ``sleep()``."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from engine_support import eventually

from durably_testing import ManualClock

T0 = datetime(2026, 1, 1, tzinfo=UTC)
HOUR = 3600.0


async def test_sleep__woken_by_advance_in_deadline_order_at_its_deadline() -> None:
    clock = ManualClock(T0)
    woke: list[tuple[str, datetime]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.now()))
        if name == "first":  # sleeps again: the same advance wakes it, in order
            await clock.sleep(HOUR)
            woke.append(("first again", clock.now()))

    tasks = [asyncio.create_task(sleeper(n, s)) for n, s in (("late", 3 * HOUR), ("first", HOUR))]
    await eventually(lambda: clock.sleepers == 2, "both asleep")
    await clock.advance(4 * HOUR)
    assert woke == [
        ("first", T0 + timedelta(hours=1)),
        ("first again", T0 + timedelta(hours=2)),
        ("late", T0 + timedelta(hours=3)),
    ]
    assert clock.now() == T0 + timedelta(hours=4)
    await asyncio.gather(*tasks)


async def test_sleep__counted_from_the_call_when_time_moves_before_it_runs() -> None:
    # A sleep in a task (a step's timeout= timer, asyncio.wait on a sleep and an
    # event) first runs a loop turn after the call. An advance in that turn used to
    # push its end back by all the time it moved: asked at 00:00 for an hour, begun
    # after an advance to 01:00:00+1s, it ended at 02:00:01 (the declared-schedule
    # test's scheduler on remote libSQL slept until 03:00 past its 02:00 slot that
    # way, 4 times in 138 loops, before sleep_or_wake read its delay in the task).
    clock = ManualClock(T0)
    hour_from_now = asyncio.ensure_future(clock.sleep(HOUR))  # ends at 01:00
    two_hours_from_now = asyncio.ensure_future(clock.sleep(2 * HOUR))  # ends at 02:00
    await clock.advance(HOUR + 1)
    assert hour_from_now.done(), "its end was passed before it began: it returns at once"
    assert not two_hours_from_now.done()
    assert clock.sleepers == 1
    await clock.advance(HOUR - 1)
    assert two_hours_from_now.done(), "it ends at 02:00, an hour from the call, not later"
    assert clock.sleepers == 0


async def test_sleep__none_or_negative_yields_once() -> None:
    clock = ManualClock(T0)
    for seconds in (0, -5):
        sleeping = asyncio.ensure_future(clock.sleep(seconds))
        assert clock.sleepers == 0
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert sleeping.done()
    assert clock.now() == T0
