"""The storage boundary: semantic operations, not SQL.

An adapter implements :class:`Storage`. Rules every implementation keeps (the
conformance suite in ``durably_testing.conformance`` checks them):

- Each operation is atomic: it happens wholly or not at all, and never holds a
  transaction open across awaits.
- Time is never read inside storage: every ``now`` is an argument.
- Fenced operations (``renew_lease``, ``persist_step``, ``update_progress``,
  ``append_logs``, ``complete_run``, ``fail_run``, ``prepare_wait``,
  ``wait_result``, ``suspend_run``, ``record_attempt``, ``schedule_retry``) apply
  only while the run is ``leased`` with the given ``lease_generation`` and return
  ``False``/``None`` (writing nothing) otherwise; ``renew_lease`` also requires the
  lease to be unexpired.
- The rules of statuses, waits and retries are those of :mod:`durably.lifecycle`.
- Driver errors are raised as :class:`durably.StorageError` subclasses with the
  driver's exception chained; no driver exception type escapes.
- Schedules (``create_schedule`` … ``fire_schedule``) are written only by
  compare-and-set on their ``revision``: every write that changes a schedule
  increments it, and ``update_schedule`` and ``fire_schedule`` apply only at the
  revision they were computed from. A fire writes its runs and moves the schedule
  in one transaction, so a slot is fired at most once, by one process, however
  many race for it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Protocol, runtime_checkable

from ._records import (
    Attempt,
    EnqueueResult,
    LogRecord,
    NewAttempt,
    NewLog,
    NewRun,
    NewSignal,
    NewStep,
    NewWait,
    Progress,
    Run,
    RunFilter,
    RunStatus,
    SignalOutcome,
    StepRecord,
    Wait,
)
from ._schedule import NewSchedule, ScheduleFire, ScheduleRecord


@runtime_checkable
class Storage(Protocol):
    """Persistence of runs, steps and logs. See the module docstring for the rules."""

    async def migrate(self, now: datetime | None = None) -> None:
        """Create or upgrade the schema. Idempotent; safe from several processes at once.
        ``now`` (the engine's clock) is the time recorded for the versions applied;
        ``None`` when called outside an engine: the system clock's."""
        ...

    async def close(self) -> None:
        """Release connections. Further calls may reopen or raise ``StorageError``."""
        ...

    # -- triggering --

    async def enqueue(self, run: NewRun, *, coalesce: bool = False) -> EnqueueResult:
        """Insert a pending run.

        Same (job_name, idempotency_key) as an existing run → that run,
        ``"idempotent"``, nothing written. Otherwise, if a pending run of the same
        (job_name, concurrency_key) exists: with ``coalesce`` that run,
        ``"coalesced"``; without, raise ``ConflictError``. Else ``"created"``.
        """
        ...

    async def enqueue_many(self, runs: Sequence[tuple[NewRun, bool]]) -> list[EnqueueResult]:
        """``enqueue`` for each ``(run, coalesce)`` in order, all or nothing."""
        ...

    # -- reading --

    async def get_run(self, run_id: str) -> Run | None:
        """The run with this id, or ``None``."""
        ...

    async def get_runs(self, query: RunFilter) -> list[Run]:
        """Matching runs, newest first (``created_at`` desc, then ``id`` desc)."""
        ...

    async def count_runs(self, query: RunFilter) -> dict[RunStatus, int]:
        """How many runs match ``query``'s statuses, job names and labels, by status
        (``limit`` and ``offset`` are ignored). A status no matching run has may be
        left out."""
        ...

    async def get_steps(self, run_id: str) -> list[StepRecord]:
        """All step rows of a run, in execution order (``index``, then ``started_at``)."""
        ...

    async def get_completed_steps(self, run_id: str) -> list[StepRecord]:
        """The completed step rows of a run (what a resumed execution replays)."""
        ...

    async def get_logs(self, run_id: str) -> list[LogRecord]:
        """A run's log entries, oldest first."""
        ...

    # -- leases --

    async def claim_next(
        self,
        owner: str,
        now: datetime,
        lease_expires_at: datetime,
        job_names: Sequence[str] | None = None,
    ) -> Run | None:
        """Atomically lease the oldest claimable run (see ``durably.lifecycle.is_claimable``:
        pending, leased with an expired lease, or waiting with ``wake_at <= now``)
        whose concurrency key has no other live lease; bump its generation (and clear
        ``waiting_on_wait_id`` and ``wake_at``).

        ``job_names`` restricts the claim to those jobs (``None``: any job).
        """
        ...

    async def renew_lease(
        self, run_id: str, generation: int, now: datetime, lease_expires_at: datetime
    ) -> bool:
        """Move the lease's expiry to ``lease_expires_at``, only while the run is leased
        with ``generation`` and its lease has not expired at ``now``."""
        ...

    async def release_expired_leases(self, now: datetime) -> int:
        """Put leased runs whose lease expired back to pending (unless another run of
        the same job and concurrency key is already pending). Returns how many."""
        ...

    # -- fenced writes by the lease holder --

    async def persist_step(
        self,
        run_id: str,
        generation: int,
        step: NewStep,
        now: datetime,
        *,
        attempt: NewAttempt | None = None,
    ) -> bool:
        """Insert a step row; a completed one also advances the run's
        ``current_step_index`` (to ``index + 1``) and ``completed_step_count``.
        ``attempt``: also record that attempt (as ``record_attempt`` does), in the same
        atomic step — all or nothing."""
        ...

    async def update_progress(
        self, run_id: str, generation: int, progress: Progress, now: datetime
    ) -> bool:
        """Replace the run's progress."""
        ...

    async def append_logs(
        self, run_id: str, generation: int, logs: Sequence[NewLog], now: datetime
    ) -> bool:
        """Insert log entries, all or none."""
        ...

    async def complete_run(
        self,
        run_id: str,
        generation: int,
        output_json: str,
        now: datetime,
        *,
        delete_steps: bool,
    ) -> bool:
        """Mark completed (lease cleared; pending waits ``closed``). ``delete_steps`` also
        removes its steps and logs (never its waits or attempt records: they go with the
        run)."""
        ...

    async def fail_run(self, run_id: str, generation: int, error: str, now: datetime) -> bool:
        """Mark failed with ``error`` (lease cleared, ``completed_at`` set; pending waits
        ``closed``); its steps stay."""
        ...

    # -- retries --

    async def record_attempt(
        self,
        run_id: str,
        generation: int,
        attempt: NewAttempt,
        now: datetime,
        *,
        wake_at: datetime | None = None,
    ) -> bool:
        """Fenced: store ``attempt`` as one of the run's attempt records (with the
        lease ``generation``) — inserted, or replacing the record of the same id
        (``status``, ``error``, ``completed_at``, ``next_attempt_at``; a ``started``
        record settled). With ``wake_at``, in the same atomic step, the run waits for
        the step's next attempt (``lifecycle.backed_off``: ``waiting`` on no wait, lease
        released, claimable at ``wake_at``). False, writing nothing, without the lease."""
        ...

    async def schedule_retry(
        self, run_id: str, generation: int, error: str, wake_at: datetime, now: datetime
    ) -> Run | None:
        """Fenced: the run's attempt failed with ``error`` and the whole run is tried
        again at ``wake_at`` (``lifecycle.retry_scheduled``: ``waiting``, lease released,
        ``attempt`` + 1). The updated run, or ``None`` without the lease (nothing
        written)."""
        ...

    async def get_attempts(self, run_id: str) -> list[Attempt]:
        """The run's attempt records, oldest first (``started_at``, then ``id``). They
        stay when a completed run's steps are deleted, and go with the run."""
        ...

    # -- durable waits --

    async def prepare_wait(
        self, run_id: str, generation: int, wait: NewWait, now: datetime
    ) -> Wait | None:
        """Fenced: the run's wait named ``wait.name`` — inserted from ``wait`` when the
        run has none, else the existing one unchanged (its deadline and kind are those
        of the first preparation). ``None`` without the lease."""
        ...

    async def wait_result(
        self, run_id: str, generation: int, wait_id: str, now: datetime, resumed_at: datetime
    ) -> Wait | None:
        """Fenced read of one of the run's waits, before the job consumes it: a pending
        wait at or past its deadline is timed out first (``lifecycle.timed_out``); a
        resolved wait the run had suspended on gets ``first_resumed_at = resumed_at``
        unless set. ``None`` without the lease; ``NotFoundError`` for a wait the run
        does not have."""
        ...

    async def suspend_run(
        self, run_id: str, generation: int, wait_id: str, now: datetime
    ) -> Run | None:
        """Fenced: leased → waiting on the run's wait ``wait_id`` (``lifecycle.suspended``:
        lease released, ``wake_at`` from ``lifecycle.wake_time``); the wait's
        ``suspended_at`` is set unless it was. The updated run, or ``None`` without the
        lease (or when the run has no such wait): nothing written."""
        ...

    async def signal_wait(
        self, run_id: str, name: str, signal: NewSignal, now: datetime
    ) -> SignalOutcome:
        """Deliver a signal to the run's wait ``name``, atomically, as
        ``lifecycle.signal_decision`` says: ``accepted`` records it as the result (and
        wakes the run if it is suspended on this wait: ``lifecycle.woken``);
        ``expired`` on a pending wait records the timeout. Refusals write nothing
        else. Not an error to call with any arguments: the disposition says what
        happened (``not-found`` when the run has no such wait, or does not exist)."""
        ...

    async def get_waits(self, run_id: str) -> list[Wait]:
        """The run's waits, oldest first (``created_at``, then ``id``)."""
        ...

    async def get_wait(self, run_id: str, name: str) -> Wait | None:
        """The run's wait called ``name``, or ``None``."""
        ...

    async def next_wake_at(self, now: datetime) -> datetime | None:
        """The earliest ``wake_at`` after ``now`` of a waiting run (when the next one
        becomes claimable by its deadline), or ``None``."""
        ...

    # -- control (not fenced: any process may do these) --

    async def cancel_run(self, run_id: str, now: datetime) -> Run | None:
        """Pending, leased or waiting → cancelled (lease cleared; pending waits
        ``cancelled``). The updated run, or ``None`` when the run does not exist or is
        in another status (nothing written)."""
        ...

    async def retry_run(self, run_id: str, now: datetime) -> Run | None:
        """Failed or cancelled → pending (``lifecycle.retried``: ``started_at`` cleared,
        ``attempt`` 1), keeping id, input, completed steps, attempt records and
        resolved waits (waits that ended with the run are pending again).
        ``None`` when absent or in another status. May raise ``ConflictError`` when
        another run of the same job and concurrency key is already pending."""
        ...

    async def delete_run(self, run_id: str) -> Run | None:
        """Delete a terminal run with its steps, logs, labels, waits and attempt records;
        the deleted run, or ``None`` when absent or not terminal (nothing deleted)."""
        ...

    async def purge_runs(self, completed_before: datetime, limit: int) -> int:
        """Delete up to ``limit`` terminal runs with ``completed_at`` before the cutoff,
        oldest first, with their steps, logs, labels, waits and attempt records. Returns
        how many."""
        ...

    # -- schedules (compare-and-set on ``revision``; see the module docstring) --

    async def create_schedule(self, schedule: NewSchedule) -> ScheduleRecord | None:
        """Store a new schedule (``revision`` 1, ``last_fired_at`` unset, ``updated_at``
        = ``created_at``). ``None``, writing nothing, when a schedule of that name exists."""
        ...

    async def update_schedule(
        self, schedule: NewSchedule, revision: int, now: datetime
    ) -> ScheduleRecord | None:
        """Replace the fields of schedule ``schedule.name`` (all but ``name``,
        ``created_at`` and ``last_fired_at``) with those of ``schedule``, only while its
        revision is ``revision``; the revision becomes ``revision + 1``, ``updated_at``
        ``now``. The updated schedule, or ``None`` (nothing written) when it does not
        exist or is at another revision."""
        ...

    async def delete_schedule(self, name: str) -> ScheduleRecord | None:
        """Delete a schedule (its runs stay); the deleted schedule, or ``None``."""
        ...

    async def get_schedule(self, name: str) -> ScheduleRecord | None:
        """The schedule of that name, or ``None``."""
        ...

    async def get_schedules(self, job_names: Sequence[str] | None = None) -> list[ScheduleRecord]:
        """The schedules (of ``job_names`` only, unless ``None``), by name."""
        ...

    async def upcoming_schedules(
        self, job_names: Sequence[str], limit: int
    ) -> list[ScheduleRecord]:
        """Up to ``limit`` active schedules of ``job_names`` with a ``next_fire_at``,
        soonest first (``next_fire_at``, then ``name``): the due ones and the next to
        come, in one read."""
        ...

    async def fire_schedule(self, fire: ScheduleFire) -> list[EnqueueResult] | None:
        """Atomically, only while schedule ``fire.name`` is active at revision
        ``fire.revision``: set its ``next_fire_at`` to ``fire.next_fire_at``, its
        ``last_fired_at`` to ``fire.last_fired_at`` when that is not ``None``, its
        revision to ``fire.revision + 1`` and ``updated_at`` to ``fire.now``; and
        enqueue ``fire.runs`` as ``enqueue_many`` does without coalescing (a run whose
        job and idempotency key exist already is answered ``"idempotent"``). The
        results in order, or ``None`` (nothing written) when the schedule is absent,
        paused or at another revision. A fire that raises wrote nothing."""
        ...


# -- optional capabilities: a storage may offer these; the engine uses them if it does --


@runtime_checkable
class ClaimableSubscription(Protocol):
    """An optional capability of a storage shared by several processes: being told
    at once when a run may have become claimable anywhere (triggered, retried, its
    lease released), so that idle workers of every process claim it without waiting
    for their next poll. PostgreSQL offers it with ``LISTEN``/``NOTIFY``.

    The worker subscribes when it starts and keeps polling as the safety net: a
    subscription that fails, or a notification that is lost, costs at most one
    polling interval.
    """

    async def subscribe_claimable(
        self, callback: Callable[[], None]
    ) -> Callable[[], Awaitable[None]]:
        """Call ``callback()`` (on the event loop) whenever a run may have become
        claimable; returns the coroutine function that ends the subscription. May raise
        ``NotImplementedError`` when this storage cannot offer it after all."""
        ...


@runtime_checkable
class SupportsIdentityCheck(Protocol):
    """A storage that can tell whether its database is still the one it opened.

    The worker calls :meth:`check_identity` at most once per polling interval, so it
    must be cheap (a ``stat`` of a file, not a query).
    """

    async def check_identity(self) -> None:
        """Return if the database is still the one this storage opened (or it has no
        way to tell). Raise :class:`durably.StorageLostError` when it is gone — a
        file deleted, or replaced by another — and refuse every operation from then
        on; raise another ``StorageError`` when it could not check this time."""
        ...


@runtime_checkable
class SupportsDatabaseTime(Protocol):
    """A storage whose database has a clock of its own: a server, possibly another
    machine. The engine measures the offset between that clock and its own (at
    start, then every minute, from the midpoint of the round trip) and corrects the
    time it passes to every operation when it runs on the system clock, so that
    lease expiry is judged by the database's clock, not by each worker's."""

    async def database_time(self) -> datetime | None:
        """The database server's clock at the moment of the call (aware UTC, truncated
        to milliseconds) — on PostgreSQL ``clock_timestamp()``, not ``now()``, which
        is the transaction's start — or ``None`` when the database has no clock of its
        own (an embedded database is read on this machine's clock; ``None`` is final:
        the engine never asks again). One round trip and nothing else (the engine times
        it), outside any transaction; it may raise ``StorageError`` (reported, the last
        offset kept, asked again on the worker's next round). Only this method reads the
        database's clock: every stored instant is still the ``now`` the engine passes."""
        ...
