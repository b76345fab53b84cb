"""The dashboard's live feed: runs as the *database* shows them, whichever process
executes them.

``/runs/subscribe`` carries the events of this process only; a dashboard served
apart from the workers (``durably dashboard``) would never see a run move. So the
dashboard's stream (``GET /watch``) is fed by one :class:`durably._watch.RunWatcher`
per handler, polling the storage every ``interval`` seconds while at least one
such stream is open, and sooner when this process's own bus reports a run event
(so runs executed here show up at once). Its events go through the same fan-out
as the list streams (filters by job and labels, batched, progress throttled).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable

from .. import Durably
from .._watch import RunWatcher
from ._fanout import RunsFanout, RunsStream
from ._serialize import RUNS_STREAM_TYPES, Outgoing

logger = logging.getLogger("durably.http")

#: The bus events that make the feed read the database before its interval is up.
_WAKE_TYPES = (
    "run:trigger",
    "run:leased",
    "run:progress",
    "step:complete",
    "step:fail",
    "run:complete",
    "run:fail",
    "run:cancel",
    "run:delete",
)
#: Minimum seconds between two readings, however often the bus wakes the feed.
_MIN_GAP = 0.1


class WatchFeed:
    def __init__(self, durably: Durably, interval: float, throttle: float) -> None:
        self._durably = durably
        self._interval = interval
        self._fanout = RunsFanout(throttle)
        self._streams = 0
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._unsubscribe: list[Callable[[], None]] = []
        self._primed: asyncio.Event | None = None

    async def primed(self) -> None:
        """Return once the feed has taken stock (its first reading): a change made
        after this is reported."""
        if self._primed is not None:
            await self._primed.wait()

    def watch(
        self, stream: RunsStream, job_names: Iterable[str] | None, labels: dict[str, str] | None
    ) -> Callable[[], None]:
        """Feed ``stream`` the changes of matching runs; returns the function that stops it."""
        leave = self._fanout.add(stream, job_names, labels)
        self._streams += 1
        if self._task is None:
            self._wake = asyncio.Event()
            self._primed = asyncio.Event()
            wake = self._wake
            self._unsubscribe = [self._durably.on(t, lambda _e: wake.set()) for t in _WAKE_TYPES]
            self._task = asyncio.create_task(self._loop(), name="durably-dashboard-watch")
        done = False

        def stop() -> None:
            nonlocal done
            if done:
                return
            done = True
            leave()
            self._streams -= 1
            if self._streams == 0 and self._task is not None:
                self._task.cancel()
                self._task = None
                self._primed = None
                for unsubscribe in self._unsubscribe:
                    unsubscribe()
                self._unsubscribe = []

        return stop

    async def _loop(self) -> None:
        watcher = RunWatcher(self._durably)
        wake, primed = self._wake, self._primed
        assert wake is not None
        assert primed is not None
        loop = asyncio.get_running_loop()
        while True:
            wake.clear()
            try:
                if not primed.is_set():
                    await watcher.poll()
                    primed.set()
                else:
                    for event in await watcher.poll():
                        if event.type in RUNS_STREAM_TYPES:
                            self._fanout.push(Outgoing(event))
            except Exception:  # a database error never ends the feed: try again later
                logger.warning("durably.http: the dashboard's feed could not read", exc_info=True)
            started = loop.time()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await wake.wait()
            gap = _MIN_GAP - (loop.time() - started)
            if gap > 0:
                await asyncio.sleep(gap)
