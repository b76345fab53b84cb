"""The injected clock: every read of "now" and every timed wait goes through one.

Tests pass a manual clock (``durably_testing.ManualClock``) and move time
explicitly instead of sleeping.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol, cast, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """Source of the current time and of timed waits."""

    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class SystemClock:
    """The real clock."""

    #: The last ``now_ms`` reading: (milliseconds since the epoch, its datetime).
    #: A step reads the clock twice and takes ~0.1 ms, so most readings fall in the
    #: millisecond of the one before, and building a datetime costs ~10x the check.
    #: (One tuple, replaced whole on the instance: a reading from a step's thread
    #: sees either. A class default, so a subclass's own ``__init__`` needs nothing.)
    _last_ms: tuple[int, datetime] = (-1, _EPOCH)

    def now(self) -> datetime:
        return _EPOCH + timedelta(microseconds=time.time_ns() // 1000)

    def now_ms(self) -> datetime:
        """``now()`` truncated to milliseconds, in one step (read twice per checkpoint)."""
        ms = time.time_ns() // 1_000_000
        last = self._last_ms
        if last[0] == ms:
            return last[1]
        t = _EPOCH + timedelta(milliseconds=ms)
        self._last_ms = (ms, t)
        return t

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


def now_ms(clock: Clock) -> datetime:
    """The clock's time truncated to milliseconds, the database's precision."""
    t = clock.now()
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


def now_ms_reader(clock: Clock) -> Callable[[], datetime]:
    """A function returning :func:`now_ms` of ``clock`` (the clock's own ``now_ms``
    when it has one: the system clock's is twice as fast)."""
    own = getattr(clock, "now_ms", None)
    if callable(own):
        return cast("Callable[[], datetime]", own)
    return lambda: now_ms(clock)


async def sleep_or_wake(
    clock: Clock, wake: asyncio.Event, seconds: float | Callable[[], float] | None
) -> None:
    """Wait ``seconds`` of ``clock``'s time (``None``: no limit) or until ``wake`` is
    set, whichever comes first (the idle waits of the worker and the scheduler).

    A wait toward a deadline passes ``seconds`` as a function, read when the sleep
    starts: the sleep is a task of its own, which starts a loop turn after this is
    called, and the clock may move in between (a manual clock advanced by a test, a
    loaded loop); a delay computed before would count from the wrong time and wake
    that much past the deadline (with a manual clock: maybe never)."""
    waits: set[asyncio.Future[object]] = {asyncio.ensure_future(wake.wait())}
    if seconds is not None:
        waits.add(asyncio.ensure_future(_sleep(clock, seconds)))
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waits:
            waiter.cancel()


async def _sleep(clock: Clock, seconds: float | Callable[[], float]) -> None:
    # the delay is read and the clock's sleep started in the same step: nothing runs
    # between them
    await clock.sleep(seconds() if callable(seconds) else seconds)
