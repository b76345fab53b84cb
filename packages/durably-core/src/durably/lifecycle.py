"""The run lifecycle as pure rules: statuses, transitions, claimability, fencing,
the rules of durable waits (preparation, suspension, signals, deadlines) and of
retries (a step's attempt series, a run waiting for its next attempt).

No I/O and no clock reads: "now" is always an argument. The memory backend
applies these functions directly; the SQL backend expresses the same rules as
``WHERE`` clauses; the property tests check both against an independent model.
An adapter that implements :class:`durably.Storage` directly (not over SQL) can
build on them too (see docs/writing-a-storage-adapter.md).
"""

from __future__ import annotations

__all__ = [
    "ACTIVE_STATUSES",
    "CANCELLABLE_STATUSES",
    "DELETABLE_STATUSES",
    "REOPENABLE_WAIT_STATUSES",
    "RETRIGGERABLE_STATUSES",
    "RETRYABLE_STATUSES",
    "STATUS_ALIASES",
    "TERMINAL_STATUSES",
    "backed_off",
    "can_cancel",
    "can_delete",
    "can_renew",
    "can_retrigger",
    "can_retry",
    "cancelled",
    "claim_order",
    "claimed",
    "completed",
    "concurrency_blocked",
    "execution_slot_wait",
    "failed",
    "has_live_lease",
    "holds_lease",
    "input_wait",
    "is_claimable",
    "is_terminal",
    "next_attempt",
    "pending_conflicts",
    "released",
    "renewed",
    "retried",
    "retry_scheduled",
    "signal_decision",
    "signalled",
    "step_completed",
    "suspended",
    "timed_out",
    "wait_due",
    "wait_ended",
    "wait_reopened",
    "wake_time",
    "with_progress",
    "woken",
]

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from types import MappingProxyType

import msgspec

from ._records import (
    Attempt,
    AttemptStatus,
    Progress,
    Run,
    RunStatus,
    SignalDisposition,
    Wait,
    WaitStatus,
)

TERMINAL_STATUSES: frozenset[RunStatus] = frozenset(
    {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED}
)
"""Statuses after which nothing more happens to a run."""

ACTIVE_STATUSES: frozenset[RunStatus] = frozenset({RunStatus.PENDING, RunStatus.LEASED})
"""Statuses of a run that still has work ahead and is pending or executing
(``waiting`` is neither: it holds no lease and no slot)."""

CANCELLABLE_STATUSES: frozenset[RunStatus] = frozenset(
    {RunStatus.PENDING, RunStatus.LEASED, RunStatus.WAITING}
)
"""What ``cancel`` accepts."""

RETRYABLE_STATUSES: frozenset[RunStatus] = frozenset({RunStatus.FAILED, RunStatus.CANCELLED})
"""What ``retry`` accepts (the run resumes after its last completed step)."""

RETRIGGERABLE_STATUSES = TERMINAL_STATUSES
"""What ``retrigger`` accepts (a new run with the same input)."""

DELETABLE_STATUSES = TERMINAL_STATUSES
"""What ``delete_run`` and ``purge_runs`` accept."""

REOPENABLE_WAIT_STATUSES: frozenset[WaitStatus] = frozenset(
    {WaitStatus.CANCELLED, WaitStatus.CLOSED}
)
"""The waits a retried run gets back, pending again (a resolved wait keeps its result)."""

STATUS_ALIASES: Mapping[str, RunStatus] = MappingProxyType(
    {**{s.value: s for s in RunStatus}, "running": RunStatus.LEASED}
)
"""Filter spellings accepted for a status; ``running`` is the documentation's older word."""


def is_terminal(status: RunStatus) -> bool:
    """Completed, failed or cancelled."""
    return status in TERMINAL_STATUSES


def can_cancel(status: RunStatus) -> bool:
    """May a run in this status be cancelled?"""
    return status in CANCELLABLE_STATUSES


def can_retry(status: RunStatus) -> bool:
    """May a run in this status be retried (back to pending, steps kept)?"""
    return status in RETRYABLE_STATUSES


