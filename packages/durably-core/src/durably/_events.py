"""The 21 event types and the bus that delivers them to listeners.

Every event has ``type``, ``timestamp`` and ``sequence`` (per ``Durably``,
increasing); events about a run also carry ``run_id``, ``job_name`` and
``labels``. Listeners may be sync or async; an exception in one goes to the
error handler and never reaches the run or the other listeners.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import msgspec

from ._clock import Clock
from ._records import LogLevel, Progress

if TYPE_CHECKING:
    from ._records import Run

logger = logging.getLogger("durably")


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of every event: ``type`` (e.g. ``"run:complete"``), ``timestamp`` (from the
    clock) and ``sequence`` (per ``Durably``, increasing)."""

    timestamp: datetime
    sequence: int

    @property
    def type(self) -> str:
        """The event type, e.g. ``"run:complete"``."""
        tag = self.__struct_config__.tag
        assert isinstance(tag, str)
        return tag


class RunEvent(Event, frozen=True, kw_only=True):
    """An event about a run: its ``run_id``, ``job_name`` and ``labels``."""

    run_id: str
    job_name: str
    labels: dict[str, str]


class RunTriggerEvent(RunEvent, frozen=True, kw_only=True, tag="run:trigger"):
    """``run:trigger``: a run was created (not for an idempotent or coalesced trigger);
    ``input`` is the validated input."""

    input: Any


class RunCoalescedEvent(RunEvent, frozen=True, kw_only=True, tag="run:coalesced"):
    """``run:coalesced``: a trigger with ``coalesce="skip"`` was answered with this pending
    run; its own input and labels were dropped."""

    skipped_input: Any
    skipped_labels: dict[str, str]


class RunLeasedEvent(RunEvent, frozen=True, kw_only=True, tag="run:leased"):
    """``run:leased``: this process claimed the run and starts executing it."""

    input: Any
    lease_owner: str
    lease_expires_at: datetime


class RunLeaseRenewedEvent(RunEvent, frozen=True, kw_only=True, tag="run:lease-renewed"):
    """``run:lease-renewed``: the lease was extended to ``lease_expires_at``."""

    lease_owner: str
    lease_expires_at: datetime


class RunCompleteEvent(RunEvent, frozen=True, kw_only=True, tag="run:complete"):
    """``run:complete``: the run completed; ``output`` as stored (JSON), ``duration`` in ms."""

    output: Any
    duration: float  # milliseconds


class RunFailEvent(RunEvent, frozen=True, kw_only=True, tag="run:fail"):
    """``run:fail``: the run failed with ``error``, in the step ``failed_step_name`` if a
    step's exception ended it."""

    error: str
    failed_step_name: str | None = None


class RunCancelEvent(RunEvent, frozen=True, kw_only=True, tag="run:cancel"):
    """``run:cancel``: the run was cancelled (``Durably.cancel``)."""


class RunDeleteEvent(RunEvent, frozen=True, kw_only=True, tag="run:delete"):
    """``run:delete``: the run was deleted (``Durably.delete_run``)."""


class RunWaitingEvent(RunEvent, frozen=True, kw_only=True, tag="run:waiting"):
    """``run:waiting``: the run suspended on a durable wait (lease and worker slot
    released). ``wake_at``: when it becomes claimable again by itself (the wait's
    deadline, or now when the result is already there), ``None``: only a signal
    wakes it. Its resumption is an ordinary ``run:leased``."""

    wait_id: str
    wait_name: str
    wake_at: datetime | None = None


class WaitSignalEvent(RunEvent, frozen=True, kw_only=True, tag="wait:signal"):
    """``wait:signal``: ``Durably.signal`` delivered a signal that became the wait's
    result (emitted by the process that delivered it; a duplicate emits nothing)."""

    wait_id: str
    wait_name: str
    signal_id: str | None
    payload: Any = None


class RunProgressEvent(RunEvent, frozen=True, kw_only=True, tag="run:progress"):
    """``run:progress``: the job called ``step.progress()``."""

    progress: Progress


class StepStartEvent(RunEvent, frozen=True, kw_only=True, tag="step:start"):
    """``step:start``: a step's function is about to run (not for a replayed step)."""

    step_name: str
    step_index: int


