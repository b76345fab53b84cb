"""One bus listener per handler, fanning events out to the open streams.

An event is wrapped once (``Outgoing``, whose frames are encoded at most once
each) and handed to the streams of its run and to the list streams' fan-out;
the cost of an event does not grow with the number of open streams. The
listener is registered only while at least one stream is open.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from .. import Durably
from ._fanout import RunsFanout, RunsStream
from ._serialize import RUNS_STREAM_TYPES, Outgoing

Sink = Callable[[Outgoing], None]


class EventHub:
    def __init__(self, durably: Durably, throttle: float) -> None:
        self._durably = durably
        self._by_run: dict[str, set[Sink]] = {}
        self._runs = RunsFanout(throttle)
        self._count = 0
        self._unsubscribe: Callable[[], None] | None = None

    @property
    def streams(self) -> int:
        """Open streams (for tests and metrics)."""
        return self._count

    def _listener(self, event: Any) -> None:
        out = None
        run_id = getattr(event, "run_id", None)
        if run_id is not None:
            sinks = self._by_run.get(run_id)
            if sinks:
                out = Outgoing(event)
                for sink in tuple(sinks):
                    sink(out)
        if self._runs.open:
            out = out or Outgoing(event)
            if out.type in RUNS_STREAM_TYPES:
                self._runs.push(out)

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

    def watch_runs(
        self,
        stream: RunsStream,
        job_names: Iterable[str] | None,
        labels: dict[str, str] | None,
    ) -> Callable[[], None]:
        """Feed ``stream`` the list frames of matching runs (all runs if neither
        filter is given); returns the function that stops it."""
        leave = self._runs.add(stream, job_names, labels)
        self._added()
        done = False

        def stop() -> None:
            nonlocal done
            if done:
                return
            done = True
            leave()
            self._removed()

        return stop
