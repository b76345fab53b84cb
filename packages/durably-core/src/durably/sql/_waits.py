"""The durable-wait operations of :class:`~durably.sql.SqlStorage`, as SQL.

Each is one atomic batch whose statements carry their own guards, so the same
batch is right whatever state it meets (and may be sent again after a lost
answer: it is idempotent). The rules are those of :mod:`durably.lifecycle`:

- ``prepare_wait`` inserts under the run's fence, ``ON CONFLICT (run_id, name) DO
  NOTHING``: the first preparation fixes the deadline;
- ``suspend_run`` releases the lease and sets ``wake_at`` from the wait in the same
  statement (``lifecycle.wake_time``): a result that arrived before the suspension
  makes the run claimable at once, so no signal is lost between the job's check and
  its suspension;
- ``signal_wait`` times out a due pending wait, accepts the signal on a pending one,
  wakes the run suspended on it, and reads the outcome back; which of them applied
  is decided by the guards, and what the caller is told by
  ``lifecycle.signal_decision`` on the state read back.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from .._errors import NotFoundError, StorageOutcomeUnknownError
from .._records import NewSignal, NewWait, Run, RunStatus, SignalOutcome, Wait
from .._timefmt import format_ts, parse_ts
from ..lifecycle import RETRYABLE_STATUSES, TERMINAL_STATUSES, signal_decision
from ._outcome import resolved
from ._rows import FENCE, HELD, RUN_COLUMNS, WAIT_COLUMNS, status_list, to_run, to_wait
from .executor import Executor, Row, SqlValue, Statement

__all__ = ["SqlWaits"]

_LIVE_RUN = (
    "EXISTS (SELECT 1 FROM durably_runs WHERE id = ? "
    f"AND status NOT IN {status_list(TERMINAL_STATUSES)})"
)
_HOLDER = f"SELECT {FENCE} FROM durably_runs WHERE id = ?"
_DUE = "status = 'pending' AND deadline_at IS NOT NULL AND deadline_at <= ?"
_TIME_OUT = (
    "UPDATE durably_waits SET status = 'resolved', outcome = 'timeout', resolved_at = deadline_at "
)

_PREPARE = (
    "INSERT INTO durably_waits (id, run_id, name, kind, status, metadata, created_at, "
    "deadline_at, deadline_ms, timing_known) "
    "SELECT ?, id, ?, ?, 'pending', ?, ?, ?, CAST(? AS BIGINT), 1 FROM durably_runs "
    f"WHERE id = ? AND {FENCE} ON CONFLICT (run_id, name) DO NOTHING"
)
_WAIT_BY_NAME = f"SELECT {WAIT_COLUMNS} FROM durably_waits WHERE run_id = ? AND name = ?"
_WAIT_BY_ID = f"SELECT {WAIT_COLUMNS} FROM durably_waits WHERE id = ? AND run_id = ?"
_WAITS_OF_RUN = f"SELECT {WAIT_COLUMNS} FROM durably_waits WHERE run_id = ? ORDER BY created_at, id"

_RESULT_TIME_OUT = _TIME_OUT + f"WHERE id = ? AND run_id = ? AND {_DUE} AND {HELD}"
_RESULT_RESUMED = (
    "UPDATE durably_waits SET first_resumed_at = ? WHERE id = ? AND run_id = ? "
    "AND status = 'resolved' AND suspended_at IS NOT NULL AND first_resumed_at IS NULL "
    f"AND {HELD}"
)

_SUSPENDED_AT = (
    "UPDATE durably_waits SET suspended_at = COALESCE(suspended_at, ?) "
    f"WHERE id = ? AND run_id = ? AND {HELD}"
)
_SUSPEND = (
    "UPDATE durably_runs SET status = 'waiting', lease_owner = NULL, lease_expires_at = NULL, "
    "waiting_on_wait_id = ?, wake_at = (SELECT CASE WHEN w.status = 'pending' "
    "THEN w.deadline_at ELSE ? END FROM durably_waits AS w WHERE w.id = ? "
    "AND w.run_id = durably_runs.id), updated_at = ? "
    f"WHERE id = ? AND {FENCE} "
    "AND EXISTS (SELECT 1 FROM durably_waits WHERE id = ? AND run_id = ?) "
    f"RETURNING {RUN_COLUMNS}"
)
_LANDED_SUSPEND = (
    f"SELECT {RUN_COLUMNS} FROM durably_runs WHERE id = ? AND status = 'waiting' "
    "AND lease_generation = ? AND waiting_on_wait_id = ?"
)

_SIGNAL_TIME_OUT = (
    _TIME_OUT + f"WHERE run_id = ? AND name = ? AND kind = 'signal' AND {_DUE} AND {_LIVE_RUN}"
)
_SIGNAL_ACCEPT = (
    "UPDATE durably_waits SET status = 'resolved', outcome = 'signal', payload = ?, "
    "signal_id = ?, resolved_at = ? WHERE run_id = ? AND name = ? AND kind = 'signal' "
    "AND status = 'pending' AND (deadline_at IS NULL OR deadline_at > ?) "
    f"AND {_LIVE_RUN} RETURNING 1"
)
# The run suspended on a wait that has its result is claimable now (lifecycle.woken).
_WAKE = (
    "UPDATE durably_runs SET wake_at = ?, updated_at = ? WHERE id = ? AND status = 'waiting' "
    "AND (wake_at IS NULL OR wake_at > ?) AND waiting_on_wait_id = "
    "(SELECT id FROM durably_waits WHERE run_id = ? AND name = ? AND status = 'resolved')"
)
_SIGNAL_READ = (
    f"SELECT {WAIT_COLUMNS}, (SELECT status FROM durably_runs WHERE id = ?) "
    "FROM durably_waits WHERE run_id = ? AND name = ?"
)

_NEXT_WAKE = "SELECT MIN(wake_at) FROM durably_runs WHERE status = 'waiting' AND wake_at > ?"

#: What the run's own transitions do to its waits (run by ``SqlStorage`` in the same
#: batch as the transition, before it, under the transition's own guard).
END_WAITS = (
    "UPDATE durably_waits SET status = ?, resolved_at = ? WHERE run_id = ? "
    "AND status = 'pending' AND {guard}"
)
REOPEN_WAITS = (
    "UPDATE durably_waits SET status = 'pending', resolved_at = NULL WHERE run_id = ? "
    "AND status IN ('cancelled', 'closed') AND EXISTS (SELECT 1 FROM durably_runs "
    f"WHERE id = ? AND status IN {status_list(RETRYABLE_STATUSES)})"
)


def _deadline_ms(deadline: datetime | None) -> int | None:
    # the reference compares deadlines as epoch milliseconds; kept for its readers
    return None if deadline is None else int(deadline.timestamp() * 1000)


class SqlWaits:
    """Mixed into ``SqlStorage``: the durable-wait operations over its executor."""

    executor: Executor

    async def _run_batch(self, run_id: str, statements: Sequence[Statement]) -> list[list[Row]]:
        """``executor.batch(statements)`` for a batch about one run and its waits (a
        dialect with row locks takes the run's first: one lock order for all of them)."""
        return await self.executor.batch(statements)

    async def prepare_wait(
        self, run_id: str, generation: int, wait: NewWait, now: datetime
    ) -> Wait | None:
        deadline = None if wait.deadline_at is None else format_ts(wait.deadline_at)
        insert: list[SqlValue] = [
            wait.id,
            wait.name,
            wait.kind,
            wait.metadata_json,
            format_ts(wait.created_at),
            deadline,
            _deadline_ms(wait.deadline_at),
            run_id,
            generation,
        ]
        statements: list[Statement] = [
            (_PREPARE, insert),
            (_HOLDER, (generation, run_id)),
            (_WAIT_BY_NAME, (run_id, wait.name)),
        ]

        async def write() -> Wait | None:
            results = await self._run_batch(run_id, statements)
            if not (results[1] and results[1][0][0]) or not results[2]:
                return None
            return to_wait(results[2][0])

        # the batch is idempotent (the insert does nothing the second time)
        return await resolved(write, write)

    async def wait_result(
        self, run_id: str, generation: int, wait_id: str, now: datetime, resumed_at: datetime
    ) -> Wait | None:
        now_s = format_ts(now)
        held = (run_id, generation)
        statements: list[Statement] = [
            (_RESULT_TIME_OUT, (wait_id, run_id, now_s, *held)),
            (_RESULT_RESUMED, (format_ts(resumed_at), wait_id, run_id, *held)),
            (_HOLDER, (generation, run_id)),
            (_WAIT_BY_ID, (wait_id, run_id)),
        ]

        async def write() -> Wait | None:
            results = await self._run_batch(run_id, statements)
            if not (results[2] and results[2][0][0]):
                return None
            if not results[3]:
                raise NotFoundError(f"Run {run_id} has no wait with id {wait_id}", run_id=run_id)
            return to_wait(results[3][0])

        return await resolved(write, write)

    async def suspend_run(
        self, run_id: str, generation: int, wait_id: str, now: datetime
    ) -> Run | None:
        now_s = format_ts(now)
        statements: list[Statement] = [
            (_SUSPENDED_AT, (now_s, wait_id, run_id, run_id, generation)),
            (
                _SUSPEND,
                (wait_id, now_s, wait_id, now_s, run_id, generation, wait_id, run_id),
            ),
        ]

        async def write() -> Run | None:
            results = await self._run_batch(run_id, statements)
            return to_run(results[1][0]) if results[1] else None

        async def landed() -> Run | None:
            rows = await self.executor.fetch(_LANDED_SUSPEND, (run_id, generation, wait_id))
            return to_run(rows[0]) if rows else None

        return await resolved(write, landed)

    async def signal_wait(
        self, run_id: str, name: str, signal: NewSignal, now: datetime
    ) -> SignalOutcome:
        now_s = format_ts(now)
        statements: list[Statement] = [
            (_SIGNAL_TIME_OUT, (run_id, name, now_s, run_id)),
            (
                _SIGNAL_ACCEPT,
                (signal.payload_json, signal.signal_id, now_s, run_id, name, now_s, run_id),
            ),
            (_WAKE, (now_s, now_s, run_id, now_s, run_id, name)),
            (_SIGNAL_READ, (run_id, run_id, name)),
        ]

        async def send() -> SignalOutcome:
            results = await self._run_batch(run_id, statements)
            if not results[3] or results[3][0][-1] is None:
                return SignalOutcome("not-found", None)
            row = results[3][0]
            wait = to_wait(row)
            if results[1]:
                return SignalOutcome("accepted", wait)
            same = row[6] == signal.payload_json
            run_status = RunStatus(row[-1])
            decision = signal_decision(wait, run_status, signal.signal_id, same, now)
            return SignalOutcome(decision, wait)

        try:
            return await send()
        except StorageOutcomeUnknownError:
            # the batch is idempotent: sent again, a first copy that landed shows as
            # a duplicate of this very signal — which was accepted
            outcome = await send()
            if outcome.disposition == "duplicate":
                return SignalOutcome("accepted", outcome.wait)
            return outcome

    async def get_waits(self, run_id: str) -> list[Wait]:
        return [to_wait(row) for row in await self.executor.fetch(_WAITS_OF_RUN, (run_id,))]

    async def get_wait(self, run_id: str, name: str) -> Wait | None:
        rows = await self.executor.fetch(_WAIT_BY_NAME, (run_id, name))
        return to_wait(rows[0]) if rows else None

    async def next_wake_at(self, now: datetime) -> datetime | None:
        rows = await self.executor.fetch(_NEXT_WAKE, (format_ts(now),))
        if not rows or rows[0][0] is None:
            return None
        return parse_ts(rows[0][0])