def can_retrigger(status: RunStatus) -> bool:
    """May a run in this status be triggered again as a new run?"""
    return status in RETRIGGERABLE_STATUSES


def can_delete(status: RunStatus) -> bool:
    """May a run in this status be deleted?"""
    return status in DELETABLE_STATUSES


def has_live_lease(run: Run, now: datetime) -> bool:
    """Leased and not yet expired at ``now``."""
    return (
        run.status == RunStatus.LEASED
        and run.lease_expires_at is not None
        and run.lease_expires_at > now
    )


def is_claimable(run: Run, now: datetime) -> bool:
    """Pending; leased with a lease that expired at or before ``now``; or waiting with
    a wake-up time at or before ``now`` (its wait has a result, or its deadline passed)."""
    if run.status == RunStatus.PENDING:
        return True
    if run.status == RunStatus.LEASED:
        return run.lease_expires_at is not None and run.lease_expires_at <= now
    return run.status == RunStatus.WAITING and run.wake_at is not None and run.wake_at <= now


def concurrency_blocked(run: Run, others: Iterable[Run], now: datetime) -> bool:
    """Another run with the same concurrency key holds a live lease."""
    if run.concurrency_key is None:
        return False
    return any(
        o.id != run.id and o.concurrency_key == run.concurrency_key and has_live_lease(o, now)
        for o in others
    )


def claim_order(run: Run) -> tuple[datetime, str]:
    """Oldest first: ``created_at``, then ``id``."""
    return (run.created_at, run.id)


def holds_lease(run: Run, generation: int) -> bool:
    """The fencing guard of every write about a claimed run."""
    return run.status == RunStatus.LEASED and run.lease_generation == generation


def can_renew(run: Run, generation: int, now: datetime) -> bool:
    """Renewal also requires the lease not to have expired yet."""
    return holds_lease(run, generation) and has_live_lease(run, now)


def pending_conflicts(run: Run, others: Iterable[Run]) -> bool:
    """Would ``run`` be a second pending run for its (job, concurrency key)?"""
    if run.status != RunStatus.PENDING or run.concurrency_key is None:
        return False
    return any(
        o.id != run.id
        and o.status == RunStatus.PENDING
        and o.job_name == run.job_name
        and o.concurrency_key == run.concurrency_key
        for o in others
    )


# -- transitions: each returns the new record; callers check the guard first --


def claimed(run: Run, owner: str, now: datetime, expires_at: datetime) -> Run:
    """Leased by ``owner`` until ``expires_at``, with the next generation; ``started_at``
    is set on the first claim only."""
    return msgspec.structs.replace(
        run,
        status=RunStatus.LEASED,
        lease_owner=owner,
        lease_expires_at=expires_at,
        lease_generation=run.lease_generation + 1,
        started_at=run.started_at or now,
        updated_at=now,
        waiting_on_wait_id=None,
        wake_at=None,
    )


def renewed(run: Run, now: datetime, expires_at: datetime) -> Run:
    """The lease extended to ``expires_at``."""
    return msgspec.structs.replace(run, lease_expires_at=expires_at, updated_at=now)


def step_completed(run: Run, index: int, now: datetime) -> Run:
    """A completed step at ``index`` counted: ``current_step_index`` moves to at least
    ``index + 1``, ``completed_step_count`` up by one."""
    return msgspec.structs.replace(
        run,
        current_step_index=max(run.current_step_index, index + 1),
        completed_step_count=run.completed_step_count + 1,
        updated_at=now,
    )


def with_progress(run: Run, progress: Progress, now: datetime) -> Run:
    """The run's progress replaced."""
    return msgspec.structs.replace(run, progress=progress, updated_at=now)


def completed(run: Run, output: object, now: datetime) -> Run:
    """Completed with ``output``; the lease cleared, ``completed_at`` set."""
    return msgspec.structs.replace(
        run,
        status=RunStatus.COMPLETED,
        output=output,
        error=None,
        lease_owner=None,
        lease_expires_at=None,
        completed_at=now,
        updated_at=now,
    )


