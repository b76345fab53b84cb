"""Stateful property tests of storage adapters (hypothesis ``RuleBasedStateMachine``).

:class:`StorageStateMachine` drives one or more storages through random sequences
of the :class:`durably.Storage` operations — enqueue (idempotency and concurrency
keys, coalesce, batches), claim, renew, release of expired leases, fenced step /
progress / log / completion / failure writes with current and stale generations,
cancel, retry, delete, purge, queries, durable waits (prepare, suspend,
signals with their ids and payloads, reads of results; deadlines, signals and
cancellation racing), and retries (``_stateful_attempts``: attempt records written
and settled, runs waiting for a step's next attempt or for a retry of the whole
run) — with time moved only by the machine.
After every operation it checks:

- every storage gives the same observable result (records compared whole);
- with ``check_model`` (the default), that result is the one predicted by
  :class:`LifecycleModel`, a model of the lifecycle written from the behaviour
  contract independently of ``durably.lifecycle`` (which the memory backend uses);
- schedules (``_stateful_schedules``): created, changed, deleted, and fired by two
  workers from their own, possibly stale, reads: a fire applies only at the
  revision it was planned from, its runs join the runs above;
- the invariants: at most one live lease per run (no generation is handed out
  twice), a lease generation never decreases, a completed step's output never
  changes, one run per idempotency key, at most one live-leased run per
  concurrency key, at most one pending run per (job, concurrency key); a waiting run
  holds no lease and is suspended on one of its own waits, or waits for a retry at
  its ``wake_at``; a wait's result, once recorded, never changes; a finished run has
  no pending wait.

An adapter author subclasses it and opens storages::

    from durably_testing.stateful import StorageStateMachine

    class MyStorageMachine(StorageStateMachine):
        async def open_storages(self):
            return {"mine": await open_my_storage(self.tmp_path / "db")}

    TestMyStorage = MyStorageMachine.TestCase   # collected by pytest

Each example gets fresh storages; they run on a private event loop that is
closed in ``teardown``.
"""

from __future__ import annotations

import asyncio
import copy
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import msgspec
from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from durably import (
    Attempt,
    ConflictError,
    EnqueueResult,
    LogRecord,
    NewLog,
    NewRun,
    NewSignal,
    NewStep,
    NewWait,
    NotFoundError,
    Progress,
    Run,
    RunFilter,
    RunStatus,
    SignalOutcome,
    StepRecord,
    StepStatus,
    Storage,
    SupportsDatabaseTime,
    SupportsIdentityCheck,
    ValidationError,
    Wait,
    WaitKind,
)

from ._stateful_attempts import AttemptRules
from ._stateful_schedules import ScheduleRules

__all__ = [
    "LifecycleModel",
    "ModelConflict",
    "ModelRun",
    "ModelStep",
    "ModelWait",
    "StorageStateMachine",
]

T = TypeVar("T")

#: The machine's origin of time (aware UTC, millisecond precision).
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)

JOBS = ("job-a", "job-b")
OWNERS = ("worker-1", "worker-2")
STEP_NAMES = ("s1", "s2", "s3")
#: Wait names: two that take signals, and one timer (``step.sleep``).
WAIT_NAMES = ("w1", "w2", "t1")
LABEL_SETS: tuple[dict[str, str], ...] = ({}, {"team": "a"}, {"team": "b", "env": "x"})


# --------------------------------------------------------------------------
# The model: the lifecycle rules written fresh from docs/semantics.md / docs/schema.md
# --------------------------------------------------------------------------

PENDING, LEASED, WAITING, COMPLETED, FAILED, CANCELLED = (
    "pending",
    "leased",
    "waiting",
    "completed",
    "failed",
    "cancelled",
)
FINISHED = frozenset({COMPLETED, FAILED, CANCELLED})
# a wait's statuses besides "pending" and "cancelled"
RESOLVED, CLOSED = "resolved", "closed"


class ModelConflict(Exception):
    """The model predicts a ``ConflictError``."""


@dataclass
class ModelStep:
    """A step row as the model keeps it."""

    name: str
    index: int
    status: str
    output: Any
    error: str | None
    started_at: datetime


@dataclass
class ModelWait:
    """A durable wait of a model run."""

    id: str
    name: str
    kind: str
    deadline_at: datetime | None
    created_at: datetime
    status: str = PENDING
    outcome: str | None = None
    payload: Any = None
    payload_text: str | None = None
    signal_id: str | None = None
    suspended_at: datetime | None = None
    resolved_at: datetime | None = None
    first_resumed_at: datetime | None = None

    def observable(self) -> tuple[Any, ...]:
        """The fields a storage must return exactly so (as ``observe_wait`` gives them)."""
        return (
            self.id,
            self.name,
            self.kind,
            self.status,
            self.outcome,
            self.payload,
            self.signal_id,
            self.deadline_at,
            self.created_at,
            self.suspended_at,
            self.resolved_at,
            self.first_resumed_at,
        )


@dataclass
class ModelRun:
    """A run as the model keeps it: the record's fields, its steps and logs."""

    id: str
    job_name: str
    input: Any
    idempotency_key: str | None
    concurrency_key: str | None
    labels: dict[str, str]
    created_at: datetime
    status: str = PENDING
    current_step_index: int = 0
    completed_step_count: int = 0
    progress: tuple[float, float | None, str | None] | None = None
    output: Any = None
    error: str | None = None
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    lease_generation: int = 0
    started_at: datetime | None = None
    completed_at: datetime | None = None
    waiting_on_wait_id: str | None = None
    wake_at: datetime | None = None
    attempt: int = 1
    steps: list[ModelStep] = field(default_factory=list)
    logs: list[tuple[str | None, str, str]] = field(default_factory=list)
    #: By name, in preparation order.
    waits: dict[str, ModelWait] = field(default_factory=dict)
    #: Attempt records by id, as ``observe_attempt`` gives them.
    attempts: dict[str, tuple[Any, ...]] = field(default_factory=dict)

    def observable(self) -> dict[str, Any]:
        """The fields a storage must return exactly so (``updated_at`` is left out:
        which writes touch it is not part of the contract the model states)."""
        return {
            "id": self.id,
            "job_name": self.job_name,
            "input": self.input,
            "status": self.status,
            "idempotency_key": self.idempotency_key,
            "concurrency_key": self.concurrency_key,
            "labels": self.labels,
            "current_step_index": self.current_step_index,
            "completed_step_count": self.completed_step_count,
            "progress": self.progress,
            "output": self.output,
            "error": self.error,
            "lease_owner": self.lease_owner,
            "lease_expires_at": self.lease_expires_at,
            "lease_generation": self.lease_generation,
            "started_at": self.started_at,
            "completed_at": self.completed_at,
            "created_at": self.created_at,
            "waiting_on_wait_id": self.waiting_on_wait_id,
            "wake_at": self.wake_at,
            "attempt": self.attempt,
        }


