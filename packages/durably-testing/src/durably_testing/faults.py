"""Fault injection: :class:`FaultyStorage` wraps any :class:`durably.Storage` and,
as a :class:`FaultPlan` says, fails or "crashes" on chosen calls.

Four kinds of fault (:class:`FaultKind`)::

    error          the call is not made; the caller gets a StorageError (a transient
                   database failure)
    crash-before   the process "dies" before the call: SimulatedCrash, nothing written
    crash-after    the call is made (it took effect), then the process "dies"
    ambiguous      the call is made (it took effect), but the caller gets a
                   StorageError: the commit whose acknowledgement was lost

:class:`SimulatedCrash` derives from ``BaseException``, so a job's
``except Exception`` cannot swallow it. After a crash the wrapper is dead: every
later call raises ``SimulatedCrash`` again without reaching the inner storage,
as nothing a dead process does can reach the database. Catch it at the top of
the simulated process, abandon that ``Durably`` without cleanup, and "restart"
with a new one over the inner storage.

Every call is counted (``calls``: operation names in call order), so a test can
run a scenario once without faults to learn the sequence, then crash at every
index of it::

    probe = FaultyStorage(MemoryStorage(), FaultPlan())
    ...                                   # run the scenario; len(probe.calls) calls
    plan = FaultPlan.at_call(3, "crash-after")
    plan = FaultPlan.on_operation("persist_step", FaultKind.AMBIGUOUS, occurrence=2)

Plans are plain objects handed to one wrapper; there is no global registry.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TypeVar

from durably import (
    Attempt,
    EnqueueResult,
    LogRecord,
    NewAttempt,
    NewLog,
    NewRun,
    NewSchedule,
    NewSignal,
    NewStep,
    NewWait,
    Progress,
    Run,
    RunFilter,
    RunStatus,
    ScheduleFire,
    ScheduleRecord,
    SignalOutcome,
    StepRecord,
    Storage,
    StorageError,
    SupportsDatabaseTime,
    SupportsIdentityCheck,
    ValidationError,
    Wait,
)

__all__ = [
    "CRASH_KINDS",
    "OPTIONAL_OPERATIONS",
    "STORAGE_OPERATIONS",
    "TRANSIENT_KINDS",
    "Fault",
    "FaultKind",
    "FaultPlan",
    "FaultyStorage",
    "FiredFault",
    "InjectedStorageError",
    "SimulatedCrash",
]

T = TypeVar("T")

STORAGE_OPERATIONS: tuple[str, ...] = (
    "migrate",
    "close",
    "enqueue",
    "enqueue_many",
    "get_run",
    "get_runs",
    "count_runs",
    "get_steps",
    "get_completed_steps",
    "get_logs",
    "claim_next",
    "renew_lease",
    "release_expired_leases",
    "persist_step",
    "update_progress",
    "append_logs",
    "complete_run",
    "fail_run",
    "cancel_run",
    "retry_run",
    "delete_run",
    "purge_runs",
    "prepare_wait",
    "wait_result",
    "suspend_run",
    "signal_wait",
    "get_waits",
    "get_wait",
    "next_wake_at",
    "record_attempt",
    "schedule_retry",
    "get_attempts",
    "create_schedule",
    "update_schedule",
    "delete_schedule",
    "get_schedule",
    "get_schedules",
    "upcoming_schedules",
    "fire_schedule",
)
"""The operations of the :class:`durably.Storage` protocol, as counted in ``calls``."""

OPTIONAL_OPERATIONS: tuple[str, ...] = ("check_identity", "database_time")
"""The optional capabilities (:class:`durably.SupportsIdentityCheck`,
:class:`durably.SupportsDatabaseTime`): ``FaultyStorage`` offers both, forwards them
to an inner storage that has them, counts and injects faults into them like the
operations."""


class FaultKind(StrEnum):
    """What happens at a faulty call (see the module docstring)."""

    ERROR = "error"
    CRASH_BEFORE = "crash-before"
    CRASH_AFTER = "crash-after"
    AMBIGUOUS = "ambiguous"

    @property
    def takes_effect(self) -> bool:
        """Whether the inner call is made (its effect is in the database)."""
        return self in (FaultKind.CRASH_AFTER, FaultKind.AMBIGUOUS)

    @property
    def is_crash(self) -> bool:
        """Whether the simulated process dies (``crash-before``, ``crash-after``)."""
        return self in (FaultKind.CRASH_BEFORE, FaultKind.CRASH_AFTER)


def _fault_kind(kind: FaultKind | str) -> FaultKind:
    """``kind`` as a :class:`FaultKind`; a ``ValidationError`` naming the kinds otherwise."""
    try:
        return FaultKind(kind)
    except ValueError:
        kinds = ", ".join(repr(k.value) for k in FaultKind)
        raise ValidationError(f"Unknown fault kind {kind!r}; use one of: {kinds}") from None


CRASH_KINDS: tuple[FaultKind, ...] = (FaultKind.CRASH_BEFORE, FaultKind.CRASH_AFTER)
"""The kinds that kill the simulated process."""

TRANSIENT_KINDS: tuple[FaultKind, ...] = (FaultKind.ERROR, FaultKind.AMBIGUOUS)
"""The kinds the process survives: the caller sees a ``StorageError``."""


class SimulatedCrash(BaseException):
    """The simulated process died here. A ``BaseException``: ``except Exception``
    in user code does not catch it; catch it at the top of the simulated process."""

    def __init__(self, index: int, operation: str, kind: FaultKind, *, after_death: bool = False):
        if after_death:
            message = f"{operation} (call {index}) reached a storage whose process already crashed"
        else:
            when = "after" if kind is FaultKind.CRASH_AFTER else "before"
            message = f"simulated crash {when} {operation} (call {index})"
        super().__init__(message)
        self.index = index
        self.operation = operation
        self.kind = kind
        self.after_death = after_death


class InjectedStorageError(StorageError):
    """A :class:`durably.StorageError` raised by a fault plan. ``committed`` tells
    whether the call took effect anyway (the ambiguous commit)."""

    def __init__(self, index: int, operation: str, *, committed: bool) -> None:
        detail = (
            "the call took effect but its result was lost (ambiguous commit)"
            if committed
            else "the call was not made"
        )
        super().__init__(f"injected storage error in {operation} (call {index}): {detail}")
        self.index = index
        self.operation = operation
        self.committed = committed


@dataclass(frozen=True)
class Fault:
    """One planned fault: at a call index, or at the ``occurrence``-th call (1-based)
    of an operation; it fires on ``times`` consecutive matching calls."""

    kind: FaultKind
    at_call: int | None = None
    operation: str | None = None
    occurrence: int = 1
    times: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", _fault_kind(self.kind))
        if (self.at_call is None) == (self.operation is None):
            raise ValidationError(
                "A Fault needs exactly one of at_call= (a call index over all operations) "
                "or operation= (a storage operation name, with occurrence=)"
            )
        if self.at_call is not None and self.at_call < 0:
            raise ValidationError(
                f"at_call counts calls from 0, got {self.at_call}; pass an index ≥ 0"
            )
        known = STORAGE_OPERATIONS + OPTIONAL_OPERATIONS
        if self.operation is not None and self.operation not in known:
            raise ValidationError(
                f"Unknown storage operation {self.operation!r}; use one of: {', '.join(known)}"
            )
        if self.occurrence < 1:
            raise ValidationError(
                f"occurrence counts from 1 (the first call of the operation), "
                f"got {self.occurrence}; pass occurrence=1 or more"
            )
        if self.times < 1:
            raise ValidationError(
                f"times is how many consecutive calls fail, got {self.times}; pass times=1 or more"
            )

    def matches(self, index: int, operation: str, occurrence: int) -> bool:
        """Does this fault fire on call ``index``, the ``occurrence``-th of ``operation``?"""
        if self.at_call is not None:
            return self.at_call <= index < self.at_call + self.times
        return operation == self.operation and (
            self.occurrence <= occurrence < self.occurrence + self.times
        )


class FaultPlan:
    """Which calls fail, and how. Immutable; combine plans with ``|``."""

    def __init__(self, faults: Iterable[Fault] = ()) -> None:
        self.faults: tuple[Fault, ...] = tuple(faults)

    @classmethod
    def at_call(cls, index: int, kind: FaultKind | str, *, times: int = 1) -> FaultPlan:
        """Fault on call number ``index`` (0-based, over all operations)."""
        return cls([Fault(_fault_kind(kind), at_call=index, times=times)])

    @classmethod
    def on_operation(
        cls, operation: str, kind: FaultKind | str, *, occurrence: int = 1, times: int = 1
    ) -> FaultPlan:
        """Fault on the ``occurrence``-th call (1-based) of ``operation``."""
        return cls(
            [Fault(_fault_kind(kind), operation=operation, occurrence=occurrence, times=times)]
        )

    def __or__(self, other: FaultPlan) -> FaultPlan:
        return FaultPlan((*self.faults, *other.faults))

    def __repr__(self) -> str:
        return f"FaultPlan({list(self.faults)!r})"

    def fault_for(self, index: int, operation: str, occurrence: int) -> Fault | None:
        """The first planned fault that fires on this call, if any."""
        for fault in self.faults:
            if fault.matches(index, operation, occurrence):
                return fault
        return None


@dataclass(frozen=True)
class FiredFault:
    """A fault that happened: where, and what kind."""

    index: int
    operation: str
    kind: FaultKind


class FaultyStorage:
    """A :class:`durably.Storage` that delegates to ``inner`` and injects the faults
    of ``plan``. See the module docstring."""

    def __init__(self, inner: Storage, plan: FaultPlan | None = None) -> None:
        self.inner = inner
        self.plan = plan if plan is not None else FaultPlan()
        #: Operation names of the calls made while alive, in order (index = position).
        self.calls: list[str] = []
        #: The faults that fired, in order.
        self.fired: list[FiredFault] = []
        #: The crash that killed this storage's process, if any.
        self.crash: SimulatedCrash | None = None
        #: Calls refused because the process had already crashed.
        self.calls_after_crash = 0
        self._occurrences: Counter[str] = Counter()

    def __repr__(self) -> str:
        state = "crashed" if self.crashed else "alive"
        return f"<FaultyStorage {state} calls={len(self.calls)} inner={self.inner!r}>"

    @property
    def crashed(self) -> bool:
        """Has a crash fault fired? Every call after it raises ``SimulatedCrash``."""
        return self.crash is not None

    async def _invoke(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        if self.crash is not None:
            self.calls_after_crash += 1
            raise SimulatedCrash(len(self.calls), operation, self.crash.kind, after_death=True)
        index = len(self.calls)
        self.calls.append(operation)
        self._occurrences[operation] += 1
        fault = self.plan.fault_for(index, operation, self._occurrences[operation])
        if fault is None:
            return await call()
        kind = fault.kind
        self.fired.append(FiredFault(index, operation, kind))
        if kind is FaultKind.ERROR:
            raise InjectedStorageError(index, operation, committed=False)
        if kind is FaultKind.CRASH_BEFORE:
            self.crash = SimulatedCrash(index, operation, kind)
            raise self.crash
        await call()
        if kind is FaultKind.CRASH_AFTER:
            self.crash = SimulatedCrash(index, operation, kind)
            raise self.crash
        raise InjectedStorageError(index, operation, committed=True)

    # -- the Storage protocol, by delegation --

    async def migrate(self, now: datetime | None = None) -> None:
        return await self._invoke("migrate", lambda: self.inner.migrate(now))

    async def close(self) -> None:
        return await self._invoke("close", self.inner.close)

    async def enqueue(self, run: NewRun, *, coalesce: bool = False) -> EnqueueResult:
        return await self._invoke("enqueue", lambda: self.inner.enqueue(run, coalesce=coalesce))

    async def enqueue_many(self, runs: Sequence[tuple[NewRun, bool]]) -> list[EnqueueResult]:
        return await self._invoke("enqueue_many", lambda: self.inner.enqueue_many(runs))

    async def get_run(self, run_id: str) -> Run | None:
        return await self._invoke("get_run", lambda: self.inner.get_run(run_id))

    async def get_runs(self, query: RunFilter) -> list[Run]:
        return await self._invoke("get_runs", lambda: self.inner.get_runs(query))

    async def count_runs(self, query: RunFilter) -> dict[RunStatus, int]:
        return await self._invoke("count_runs", lambda: self.inner.count_runs(query))

    async def get_steps(self, run_id: str) -> list[StepRecord]:
        return await self._invoke("get_steps", lambda: self.inner.get_steps(run_id))

    async def get_completed_steps(self, run_id: str) -> list[StepRecord]:
        return await self._invoke(
            "get_completed_steps", lambda: self.inner.get_completed_steps(run_id)
        )

    async def get_logs(self, run_id: str) -> list[LogRecord]:
        return await self._invoke("get_logs", lambda: self.inner.get_logs(run_id))

    async def claim_next(
        self,
        owner: str,
        now: datetime,
        lease_expires_at: datetime,
        job_names: Sequence[str] | None = None,
    ) -> Run | None:
        return await self._invoke(
            "claim_next",
            lambda: self.inner.claim_next(owner, now, lease_expires_at, job_names),
        )

    async def renew_lease(
        self, run_id: str, generation: int, now: datetime, lease_expires_at: datetime
    ) -> bool:
        return await self._invoke(
            "renew_lease",
            lambda: self.inner.renew_lease(run_id, generation, now, lease_expires_at),
        )

    async def release_expired_leases(self, now: datetime) -> int:
        return await self._invoke(
            "release_expired_leases", lambda: self.inner.release_expired_leases(now)
        )

    async def persist_step(
        self,
        run_id: str,
        generation: int,
        step: NewStep,
        now: datetime,
        *,
        attempt: NewAttempt | None = None,
    ) -> bool:
        if attempt is None:
            return await self._invoke(
                "persist_step", lambda: self.inner.persist_step(run_id, generation, step, now)
            )
        return await self._invoke(
            "persist_step",
            lambda: self.inner.persist_step(run_id, generation, step, now, attempt=attempt),
        )

    async def update_progress(
        self, run_id: str, generation: int, progress: Progress, now: datetime
    ) -> bool:
        return await self._invoke(
            "update_progress",
            lambda: self.inner.update_progress(run_id, generation, progress, now),
        )

    async def append_logs(
        self, run_id: str, generation: int, logs: Sequence[NewLog], now: datetime
    ) -> bool:
        return await self._invoke(
            "append_logs", lambda: self.inner.append_logs(run_id, generation, logs, now)
        )

    async def complete_run(
        self,
        run_id: str,
        generation: int,
        output_json: str,
        now: datetime,
        *,
        delete_steps: bool,
    ) -> bool:
        return await self._invoke(
            "complete_run",
            lambda: self.inner.complete_run(
                run_id, generation, output_json, now, delete_steps=delete_steps
            ),
        )

    async def fail_run(self, run_id: str, generation: int, error: str, now: datetime) -> bool:
        return await self._invoke(
            "fail_run", lambda: self.inner.fail_run(run_id, generation, error, now)
        )

    async def cancel_run(self, run_id: str, now: datetime) -> Run | None:
        return await self._invoke("cancel_run", lambda: self.inner.cancel_run(run_id, now))

    async def retry_run(self, run_id: str, now: datetime) -> Run | None:
        return await self._invoke("retry_run", lambda: self.inner.retry_run(run_id, now))

    async def delete_run(self, run_id: str) -> Run | None:
        return await self._invoke("delete_run", lambda: self.inner.delete_run(run_id))

    async def purge_runs(self, completed_before: datetime, limit: int) -> int:
        return await self._invoke(
            "purge_runs", lambda: self.inner.purge_runs(completed_before, limit)
        )

    async def prepare_wait(
        self, run_id: str, generation: int, wait: NewWait, now: datetime
    ) -> Wait | None:
        return await self._invoke(
            "prepare_wait", lambda: self.inner.prepare_wait(run_id, generation, wait, now)
        )

    async def wait_result(
        self, run_id: str, generation: int, wait_id: str, now: datetime, resumed_at: datetime
    ) -> Wait | None:
        return await self._invoke(
            "wait_result",
            lambda: self.inner.wait_result(run_id, generation, wait_id, now, resumed_at),
        )

    async def suspend_run(
        self, run_id: str, generation: int, wait_id: str, now: datetime
    ) -> Run | None:
        return await self._invoke(
            "suspend_run", lambda: self.inner.suspend_run(run_id, generation, wait_id, now)
        )

    async def record_attempt(
        self,
        run_id: str,
        generation: int,
        attempt: NewAttempt,
        now: datetime,
        *,
        wake_at: datetime | None = None,
    ) -> bool:
        return await self._invoke(
            "record_attempt",
            lambda: self.inner.record_attempt(run_id, generation, attempt, now, wake_at=wake_at),
        )

    async def schedule_retry(
        self, run_id: str, generation: int, error: str, wake_at: datetime, now: datetime
    ) -> Run | None:
        return await self._invoke(
            "schedule_retry",
            lambda: self.inner.schedule_retry(run_id, generation, error, wake_at, now),
        )

    async def get_attempts(self, run_id: str) -> list[Attempt]:
        return await self._invoke("get_attempts", lambda: self.inner.get_attempts(run_id))

    async def signal_wait(
        self, run_id: str, name: str, signal: NewSignal, now: datetime
    ) -> SignalOutcome:
        return await self._invoke(
            "signal_wait", lambda: self.inner.signal_wait(run_id, name, signal, now)
        )

    async def get_waits(self, run_id: str) -> list[Wait]:
        return await self._invoke("get_waits", lambda: self.inner.get_waits(run_id))

    async def get_wait(self, run_id: str, name: str) -> Wait | None:
        return await self._invoke("get_wait", lambda: self.inner.get_wait(run_id, name))

    async def next_wake_at(self, now: datetime) -> datetime | None:
        return await self._invoke("next_wake_at", lambda: self.inner.next_wake_at(now))

    async def create_schedule(self, schedule: NewSchedule) -> ScheduleRecord | None:
        return await self._invoke("create_schedule", lambda: self.inner.create_schedule(schedule))

    async def update_schedule(
        self, schedule: NewSchedule, revision: int, now: datetime
    ) -> ScheduleRecord | None:
        return await self._invoke(
            "update_schedule", lambda: self.inner.update_schedule(schedule, revision, now)
        )

    async def delete_schedule(self, name: str) -> ScheduleRecord | None:
        return await self._invoke("delete_schedule", lambda: self.inner.delete_schedule(name))

    async def get_schedule(self, name: str) -> ScheduleRecord | None:
        return await self._invoke("get_schedule", lambda: self.inner.get_schedule(name))

    async def get_schedules(self, job_names: Sequence[str] | None = None) -> list[ScheduleRecord]:
        return await self._invoke("get_schedules", lambda: self.inner.get_schedules(job_names))

    async def upcoming_schedules(
        self, job_names: Sequence[str], limit: int
    ) -> list[ScheduleRecord]:
        return await self._invoke(
            "upcoming_schedules", lambda: self.inner.upcoming_schedules(job_names, limit)
        )

    async def fire_schedule(self, fire: ScheduleFire) -> list[EnqueueResult] | None:
        return await self._invoke("fire_schedule", lambda: self.inner.fire_schedule(fire))

    # -- optional capabilities: forwarded when the inner storage has them --

    async def check_identity(self) -> None:
        inner = self.inner
        if isinstance(inner, SupportsIdentityCheck):
            await self._invoke("check_identity", inner.check_identity)
        else:
            await self._invoke("check_identity", _nothing)

    async def database_time(self) -> datetime | None:
        inner = self.inner
        if isinstance(inner, SupportsDatabaseTime):
            return await self._invoke("database_time", inner.database_time)
        return await self._invoke("database_time", _nothing)


async def _nothing() -> None:
    """What an optional capability the inner storage lacks does."""
