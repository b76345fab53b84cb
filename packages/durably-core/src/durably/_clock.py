"""The injected clock: every read of "now" and every timed wait goes through one.

Tests pass a manual clock (``durably_testing.ManualClock``) and move time
explicitly instead of sleeping.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """Source of the current time and of timed waits."""

    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        return datetime.fromtimestamp(time.time(), UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


def now_ms(clock: Clock) -> datetime:
    """The clock's time truncated to milliseconds, the database's precision."""
    t = clock.now()
    return t.replace(microsecond=t.microsecond // 1000 * 1000)