def failed(run: Run, error: str, now: datetime) -> Run:
    """Failed with ``error``; the lease cleared, ``completed_at`` set."""
    return msgspec.structs.replace(
        run,
        status=RunStatus.FAILED,
        error=error,
        lease_owner=None,
        lease_expires_at=None,
        completed_at=now,
        updated_at=now,
    )


def cancelled(run: Run, now: datetime) -> Run:
    """Cancelled; the lease cleared, ``completed_at`` set."""
    return msgspec.structs.replace(
        run,
        status=RunStatus.CANCELLED,
        lease_owner=None,
        lease_expires_at=None,
        completed_at=now,
        updated_at=now,
        waiting_on_wait_id=None,
        wake_at=None,
    )


def retried(run: Run, now: datetime) -> Run:
    """Back to pending with the same id, input and completed steps; a new start: the
    next claim sets ``started_at`` (a run deadline counts from it) and the run's
    ``attempt`` is 1 again."""
    return msgspec.structs.replace(
        run,
        status=RunStatus.PENDING,
        output=None,
        error=None,
        lease_owner=None,
        lease_expires_at=None,
        started_at=None,
        completed_at=None,
        updated_at=now,
        attempt=1,
    )


def released(run: Run, now: datetime) -> Run:
    """An expired lease handed back: pending again; the next claim bumps the generation."""
    return msgspec.structs.replace(
        run, status=RunStatus.PENDING, lease_owner=None, lease_expires_at=None, updated_at=now
    )


# -- retries --


def backed_off(run: Run, wake_at: datetime, now: datetime) -> Run:
    """The lease holder waits for a step's next attempt at ``wake_at`` without holding
    a slot: ``waiting`` (on no wait), the lease released; claimable at ``wake_at``."""
    return msgspec.structs.replace(
        run,
        status=RunStatus.WAITING,
        lease_owner=None,
        lease_expires_at=None,
        waiting_on_wait_id=None,
        wake_at=wake_at,
        updated_at=now,
    )


def retry_scheduled(run: Run, error: str, wake_at: datetime, now: datetime) -> Run:
    """The run's attempt failed with ``error`` and the whole run is tried again at
    ``wake_at``: ``waiting`` until then (lease released), ``attempt`` one more, the
    error kept for whoever looks at it meanwhile."""
    return msgspec.structs.replace(
        backed_off(run, wake_at, now), error=error, attempt=run.attempt + 1
    )


def next_attempt(attempts: Iterable[Attempt], step_name: str) -> tuple[int, datetime | None]:
    """The number of the next attempt of step ``step_name`` and when it is due
    (``None``: at once), from the run's attempt records in their order.

    A failed attempt with a ``next_attempt_at`` continues its series (number + 1, due
    then); a ``started`` one was interrupted (the worker stopped during the call): its
    number runs again, at once; a completed one, or a failed one that was the last,
    ends the series (the next call starts a new one at 1)."""
    number, due = 1, None
    for record in attempts:
        if record.step_name != step_name:
            continue
        if record.status is AttemptStatus.STARTED:
            number, due = record.attempt, None
        elif record.status is AttemptStatus.FAILED and record.next_attempt_at is not None:
            number, due = record.attempt + 1, record.next_attempt_at
        else:
            number, due = 1, None
    return number, due


# -- durable waits --


def wake_time(wait: Wait, now: datetime) -> datetime | None:
    """When a run suspended on ``wait`` becomes claimable: ``now`` if the wait has a
    result already (or can no longer get one), else its deadline (``None``: only a
    signal wakes it)."""
    return wait.deadline_at if wait.status is WaitStatus.PENDING else now


def suspended(run: Run, wait: Wait, now: datetime) -> Run:
    """The lease holder suspends on ``wait``: the lease (and the worker's slot) is
    released; the run is claimable again at :func:`wake_time`."""
    return msgspec.structs.replace(
        run,
        status=RunStatus.WAITING,
        lease_owner=None,
        lease_expires_at=None,
        waiting_on_wait_id=wait.id,
        wake_at=wake_time(wait, now),
        updated_at=now,
    )


