"""Events of runs executed by any process, synthesized from what storage shows.

The event bus is in-process: a command line or a dashboard in another process
never sees the worker's events. :class:`RunWatcher` polls the storage instead and
turns the differences between two readings into the same event types (``sequence``
0, timestamps from the records): a new run is ``run:trigger``, a claim
``run:leased``, new step rows ``step:complete`` / ``step:fail`` / ``step:cancel``,
new log rows ``log:write``, a changed progress ``run:progress``, a suspension on a
durable wait ``run:waiting``, a finished run ``run:complete`` / ``run:fail`` /
``run:cancel``, a vanished one ``run:delete``.

What polling cannot see: ``step:start`` (a step row is written when the step
ends), events between two readings that leave no trace (several progress values:
the latest is reported), the steps and logs of a run that completed and had them
deleted (``preserve_steps=False``) before the next reading, and log rows of a run
whose row did not change (they are read when the run's ``updated_at`` moves: at
every checkpoint, progress write and lease renewal).

Each reading costs one query for the unfinished runs, one (or a few) for the
newest runs, one per tracked run that left the unfinished set, and two (steps,
logs) per run that changed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import msgspec

from ._events import (
    Event,
    LogWriteEvent,
    RunCancelEvent,
    RunCompleteEvent,
    RunDeleteEvent,
    RunFailEvent,
    RunLeasedEvent,
    RunProgressEvent,
    RunTriggerEvent,
    RunWaitingEvent,
    StepCancelEvent,
    StepCompleteEvent,
    StepFailEvent,
)
from ._records import Run, RunFilter, RunStatus, StepRecord, StepStatus
from .lifecycle import TERMINAL_STATUSES

if TYPE_CHECKING:
    from ._app import Durably

#: Unfinished statuses (every status but the terminal ones, so a later status is
#: followed too).
_UNFINISHED = tuple(s for s in RunStatus if s not in TERMINAL_STATUSES)
#: Runs created this long before the newest one seen are still looked for: clocks
#: of the processes that trigger differ, and a trigger's row is visible only once
#: committed.
_MARGIN = timedelta(seconds=30)
_PAGE = 100


def _ms(start: datetime | None, end: datetime | None) -> float:
    if start is None or end is None:
        return 0.0
    return max((end - start).total_seconds() * 1000.0, 0.0)


@dataclass
class _Tracked:
    run: Run
    steps: set[str] = field(default_factory=set)
    logs: set[str] = field(default_factory=set)
    failed_step: str | None = None


class RunWatcher:
    """Polls a ``Durably``'s storage and returns what changed as events.

    The first :meth:`poll` only takes stock (returns nothing), so a watcher reports
    what happens after it started. ``job_names`` / ``labels`` narrow what is
    watched as ``get_runs`` does; ``run_id`` follows one run.
    """

    def __init__(
        self,
        durably: Durably,
        *,
        job_names: Sequence[str] | None = None,
        labels: Mapping[str, str] | None = None,
        run_id: str | None = None,
    ) -> None:
        self._durably = durably
        self._job_names = tuple(job_names) if job_names else None
        self._labels = dict(labels) if labels else None
        self._run_id = run_id
        self._tracked: dict[str, _Tracked] = {}
        #: ids of runs already reported (or present at the start), by created_at,
        #: kept while they are within the margin of the newest run seen
        self._seen: dict[str, datetime] = {}
        self._newest: datetime | None = None
        self._primed = False

    def _filter(self, **kw: Any) -> RunFilter:
        return RunFilter(job_names=self._job_names, labels=self._labels, **kw)

    def _matches(self, run: Run) -> bool:
        if self._run_id is not None and run.id != self._run_id:
            return False
        if self._job_names is not None and run.job_name not in self._job_names:
            return False
        return self._labels is None or all(run.labels.get(k) == v for k, v in self._labels.items())

    async def _recent(self) -> list[Run]:
        """Runs created since (about) the newest one seen, newest first."""
        storage = self._durably.storage
        if self._run_id is not None:
            run = await storage.get_run(self._run_id)
            return [run] if run is not None else []
        out: list[Run] = []
        offset = 0
        while True:
            page = await storage.get_runs(self._filter(limit=_PAGE, offset=offset))
            out.extend(page)
            if len(page) < _PAGE or self._newest is None:
                return out
            if page[-1].created_at < self._newest - _MARGIN:
                return out
            offset += _PAGE

    async def poll(self) -> list[Event]:
        """Read the storage once; the events of what changed since the last reading."""
        storage = self._durably.storage
        recent = await self._recent()
        if self._run_id is None:
            unfinished = await storage.get_runs(self._filter(statuses=_UNFINISHED))
        else:
            unfinished = [r for r in recent if r.status in _UNFINISHED]
        current = {r.id: r for r in (*recent, *unfinished) if self._matches(r)}
        events: list[Event] = []
        if not self._primed:
            self._primed = True
            for run in current.values():
                self._seen[run.id] = run.created_at
                if run.status in _UNFINISHED:
                    tracked = _Tracked(run)
                    await self._children(tracked, run, emit=False)
                    self._tracked[run.id] = tracked
            self._advance(current.values())
            return events
        # runs to follow: new ones, unfinished ones not yet followed (retried, released)
        for run in sorted(current.values(), key=lambda r: (r.created_at, r.id)):
            if run.id in self._tracked:
                continue
            if run.id not in self._seen:
                events.append(
                    synthetic_event(RunTriggerEvent, run, run.created_at, input=run.input)
                )
                # as it was when triggered, so what happened since is reported too
                before = msgspec.structs.replace(
                    run,
                    status=RunStatus.PENDING,
                    progress=None,
                    output=None,
                    error=None,
                    lease_generation=0,
                    started_at=None,
                    completed_at=None,
                    updated_at=run.created_at,
                )
                self._tracked[run.id] = _Tracked(before)
            elif run.status in _UNFINISHED:  # retried or released: its rows are old news
                tracked = _Tracked(run)
                await self._children(tracked, run, emit=False)
                self._tracked[run.id] = tracked
            self._seen[run.id] = run.created_at
        for run_id in list(self._tracked):
            tracked = self._tracked[run_id]
            now = current.get(run_id)
            if now is None:
                now = await storage.get_run(run_id)
            events.extend(await self._changes(tracked, now))
            if now is None or now.is_terminal:
                del self._tracked[run_id]
        self._advance(current.values())
        return events

    def _advance(self, runs: Any) -> None:
        for run in runs:
            if self._newest is None or run.created_at > self._newest:
                self._newest = run.created_at
        if self._newest is not None:
            horizon = self._newest - _MARGIN
            self._seen = {i: t for i, t in self._seen.items() if t >= horizon}

    async def _changes(self, tracked: _Tracked, now: Run | None) -> list[Event]:
        before = tracked.run
        if now is None:
            return [synthetic_event(RunDeleteEvent, before, before.updated_at)]
        out: list[Event] = []
        # claimed since the last reading (perhaps finished too: then the claim is
        # known only by its generation)
        if now.lease_generation > before.lease_generation or (
            now.status is RunStatus.LEASED and before.status is not RunStatus.LEASED
        ):
            out.append(
                synthetic_event(
                    RunLeasedEvent,
                    now,
                    now.started_at if before.started_at is None else now.updated_at,
                    input=now.input,
                    lease_owner=now.lease_owner or "",
                    lease_expires_at=now.lease_expires_at or now.updated_at,
                )
            )
        if now.updated_at != before.updated_at or now.status is not before.status:
            out.extend(await self._children(tracked, now, emit=True))
        if now.progress is not None and now.progress != before.progress:
            out.append(
                synthetic_event(RunProgressEvent, now, now.updated_at, progress=now.progress)
            )
        if now.status is not before.status:
            end = now.completed_at or now.updated_at
            if now.status is RunStatus.COMPLETED:
                duration = _ms(now.started_at, now.completed_at)
                out.append(
                    synthetic_event(
                        RunCompleteEvent, now, end, output=now.output, duration=duration
                    )
                )
            elif now.status is RunStatus.FAILED:
                out.append(
                    synthetic_event(
                        RunFailEvent,
                        now,
                        end,
                        error=now.error or "Unknown error",
                        failed_step_name=tracked.failed_step,
                    )
                )
            elif now.status is RunStatus.CANCELLED:
                out.append(synthetic_event(RunCancelEvent, now, end))
        if (
            now.status is RunStatus.WAITING
            and now.waiting_on_wait_id is not None
            and (
                before.status is not RunStatus.WAITING
                # resumed and suspended again between two readings (a signal to a
                # waiting run moves its updated_at, not this)
                or now.lease_generation != before.lease_generation
                or now.waiting_on_wait_id != before.waiting_on_wait_id
            )
        ):
            out.append(await self._waiting(now, now.waiting_on_wait_id))
        tracked.run = now
        return out

    async def _waiting(self, run: Run, wait_id: str) -> Event:
        """``run:waiting`` of a run suspended on the wait ``wait_id`` (its name read)."""
        waits = await self._durably.storage.get_waits(run.id)
        name = next((w.name for w in waits if w.id == wait_id), "")
        return synthetic_event(
            RunWaitingEvent,
            run,
            run.updated_at,
            wait_id=wait_id,
            wait_name=name,
            wake_at=run.wake_at,
        )

    async def _children(self, tracked: _Tracked, run: Run, *, emit: bool) -> list[Event]:
        """New step and log rows of the run (remembered; as events when ``emit``)."""
        storage = self._durably.storage
        steps = await storage.get_steps(run.id)
        logs = await storage.get_logs(run.id)
        out: list[tuple[datetime, int, Event]] = []
        for order, step in enumerate(steps):
            if step.id in tracked.steps:
                continue
            tracked.steps.add(step.id)
            if step.status is StepStatus.FAILED:
                tracked.failed_step = step.name
            if emit:
                out.append((step.completed_at or step.started_at, order, _step_event(run, step)))
        for order, log in enumerate(logs):
            if log.id in tracked.logs:
                continue
            tracked.logs.add(log.id)
            if emit:
                event = synthetic_event(
                    LogWriteEvent,
                    run,
                    log.created_at,
                    step_name=log.step_name,
                    level=log.level,
                    message=log.message,
                    data=log.data,
                )
                out.append((log.created_at, len(steps) + order, event))
        out.sort(key=lambda item: (item[0], item[1]))
        return [event for _, _, event in out]


def _step_event(run: Run, step: StepRecord) -> Event:
    at = step.completed_at or step.started_at
    if step.status is StepStatus.COMPLETED:
        return synthetic_event(
            StepCompleteEvent,
            run,
            at,
            step_name=step.name,
            step_index=step.index,
            output=step.output,
            duration=_ms(step.started_at, step.completed_at),
        )
    if step.status is StepStatus.FAILED:
        return synthetic_event(
            StepFailEvent,
            run,
            at,
            step_name=step.name,
            step_index=step.index,
            error=step.error or "",
        )
    return synthetic_event(StepCancelEvent, run, at, step_name=step.name, step_index=step.index)


def synthetic_event(cls: type[Event], run: Run, at: datetime | None, **fields: Any) -> Event:
    """An event about ``run`` that no bus emitted (``sequence`` 0, as the reference's
    replay sends), at ``at`` (default: the run's ``updated_at``)."""
    return cls(  # type: ignore[call-arg]
        timestamp=at or run.updated_at,
        sequence=0,
        run_id=run.id,
        job_name=run.job_name,
        labels=run.labels,
        **fields,
    )
