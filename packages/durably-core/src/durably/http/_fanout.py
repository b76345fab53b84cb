"""``/runs/subscribe`` fan-out: each open list stream gets the events of the runs
it asked for, in batches encoded once for all of them.

Why it is built this way: a busy worker emits thousands of events a second, and
every write to a stream costs tens of microseconds in the ASGI server. So the
work per event is constant however many streams are open (throttle once, find
the matching filters through an index, append to their batches), and each flush
costs a stream one wake-up and one write of bytes that were joined once for all
the streams sharing its filter. A flush comes ``RUNS_LINGER`` after the first
event of a quiet spell (a run's burst of events goes out in one write) and at
least ``RUNS_FLUSH_INTERVAL`` after the previous flush (a dashboard needs no
more than ten updates a second, and under load this bounds the writes).

One progress throttle serves all list streams: a run's job name and labels never
change, so every filter takes all of a run's events or none, and one throttle
gives each stream what a throttle of its own would, except that a stream opened
while a run's progress is held gets that run's next progress when the hold ends
rather than at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from ._backlog import Backlog
from ._serialize import Outgoing
from ._throttle import ProgressThrottle

#: Seconds a flush waits after the first event of a quiet spell, to gather its burst.
RUNS_LINGER = 0.02
#: Minimum seconds between two flushes.
RUNS_FLUSH_INTERVAL = 0.1
#: Past this many runs remembered, the shared throttle forgets the idle ones.
_PRUNE_AT = 1024

Labels = tuple[tuple[str, str], ...]


class RunsStream:
    """One list stream's inbox: chunks of frames, ready to write; what queues up
    while the stream waits for its client is bounded by ``backlog``."""

    __slots__ = ("_chunks", "_ready", "backlog")

    def __init__(self, backlog: Backlog) -> None:
        self._chunks: list[bytes] = []
        self._ready = asyncio.Event()
        self.backlog = backlog

    def feed(self, chunk: bytes) -> None:
        if self.backlog.counting and not self.backlog.add(len(chunk)):
            self._chunks.clear()  # cut: nothing more is sent
            return
        self._chunks.append(chunk)
        self._ready.set()

    async def next(self) -> bytes:
        """Everything fed since the last call (waits for something)."""
        await self._ready.wait()
        self._ready.clear()
        chunks, self._chunks = self._chunks, []
        self.backlog.taken()
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class _Group:
    """The streams with one filter: one match per event, one join per flush."""

    __slots__ = ("batch", "job_names", "labels", "streams")

    def __init__(self, job_names: frozenset[str], labels: Labels) -> None:
        self.job_names = job_names
        self.labels = labels
        self.streams: set[RunsStream] = set()
        self.batch: list[Outgoing] = []

    def labels_match(self, out: Outgoing) -> bool:
        have: dict[str, str] = getattr(out.event, "labels", None) or {}
        return all(have.get(k) == v for k, v in self.labels)


class RunsFanout:
    def __init__(self, throttle: float) -> None:
        self._throttle_interval = throttle
        self._groups: dict[tuple[frozenset[str], Labels], _Group] = {}
        # each group sits in exactly one index, so an event meets it at most once:
        # by job name if it filters on jobs, else by its first label, else in _any
        self._any: list[_Group] = []
        self._by_job: dict[str, list[_Group]] = {}
        self._by_label: dict[tuple[str, str], list[_Group]] = {}
        self._touched: list[_Group] = []
        self._reset()

    def _reset(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._throttle: ProgressThrottle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_flush = float("-inf")

    @property
    def open(self) -> bool:
        return bool(self._groups)

    def add(
        self, stream: RunsStream, job_names: Iterable[str] | None, labels: dict[str, str] | None
    ) -> Callable[[], None]:
        """Send ``stream`` the events of matching runs; returns the function that stops it."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._throttle = ProgressThrottle(self._throttle_interval, self._loop.time)
        key = (frozenset(job_names or ()), tuple(sorted((labels or {}).items())))
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(*key)
            for index in self._indexes(group):
                index.append(group)
        group.streams.add(stream)

        def stop() -> None:
            group.streams.discard(stream)
            if group.streams or self._groups.get(key) is not group:
                return
            del self._groups[key]
            for index in self._indexes(group):
                index.remove(group)
            self._by_job = {k: v for k, v in self._by_job.items() if v}
            self._by_label = {k: v for k, v in self._by_label.items() if v}
            if not self._groups:
                if self._timer is not None:
                    self._timer.cancel()
                self._touched.clear()
                self._reset()

        return stop

    def _indexes(self, group: _Group) -> list[list[_Group]]:
        if group.job_names:
            return [self._by_job.setdefault(name, []) for name in group.job_names]
        if group.labels:
            return [self._by_label.setdefault(group.labels[0], [])]
        return [self._any]

    def push(self, out: Outgoing) -> None:
        """One event of a type the list streams forward."""
        assert self._throttle is not None
        ready = self._throttle.offer(out)
        if not ready:  # a progress held back
            self._schedule_held()
            return
        idle = not self._touched
        for one in ready:
            self._route(one)
        if idle and self._touched:  # the first event of a batch sets its flush
            self._schedule(self._now() + RUNS_LINGER)

    def _route(self, out: Outgoing) -> None:
        groups = self._any
        event = out.event
        if self._by_job:
            by_job = self._by_job.get(getattr(event, "job_name", ""), ())
            groups = [*groups, *(g for g in by_job if not g.labels or g.labels_match(out))]
        if self._by_label:
            for item in (getattr(event, "labels", None) or {}).items():
                by_label = self._by_label.get(item, ())
                groups = [*groups, *(g for g in by_label if g.labels_match(out))]
        for group in groups:
            if not group.batch:
                self._touched.append(group)
            group.batch.append(out)

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _schedule(self, at: float) -> None:
        """Flush at ``at`` (or when flushes may come again), unless one comes sooner."""
        assert self._loop is not None
        at = max(at, self._last_flush + RUNS_FLUSH_INTERVAL)
        if self._timer is not None:
            if self._timer.when() <= at:
                return
            self._timer.cancel()
        self._timer = self._loop.call_at(at, self._flush)

    def _schedule_held(self) -> None:
        assert self._throttle is not None
        due = self._throttle.next_due()
        if due is not None:
            self._schedule(due)

    def _flush(self) -> None:
        assert self._throttle is not None
        self._timer = None
        self._last_flush = self._now()
        for ready in self._throttle.take_due():
            self._route(ready)
        touched, self._touched = self._touched, []
        for group in touched:
            chunk = b"".join([out.trimmed for out in group.batch])
            group.batch = []
            for stream in group.streams:
                stream.feed(chunk)
        if len(self._throttle) > _PRUNE_AT:
            self._throttle.prune()
        self._schedule_held()
