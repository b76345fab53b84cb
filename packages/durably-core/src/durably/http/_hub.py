"""One bus listener per handler, fanning events out to the open streams.

The cost of an event is a dict lookup plus one queue put per interested stream,
however many streams are open; the listener is registered only while at least
one stream is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import Durably, Event

Sink = Callable[[Event], None]


class EventHub:
    def __init__(self, durably: Durably) -> None:
        self._durably = durably
        self._by_run: dict[str, set[Sink]] = {}
        self._all: set[Sink] = set()
        self._by_job: dict[str, set[Sink]] = {}
        self._count = 0
        self._unsubscribe: Callable[[], None] | None = None

    @property
    def streams(self) -> int:
        """Open streams (for tests and metrics)."""
        return self._count

    def _listener(self, event: Any) -> None:
        run_id = getattr(event, "run_id", None)
        if run_id is not None:
            sinks = self._by_run.get(run_id)
            if sinks:
                for sink in tuple(sinks):
                    sink(event)
        if self._all:
            for sink in tuple(self._all):
                sink(event)
        if self._by_job:
            sinks = self._by_job.get(getattr(event, "job_name", None))  # type: ignore[arg-type]
            if sinks:
                for sink in tuple(sinks):
                    sink(event)

    def _added(self) -> None:
        self._count += 1
        if self._unsubscribe is None:
            self._unsubscribe = self._durably.on("*", self._listener)

    def _removed(self) -> None:
        self._count -= 1
        if self._count == 0 and self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def watch_run(self, run_id: str, sink: Sink) -> Callable[[], None]:
        """Deliver this run's events to ``sink``; returns the function that stops it."""
        self._by_run.setdefault(run_id, set()).add(sink)
        self._added()
        done = False

        def stop() -> None:
            nonlocal done
            if done:
                return
            done = True
            sinks = self._by_run.get(run_id)
            if sinks is not None:
                sinks.discard(sink)
                if not sinks:
                    del self._by_run[run_id]
            self._removed()

        return stop

    def watch_all(self, sink: Sink, job_names: tuple[str, ...] | None = None) -> Callable[[], None]:
        """Deliver every event (or those of ``job_names``) to ``sink``; returns the
        function that stops it. Streams filtered by job name cost nothing for the
        events of other jobs."""
        groups = (
            [self._all]
            if not job_names
            else [self._by_job.setdefault(name, set()) for name in set(job_names)]
        )
        for group in groups:
            group.add(sink)
        self._added()
        done = False

        def stop() -> None:
            nonlocal done
            if done:
                return
            done = True
            for group in groups:
                group.discard(sink)
            for name in [name for name, group in self._by_job.items() if not group]:
                del self._by_job[name]
            self._removed()

        return stop
