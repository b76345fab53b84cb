"""A clock that moves only when told to, for deterministic tests."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

from durably import ValidationError

__all__ = ["ManualClock", "settle"]


class ManualClock:
    """``now()`` stays put until :meth:`advance`; ``sleep()`` waits for clock time.

    Sleepers whose deadline is reached by an ``advance`` are woken in deadline
    order, and ``advance`` lets the event loop run them before returning, so a
    test can ``await clock.advance(31)`` and then observe what timers did.

    A sleep is counted from the call to ``sleep()``, not from when its coroutine
    first runs: wrapped in a task (a step's ``timeout=`` timer, ``asyncio.wait`` on
    a sleep and an event), it first runs a loop turn later, and an ``advance`` that
    ran in between must not push its end back by all the time it moved (on a real
    clock the same gap makes it a loop turn late, not an hour). A sleep whose end
    such an ``advance`` passed returns at once.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._now = _aware(start or datetime(2026, 1, 1, tzinfo=UTC), "start")
        self._sleepers: list[tuple[datetime, int, asyncio.Future[None]]] = []
        self._counter = itertools.count()

    def now(self) -> datetime:
        return self._now

    def sleep(self, seconds: float) -> Coroutine[Any, Any, None]:
        # not ``async def``: the deadline is read from the clock now, at the call
        return self._sleep_until(self._now + timedelta(seconds=max(seconds, 0.0)))

    async def _sleep_until(self, deadline: datetime) -> None:
        if deadline <= self._now:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (deadline, next(self._counter), fut))
        await fut

    @property
    def sleepers(self) -> int:
        """How many sleeps are waiting (cancelled ones excluded)."""
        return sum(1 for _, _, f in self._sleepers if not f.done())

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking each due sleeper in order and letting it run."""
        target = self._now + timedelta(seconds=seconds)
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, fut = heapq.heappop(self._sleepers)
            if fut.done():
                continue
            self._now = max(self._now, deadline)
            fut.set_result(None)
            await settle()
        self._now = target
        await settle()

    def set(self, when: datetime) -> None:
        """Jump to ``when`` without waking sleepers (use ``advance`` to fire timers)."""
        self._now = _aware(when, "set()")


def _aware(when: datetime, what: str) -> datetime:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValidationError(
            f"ManualClock {what} needs a timezone-aware datetime, got {when!r}; "
            "pass e.g. datetime(2026, 1, 1, tzinfo=UTC)"
        )
    return when


async def settle(rounds: int = 20) -> None:
    """Let the event loop run ready callbacks for a while (no real time passes)."""
    for _ in range(rounds):
        await asyncio.sleep(0)
