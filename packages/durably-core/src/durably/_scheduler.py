"""The scheduler: a task of the worker that fires the due slots of schedules.

It sleeps until the next slot of its jobs' schedules (read from storage), fires
what is due, and sleeps again; it also wakes when this process changes a schedule
or registers a job, and at least every ``max(REFRESH, polling_interval)`` seconds
to notice schedules changed by other processes. With no job registered it never
reads anything. A storage failure is reported (``worker:error``, context
``schedule``) and retried with backoff (:mod:`durably._backoff`); it never
stops the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import datetime
from functools import partial

from ._backoff import jittered, next_backoff
from ._clock import sleep_or_wake
from ._schedules import REFRESH, Schedules
from ._services import Services


class Scheduler:
    def __init__(self, services: Services, schedules: Schedules) -> None:
        self._services = services
        self._schedules = schedules
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is not None and not self._task.done():
            return
        self._stopping = False
        self._task = asyncio.create_task(self._loop(), name="durably-scheduler")

    def notify(self) -> None:
        """Read the schedules again now (one was changed here, or a job registered)."""
        self._wake.set()

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        services = self._services
        backoff = 0.0
        while not self._stopping:
            self._wake.clear()
            try:
                next_at = await self._schedules.tick()
                backoff = 0.0
            except Exception as exc:  # any adapter failure: report, back off, keep going
                services.report_error(exc, "schedule")
                backoff = next_backoff(backoff, exc, services.settings.polling_interval)
                await self._wait(jittered(backoff))
                continue
            if not services.jobs:
                await self._wait(None)  # nothing of ours can be scheduled: wait for a job
                continue
            # read when the sleep starts, not now: the clock may move in between
            # (sleep_or_wake)
            await self._wait(partial(self._delay, next_at))

    def _delay(self, next_at: datetime | None) -> float:
        """Until the next slot, or the refresh interval if that comes first."""
        services = self._services
        delay = max(REFRESH, services.settings.polling_interval)
        if next_at is not None:
            # from the clock's own time, not the millisecond one: wake at the slot;
            # corrected like ``services.now`` (slots are judged by the database's
            # clock too), or a clock ahead of the database's would spin until then
            now = services.clock.now() + services.clock_offset
            left = (next_at - now).total_seconds()
            delay = min(delay, max(0.0, left))
        return delay

    async def _wait(self, seconds: float | Callable[[], float] | None) -> None:
        if self._wake.is_set() or self._stopping:
            return
        await sleep_or_wake(self._services.clock, self._wake, seconds)