class LifecycleModel:
    """Runs as plain dataclasses, and every storage operation as the contract states it."""

    def __init__(self) -> None:
        self.runs: dict[str, ModelRun] = {}

    # -- helpers --

    def _pending_twin(self, job_name: str, key: str | None, exclude: str) -> ModelRun | None:
        """The pending run of (job, concurrency key) other than ``exclude``, if any."""
        if key is None:
            return None
        for r in self.runs.values():
            if (
                r.id != exclude
                and r.status == PENDING
                and r.job_name == job_name
                and r.concurrency_key == key
            ):
                return r
        return None

    def _holder(self, run_id: str, generation: int) -> ModelRun | None:
        run = self.runs.get(run_id)
        if run is None or run.status != LEASED or run.lease_generation != generation:
            return None
        return run

    @staticmethod
    def _live(run: ModelRun, now: datetime) -> bool:
        return (
            run.status == LEASED and run.lease_expires_at is not None and run.lease_expires_at > now
        )

    # -- operations --

    def enqueue(self, new: NewRun, coalesce: bool) -> tuple[str, str]:
        """``(disposition, run id)``; raises :class:`ModelConflict`."""
        if new.idempotency_key is not None:
            for r in self.runs.values():
                if r.job_name == new.job_name and r.idempotency_key == new.idempotency_key:
                    return "idempotent", r.id
        twin = self._pending_twin(new.job_name, new.concurrency_key, new.id)
        if twin is not None:
            if coalesce:
                return "coalesced", twin.id
            raise ModelConflict(twin.id)
        self.runs[new.id] = ModelRun(
            id=new.id,
            job_name=new.job_name,
            input=msgspec.json.decode(new.input_json),
            idempotency_key=new.idempotency_key,
            concurrency_key=new.concurrency_key,
            labels=dict(new.labels),
            created_at=new.created_at,
        )
        return "created", new.id

    def enqueue_many(self, items: Sequence[tuple[NewRun, bool]]) -> list[tuple[str, str]]:
        """All or nothing."""
        saved = copy.deepcopy(self.runs)
        try:
            return [self.enqueue(new, coalesce) for new, coalesce in items]
        except ModelConflict:
            self.runs = saved
            raise

    def claim(
        self, owner: str, now: datetime, expires: datetime, job_names: Sequence[str] | None
    ) -> str | None:
        """The id of the run ``claim_next`` must lease (and lease it), or ``None``."""

        def claimable(r: ModelRun) -> bool:
            if job_names is not None and r.job_name not in job_names:
                return False
            if r.status == PENDING:
                ok = True
            elif r.status == WAITING:  # its result came, or its deadline
                ok = r.wake_at is not None and r.wake_at <= now
            else:
                ok = (
                    r.status == LEASED
                    and r.lease_expires_at is not None
                    and r.lease_expires_at <= now
                )
            if not ok:
                return False
            if r.concurrency_key is None:
                return True
            return not any(
                o.id != r.id and o.concurrency_key == r.concurrency_key and self._live(o, now)
                for o in self.runs.values()
            )

        candidates = sorted(
            (r for r in self.runs.values() if claimable(r)), key=lambda r: (r.created_at, r.id)
        )
        if not candidates:
            return None
        run = candidates[0]
        run.status = LEASED
        run.lease_owner = owner
        run.lease_expires_at = expires
        run.lease_generation += 1
        run.waiting_on_wait_id = None
        run.wake_at = None
        if run.started_at is None:
            run.started_at = now
        return run.id

    def renew(self, run_id: str, generation: int, now: datetime, expires: datetime) -> bool:
        """``renew_lease``: extended only while ``generation`` holds an unexpired lease."""
        run = self._holder(run_id, generation)
        if run is None or not self._live(run, now):
            return False
        run.lease_expires_at = expires
        return True

    def release_expired(self, now: datetime) -> int:
        """``release_expired_leases``: how many expired leases went back to pending."""
        expired = sorted(
            (
                r
                for r in self.runs.values()
                if r.status == LEASED
                and r.lease_expires_at is not None
                and r.lease_expires_at <= now
            ),
            key=lambda r: (r.created_at, r.id),
        )
        count = 0
        for run in expired:
            if self._pending_twin(run.job_name, run.concurrency_key, run.id) is not None:
                continue
            run.status = PENDING
            run.lease_owner = None
            run.lease_expires_at = None
            count += 1
        return count

    def persist_step(
        self,
        run_id: str,
        generation: int,
        step: ModelStep,
        attempt: tuple[Any, ...] | None = None,
    ) -> bool:
        """``persist_step`` (fenced); a second completed step of one name is a conflict.
        With ``attempt`` (an ``observe_attempt`` view), that record too, or nothing."""
        run = self._holder(run_id, generation)
        if run is None:
            return False
        if step.status == COMPLETED:
            if any(s.name == step.name and s.status == COMPLETED for s in run.steps):
                raise ModelConflict(run_id)
            run.current_step_index = step.index + 1
            run.completed_step_count += 1
        run.steps.append(step)
        if attempt is not None:
            self._put_attempt(run, attempt)
        return True

    # -- retries --

    @staticmethod
    def _put_attempt(run: ModelRun, attempt: tuple[Any, ...]) -> None:
        """Insert the record, or settle the one of its id: its status, error, end and
        next attempt change; the rest stays as first written."""
        old = run.attempts.get(attempt[0])
        run.attempts[attempt[0]] = attempt if old is None else (*old[:6], *attempt[6:])

    def record_attempt(
        self,
        run_id: str,
        generation: int,
        attempt: tuple[Any, ...],
        wake_at: datetime | None,
    ) -> bool:
        """``record_attempt`` (fenced); with ``wake_at`` the run waits, on no wait, for
        the step's next attempt, its lease released."""
        run = self._holder(run_id, generation)
        if run is None:
            return False
        self._put_attempt(run, attempt)
        if wake_at is not None:
            run.status = WAITING
            run.lease_owner = None
            run.lease_expires_at = None
            run.waiting_on_wait_id = None
            run.wake_at = wake_at
        return True

    def schedule_retry(
        self, run_id: str, generation: int, error: str, wake_at: datetime
    ) -> str | None:
        """``schedule_retry`` (fenced): the id of the run now waiting for its next
        attempt, or ``None``."""
        run = self._holder(run_id, generation)
        if run is None:
            return None
        run.status = WAITING
        run.lease_owner = None
        run.lease_expires_at = None
        run.waiting_on_wait_id = None
        run.wake_at = wake_at
        run.error = error
        run.attempt += 1
        return run.id

    def update_progress(
        self, run_id: str, generation: int, progress: tuple[float, float | None, str | None]
    ) -> bool:
        """``update_progress`` (fenced)."""
        run = self._holder(run_id, generation)
        if run is None:
            return False
        run.progress = progress
        return True

    def append_logs(
        self, run_id: str, generation: int, logs: Sequence[tuple[str | None, str, str]]
    ) -> bool:
        """``append_logs`` (fenced)."""
        run = self._holder(run_id, generation)
        if run is None:
            return False
        run.logs.extend(logs)
        return True

    def _finish(self, run: ModelRun, status: str, now: datetime) -> None:
        run.status = status
        run.lease_owner = None
        run.lease_expires_at = None
        run.completed_at = now
        run.waiting_on_wait_id = None
        run.wake_at = None
        # its waits that have no result end with it
        for wait in run.waits.values():
            if wait.status == PENDING:
                wait.status = CANCELLED if status == CANCELLED else CLOSED
                wait.resolved_at = now

    def complete(
        self, run_id: str, generation: int, output: Any, now: datetime, delete_steps: bool
    ) -> bool:
        """``complete_run`` (fenced)."""
        run = self._holder(run_id, generation)
        if run is None:
            return False
        self._finish(run, COMPLETED, now)
        run.output = output
        run.error = None
        if delete_steps:
            run.steps.clear()
            run.logs.clear()
        return True

    def fail(self, run_id: str, generation: int, error: str, now: datetime) -> bool:
        """``fail_run`` (fenced)."""
        run = self._holder(run_id, generation)
        if run is None:
            return False
        self._finish(run, FAILED, now)
        run.error = error
        return True

    def cancel(self, run_id: str, now: datetime) -> str | None:
        """``cancel_run``: the id of the cancelled run, or ``None`` when nothing changed."""
        run = self.runs.get(run_id)
        if run is None or run.status not in (PENDING, LEASED, WAITING):
            return None
        self._finish(run, CANCELLED, now)
        return run.id

    def retry(self, run_id: str) -> str | None:
        """``retry_run``: the id of the run put back to pending, or ``None``; raises
        :class:`ModelConflict` when its concurrency key already has a pending run."""
        run = self.runs.get(run_id)
        if run is None or run.status not in (FAILED, CANCELLED):
            return None
        if self._pending_twin(run.job_name, run.concurrency_key, run.id) is not None:
            raise ModelConflict(run_id)
        run.status = PENDING
        run.output = None
        run.error = None
        run.lease_owner = None
        run.lease_expires_at = None
        run.completed_at = None
        run.started_at = None  # a new start: the next claim sets it
        run.attempt = 1
        for wait in run.waits.values():  # those that ended with the run come back
            if wait.status in (CANCELLED, CLOSED):
                wait.status = PENDING
                wait.resolved_at = None
        return run.id

    def delete(self, run_id: str) -> str | None:
        """``delete_run``: the id of the deleted (terminal) run, or ``None``."""
        run = self.runs.get(run_id)
        if run is None or run.status not in FINISHED:
            return None
        del self.runs[run_id]
        return run_id

    def purge(self, cutoff: datetime, limit: int) -> int:
        """``purge_runs``: how many terminal runs completed before ``cutoff`` were deleted."""
        doomed = sorted(
            (
                r
                for r in self.runs.values()
                if r.status in FINISHED and r.completed_at is not None and r.completed_at < cutoff
            ),
            key=lambda r: (r.completed_at or cutoff, r.id),
        )[:limit]
        for run in doomed:
            del self.runs[run.id]
        return len(doomed)

    # -- durable waits --

    @staticmethod
    def _due(wait: ModelWait, now: datetime) -> bool:
        return wait.status == PENDING and wait.deadline_at is not None and wait.deadline_at <= now

    @staticmethod
    def _time_out(wait: ModelWait) -> None:
        wait.status = RESOLVED
        wait.outcome = "timeout"
        wait.resolved_at = wait.deadline_at

    def _wait_by_id(self, run: ModelRun, wait_id: str) -> ModelWait | None:
        return next((w for w in run.waits.values() if w.id == wait_id), None)

    def prepare_wait(self, run_id: str, generation: int, wait: ModelWait) -> ModelWait | None:
        """The run's wait of that name (``wait`` if it had none); ``None`` without the lease."""
        run = self._holder(run_id, generation)
        if run is None:
            return None
        return run.waits.setdefault(wait.name, wait)

    def wait_result(
        self, run_id: str, generation: int, wait_id: str, now: datetime, resumed_at: datetime
    ) -> ModelWait | None:
        """The wait as the resumed job reads it (timed out if due); ``None`` without the
        lease; ``LookupError`` for a wait the run does not have."""
        run = self._holder(run_id, generation)
        if run is None:
            return None
        wait = self._wait_by_id(run, wait_id)
        if wait is None:
            raise LookupError(wait_id)
        if self._due(wait, now):
            self._time_out(wait)
        resumed = wait.status == RESOLVED and wait.suspended_at is not None
        if resumed and wait.first_resumed_at is None:
            wait.first_resumed_at = resumed_at
        return wait

    def suspend(self, run_id: str, generation: int, wait_id: str, now: datetime) -> str | None:
        """The run id once suspended on its wait ``wait_id``; ``None``: nothing changed."""
        run = self._holder(run_id, generation)
        wait = None if run is None else self._wait_by_id(run, wait_id)
        if run is None or wait is None:
            return None
        if wait.suspended_at is None:
            wait.suspended_at = now
        run.status = WAITING
        run.lease_owner = None
        run.lease_expires_at = None
        run.waiting_on_wait_id = wait.id
        # claimable at once when the result is in, else at the deadline (or never)
        run.wake_at = wait.deadline_at if wait.status == PENDING else now
        return run.id

    def signal(
        self, run_id: str, name: str, signal_id: str | None, payload_text: str, now: datetime
    ) -> tuple[str, ModelWait | None]:
        """``(disposition, wait)`` of a signal to the run's wait ``name``."""
        run = self.runs.get(run_id)
        wait = None if run is None else run.waits.get(name)
        if run is None or wait is None:
            return "not-found", None
        if wait.kind == "timer":
            return "timer", wait
        if wait.status == RESOLVED and wait.outcome == "signal":
            same = wait.signal_id == signal_id and wait.payload_text == payload_text
            return ("duplicate" if same else "conflict"), wait
        if wait.status == RESOLVED:
            return "expired", wait
        if wait.status != PENDING or run.status in FINISHED:
            return "closed", wait
        if self._due(wait, now):
            self._time_out(wait)
            return "expired", wait
        wait.status = RESOLVED
        wait.outcome = "signal"
        wait.payload = msgspec.json.decode(payload_text)
        wait.payload_text = payload_text
        wait.signal_id = signal_id
        wait.resolved_at = now
        if (
            run.status == WAITING
            and run.waiting_on_wait_id == wait.id
            and (run.wake_at is None or run.wake_at > now)
        ):
            run.wake_at = now
        return "accepted", wait

    def next_wake_at(self, now: datetime) -> datetime | None:
        """The earliest wake-up after ``now`` of a waiting run."""
        times = [
            r.wake_at
            for r in self.runs.values()
            if r.status == WAITING and r.wake_at is not None and r.wake_at > now
        ]
        return min(times, default=None)

    @staticmethod
    def _match(query: RunFilter, r: ModelRun) -> bool:
        if query.statuses is not None and r.status not in {s.value for s in query.statuses}:
            return False
        if query.job_names is not None and r.job_name not in query.job_names:
            return False
        return query.labels is None or all(r.labels.get(k) == v for k, v in query.labels.items())

    def count(self, query: RunFilter) -> dict[str, int]:
        """``count_runs``: how many matching runs have each status (none left out)."""
        counts: dict[str, int] = {}
        for r in self.runs.values():
            if self._match(query, r):
                counts[r.status] = counts.get(r.status, 0) + 1
        return counts

    def query(self, query: RunFilter) -> list[str]:
        """``get_runs``: the ids of the matching runs, newest first."""
        found = sorted(
            (r for r in self.runs.values() if self._match(query, r)),
            key=lambda r: (r.created_at, r.id),
            reverse=True,
        )
        end = None if query.limit is None else query.offset + query.limit
        return [r.id for r in found[query.offset : end]]


