"""The records that cross the storage boundary.

Reads return decoded JSON values (``input``, ``output``, ``labels``, log
``data``); writes carry JSON text the core has already encoded (``*_json``), so
the core alone decides what is serializable.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

import msgspec


class RunStatus(StrEnum):
    """A run's status: ``pending → leased → completed | failed``, or ``cancelled``."""

    PENDING = "pending"
    LEASED = "leased"
    #: Suspended on a durable wait: no lease, no slot; claimable again at ``wake_at``.
    WAITING = "waiting"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class StepStatus(StrEnum):
    """A step record's status (only ``completed`` steps are replayed)."""

    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class AttemptStatus(StrEnum):
    """An attempt record's status: ``started`` (written before the call, with
    ``record_attempts=True``; left so when the worker stopped during the call),
    ``completed`` or ``failed``."""

    STARTED = "started"
    COMPLETED = "completed"
    FAILED = "failed"


class WaitStatus(StrEnum):
    """``pending`` until a result is recorded (``resolved``), or the run ends first
    (``closed`` when it completes or fails, ``cancelled`` when it is cancelled)."""

    PENDING = "pending"
    RESOLVED = "resolved"
    CANCELLED = "cancelled"
    CLOSED = "closed"


LogLevel = Literal["info", "warn", "error"]
"""The level of a ``step.log`` entry."""

Disposition = Literal["created", "idempotent", "coalesced"]
"""How a trigger was answered: a new run, the run of the same idempotency key, or
the pending run of the same concurrency key (``coalesce="skip"``)."""

WaitKind = Literal["signal", "timer"]
"""A wait for a signal (``step.prepare_wait``), or a durable timer (``step.sleep``)
that only its deadline ends."""

WaitOutcome = Literal["signal", "timeout"]
"""What resolved a wait: a signal, or its deadline."""

SignalDisposition = Literal[
    "accepted", "duplicate", "conflict", "expired", "closed", "timer", "not-found"
]
"""What ``signal_wait`` did: ``accepted`` (this signal is the wait's result),
``duplicate`` (the same signal id and payload were accepted before), or why it was
refused: ``conflict`` (another signal was accepted), ``expired`` (the deadline
passed: the wait timed out), ``closed`` (the run finished or was cancelled),
``timer`` (a ``step.sleep`` timer takes no signal), ``not-found`` (no such wait)."""


class Progress(msgspec.Struct, frozen=True):
    """A run's progress: ``current`` of ``total`` (if known), with a message."""

    current: float
    total: float | None = None
    message: str | None = None


class LogData(msgspec.Struct, frozen=True, kw_only=True):
    """One ``step.log`` call of a run as ``trigger_and_wait(on_log=...)`` receives it:
    the TypeScript library's ``onLog`` data (``level``, ``message``, ``data``,
    ``stepName``); ``step_name`` is ``None`` outside a step."""

    level: LogLevel
    message: str
    data: Any = None
    step_name: str | None = None


def progress_data(progress: Progress) -> dict[str, Any]:
    """``{current, total?, message?}`` as the TypeScript library stores and sends it:
    unset keys left out, integral numbers as integers (``JSON.stringify`` writes ``2``
    for ``2.0``) while they are exact (below 2**53)."""
    data: dict[str, Any] = {"current": _js_number(progress.current)}
    if progress.total is not None:
        data["total"] = _js_number(progress.total)
    if progress.message is not None:
        data["message"] = progress.message
    return data


def _js_number(value: float) -> float | int:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


class Run(msgspec.Struct, frozen=True, kw_only=True):
    """One run of a job, as stored."""

    id: str
    job_name: str
    input: Any
    status: RunStatus
    idempotency_key: str | None = None
    concurrency_key: str | None = None
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    current_step_index: int = 0
    completed_step_count: int = 0
    progress: Progress | None = None
    output: Any = None
    error: str | None = None
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    lease_generation: int = 0
    started_at: datetime | None = None
    completed_at: datetime | None = None
    created_at: datetime
    updated_at: datetime
    #: While ``waiting``: the wait the run is suspended on (**(py)** cleared on resume).
    waiting_on_wait_id: str | None = None
    #: While ``waiting``: when the run becomes claimable again — the awaited wait's
    #: deadline, the time its result arrived, or the time of a retry; ``None``: not
    #: before a signal.
    wake_at: datetime | None = None
    #: **(py)** The run's attempt: 1, one more with each automatic retry of the whole
    #: run (``define_job(run_retry=…)``), 1 again after ``retry()``.
    attempt: int = 1

    @property
    def is_terminal(self) -> bool:
        """Completed, failed or cancelled: nothing more happens to it."""
        return self.status in _lifecycle.TERMINAL_STATUSES

    @property
    def is_active(self) -> bool:
        """Pending or leased."""
        return self.status in _lifecycle.ACTIVE_STATUSES

    @property
    def is_waiting(self) -> bool:
        """Suspended on a durable wait: no lease, no worker slot."""
        return self.status is RunStatus.WAITING


class StepRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One executed step of a run."""

    id: str
    run_id: str
    name: str
    index: int
    status: StepStatus
    output: Any = None
    error: str | None = None
    started_at: datetime
    completed_at: datetime | None = None


class LogRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One ``step.log`` entry."""

    id: str
    run_id: str
    step_name: str | None
    level: LogLevel
    message: str
    data: Any = None
    created_at: datetime


class NewRun(msgspec.Struct, frozen=True, kw_only=True):
    """A run to enqueue. ``input_json`` is the validated input, already encoded."""

    id: str
    job_name: str
    input_json: str
    idempotency_key: str | None = None
    concurrency_key: str | None = None
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    created_at: datetime


class NewStep(msgspec.Struct, frozen=True, kw_only=True):
    """A step row to persist (fenced). ``output_json`` only for completed steps."""

    id: str
    name: str
    index: int
    status: StepStatus
    output_json: str | None = None
    error: str | None = None
    started_at: datetime
    completed_at: datetime | None = None


class Attempt(msgspec.Struct, frozen=True, kw_only=True):
    """One invocation of a step's function: every failed one is recorded (with
    ``record_attempts=True`` every one, from before the call).

    ``attempt`` counts the invocations of one series: 1, then one more after each
    failure that is retried, back to 1 for a series that starts after the step's last
    attempt failed. ``next_attempt_at``: when the next attempt of a failed one is due
    (``None``: it was the last)."""

    id: str
    run_id: str
    step_name: str
    step_index: int
    attempt: int
    status: AttemptStatus
    #: The lease generation of the execution that made it.
    lease_generation: int
    error: str | None = None
    started_at: datetime
    completed_at: datetime | None = None
    next_attempt_at: datetime | None = None


class NewAttempt(msgspec.Struct, frozen=True, kw_only=True):
    """An attempt to record (fenced): inserted, or — same ``id`` — the record it
    replaces (a ``started`` one settled)."""

    id: str
    step_name: str
    step_index: int
    attempt: int
    status: AttemptStatus
    error: str | None = None
    started_at: datetime
    completed_at: datetime | None = None
    next_attempt_at: datetime | None = None


class NewLog(msgspec.Struct, frozen=True, kw_only=True):
    """A log entry to persist (fenced). ``data_json`` is encoded JSON or None."""

    id: str
    step_name: str | None
    level: LogLevel
    message: str
    data_json: str | None = None
    created_at: datetime


class Wait(msgspec.Struct, frozen=True, kw_only=True):
    """A durable wait of a run, addressed by ``(run_id, name)``.

    ``deadline_at`` is fixed at the first preparation. Once ``resolved`` the result
    (``outcome`` with ``payload``) never changes."""

    id: str
    run_id: str
    name: str
    kind: WaitKind = "signal"
    status: WaitStatus = WaitStatus.PENDING
    outcome: WaitOutcome | None = None
    payload: Any = None
    signal_id: str | None = None
    metadata: Any = None
    deadline_at: datetime | None = None
    created_at: datetime
    #: When the run first suspended on it (``None``: never suspended).
    suspended_at: datetime | None = None
    resolved_at: datetime | None = None
    #: When the run was first claimed again after it suspended on this wait.
    first_resumed_at: datetime | None = None

    @property
    def input_wait(self) -> timedelta | None:
        """Time the run spent suspended before the result came (``None``: no result
        yet; zero: it came before the run suspended)."""
        return _lifecycle.input_wait(self)

    @property
    def execution_slot_wait(self) -> timedelta | None:
        """Time from the result (or the suspension, if later) to the claim that first
        resumed the run (``None``: no result yet, or not resumed yet)."""
        return _lifecycle.execution_slot_wait(self)


class NewWait(msgspec.Struct, frozen=True, kw_only=True):
    """A wait to prepare (fenced). ``metadata_json`` is encoded JSON or None."""

    id: str
    name: str
    kind: WaitKind = "signal"
    deadline_at: datetime | None = None
    metadata_json: str | None = None
    created_at: datetime


class NewSignal(msgspec.Struct, frozen=True, kw_only=True):
    """A signal to deliver. ``payload_json`` is canonical JSON (keys sorted), so
    equal payloads have equal text."""

    signal_id: str | None = None
    payload_json: str


class SignalOutcome(msgspec.Struct, frozen=True):
    """What ``signal_wait`` did (see :data:`SignalDisposition`) and the wait as it now
    is (``None`` when there is no such wait)."""

    disposition: SignalDisposition
    wait: Wait | None


class EnqueueResult(msgspec.Struct, frozen=True):
    """What ``enqueue`` did: the run that now stands for the request, and how."""

    run: Run
    disposition: Disposition


class RunFilter(msgspec.Struct, frozen=True, kw_only=True):
    """A query over runs. ``None`` means "any"; ``labels`` is an AND of equalities.

    Results are ordered by ``created_at`` descending, then ``id`` descending.
    """

    statuses: tuple[RunStatus, ...] | None = None
    job_names: tuple[str, ...] | None = None
    labels: dict[str, str] | None = None
    limit: int | None = None
    offset: int = 0


# The status sets live with the other run-status rules in durably.lifecycle, which
# imports this module: imported last (RunStatus is defined by then) and read at call
# time, so either module may be imported first.
from . import lifecycle as _lifecycle  # noqa: E402
