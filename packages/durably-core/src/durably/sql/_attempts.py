"""The retry operations of :class:`~durably.sql.SqlStorage`, as SQL.

- an attempt record is written by an ``INSERT … SELECT … FROM durably_runs WHERE
  <fence> ON CONFLICT (id) DO UPDATE``: inserted, or the record of the same id (a
  ``started`` one) settled, and nothing at all without the lease;
- a step waiting for its next attempt (``record_attempt(wake_at=…)``) is that write
  and the run's move to ``waiting`` in one batch, the run's update last, so both see
  the same fence;
- a retry of the whole run (``schedule_retry``) is one fenced ``UPDATE … RETURNING``.

A lost answer is resolved by what the write left: the attempt record of that id in
the status written, under this lease generation (the batch is atomic, so the run's
move came with it), or the run waiting for that retry under this generation.
"""

from __future__ import annotations

from datetime import datetime

from .._records import Attempt, NewAttempt, Run
from .._timefmt import format_ts
from ._outcome import resolved
from ._rows import ATTEMPT_COLUMNS, FENCE, RUN_COLUMNS, to_attempt, to_run
from .executor import Executor, Params, Statement

__all__ = ["BACK_OFF", "DELETE_ATTEMPTS", "SqlAttempts", "attempt_write"]

_UPSERT_ATTEMPT = (
    f"INSERT INTO durably_step_attempts ({ATTEMPT_COLUMNS}) "
    "SELECT ?, id, ?, CAST(? AS INTEGER), CAST(? AS INTEGER), ?, lease_generation, ?, ?, ?, ? "
    "FROM durably_runs "
    f"WHERE id = ? AND {FENCE} "
    "ON CONFLICT (id) DO UPDATE SET status = excluded.status, error = excluded.error, "
    "completed_at = excluded.completed_at, next_attempt_at = excluded.next_attempt_at"
)
#: The run waits, on no wait, for a step's next attempt (parameters: wake_at, now, run
#: id, generation).
BACK_OFF = (
    "UPDATE durably_runs SET status = 'waiting', lease_owner = NULL, lease_expires_at = NULL, "
    "waiting_on_wait_id = NULL, wake_at = ?, updated_at = ? "
    f"WHERE id = ? AND {FENCE} RETURNING 1"
)
_LANDED_ATTEMPT = (
    "SELECT EXISTS (SELECT 1 FROM durably_step_attempts WHERE id = ? AND status = ? "
    f"AND lease_generation = ?), {FENCE} FROM durably_runs WHERE id = ?"
)
_RETRY_LATER = (
    "UPDATE durably_runs SET status = 'waiting', error = ?, attempt = attempt + 1, "
    "lease_owner = NULL, lease_expires_at = NULL, waiting_on_wait_id = NULL, wake_at = ?, "
    f"updated_at = ? WHERE id = ? AND {FENCE} RETURNING {RUN_COLUMNS}"
)
_LANDED_RETRY = (
    f"SELECT {RUN_COLUMNS} FROM durably_runs WHERE id = ? AND status = 'waiting' "
    "AND lease_generation = ? AND waiting_on_wait_id IS NULL AND wake_at = ? AND error = ?"
)
_GET_ATTEMPTS = (
    f"SELECT {ATTEMPT_COLUMNS} FROM durably_step_attempts WHERE run_id = ? ORDER BY started_at, id"
)
#: What deleting or purging a run does to its attempt records (``{runs}``: the guard
#: or the id list of the runs going).
DELETE_ATTEMPTS = "DELETE FROM durably_step_attempts WHERE run_id {runs}"


def _ts(value: datetime | None) -> str | None:
    return None if value is None else format_ts(value)


def attempt_write(run_id: str, generation: int, attempt: NewAttempt) -> Statement:
    """The fenced upsert of one attempt record (also part of a checkpoint's batch)."""
    params: Params = (
        attempt.id,
        attempt.step_name,
        attempt.step_index,
        attempt.attempt,
        attempt.status.value,
        attempt.error,
        format_ts(attempt.started_at),
        _ts(attempt.completed_at),
        _ts(attempt.next_attempt_at),
        run_id,
        generation,
    )
    return (_UPSERT_ATTEMPT, params)


class SqlAttempts:
    """Mixed into ``SqlStorage``: the retry operations over its executor."""

    executor: Executor

    async def _attempt_landed(
        self, run_id: str, generation: int, attempt: NewAttempt
    ) -> bool | None:
        """After a lost answer: ``True`` if the attempt record is there as written,
        ``None`` if not but the lease still holds (send again), ``False`` otherwise."""
        rows = await self.executor.fetch(
            _LANDED_ATTEMPT, (attempt.id, attempt.status.value, generation, generation, run_id)
        )
        if not rows:
            return False
        if rows[0][0]:
            return True
        return None if rows[0][1] else False

    async def record_attempt(
        self,
        run_id: str,
        generation: int,
        attempt: NewAttempt,
        now: datetime,
        *,
        wake_at: datetime | None = None,
    ) -> bool:
        write_attempt = attempt_write(run_id, generation, attempt)
        back_off: Statement | None = None
        if wake_at is not None:
            back_off = (BACK_OFF, (format_ts(wake_at), format_ts(now), run_id, generation))

        async def write() -> bool:
            return await self._write_attempt(run_id, generation, write_attempt, back_off)

        return await resolved(write, lambda: self._attempt_landed(run_id, generation, attempt))

    async def _write_attempt(
        self, run_id: str, generation: int, write_attempt: Statement, back_off: Statement | None
    ) -> bool:
        """The attempt's fenced upsert and, when given, the run's fenced move to
        ``waiting`` (``BACK_OFF``), atomically. Whether it was written."""
        if back_off is None:
            return await self.executor.execute(*write_attempt) > 0
        results = await self.executor.batch([write_attempt, back_off])
        return bool(results[1])

    async def schedule_retry(
        self, run_id: str, generation: int, error: str, wake_at: datetime, now: datetime
    ) -> Run | None:
        wake_s = format_ts(wake_at)
        params: Params = (error, wake_s, format_ts(now), run_id, generation)

        async def write() -> Run | None:
            rows = await self.executor.fetch(_RETRY_LATER, params)
            return to_run(rows[0]) if rows else None

        async def landed() -> Run | None:
            rows = await self.executor.fetch(_LANDED_RETRY, (run_id, generation, wake_s, error))
            return to_run(rows[0]) if rows else None

        return await resolved(write, landed)

    async def get_attempts(self, run_id: str) -> list[Attempt]:
        return [to_attempt(row) for row in await self.executor.fetch(_GET_ATTEMPTS, (run_id,))]