# --------------------------------------------------------------------------
# Observing a storage
# --------------------------------------------------------------------------


def observe_run(run: Run) -> dict[str, Any]:
    """A run as plain values, comparable with :meth:`ModelRun.observable`."""
    return {
        "id": run.id,
        "job_name": run.job_name,
        "input": run.input,
        "status": run.status.value,
        "idempotency_key": run.idempotency_key,
        "concurrency_key": run.concurrency_key,
        "labels": dict(run.labels),
        "current_step_index": run.current_step_index,
        "completed_step_count": run.completed_step_count,
        "progress": None
        if run.progress is None
        else (run.progress.current, run.progress.total, run.progress.message),
        "output": run.output,
        "error": run.error,
        "lease_owner": run.lease_owner,
        "lease_expires_at": run.lease_expires_at,
        "lease_generation": run.lease_generation,
        "started_at": run.started_at,
        "completed_at": run.completed_at,
        "created_at": run.created_at,
        "waiting_on_wait_id": run.waiting_on_wait_id,
        "wake_at": run.wake_at,
        "attempt": run.attempt,
    }


def observe_attempt(attempt: Attempt) -> tuple[Any, ...]:
    """An attempt record as plain values: what its first write fixes (id, step name
    and index, number, start, lease generation), then what settling it changes."""
    return (
        attempt.id,
        attempt.step_name,
        attempt.step_index,
        attempt.attempt,
        attempt.started_at,
        attempt.lease_generation,
        attempt.status.value,
        attempt.error,
        attempt.completed_at,
        attempt.next_attempt_at,
    )


def observe_attempts(attempts: list[Attempt]) -> list[tuple[Any, ...]]:
    """Attempt records oldest first (ties by id)."""
    keys = [(a.started_at, a.id) for a in attempts]
    assert keys == sorted(keys), f"attempt records not oldest first: {keys}"
    return [observe_attempt(a) for a in attempts]