def woken(run: Run, wait: Wait, now: datetime) -> Run | None:
    """A result for ``wait`` arrived at ``now``: the run suspended on it becomes
    claimable at once. ``None`` when nothing changes (the run is not suspended on
    this wait, or is claimable already)."""
    if (
        run.status is not RunStatus.WAITING
        or run.waiting_on_wait_id != wait.id
        or (run.wake_at is not None and run.wake_at <= now)
    ):
        return None
    return msgspec.structs.replace(run, wake_at=now, updated_at=now)


def wait_due(wait: Wait, now: datetime) -> bool:
    """Pending with a deadline at or before ``now``: it can only time out."""
    return (
        wait.status is WaitStatus.PENDING
        and wait.deadline_at is not None
        and wait.deadline_at <= now
    )


def timed_out(wait: Wait) -> Wait:
    """The deadline decided the result; it is dated at the deadline, whenever noticed."""
    return msgspec.structs.replace(
        wait, status=WaitStatus.RESOLVED, outcome="timeout", resolved_at=wait.deadline_at
    )


def signalled(wait: Wait, signal_id: str | None, payload: object, now: datetime) -> Wait:
    """The signal is the wait's result, received at ``now``."""
    return msgspec.structs.replace(
        wait,
        status=WaitStatus.RESOLVED,
        outcome="signal",
        payload=payload,
        signal_id=signal_id,
        resolved_at=now,
    )


_NO_TIME = timedelta(0)


def input_wait(wait: Wait) -> timedelta | None:
    """How long the run was suspended before the wait's result came: from its first
    suspension on the wait to the result (a timeout's time is its deadline), never
    negative; zero when the result came before the run suspended on it; ``None``
    while there is no result (also when the wait ended with its run, without one)."""
    if wait.outcome is None or wait.resolved_at is None:
        return None
    if wait.suspended_at is None:
        return _NO_TIME
    return max(_NO_TIME, wait.resolved_at - wait.suspended_at)


def execution_slot_wait(wait: Wait) -> timedelta | None:
    """How long the run, its result known, waited for a worker: from the later of the
    result and the first suspension to the claim that first resumed it, never
    negative (a key's other run holding its lease lengthens it); zero when the
    result came before the run suspended on it; ``None`` with no result yet, or not
    resumed yet."""
    if wait.outcome is None or wait.resolved_at is None:
        return None
    if wait.suspended_at is None:
        return _NO_TIME
    if wait.first_resumed_at is None:
        return None
    return max(_NO_TIME, wait.first_resumed_at - max(wait.resolved_at, wait.suspended_at))


def wait_ended(wait: Wait, status: WaitStatus, now: datetime) -> Wait:
    """A pending wait whose run finished (``closed``) or was cancelled (``cancelled``)."""
    return msgspec.structs.replace(wait, status=status, resolved_at=now)


def wait_reopened(wait: Wait) -> Wait:
    """A retried run's wait that ended with the run, pending again (same deadline)."""
    return msgspec.structs.replace(wait, status=WaitStatus.PENDING, resolved_at=None)


def signal_decision(
    wait: Wait,
    run_status: RunStatus,
    signal_id: str | None,
    same_payload: bool,
    now: datetime,
) -> SignalDisposition:
    """What a signal ``(signal_id, payload)`` does to ``wait`` at ``now``.

    In order: a timer takes no signal; a signal already accepted with the same id and
    payload is a duplicate (whatever happened since: the deadline, a cancel), another
    one a conflict; a timed-out wait is expired; a wait whose run ended is closed; a
    pending wait at or past its deadline is expired (the caller records the timeout);
    else the signal is accepted (the caller records it)."""
    if wait.kind == "timer":
        return "timer"
    if wait.status is WaitStatus.RESOLVED:
        if wait.outcome == "signal":
            return "duplicate" if wait.signal_id == signal_id and same_payload else "conflict"
        return "expired"
    if wait.status is not WaitStatus.PENDING or is_terminal(run_status):
        return "closed"
    if wait_due(wait, now):
        return "expired"
    return "accepted"
