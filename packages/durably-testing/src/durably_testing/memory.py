"""``MemoryStorage``: the :class:`durably.Storage` contract kept in dicts.

Every rule comes from :mod:`durably.lifecycle` (guards and transitions), so the
rules exist once; this module only stores records and applies them. Each
operation runs synchronously inside its ``async def`` (no ``await`` in the
middle of a mutation), which makes every operation atomic. Timestamps are
normalised the way the database stores them (UTC, millisecond precision), JSON
text is decoded with msgspec into JSON-native values, and text no database can
store (a lone surrogate) is refused with ``ValidationError``, so what a test
sees here is what it would see from a SQL backend.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec

from durably import (
    Attempt,
    ConflictError,
    EnqueueResult,
    LogRecord,
    NewAttempt,
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
    StorageError,
    ValidationError,
    Wait,
    WaitStatus,
)
from durably import lifecycle as life
from durably._timefmt import format_ts, parse_ts
from durably.plugins import url_scheme

from ._memory_schedules import MemorySchedules

__all__ = ["MemoryStorage"]


def _ts(t: datetime) -> datetime:
    """``t`` as the database would return it: aware UTC, truncated to milliseconds."""
    return parse_ts(format_ts(t))


def _ts_opt(t: datetime | None) -> datetime | None:
    return None if t is None else _ts(t)


def _fresh(run: Run) -> Run:
    """A copy whose mutable values the caller may change without touching the store
    (as with a database, where every read decodes anew)."""
    return msgspec.structs.replace(
        run,
        input=copy.deepcopy(run.input),
        output=copy.deepcopy(run.output),
        labels=dict(run.labels),
    )


def _fresh_step(step: StepRecord) -> StepRecord:
    return msgspec.structs.replace(step, output=copy.deepcopy(step.output))


def _fresh_log(log: LogRecord) -> LogRecord:
    return msgspec.structs.replace(log, data=copy.deepcopy(log.data))


def _fresh_wait(wait: Wait) -> Wait:
    return msgspec.structs.replace(
        wait, payload=copy.deepcopy(wait.payload), metadata=copy.deepcopy(wait.metadata)
    )


def _storable(text: str | None, what: str) -> None:
    """Refuse text no database can store (a lone surrogate), as a SQL backend would."""
    if text is None:
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValidationError(
            f"{what} is not valid Unicode text (a lone surrogate at position {exc.start}) "
            "and cannot be stored; fix its source, or decode it with errors='replace'"
        ) from None


def _check_new_run(new: NewRun) -> None:
    for value, what in (
        (new.id, "The run id"),
        (new.job_name, "The job name"),
        (new.idempotency_key, "The idempotency key"),
        (new.concurrency_key, "The concurrency key"),
        (new.input_json, f"The input of run {new.id}"),
    ):
        _storable(value, what)
    for key, value in new.labels.items():
        _storable(key, "A label key")
        _storable(value, f"The value of label {key!r}")


def _check_new_step(step: NewStep) -> None:
    _storable(step.id, "The step id")
    _storable(step.name, "The step name")
    _storable(step.error, f"The error of step {step.name!r}")
    _storable(step.output_json, f"The output of step {step.name!r}")


def _check_new_attempt(attempt: NewAttempt) -> None:
    _storable(attempt.id, "The attempt id")
    _storable(attempt.step_name, "The step name of an attempt")
    _storable(attempt.error, f"The error of an attempt of step {attempt.step_name!r}")


def _check_new_log(log: NewLog) -> None:
    _storable(log.id, "The log entry id")
    _storable(log.step_name, "The step name of a log entry")
    _storable(log.message, "A log message")
    _storable(log.data_json, f"The data of log entry {log.id}")


def _decode(text: str, what: str) -> Any:
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise ValidationError(f"{what} is not valid JSON: {exc}") from exc


def _decode_opt(text: str | None, what: str) -> Any:
    return None if text is None else _decode(text, what)


def _enqueue_into(runs: dict[str, Run], new: NewRun, coalesce: bool) -> EnqueueResult:
    """Apply one enqueue to ``runs`` (mutated only when a run is created)."""
    _check_new_run(new)
    if new.idempotency_key is not None:
        for existing in runs.values():
            if (
                existing.job_name == new.job_name
                and existing.idempotency_key == new.idempotency_key
            ):
                return EnqueueResult(existing, "idempotent")
    if new.id in runs:
        raise StorageError(f"A run with id {new.id!r} already exists; run ids must be unique")
    created_at = _ts(new.created_at)
    run = Run(
        id=new.id,
        job_name=new.job_name,
        input=_decode(new.input_json, f"Input of run {new.id}"),
        status=RunStatus.PENDING,
        idempotency_key=new.idempotency_key,
        concurrency_key=new.concurrency_key,
        labels=dict(new.labels),
        created_at=created_at,
        updated_at=created_at,
    )
    if life.pending_conflicts(run, runs.values()):
        pending = _pending_with_key(runs, run.job_name, run.concurrency_key)
        if coalesce:
            return EnqueueResult(pending, "coalesced")
        raise ConflictError(
            f"Job {new.job_name!r} already has a pending run ({pending.id}) with "
            f"concurrency key {new.concurrency_key!r}; wait for it to start, or trigger "
            'with coalesce="skip" to get that pending run back instead',
            run_id=pending.id,
            status=pending.status.value,
        )
    runs[run.id] = run
    return EnqueueResult(run, "created")


def _pending_with_key(runs: dict[str, Run], job_name: str, concurrency_key: str | None) -> Run:
    return next(
        r
        for r in runs.values()
        if r.status is RunStatus.PENDING
        and r.job_name == job_name
        and r.concurrency_key == concurrency_key
    )


def _matches(run: Run, query: RunFilter) -> bool:
    if query.statuses is not None and run.status not in query.statuses:
        return False
    if query.job_names is not None and run.job_name not in query.job_names:
        return False
    return query.labels is None or all(run.labels.get(k) == v for k, v in query.labels.items())


class MemoryStorage(MemorySchedules):
    """In-memory :class:`durably.Storage` for tests and the ``memory://`` URL.

    Each instance is its own database; nothing is shared between instances.
    ``close()`` and ``migrate()`` are no-ops, so it stays usable after ``close``.
    """

    def __init__(self) -> None:
        super().__init__()
        self._runs: dict[str, Run] = {}
        self._steps: dict[str, list[StepRecord]] = {}
        self._logs: dict[str, list[LogRecord]] = {}
        self._waits: dict[str, dict[str, Wait]] = {}
        #: The JSON text of each accepted payload, by wait id: a duplicate signal is
        #: recognised by its text, as a SQL backend compares the stored column.
        self._payload_texts: dict[str, str] = {}
        #: Each run's attempt records by id, in the order they were first written.
        self._attempts: dict[str, dict[str, Attempt]] = {}

    @classmethod
    def from_url(cls, url: str, **options: Any) -> MemoryStorage:
        """Open a ``memory://`` URL. No options are accepted."""
        if url_scheme(url) != "memory":
            raise ValidationError(
                f"MemoryStorage opens memory:// URLs only, not {url!r}; use 'memory://'"
            )
        if options:
            names = ", ".join(sorted(options))
            raise ValidationError(
                f"Unknown option(s) for the memory:// backend: {names}; it takes no options"
            )
        return cls()

    def __repr__(self) -> str:
        return f"<MemoryStorage runs={len(self._runs)}>"

    async def migrate(self, now: datetime | None = None) -> None:
        return None

    async def close(self) -> None:
        return None

    async def check_identity(self) -> None:
        """Nothing can replace a database that lives in this process."""

    async def database_time(self) -> datetime | None:
        """``None``: this database lives in the process, on its clock."""
        return None

    # -- triggering --

    async def enqueue(self, run: NewRun, *, coalesce: bool = False) -> EnqueueResult:
        result = _enqueue_into(self._runs, run, coalesce)
        return EnqueueResult(_fresh(result.run), result.disposition)

    async def enqueue_many(self, runs: Sequence[tuple[NewRun, bool]]) -> list[EnqueueResult]:
        return self._enqueue_now(runs)

    def _enqueue_now(self, runs: Sequence[tuple[NewRun, bool]]) -> list[EnqueueResult]:
        staged = dict(self._runs)
        results = [_enqueue_into(staged, new, coalesce) for new, coalesce in runs]
        self._runs = staged
        return [EnqueueResult(_fresh(r.run), r.disposition) for r in results]

    # -- reading --

    async def get_run(self, run_id: str) -> Run | None:
        run = self._runs.get(run_id)
        return None if run is None else _fresh(run)

    async def get_runs(self, query: RunFilter) -> list[Run]:
        found = sorted(
            (r for r in self._runs.values() if _matches(r, query)),
            key=lambda r: (r.created_at, r.id),
            reverse=True,
        )
        end = None if query.limit is None else query.offset + max(query.limit, 0)
        return [_fresh(r) for r in found[query.offset : end]]

    async def count_runs(self, query: RunFilter) -> dict[RunStatus, int]:
        counts: dict[RunStatus, int] = {}
        for run in self._runs.values():
            if _matches(run, query):
                counts[run.status] = counts.get(run.status, 0) + 1
        return counts

    async def get_steps(self, run_id: str) -> list[StepRecord]:
        steps = sorted(self._steps.get(run_id, ()), key=lambda s: (s.index, s.started_at, s.id))
        return [_fresh_step(s) for s in steps]

    async def get_completed_steps(self, run_id: str) -> list[StepRecord]:
        return [s for s in await self.get_steps(run_id) if s.status is StepStatus.COMPLETED]

    async def get_logs(self, run_id: str) -> list[LogRecord]:
        logs = sorted(self._logs.get(run_id, ()), key=lambda log: (log.created_at, log.id))
        return [_fresh_log(log) for log in logs]

    # -- leases --

    async def claim_next(
        self,
        owner: str,
        now: datetime,
        lease_expires_at: datetime,
        job_names: Sequence[str] | None = None,
    ) -> Run | None:
        now = _ts(now)
        _storable(owner, "The lease owner")
        candidates = [
            r
            for r in self._runs.values()
            if life.is_claimable(r, now)
            and (job_names is None or r.job_name in job_names)
            and not life.concurrency_blocked(r, self._runs.values(), now)
        ]
        if not candidates:
            return None
        run = life.claimed(min(candidates, key=life.claim_order), owner, now, _ts(lease_expires_at))
        self._runs[run.id] = run
        return _fresh(run)

    async def renew_lease(
        self, run_id: str, generation: int, now: datetime, lease_expires_at: datetime
    ) -> bool:
        now = _ts(now)
        run = self._runs.get(run_id)
        if run is None or not life.can_renew(run, generation, now):
            return False
        self._runs[run_id] = life.renewed(run, now, _ts(lease_expires_at))
        return True

    async def release_expired_leases(self, now: datetime) -> int:
        now = _ts(now)
        expired = sorted(
            (
                r
                for r in self._runs.values()
                if r.status is RunStatus.LEASED and life.is_claimable(r, now)
            ),
            key=life.claim_order,
        )
        count = 0
        for run in expired:
            released = life.released(run, now)
            if life.pending_conflicts(released, self._runs.values()):
                continue
            self._runs[run.id] = released
            count += 1
        return count

    # -- fenced writes by the lease holder --

    def _held(self, run_id: str, generation: int) -> Run | None:
        run = self._runs.get(run_id)
        if run is None or not life.holds_lease(run, generation):
            return None
        return run

    async def persist_step(
        self,
        run_id: str,
        generation: int,
        step: NewStep,
        now: datetime,
        *,
        attempt: NewAttempt | None = None,
    ) -> bool:
        now = _ts(now)
        _check_new_step(step)
        if attempt is not None:
            _check_new_attempt(attempt)
        run = self._held(run_id, generation)
        if run is None:
            return False
        steps = self._steps.get(run_id, [])
        if step.status is StepStatus.COMPLETED and any(
            s.name == step.name and s.status is StepStatus.COMPLETED for s in steps
        ):
            raise ConflictError(
                f"Run {run_id} already has a completed step named {step.name!r}; "
                "a completed step is replayed, never written twice",
                run_id=run_id,
                status=run.status.value,
            )
        record = StepRecord(
            id=step.id,
            run_id=run_id,
            name=step.name,
            index=step.index,
            status=step.status,
            output=_decode_opt(step.output_json, f"Output of step {step.name!r}"),
            error=step.error,
            started_at=_ts(step.started_at),
            completed_at=_ts_opt(step.completed_at),
        )
        self._steps[run_id] = [*steps, record]
        if attempt is not None:
            self._put_attempt(run_id, generation, attempt)
        if step.status is StepStatus.COMPLETED:
            self._runs[run_id] = life.step_completed(run, step.index, now)
        return True

    async def update_progress(
        self, run_id: str, generation: int, progress: Progress, now: datetime
    ) -> bool:
        now = _ts(now)
        _storable(progress.message, "The progress message")
        run = self._held(run_id, generation)
        if run is None:
            return False
        self._runs[run_id] = life.with_progress(run, progress, now)
        return True

    async def append_logs(
        self, run_id: str, generation: int, logs: Sequence[NewLog], now: datetime
    ) -> bool:
        for log in logs:
            _check_new_log(log)
        if self._held(run_id, generation) is None:
            return False
        records = [
            LogRecord(
                id=log.id,
                run_id=run_id,
                step_name=log.step_name,
                level=log.level,
                message=log.message,
                data=_decode_opt(log.data_json, f"Data of log entry {log.id}"),
                created_at=_ts(log.created_at),
            )
            for log in logs
        ]
        if records:
            self._logs[run_id] = [*self._logs.get(run_id, []), *records]
        return True

    async def complete_run(
        self,
        run_id: str,
        generation: int,
        output_json: str,
        now: datetime,
        *,
        delete_steps: bool,
    ) -> bool:
        now = _ts(now)
        _storable(output_json, f"The output of run {run_id}")
        run = self._held(run_id, generation)
        if run is None:
            return False
        output = _decode(output_json, f"Output of run {run_id}")
        self._runs[run_id] = life.completed(run, output, now)
        self._end_waits(run_id, WaitStatus.CLOSED, now)
        if delete_steps:
            self._forget_children(run_id)
        return True

    async def fail_run(self, run_id: str, generation: int, error: str, now: datetime) -> bool:
        now = _ts(now)
        _storable(error, f"The error of run {run_id}")
        run = self._held(run_id, generation)
        if run is None:
            return False
        self._runs[run_id] = life.failed(run, error, now)
        self._end_waits(run_id, WaitStatus.CLOSED, now)
        return True

    # -- control --

    async def cancel_run(self, run_id: str, now: datetime) -> Run | None:
        run = self._runs.get(run_id)
        if run is None or not life.can_cancel(run.status):
            return None
        updated = life.cancelled(run, _ts(now))
        self._runs[run_id] = updated
        self._end_waits(run_id, WaitStatus.CANCELLED, _ts(now))
        return _fresh(updated)

    async def retry_run(self, run_id: str, now: datetime) -> Run | None:
        run = self._runs.get(run_id)
        if run is None or not life.can_retry(run.status):
            return None
        updated = life.retried(run, _ts(now))
        if life.pending_conflicts(updated, self._runs.values()):
            pending = _pending_with_key(self._runs, run.job_name, run.concurrency_key)
            raise ConflictError(
                f"Cannot retry run {run_id}: job {run.job_name!r} already has a pending run "
                f"({pending.id}) with concurrency key {run.concurrency_key!r}; wait until "
                "it has started, or cancel it, then retry",
                run_id=run_id,
                status=run.status.value,
            )
        self._runs[run_id] = updated
        self._reopen_waits(run_id)
        return _fresh(updated)

    async def delete_run(self, run_id: str) -> Run | None:
        run = self._runs.get(run_id)
        if run is None or not life.can_delete(run.status):
            return None
        del self._runs[run_id]
        self._forget_children(run_id)
        self._forget_waits(run_id)
        self._attempts.pop(run_id, None)
        return _fresh(run)

    async def purge_runs(self, completed_before: datetime, limit: int) -> int:
        cutoff = _ts(completed_before)
        doomed = sorted(
            (
                r
                for r in self._runs.values()
                if life.is_terminal(r.status)
                and r.completed_at is not None
                and r.completed_at < cutoff
            ),
            key=lambda r: (r.completed_at or cutoff, r.id),
        )[: max(limit, 0)]
        for run in doomed:
            del self._runs[run.id]
            self._forget_children(run.id)
            self._forget_waits(run.id)
            self._attempts.pop(run.id, None)
        return len(doomed)

    def _forget_children(self, run_id: str) -> None:
        self._steps.pop(run_id, None)
        self._logs.pop(run_id, None)

    # -- retries --

    def _put_attempt(self, run_id: str, generation: int, new: NewAttempt) -> None:
        """Insert the record, or settle the one of the same id (its outcome fields)."""
        attempts = self._attempts.setdefault(run_id, {})
        existing = attempts.get(new.id)
        if existing is None:
            attempts[new.id] = Attempt(
                id=new.id,
                run_id=run_id,
                step_name=new.step_name,
                step_index=new.step_index,
                attempt=new.attempt,
                status=new.status,
                lease_generation=generation,
                error=new.error,
                started_at=_ts(new.started_at),
                completed_at=_ts_opt(new.completed_at),
                next_attempt_at=_ts_opt(new.next_attempt_at),
            )
        else:
            attempts[new.id] = msgspec.structs.replace(
                existing,
                status=new.status,
                error=new.error,
                completed_at=_ts_opt(new.completed_at),
                next_attempt_at=_ts_opt(new.next_attempt_at),
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
        now = _ts(now)
        _check_new_attempt(attempt)
        run = self._held(run_id, generation)
        if run is None:
            return False
        self._put_attempt(run_id, generation, attempt)
        if wake_at is not None:
            self._runs[run_id] = life.backed_off(run, _ts(wake_at), now)
        return True

    async def schedule_retry(
        self, run_id: str, generation: int, error: str, wake_at: datetime, now: datetime
    ) -> Run | None:
        _storable(error, f"The error of run {run_id}")
        run = self._held(run_id, generation)
        if run is None:
            return None
        updated = life.retry_scheduled(run, error, _ts(wake_at), _ts(now))
        self._runs[run_id] = updated
        return _fresh(updated)

    async def get_attempts(self, run_id: str) -> list[Attempt]:
        return sorted(self._attempts.get(run_id, {}).values(), key=lambda a: (a.started_at, a.id))

    # -- durable waits --

    def _wait_by_id(self, run_id: str, wait_id: str) -> Wait | None:
        return next((w for w in self._waits.get(run_id, {}).values() if w.id == wait_id), None)

    def _put_wait(self, wait: Wait) -> None:
        self._waits.setdefault(wait.run_id, {})[wait.name] = wait

    # -- the lease holder's operations --

    async def prepare_wait(
        self, run_id: str, generation: int, wait: NewWait, now: datetime
    ) -> Wait | None:
        for value, what in (
            (wait.id, "The wait id"),
            (wait.name, "The wait name"),
            (wait.metadata_json, f"The metadata of wait {wait.name!r}"),
        ):
            _storable(value, what)
        if self._held(run_id, generation) is None:
            return None
        existing = self._waits.get(run_id, {}).get(wait.name)
        if existing is not None:
            return _fresh_wait(existing)
        record = Wait(
            id=wait.id,
            run_id=run_id,
            name=wait.name,
            kind=wait.kind,
            metadata=None
            if wait.metadata_json is None
            else _decode(wait.metadata_json, f"Metadata of wait {wait.name!r}"),
            deadline_at=None if wait.deadline_at is None else _ts(wait.deadline_at),
            created_at=_ts(wait.created_at),
        )
        self._put_wait(record)
        return _fresh_wait(record)

    async def wait_result(
        self, run_id: str, generation: int, wait_id: str, now: datetime, resumed_at: datetime
    ) -> Wait | None:
        now = _ts(now)
        if self._held(run_id, generation) is None:
            return None
        wait = self._wait_by_id(run_id, wait_id)
        if wait is None:
            raise NotFoundError(f"Run {run_id} has no wait with id {wait_id}", run_id=run_id)
        if life.wait_due(wait, now):
            wait = life.timed_out(wait)
        if (
            wait.status is WaitStatus.RESOLVED
            and wait.suspended_at is not None
            and wait.first_resumed_at is None
        ):
            wait = msgspec.structs.replace(wait, first_resumed_at=_ts(resumed_at))
        self._put_wait(wait)
        return _fresh_wait(wait)

    async def suspend_run(
        self, run_id: str, generation: int, wait_id: str, now: datetime
    ) -> Run | None:
        now = _ts(now)
        run = self._held(run_id, generation)
        wait = None if run is None else self._wait_by_id(run_id, wait_id)
        if run is None or wait is None:
            return None
        if wait.suspended_at is None:
            self._put_wait(msgspec.structs.replace(wait, suspended_at=now))
        updated = life.suspended(run, wait, now)
        self._runs[run_id] = updated
        return updated

    # -- anyone's --

    async def signal_wait(
        self, run_id: str, name: str, signal: NewSignal, now: datetime
    ) -> SignalOutcome:
        now = _ts(now)
        _storable(signal.signal_id, "The signal id")
        _storable(signal.payload_json, f"The payload of the signal to wait {name!r}")
        payload = _decode(signal.payload_json, f"The payload of the signal to wait {name!r}")
        run = self._runs.get(run_id)
        wait = self._waits.get(run_id, {}).get(name)
        if run is None or wait is None:
            return SignalOutcome("not-found", None)
        same = self._payload_texts.get(wait.id) == signal.payload_json
        decision = life.signal_decision(wait, run.status, signal.signal_id, same, now)
        if decision == "expired" and wait.status is WaitStatus.PENDING:
            wait = life.timed_out(wait)
            self._put_wait(wait)
        elif decision == "accepted":
            wait = life.signalled(wait, signal.signal_id, payload, now)
            self._put_wait(wait)
            self._payload_texts[wait.id] = signal.payload_json
            woken = life.woken(run, wait, now)
            if woken is not None:
                self._runs[run_id] = woken
        return SignalOutcome(decision, _fresh_wait(wait))

    async def get_waits(self, run_id: str) -> list[Wait]:
        waits = sorted(self._waits.get(run_id, {}).values(), key=lambda w: (w.created_at, w.id))
        return [_fresh_wait(w) for w in waits]

    async def get_wait(self, run_id: str, name: str) -> Wait | None:
        wait = self._waits.get(run_id, {}).get(name)
        return None if wait is None else _fresh_wait(wait)

    async def next_wake_at(self, now: datetime) -> datetime | None:
        now = _ts(now)
        times = [
            r.wake_at
            for r in self._runs.values()
            if r.status is RunStatus.WAITING and r.wake_at is not None and r.wake_at > now
        ]
        return min(times, default=None)

    # -- what the run's own transitions do to its waits --

    def _end_waits(self, run_id: str, status: WaitStatus, now: datetime) -> None:
        for wait in list(self._waits.get(run_id, {}).values()):
            if wait.status is WaitStatus.PENDING:
                self._put_wait(life.wait_ended(wait, status, now))

    def _reopen_waits(self, run_id: str) -> None:
        for wait in list(self._waits.get(run_id, {}).values()):
            if wait.status in life.REOPENABLE_WAIT_STATUSES:
                self._put_wait(life.wait_reopened(wait))

    def _forget_waits(self, run_id: str) -> None:
        for wait in self._waits.pop(run_id, {}).values():
            self._payload_texts.pop(wait.id, None)