def observe_wait(wait: Wait) -> tuple[Any, ...]:
    """A wait as plain values, comparable with :meth:`ModelWait.observable`."""
    return (
        wait.id,
        wait.name,
        wait.kind,
        wait.status.value,
        wait.outcome,
        wait.payload,
        wait.signal_id,
        wait.deadline_at,
        wait.created_at,
        wait.suspended_at,
        wait.resolved_at,
        wait.first_resumed_at,
    )


def observe_waits(waits: list[Wait]) -> list[tuple[Any, ...]]:
    """Waits oldest first (ties by id)."""
    keys = [(w.created_at, w.id) for w in waits]
    assert keys == sorted(keys), f"waits not oldest first: {keys}"
    return [observe_wait(w) for w in waits]


def observe_run_whole(run: Run) -> dict[str, Any]:
    """Every field, ``updated_at`` included: what backends compared side by side share."""
    return {**observe_run(run), "updated_at": run.updated_at}


def observe_steps(steps: list[StepRecord]) -> list[tuple[Any, ...]]:
    """Steps in the contract's order (``index``, ``started_at``; ties by id)."""
    keys = [(s.index, s.started_at) for s in steps]
    assert keys == sorted(keys), f"steps not in (index, started_at) order: {keys}"
    ordered = sorted(steps, key=lambda s: (s.index, s.started_at, s.id))
    return [(s.name, s.index, s.status.value, s.output, s.error) for s in ordered]


def observe_logs(logs: list[LogRecord]) -> list[tuple[Any, ...]]:
    """Logs oldest first (ties by id)."""
    times = [log.created_at for log in logs]
    assert times == sorted(times), f"logs not oldest first: {times}"
    ordered = sorted(logs, key=lambda log: (log.created_at, log.id))
    return [(log.step_name, log.level, log.message) for log in ordered]


Outcome = tuple[Any, ...]


def _started(view: tuple[Any, ...]) -> tuple[Any, ...]:
    """The order of attempt records: ``started_at``, then id."""
    return (view[4], view[0])


# --------------------------------------------------------------------------
# The machine
# --------------------------------------------------------------------------

#: Added to the model's current generation of a run for a fenced write: mostly the
#: holder's own generation, sometimes a stale or a future one.
GENERATION_SKEW = st.sampled_from([0, 0, 0, 0, 0, 0, -1, -1, 1])
LEASE_SECONDS = st.sampled_from([5, 30])
#: Time that passes before a lease operation (so expiries happen in every example).
ELAPSED_MS = st.sampled_from([0, 0, 0, 1_000, 6_000, 31_000])


def _has_runs(machine: StorageStateMachine) -> bool:
    return bool(machine.known)