class StepCompleteEvent(RunEvent, frozen=True, kw_only=True, tag="step:complete"):
    """``step:complete``: a step was checkpointed; ``output`` as stored, ``duration`` in ms."""

    step_name: str
    step_index: int
    output: Any
    duration: float  # milliseconds


class StepFailEvent(RunEvent, frozen=True, kw_only=True, tag="step:fail"):
    """``step:fail``: a step raised ``error`` (or returned what cannot be stored)."""

    step_name: str
    step_index: int
    error: str


class StepRetryEvent(RunEvent, frozen=True, kw_only=True, tag="step:retry"):
    """``step:retry``: attempt ``attempt`` of a step failed with ``error`` and is tried
    again after ``delay`` seconds, at ``next_attempt_at`` (the last attempt's failure
    is ``step:fail`` instead)."""

    step_name: str
    step_index: int
    attempt: int
    delay: float  # seconds
    error: str
    next_attempt_at: datetime


class RunRetryEvent(RunEvent, frozen=True, kw_only=True, tag="run:retry"):
    """``run:retry``: attempt ``attempt`` of the whole run failed with ``error`` (in the
    step ``failed_step_name`` if a step's exception ended it); the run waits and is
    tried again after ``delay`` seconds, at ``next_attempt_at``, resuming after its
    last completed step (the last attempt's failure is ``run:fail`` instead)."""

    attempt: int
    delay: float  # seconds
    error: str
    next_attempt_at: datetime
    failed_step_name: str | None = None


class StepCancelEvent(RunEvent, frozen=True, kw_only=True, tag="step:cancel"):
    """``step:cancel``: a step was interrupted by a cancel, a lost lease or shutdown."""

    step_name: str
    step_index: int


class LogWriteEvent(RunEvent, frozen=True, kw_only=True, tag="log:write"):
    """``log:write``: the job called ``step.log``; ``step_name`` is ``None`` outside a step."""

    step_name: str | None
    level: LogLevel
    message: str
    data: Any = None


class WorkerErrorEvent(Event, frozen=True, kw_only=True, tag="worker:error"):
    """``worker:error``: something failed in the background (``context``: ``claim``,
    ``maintenance``, ``run-execution``, ``lease-renewal``, ``lease-lost``, ``progress``,
    ``step-failure``, ``schedule``); the worker goes on."""

    error: str
    context: str
    run_id: str | None = None


class ScheduleFireEvent(RunEvent, frozen=True, kw_only=True, tag="schedule:fire"):
    """``schedule:fire``: this process fired a slot of schedule ``schedule_name``: the
    run ``run_id`` stands for ``slot`` (``disposition`` ``"created"``, or
    ``"idempotent"`` when a run of the slot's idempotency key existed already)."""

    schedule_name: str
    slot: datetime
    disposition: str


class ScheduleSkipEvent(Event, frozen=True, kw_only=True, tag="schedule:skip"):
    """``schedule:skip``: this process passed over missed slots of schedule
    ``schedule_name`` (from ``first_slot`` to ``last_slot``) without running them,
    as its ``catch_up`` policy says."""

    schedule_name: str
    job_name: str
    first_slot: datetime
    last_slot: datetime
    catch_up: str


EventType = Literal[
    "run:trigger",
    "run:coalesced",
    "run:leased",
    "run:lease-renewed",
    "run:complete",
    "run:fail",
    "run:cancel",
    "run:delete",
    "run:waiting",
    "run:progress",
    "run:retry",
    "step:start",
    "step:complete",
    "step:fail",
    "step:cancel",
    "step:retry",
    "log:write",
    "wait:signal",
    "worker:error",
    "schedule:fire",
    "schedule:skip",
]
"""The 21 event type names ``Durably.on`` accepts (besides ``"*"``)."""

EVENT_CLASSES: dict[str, type[Event]] = {
    cls.__struct_config__.tag: cls  # type: ignore[misc]
    for cls in (
        RunTriggerEvent,
        RunCoalescedEvent,
        RunLeasedEvent,
        RunLeaseRenewedEvent,
        RunCompleteEvent,
        RunFailEvent,
        RunCancelEvent,
        RunDeleteEvent,
        RunWaitingEvent,
        RunProgressEvent,
        RunRetryEvent,
        StepStartEvent,
        StepCompleteEvent,
        StepFailEvent,
        StepCancelEvent,
        StepRetryEvent,
        LogWriteEvent,
        WaitSignalEvent,
        WorkerErrorEvent,
        ScheduleFireEvent,
        ScheduleSkipEvent,
    )
}

#: Events after which a run emits nothing more.
TERMINAL_EVENT_TYPES = frozenset({"run:complete", "run:fail", "run:cancel", "run:delete"})

Listener: TypeAlias = Callable[[Any], "Awaitable[None] | None"]
ErrorHandler: TypeAlias = Callable[[BaseException, Event], None]

ANY = "*"


def _log_listener_error(exc: BaseException, event: Event) -> None:
    logger.error("durably: a listener for %r raised", event.type, exc_info=exc)


class EventBus:
    """Delivers events to listeners registered per type (or ``"*"`` for all)."""

    def __init__(self, clock: Clock, on_listener_error: ErrorHandler | None = None) -> None:
        self._clock = clock
        self._listeners: dict[str, list[Listener]] = {}
        self._sequence = itertools.count(1)
        self._on_error = on_listener_error or _log_listener_error
        self._pending: set[asyncio.Future[None]] = set()

    def on(self, event_type: str, listener: Listener) -> Callable[[], None]:
        """Register ``listener``; returns a function that unregisters it."""
        if event_type != ANY and event_type not in EVENT_CLASSES:
            from ._errors import ValidationError

            known = ", ".join(sorted(EVENT_CLASSES))
            raise ValidationError(f"Unknown event type {event_type!r}; known types: {known}, '*'")
        if not callable(listener):
            from ._errors import ValidationError

            raise ValidationError(f"Listener for {event_type!r} must be callable")
        self._listeners.setdefault(event_type, []).append(listener)

        def unsubscribe() -> None:
            listeners = self._listeners.get(event_type, [])
            if listener in listeners:
                listeners.remove(listener)

        return unsubscribe

    def wants(self, event_type: str) -> bool:
        """Is anyone listening? Lets hot paths skip building events nobody reads."""
        return bool(self._listeners.get(event_type)) or bool(self._listeners.get(ANY))

    def emit(self, cls: type[Event], **fields: Any) -> None:
        targets = self._targets(cls)
        if not targets:
            next(self._sequence)
            return
        event = cls(timestamp=self._clock.now(), sequence=next(self._sequence), **fields)
        self._deliver(event, targets)

    def emit_run(
        self, cls: type[RunEvent], run: Run, *, at: datetime | None = None, **fields: Any
    ) -> None:
        """``emit`` of an event about ``run``: its id, job name and labels filled in.
        Its timestamp is ``at`` when the caller read the clock for that instant already
        (a step's start: the same reading as the row's ``started_at``)."""
        targets = self._targets(cls)
        if not targets:
            next(self._sequence)
            return
        event = cls(
            timestamp=self._clock.now() if at is None else at,
            sequence=next(self._sequence),
            run_id=run.id,
            job_name=run.job_name,
            labels=run.labels,
            **fields,
        )
        self._deliver(event, targets)

    def _targets(self, cls: type[Event]) -> list[Listener]:
        tag = cls.__struct_config__.tag
        assert isinstance(tag, str)
        return [*self._listeners.get(tag, ()), *self._listeners.get(ANY, ())]

    def _deliver(self, event: Event, targets: list[Listener]) -> None:
        for listener in targets:
            try:
                result = listener(event)
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    self._pending.add(task)
                    task.add_done_callback(functools.partial(self._async_done, event=event))
            except Exception as exc:
                self._report(exc, event)

    def _async_done(self, task: asyncio.Future[None], *, event: Event) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            assert exc is not None
            self._report(exc, event)

    def _report(self, exc: BaseException, event: Event) -> None:
        try:
            self._on_error(exc, event)
        except Exception:
            logger.exception("durably: the listener error handler raised")

    async def drain(self) -> None:
        """Wait for async listeners still running (used on stop)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