class StorageStateMachine(AttemptRules, ScheduleRules, RuleBasedStateMachine):
    """Drives the storages of :meth:`open_storages` (see the module docstring)."""

    #: Compare every result with :class:`LifecycleModel` (else only backends with each other).
    check_model: ClassVar[bool] = True
    #: Compare whole records between backends, ``updated_at`` included.
    compare_updated_at: ClassVar[bool] = True

    # -- what a subclass provides --

    async def open_storages(self) -> Mapping[str, Storage]:
        """Fresh, empty storages by name (the machine migrates them). Use
        ``self.tmp_path`` for files: it is removed after the example."""
        raise NotImplementedError("subclass StorageStateMachine and implement open_storages()")

    async def close_storages(self) -> None:
        """Close every storage :meth:`open_storages` returned (at teardown)."""
        for storage in self.storages.values():
            await storage.close()

    # -- set-up and tear-down --

    def __init__(self) -> None:
        super().__init__()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._loop = asyncio.new_event_loop()
        self.storages: dict[str, Storage] = {}
        try:
            self.storages = dict(self._run(self.open_storages()))
            if not self.storages:
                raise ValidationError(
                    f"{type(self).__name__}.open_storages() returned no storage; return "
                    "a mapping of names to fresh, unmigrated storages, e.g. "
                    '{"mine": MyStorage(...)}'
                )
            for storage in self.storages.values():
                self._run(storage.migrate())
        except BaseException:
            try:
                if self.storages:
                    self._run(self.close_storages())
            finally:
                self._shutdown()
            raise
        self.model = LifecycleModel()
        self.now = T0
        self._seq = 0
        #: Ids of every run ever created, in creation order (deleted ones stay).
        self.known: list[str] = []
        # invariant bookkeeping, per storage name
        self._generations: dict[str, dict[str, int]] = {n: {} for n in self.storages}
        self._claimed: dict[str, dict[str, set[int]]] = {n: {} for n in self.storages}
        self._step_outputs: dict[str, dict[tuple[str, str], Any]] = {n: {} for n in self.storages}
        self._wait_results: dict[str, dict[str, tuple[Any, ...]]] = {n: {} for n in self.storages}
        self._dirty: set[str] = set()

    @property
    def tmp_path(self) -> Path:
        """A temporary directory for this example's database files, removed at teardown."""
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="durably-stateful-")
        return Path(self._tmp.name)

    def teardown(self) -> None:
        """hypothesis hook: close the storages and the machine's event loop."""
        try:
            self._run(self.close_storages())
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        loop = self._loop
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()
            if self._tmp is not None:
                self._tmp.cleanup()
                self._tmp = None

    def _run(self, awaitable: Awaitable[T]) -> T:
        return self._loop.run_until_complete(awaitable)

    # -- helpers --

    def _new_id(self) -> str:
        self._seq += 1
        return f"01J{self._seq:023d}"

    def _at(self, delta_ms: int = 0) -> datetime:
        return self.now + timedelta(milliseconds=delta_ms)

    def _pick_run(self, data: st.DataObject, *, prefer: str | None = None) -> str:
        """Mostly a run in status ``prefer`` (when there is one), else any known run."""
        preferred = [i for i in self.known if i in self.model.runs]
        if prefer is not None:
            preferred = [i for i in preferred if self.model.runs[i].status == prefer]
        if preferred and data.draw(st.integers(0, 9), label="prefer") < 9:
            return data.draw(st.sampled_from(preferred), label="run_id")
        return data.draw(st.sampled_from(self.known), label="run_id")

    def _generation(self, run_id: str, skew: int) -> int:
        run = self.model.runs.get(run_id)
        return (0 if run is None else run.lease_generation) + skew

    def _on_all(self, call: Callable[[Storage], Awaitable[T]]) -> dict[str, Outcome]:
        """Call every storage: ``("ok", value)``, ``("conflict",)`` or ``("not-found",)``
        per storage name."""
        outcomes: dict[str, Outcome] = {}
        for name, storage in self.storages.items():
            try:
                outcomes[name] = ("ok", self._run(call(storage)))
            except ConflictError:
                outcomes[name] = ("conflict",)
            except NotFoundError:
                outcomes[name] = ("not-found",)
        return outcomes

    def _agree(
        self, what: str, outcomes: dict[str, Outcome], view: Callable[[Any], Any]
    ) -> Outcome:
        """Every storage must give the same (viewed) outcome; returns it."""
        viewed = {name: (o if o[0] != "ok" else ("ok", view(o[1]))) for name, o in outcomes.items()}
        first = next(iter(viewed.values()))
        assert all(v == first for v in viewed.values()), f"backends disagree on {what}: {viewed}"
        return first

    def _expect(self, what: str, got: Outcome, predict: Callable[[], Any]) -> None:
        """Apply the operation to the model; with ``check_model``, compare."""
        try:
            expected: Outcome = ("ok", predict())
        except ModelConflict:
            expected = ("conflict",)
        except LookupError:
            expected = ("not-found",)
        if self.check_model:
            assert got == expected, f"{what}: storage gave {got}, the model predicts {expected}"

    def _whole(self, run: Run | None) -> dict[str, Any] | None:
        if run is None:
            return None
        return observe_run_whole(run) if self.compare_updated_at else observe_run(run)

    @staticmethod
    def _id_of(run: Run | None) -> str | None:
        return None if run is None else run.id

    # -- a start with work in progress, so every example reaches the interesting states --

    @initialize(
        runs=st.lists(
            st.tuples(st.sampled_from(JOBS), st.sampled_from([None, "conc-1", "conc-2"])),
            min_size=1,
            max_size=4,
        ),
        claims=st.integers(min_value=0, max_value=2),
        waits=st.lists(st.sampled_from([5, None, 30]), min_size=1, max_size=2),
    )
    def start_with_runs(
        self, runs: list[tuple[str, str | None]], claims: int, waits: list[int | None]
    ) -> None:
        for job, concurrency_key in runs:
            self.enqueue(job, None, concurrency_key, True, {})
        for i in range(claims):
            self.claim_next(OWNERS[i % len(OWNERS)], 30, None)
        # some of the claimed runs suspend on a wait (deadline in seconds, or none)
        leased = [i for i in self.known if self.model.runs[i].status == LEASED]
        for run_id, deadline_s in zip(leased, waits, strict=False):
            gen = self.model.runs[run_id].lease_generation
            self.apply_prepare_wait(run_id, gen, "w1", deadline_s)
            self.apply_suspend_run(run_id, gen, "w1")

    # -- rules: triggering --

    def _new_run(
        self,
        job: str,
        idempotency_key: str | None,
        concurrency_key: str | None,
        labels: dict[str, str],
    ) -> NewRun:
        run_id = self._new_id()
        return NewRun(
            id=run_id,
            job_name=job,
            input_json=msgspec.json.encode({"n": self._seq}).decode(),
            idempotency_key=idempotency_key,
            concurrency_key=concurrency_key,
            labels=labels,
            created_at=self.now,
        )

    def _enqueue_view(self, result: tuple[str, str]) -> tuple[str, str, str]:
        disposition, run_id = result
        return disposition, run_id, self.model.runs[run_id].status

    @rule(
        job=st.sampled_from(JOBS),
        idempotency_key=st.sampled_from([None, None, "idem-1", "idem-2"]),
        concurrency_key=st.sampled_from([None, "conc-1", "conc-2"]),
        coalesce=st.booleans(),
        labels=st.sampled_from(LABEL_SETS),
    )
    def enqueue(
        self,
        job: str,
        idempotency_key: str | None,
        concurrency_key: str | None,
        coalesce: bool,
        labels: dict[str, str],
    ) -> None:
        coalesce = coalesce and concurrency_key is not None
        new = self._new_run(job, idempotency_key, concurrency_key, labels)
        got = self._agree(
            "enqueue",
            self._on_all(lambda s: s.enqueue(new, coalesce=coalesce)),
            lambda r: (r.disposition, r.run.id, r.run.status.value),
        )
        self._expect("enqueue", got, lambda: self._enqueue_view(self.model.enqueue(new, coalesce)))
        if got[0] == "ok":
            self._dirty.add(got[1][1])
            if got[1][0] == "created":
                self.known.append(got[1][1])

    @rule(
        items=st.lists(
            st.tuples(
                st.sampled_from(JOBS),
                st.sampled_from([None, "idem-1", "idem-3"]),
                st.sampled_from([None, "conc-1", "conc-2"]),
                st.booleans(),
            ),
            min_size=1,
            max_size=3,
        ),
    )
    def enqueue_many(self, items: list[tuple[str, str | None, str | None, bool]]) -> None:
        batch = [
            (self._new_run(job, idem, conc, {}), coalesce and conc is not None)
            for job, idem, conc, coalesce in items
        ]

        def view(results: list[EnqueueResult]) -> list[tuple[str, str, str]]:
            return [(r.disposition, r.run.id, r.run.status.value) for r in results]

        got = self._agree("enqueue_many", self._on_all(lambda s: s.enqueue_many(batch)), view)
        self._expect(
            "enqueue_many",
            got,
            lambda: [self._enqueue_view(r) for r in self.model.enqueue_many(batch)],
        )
        if got[0] == "ok":
            self._dirty.update(r[1] for r in got[1])
            self.known.extend(r[1] for r in got[1] if r[0] == "created")

    # -- rules: leases and time --

    @rule(
        owner=st.sampled_from(OWNERS),
        lease_for=LEASE_SECONDS,
        job_names=st.sampled_from([None, None, ("job-a",), ("job-b",), ("job-a", "job-b")]),
        elapsed_ms=ELAPSED_MS,
    )
    def claim_next(
        self,
        owner: str,
        lease_for: int,
        job_names: tuple[str, ...] | None,
        elapsed_ms: int = 0,
    ) -> None:
        self.now = now = self._at(elapsed_ms)
        expires = now + timedelta(seconds=lease_for)
        outcomes = self._on_all(lambda s: s.claim_next(owner, now, expires, job_names))
        whole = self._agree("claim_next", outcomes, self._whole)
        got = self._agree("claim_next", outcomes, self._id_of)
        if got[1] is not None and self.model.runs[got[1]].status == WAITING:
            event("claim_next: resumed a waiting run")
        self._expect("claim_next", got, lambda: self.model.claim(owner, now, expires, job_names))
        claimed = whole[1]
        if claimed is None:
            return
        run_id, generation = claimed["id"], claimed["lease_generation"]
        self._dirty.add(run_id)
        for name in self.storages:
            seen = self._claimed[name].setdefault(run_id, set())
            assert all(generation > g for g in seen), (
                f"{name}: claiming {run_id} handed out generation {generation} after {seen}: "
                "two claimants could hold the same lease"
            )
            seen.add(generation)
        if self.check_model:
            got_run = {k: v for k, v in claimed.items() if k != "updated_at"}
            assert got_run == self.model.runs[run_id].observable(), "claimed run differs"

    @precondition(_has_runs)
    @rule(data=st.data(), skew=GENERATION_SKEW, lease_for=LEASE_SECONDS, elapsed_ms=ELAPSED_MS)
    def renew_lease(self, data: st.DataObject, skew: int, lease_for: int, elapsed_ms: int) -> None:
        run_id = self._pick_run(data, prefer=LEASED)
        gen = self._generation(run_id, skew)
        self.now = now = self._at(elapsed_ms)
        expires = now + timedelta(seconds=lease_for)
        got = self._agree(
            "renew_lease", self._on_all(lambda s: s.renew_lease(run_id, gen, now, expires)), bool
        )
        self._dirty.add(run_id)
        self._expect("renew_lease", got, lambda: self.model.renew(run_id, gen, now, expires))

    @rule(elapsed_ms=ELAPSED_MS)
    def release_expired_leases(self, elapsed_ms: int) -> None:
        self.now = now = self._at(elapsed_ms)
        got = self._agree(
            "release_expired_leases",
            self._on_all(lambda s: s.release_expired_leases(now)),
            int,
        )
        self._dirty.update(self.model.runs)
        self._expect("release_expired_leases", got, lambda: self.model.release_expired(now))

    @rule(ms=st.sampled_from([1, 999, 1_000, 5_000, 6_000, 30_000, 31_000]))
    def advance_time(self, ms: int) -> None:
        """Time moves in steps that land on and around lease expiries (5 s and 30 s)."""
        self.now = self._at(ms)

    # -- rules: fenced writes by the lease holder --

    @precondition(_has_runs)
    @rule(
        data=st.data(),
        skew=GENERATION_SKEW,
        name=st.sampled_from(STEP_NAMES),
        index_bump=st.integers(min_value=0, max_value=1),
        completed=st.sampled_from([True, True, False]),
        output=st.integers(min_value=0, max_value=9),
    )
    def persist_step(
        self,
        data: st.DataObject,
        skew: int,
        name: str,
        index_bump: int,
        completed: bool,
        output: int,
    ) -> None:
        run_id = self._pick_run(data, prefer=LEASED)
        gen = self._generation(run_id, skew)
        model_run = self.model.runs.get(run_id)
        # as the engine does: a new step's index is never below the run's current index
        index = (0 if model_run is None else model_run.current_step_index) + index_bump
        self.now = now = self._at(1)  # steps start at distinct times
        step = NewStep(
            id=self._new_id(),
            name=name,
            index=index,
            status=StepStatus.COMPLETED if completed else StepStatus.FAILED,
            output_json=msgspec.json.encode({"v": output}).decode() if completed else None,
            error=None if completed else f"boom {output}",
            started_at=now,
            completed_at=now,
        )
        # sometimes with the attempt's record (record_attempts=True, or a last failure)
        attempt = self.attempt_for(data, run_id, name, index, step.status, gen)
        got = self._agree(
            "persist_step",
            self._on_all(lambda s: s.persist_step(run_id, gen, step, now, attempt=attempt)),
            bool,
        )
        self._dirty.add(run_id)
        model_step = ModelStep(
            name=name,
            index=index,
            status=step.status.value,
            output={"v": output} if completed else None,
            error=step.error,
            started_at=now,
        )
        self._expect(
            "persist_step",
            got,
            lambda: self.model.persist_step(
                run_id,
                gen,
                model_step,
                None if attempt is None else self.attempt_view(attempt, gen),
            ),
        )

    @precondition(_has_runs)
    @rule(
        data=st.data(),
        skew=GENERATION_SKEW,
        current=st.integers(min_value=0, max_value=10),
        total=st.sampled_from([None, 10]),
        message=st.sampled_from([None, "working"]),
    )
    def update_progress(
        self, data: st.DataObject, skew: int, current: int, total: int | None, message: str | None
    ) -> None:
        run_id = self._pick_run(data, prefer=LEASED)
        gen = self._generation(run_id, skew)
        now = self.now
        progress = Progress(current=current, total=total, message=message)
        got = self._agree(
            "update_progress",
            self._on_all(lambda s: s.update_progress(run_id, gen, progress, now)),
            bool,
        )
        self._dirty.add(run_id)
        self._expect(
            "update_progress",
            got,
            lambda: self.model.update_progress(run_id, gen, (current, total, message)),
        )

    @precondition(_has_runs)
    @rule(
        data=st.data(),
        skew=GENERATION_SKEW,
        messages=st.lists(st.sampled_from(["a", "b"]), max_size=2),
        step_name=st.sampled_from([None, "s1"]),
    )
    def append_logs(
        self, data: st.DataObject, skew: int, messages: list[str], step_name: str | None
    ) -> None:
        run_id = self._pick_run(data, prefer=LEASED)
        gen = self._generation(run_id, skew)
        self.now = now = self._at(1)  # log entries of different calls at distinct times
        logs = [
            NewLog(
                id=self._new_id(),
                step_name=step_name,
                level="info",
                message=m,
                data_json=None,
                created_at=now,
            )
            for m in messages
        ]
        got = self._agree(
            "append_logs", self._on_all(lambda s: s.append_logs(run_id, gen, logs, now)), bool
        )
        self._dirty.add(run_id)
        entries = [(step_name, "info", m) for m in messages]
        self._expect("append_logs", got, lambda: self.model.append_logs(run_id, gen, entries))

    @precondition(_has_runs)
    @rule(
        data=st.data(),
        skew=GENERATION_SKEW,
        output=st.integers(min_value=0, max_value=9),
        delete_steps=st.booleans(),
    )
    def complete_run(self, data: st.DataObject, skew: int, output: int, delete_steps: bool) -> None:
        run_id = self._pick_run(data, prefer=LEASED)
        self.apply_complete_run(run_id, self._generation(run_id, skew), output, delete_steps)

    def apply_complete_run(
        self, run_id: str, gen: int, output: int, delete_steps: bool = False
    ) -> None:
        """``complete_run`` on every storage, checked (also for replaying a scenario)."""
        now = self.now
        text = msgspec.json.encode({"out": output}).decode()
        got = self._agree(
            "complete_run",
            self._on_all(
                lambda s: s.complete_run(run_id, gen, text, now, delete_steps=delete_steps)
            ),
            bool,
        )
        self._dirty.add(run_id)
        self._expect(
            "complete_run",
            got,
            lambda: self.model.complete(run_id, gen, {"out": output}, now, delete_steps),
        )

    @precondition(_has_runs)
    @rule(data=st.data(), skew=GENERATION_SKEW)
    def fail_run(self, data: st.DataObject, skew: int) -> None:
        run_id = self._pick_run(data, prefer=LEASED)
        gen = self._generation(run_id, skew)
        now = self.now
        got = self._agree(
            "fail_run", self._on_all(lambda s: s.fail_run(run_id, gen, "it failed", now)), bool
        )
        self._dirty.add(run_id)
        self._expect("fail_run", got, lambda: self.model.fail(run_id, gen, "it failed", now))

    # -- rules: control (not fenced) --

    def _control(
        self, what: str, run_id: str, call: Callable[[Storage], Awaitable[Run | None]]
    ) -> Outcome:
        outcomes = self._on_all(call)
        self._agree(what, outcomes, self._whole)
        got = self._agree(what, outcomes, self._id_of)
        self._dirty.add(run_id)
        if got[0] == "ok" and got[1] is not None and what != "delete_run":
            stored = self._on_all(lambda s: s.get_run(run_id))
            for name, outcome in stored.items():
                assert outcome[1] == outcomes[name][1], (
                    f"{name}: {what} returned {outcomes[name][1]} but get_run gives {outcome[1]}"
                )
        return got

    @precondition(_has_runs)
    @rule(data=st.data())
    def cancel_run(self, data: st.DataObject) -> None:
        run_id = self._pick_run(data)
        now = self.now
        got = self._control("cancel_run", run_id, lambda s: s.cancel_run(run_id, now))
        self._expect("cancel_run", got, lambda: self.model.cancel(run_id, now))

    @precondition(_has_runs)
    @rule(data=st.data())
    def retry_run(self, data: st.DataObject) -> None:
        run_id = self._pick_run(data, prefer=FAILED)
        now = self.now
        got = self._control("retry_run", run_id, lambda s: s.retry_run(run_id, now))
        self._expect("retry_run", got, lambda: self.model.retry(run_id))

    @precondition(_has_runs)
    @rule(data=st.data())
    def delete_run(self, data: st.DataObject) -> None:
        run_id = self._pick_run(data, prefer=COMPLETED)
        got = self._control("delete_run", run_id, lambda s: s.delete_run(run_id))
        self._expect("delete_run", got, lambda: self.model.delete(run_id))

    @rule(
        back_ms=st.integers(min_value=0, max_value=60_000),
        limit=st.integers(min_value=1, max_value=3),
    )
    def purge_runs(self, back_ms: int, limit: int) -> None:
        cutoff = self._at(-back_ms)
        got = self._agree("purge_runs", self._on_all(lambda s: s.purge_runs(cutoff, limit)), int)
        self._expect("purge_runs", got, lambda: self.model.purge(cutoff, limit))

    @rule(
        statuses=st.sampled_from(
            [None, (RunStatus.PENDING,), (RunStatus.LEASED, RunStatus.FAILED), tuple(RunStatus)]
        ),
        job_names=st.sampled_from([None, ("job-a",), ("job-a", "job-b")]),
        labels=st.sampled_from([None, {"team": "a"}, {"team": "b", "env": "x"}]),
        limit=st.sampled_from([None, 0, 1, 3]),
        offset=st.integers(min_value=0, max_value=2),
    )
    def get_runs(
        self,
        statuses: tuple[RunStatus, ...] | None,
        job_names: tuple[str, ...] | None,
        labels: dict[str, str] | None,
        limit: int | None,
        offset: int,
    ) -> None:
        query = RunFilter(
            statuses=statuses, job_names=job_names, labels=labels, limit=limit, offset=offset
        )
        got = self._agree(
            f"get_runs({query})",
            self._on_all(lambda s: s.get_runs(query)),
            lambda runs: [r.id for r in runs],
        )
        self._expect(f"get_runs({query})", got, lambda: self.model.query(query))

    # -- rules: durable waits --

    def _wait_id(self, run_id: str, name: str) -> str:
        """The id of the run's wait ``name`` in the model, or an id no wait has."""
        run = self.model.runs.get(run_id)
        wait = None if run is None else run.waits.get(name)
        return wait.id if wait is not None else "01JN0WA1T00000000000000000"

    @staticmethod
    def _wait_view(wait: Wait | None) -> tuple[Any, ...] | None:
        return None if wait is None else observe_wait(wait)

    @staticmethod
    def _model_wait_view(wait: ModelWait | None) -> tuple[Any, ...] | None:
        return None if wait is None else wait.observable()

    @precondition(_has_runs)
    @rule(
        data=st.data(),
        skew=GENERATION_SKEW,
        name=st.sampled_from(WAIT_NAMES),
        deadline_s=st.sampled_from([5, None, 30]),
    )
    def prepare_wait(
        self, data: st.DataObject, skew: int, name: str, deadline_s: int | None
    ) -> None:
        run_id = self._pick_run(data, prefer=LEASED)
        self.apply_prepare_wait(run_id, self._generation(run_id, skew), name, deadline_s)

    def apply_prepare_wait(self, run_id: str, gen: int, name: str, deadline_s: int | None) -> None:
        """``prepare_wait`` on every storage, checked."""
        self.now = now = self._at(1)
        kind: WaitKind = "timer" if name.startswith("t") else "signal"
        if kind == "timer" and deadline_s is None:
            deadline_s = 5  # a timer always ends
        deadline = None if deadline_s is None else now + timedelta(seconds=deadline_s)
        new = NewWait(id=self._new_id(), name=name, kind=kind, deadline_at=deadline, created_at=now)
        got = self._agree(
            "prepare_wait",
            self._on_all(lambda s: s.prepare_wait(run_id, gen, new, now)),
            self._wait_view,
        )
        self._dirty.add(run_id)
        model = ModelWait(id=new.id, name=name, kind=kind, deadline_at=deadline, created_at=now)
        self._expect(
            "prepare_wait",
            got,
            lambda: self._model_wait_view(self.model.prepare_wait(run_id, gen, model)),
        )

    @precondition(_has_runs)
    @rule(data=st.data(), skew=GENERATION_SKEW)
    def suspend_run(self, data: st.DataObject, skew: int) -> None:
        run_id = self._pick_run(data, prefer=LEASED)
        name = self._pick_wait_name(data, run_id)
        self.apply_suspend_run(run_id, self._generation(run_id, skew), name)

    def apply_suspend_run(self, run_id: str, gen: int, name: str) -> None:
        """``suspend_run`` on every storage, checked."""
        wait_id = self._wait_id(run_id, name)
        now = self.now
        outcomes = self._on_all(lambda s: s.suspend_run(run_id, gen, wait_id, now))
        self._agree("suspend_run", outcomes, self._whole)
        got = self._agree("suspend_run", outcomes, self._id_of)
        self._dirty.add(run_id)
        event(f"suspend_run: {'suspended' if got[1] else 'refused'}")
        self._expect("suspend_run", got, lambda: self.model.suspend(run_id, gen, wait_id, now))

    def _pick_wait_name(self, data: st.DataObject, run_id: str) -> str:
        """Mostly the name of one of the run's waits (when it has one)."""
        run = self.model.runs.get(run_id)
        names = [] if run is None else list(run.waits)
        if names and data.draw(st.integers(0, 9), label="prefer wait") < 9:
            return data.draw(st.sampled_from(names), label="wait")
        return data.draw(st.sampled_from(WAIT_NAMES), label="wait")

    def _awaited(self) -> list[str]:
        """Runs suspended on a wait (not those waiting for a retry)."""
        return [
            i
            for i, r in self.model.runs.items()
            if r.status == WAITING and r.waiting_on_wait_id is not None
        ]

    @precondition(lambda self: bool(self._awaited()))
    @rule(
        data=st.data(),
        signal_id=st.sampled_from(["sig-1", None]),
        elapsed_ms=st.sampled_from([6_000, 0, 4_000, 31_000]),
    )
    def signal_the_awaited_wait(
        self, data: st.DataObject, signal_id: str | None, elapsed_ms: int
    ) -> None:
        """A signal to the very wait a waiting run is suspended on, around deadlines."""
        run_id = data.draw(st.sampled_from(self._awaited()), label="run_id")
        run = self.model.runs[run_id]
        name = next(w.name for w in run.waits.values() if w.id == run.waiting_on_wait_id)
        self.apply_signal_wait(run_id, name, signal_id, 1, elapsed_ms)

    def _pick_run_with_waits(self, data: st.DataObject) -> str:
        """Mostly a waiting run, else one with waits (when there is one)."""
        alive = [i for i in self.known if i in self.model.runs]
        waiting = [i for i in alive if self.model.runs[i].status == WAITING]
        with_waits = [i for i in alive if self.model.runs[i].waits]
        for pool in (waiting, with_waits):
            if pool and data.draw(st.integers(0, 9), label="prefer") < 8:
                return data.draw(st.sampled_from(pool), label="run_id")
        return data.draw(st.sampled_from(self.known), label="run_id")

    @precondition(_has_runs)
    @rule(
        data=st.data(),
        signal_id=st.sampled_from([None, "sig-1", "sig-1", "sig-2"]),
        payload=st.sampled_from([1, 1, {"b": [1, None], "a": "ü"}]),
        elapsed_ms=ELAPSED_MS,
    )
    def signal_wait(
        self,
        data: st.DataObject,
        signal_id: str | None,
        payload: Any,
        elapsed_ms: int,
    ) -> None:
        run_id = self._pick_run_with_waits(data)
        name = self._pick_wait_name(data, run_id)
        self.apply_signal_wait(run_id, name, signal_id, payload, elapsed_ms)

    def apply_signal_wait(
        self, run_id: str, name: str, signal_id: str | None, payload: Any, elapsed_ms: int
    ) -> None:
        """``signal_wait`` on every storage, checked."""
        self.now = now = self._at(elapsed_ms)
        text = msgspec.json.encode(payload, order="sorted").decode()
        signal = NewSignal(signal_id=signal_id, payload_json=text)

        def view(outcome: SignalOutcome) -> tuple[Any, ...]:
            return (outcome.disposition, self._wait_view(outcome.wait))

        got = self._agree(
            "signal_wait", self._on_all(lambda s: s.signal_wait(run_id, name, signal, now)), view
        )
        self._dirty.add(run_id)
        event(f"signal_wait: {got[1][0] if got[0] == 'ok' else got[0]}")

        def predict() -> tuple[Any, ...]:
            disposition, wait = self.model.signal(run_id, name, signal_id, text, now)
            return (disposition, self._model_wait_view(wait))

        self._expect("signal_wait", got, predict)

    @precondition(_has_runs)
    @rule(data=st.data(), skew=GENERATION_SKEW, elapsed_ms=ELAPSED_MS)
    def wait_result(self, data: st.DataObject, skew: int, elapsed_ms: int) -> None:
        run_id = self._pick_run(data, prefer=LEASED)
        name = self._pick_wait_name(data, run_id)
        gen = self._generation(run_id, skew)
        wait_id = self._wait_id(run_id, name)
        self.now = now = self._at(elapsed_ms)
        resumed = now - timedelta(milliseconds=500)
        got = self._agree(
            "wait_result",
            self._on_all(lambda s: s.wait_result(run_id, gen, wait_id, now, resumed)),
            self._wait_view,
        )
        self._dirty.add(run_id)
        self._expect(
            "wait_result",
            got,
            lambda: self._model_wait_view(
                self.model.wait_result(run_id, gen, wait_id, now, resumed)
            ),
        )

    @rule()
    def next_wake_at(self) -> None:
        now = self.now
        got = self._agree("next_wake_at", self._on_all(lambda s: s.next_wake_at(now)), lambda t: t)
        self._expect("next_wake_at", got, lambda: self.model.next_wake_at(now))

    @rule(
        statuses=st.sampled_from(
            [None, (RunStatus.PENDING,), (RunStatus.LEASED, RunStatus.FAILED)]
        ),
        job_names=st.sampled_from([None, ("job-a",), ("job-a", "job-b")]),
        labels=st.sampled_from([None, {"team": "a"}, {"team": "b", "env": "x"}]),
    )
    def count_runs(
        self,
        statuses: tuple[RunStatus, ...] | None,
        job_names: tuple[str, ...] | None,
        labels: dict[str, str] | None,
    ) -> None:
        query = RunFilter(statuses=statuses, job_names=job_names, labels=labels)
        got = self._agree(
            f"count_runs({query})",
            self._on_all(lambda s: s.count_runs(query)),
            lambda counts: {str(status): n for status, n in counts.items() if n},
        )
        self._expect(f"count_runs({query})", got, lambda: self.model.count(query))

    @rule()
    def optional_capabilities(self) -> None:
        for name, storage in self.storages.items():
            if isinstance(storage, SupportsIdentityCheck):
                self._run(storage.check_identity())  # nothing was replaced: it passes
            if isinstance(storage, SupportsDatabaseTime):
                at = self._run(storage.database_time())
                assert at is None or at.utcoffset() == timedelta(0), (
                    f"{name}: database_time() {at!r} is neither None nor aware UTC"
                )

    # -- invariants --

    @invariant()
    def storages_agree_and_keep_the_invariants(self) -> None:
        everything = self._on_all(lambda s: s.get_runs(RunFilter()))
        listed = self._agree(
            "get_runs(all)", everything, lambda runs: [self._whole(r) for r in runs]
        )
        if self.check_model:
            assert [r["id"] for r in listed[1]] == self.model.query(RunFilter()), (
                "the runs differ from the model's"
            )
            for view in listed[1]:
                got = {k: v for k, v in view.items() if k != "updated_at"}
                expected = self.model.runs[view["id"]].observable()
                assert got == expected, f"run {view['id']}: storage {got} != model {expected}"
        for run_id in sorted(self._dirty):
            self._check_children(run_id)
        self._dirty.clear()
        for name, outcome in everything.items():
            self._check_invariants(name, outcome[1])

    def _check_children(self, run_id: str) -> None:
        steps = self._agree(
            f"get_steps({run_id})", self._on_all(lambda s: s.get_steps(run_id)), observe_steps
        )
        logs = self._agree(
            f"get_logs({run_id})", self._on_all(lambda s: s.get_logs(run_id)), observe_logs
        )
        completed = self._on_all(lambda s: s.get_completed_steps(run_id))
        self._agree(f"get_completed_steps({run_id})", completed, observe_steps)
        waits = self._agree(
            f"get_waits({run_id})", self._on_all(lambda s: s.get_waits(run_id)), observe_waits
        )
        self._check_waits(run_id, waits[1])
        attempts = self._agree(
            f"get_attempts({run_id})",
            self._on_all(lambda s: s.get_attempts(run_id)),
            observe_attempts,
        )
        for name, outcome in completed.items():
            for step in outcome[1]:
                assert step.status is StepStatus.COMPLETED, step
                first = self._step_outputs[name].setdefault((run_id, step.name), step.output)
                assert step.output == first, (
                    f"{name}: completed step {step.name!r} of {run_id} changed its output "
                    f"from {first!r} to {step.output!r}"
                )
        if self.check_model:
            model_run = self.model.runs.get(run_id)
            ordered = (
                []
                if model_run is None
                else sorted(model_run.steps, key=lambda s: (s.index, s.started_at))
            )
            model_steps = [(s.name, s.index, s.status, s.output, s.error) for s in ordered]
            assert steps[1] == model_steps, f"steps of {run_id}: {steps[1]} != model {model_steps}"
            model_logs = [] if model_run is None else model_run.logs
            assert logs[1] == model_logs, f"logs of {run_id}: {logs[1]} != model {model_logs}"
            model_waits = (
                []
                if model_run is None
                else [
                    w.observable()
                    for w in sorted(model_run.waits.values(), key=lambda w: (w.created_at, w.id))
                ]
            )
            assert waits[1] == model_waits, f"waits of {run_id}: {waits[1]} != {model_waits}"
            model_attempts = (
                [] if model_run is None else sorted(model_run.attempts.values(), key=_started)
            )
            assert attempts[1] == model_attempts, (
                f"attempt records of {run_id}: {attempts[1]} != model {model_attempts}"
            )

    def _check_waits(self, run_id: str, waits: list[tuple[Any, ...]]) -> None:
        """A wait's result never changes; a waiting run is suspended on one of its own
        waits; a finished run has no pending wait."""
        run = self._on_all(lambda s: s.get_run(run_id))
        found = next(iter(run.values()))[1]
        ids = {w[0] for w in waits}
        if (
            found is not None
            and found.status is RunStatus.WAITING
            and found.waiting_on_wait_id is not None  # else: waiting for a retry
        ):
            assert found.waiting_on_wait_id in ids, (
                f"run {run_id} waits on {found.waiting_on_wait_id}, not one of its waits {ids}"
            )
        for wait in waits:
            wait_id, status, result = wait[0], wait[3], (wait[4], wait[5], wait[6], wait[10])
            if found is not None and found.is_terminal:
                assert status != "pending", f"finished run {run_id} has a pending wait {wait}"
            if status != "resolved":
                continue
            for name in self.storages:
                first = self._wait_results[name].setdefault(wait_id, result)
                assert result == first, (
                    f"{name}: the result of wait {wait_id} changed from {first} to {result}"
                )

    def _check_invariants(self, name: str, runs: list[Run]) -> None:
        idempotency: set[tuple[str, str]] = set()
        live_keys: set[str] = set()
        pending_keys: set[tuple[str, str]] = set()
        generations = self._generations[name]
        for run in runs:
            previous = generations.get(run.id, 0)
            assert run.lease_generation >= previous, (
                f"{name}: the lease generation of {run.id} went from {previous} "
                f"to {run.lease_generation}"
            )
            generations[run.id] = run.lease_generation
            if run.idempotency_key is not None:
                key = (run.job_name, run.idempotency_key)
                assert key not in idempotency, f"{name}: two runs with idempotency key {key}"
                idempotency.add(key)
            if run.status is RunStatus.LEASED:
                assert run.lease_owner is not None, run
                assert run.lease_expires_at is not None, run
                if run.concurrency_key is not None and run.lease_expires_at > self.now:
                    assert run.concurrency_key not in live_keys, (
                        f"{name}: two live leases on concurrency key {run.concurrency_key!r}"
                    )
                    live_keys.add(run.concurrency_key)
            else:
                assert (run.lease_owner, run.lease_expires_at) == (None, None), run
            if run.status is RunStatus.WAITING:
                # on a wait, or for a retry at a time
                assert run.waiting_on_wait_id is not None or run.wake_at is not None, run
            else:
                assert (run.waiting_on_wait_id, run.wake_at) == (None, None), run
            if run.status is RunStatus.PENDING and run.concurrency_key is not None:
                pending = (run.job_name, run.concurrency_key)
                assert pending not in pending_keys, f"{name}: two pending runs for {pending}"
                pending_keys.add(pending)
