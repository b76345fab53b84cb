"""``PostgresStorage``: :class:`~durably.sql.SqlStorage` on PostgreSQL.

Most statements of :mod:`durably.sql.storage` read the same on PostgreSQL (the
executor turns ``?`` into ``$n``); the schema is the reference's version 1 text
itself. What differs is what a database of row locks and READ COMMITTED snapshots
needs where SQLite runs one writer at a time:

- **The claim** (the TypeScript library's algorithm, so Node and Python workers
  exclude each other): in one transaction, the oldest claimable run is locked
  ``FOR UPDATE SKIP LOCKED`` and the transaction-scoped advisory lock of its
  concurrency key taken (``pg_advisory_xact_lock(hashtext(key))``, the reference's
  own lock); a second statement, with a snapshot taken after that lock, checks again
  that no other run of the key holds a live lease and leases the row. Without the
  lock two claims of *different* runs of one key both see "no live lease" in their
  snapshots and both succeed. When the key turns out to be held, the claim is tried
  again without that key. The candidate's id goes from the first statement to the
  second in a transaction-local setting, so the executor can send both in one batch.
- **Writes of several statements** that must see one state: a checkpoint is one
  statement (``UPDATE … RETURNING`` the run, ``INSERT`` the step ``FROM`` it), so the
  step row exists exactly when the fenced update applied; completion and failure
  close the pending waits (and, completing with deletion, delete the steps and logs)
  of exactly the run their own fenced ``UPDATE`` matched; ``delete_run`` and
  ``purge_runs`` delete the steps, logs, labels and waits of exactly the runs their
  own ``DELETE`` matched (a run retried meanwhile keeps them).
- **Attempt records** (retries) are written in a transaction that first locks the
  run row while the lease holds (``SELECT … FOR UPDATE`` with the fence): the record,
  the step row of a checkpoint and the run's move to ``waiting`` apply together, or
  none of them.
- **Batches about one run and its waits** (the wait operations, signals, cancel,
  retry) lock the run row first (``FOR UPDATE``): every transaction that writes a run
  and its waits takes the run's lock before the waits' (completion and failure update
  the run first), so two of them never deadlock, and each statement after the lock
  sees the run as the last writer left it.
- **Fenced inserts** lock the run row (``FOR SHARE``), so their fence is judged on
  the newest version of the run, not on a snapshot older than a takeover.
- **Migrations** take an advisory lock first, so processes migrating at once take
  turns (SQLite's ``BEGIN IMMEDIATE`` does that by itself).
- **Wake-ups**: triggers, retries, schedule fires, released or handed-back leases,
  accepted signals and suspensions that can resume at once send ``NOTIFY`` on the
  storage's channel; an executor with ``listen(channel, callback)`` lets workers
  of other processes subscribe (:meth:`PostgresStorage.subscribe_claimable`).

The executor must run ``batch`` in one READ COMMITTED transaction (PostgreSQL's
default): each statement sees what committed before it started.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

from .._errors import ValidationError
from .._records import (
    EnqueueResult,
    NewAttempt,
    NewRun,
    NewSignal,
    NewStep,
    Run,
    SignalOutcome,
    StepStatus,
)
from .._schedule import ScheduleFire
from .._timefmt import format_ts, parse_ts
from ._attempts import attempt_write
from ._rows import FENCE, RUN_COLUMNS, to_run
from .executor import ConstraintViolation, Executor, Params, Row, SqlValue, Statement
from .storage import (
    _CLAIM_KEY_FREE,
    _COMPLETE,
    _DELETE_RUN,
    _FAIL,
    _INSERT_STEP,
    _PURGE_IDS,
    _TERMINAL,
    SqlStorage,
    _in_list,
)

__all__ = ["DEFAULT_CHANNEL", "PostgresStorage"]

#: The ``NOTIFY`` channel of runs becoming claimable (see ``PostgresStorage(channel=)``).
DEFAULT_CHANNEL = "durably_claimable"

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_TABLES = (
    "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() "
    "AND table_name IN ('durably_schema_versions', 'durably_py_schema_versions')"
)
_COLUMNS = (
    "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
    "AND table_name = '{table}'"
)
# The two-key form lives in another key space than the one-key locks of concurrency
# keys; the first key spells "dura", the second is the schema's.
_MIGRATION_LOCK: Statement = (
    "SELECT 1 FROM (SELECT pg_advisory_xact_lock(1685418593, hashtext(current_schema()))) AS l",
    (),
)

# -- the claim --

# A run of a concurrency key is a candidate only when no older run of its key could be
# claimed by this claim (the rule SQLite keeps by claiming the oldest run first): a
# claim that finds the oldest one locked by another claim skips the whole key instead
# of leasing a younger run of it, so that runs of one key start in creation order.
_OLDEST_OF_KEY = (
    "(c.concurrency_key IS NULL OR NOT EXISTS (SELECT 1 FROM durably_runs AS o "
    "WHERE o.concurrency_key = c.concurrency_key AND o.id <> c.id "
    "AND (o.created_at < c.created_at OR (o.created_at = c.created_at AND o.id < c.id)) "
    "AND (o.status = 'pending' OR (o.status = 'leased' AND o.lease_expires_at IS NOT NULL "
    "AND o.lease_expires_at <= ?) OR (o.status = 'waiting' AND o.wake_at IS NOT NULL "
    "AND o.wake_at <= ?)){older_jobs}))"
)
_CANDIDATES = (
    "WITH p AS MATERIALIZED (SELECT c.id, c.created_at, c.concurrency_key "
    "FROM durably_runs AS c WHERE c.status = 'pending'{jobs}{skip} "
    f"AND {_CLAIM_KEY_FREE} AND {_OLDEST_OF_KEY} "
    "ORDER BY c.created_at, c.id LIMIT 1 FOR UPDATE SKIP LOCKED), "
    "e AS MATERIALIZED (SELECT c.id, c.created_at, c.concurrency_key "
    "FROM durably_runs AS c WHERE c.status = 'leased' AND c.lease_expires_at IS NOT NULL "
    "AND c.lease_expires_at <= ?{jobs}{skip} "
    f"AND {_CLAIM_KEY_FREE} AND {_OLDEST_OF_KEY} "
    "ORDER BY c.created_at, c.id LIMIT 1 FOR UPDATE SKIP LOCKED), "
    "w AS MATERIALIZED (SELECT c.id, c.created_at, c.concurrency_key "
    "FROM durably_runs AS c WHERE c.status = 'waiting' AND c.wake_at IS NOT NULL "
    "AND c.wake_at <= ?{jobs}{skip} "
    f"AND {_CLAIM_KEY_FREE} AND {_OLDEST_OF_KEY} "
    "ORDER BY c.created_at, c.id LIMIT 1 FOR UPDATE SKIP LOCKED) "
)
# Three index walks (pending runs, expired leases, waiting runs due to wake up) that
# skip rows other claims hold (an `OR` of them would sort every pending run on each
# claim); the oldest of their candidates is taken. The outer
# SELECT sees that one row only, so one key is locked and one id remembered.
_CLAIM_LOCK = (
    _CANDIDATES + "SELECT x.id, x.concurrency_key, set_config('durably.claim', x.id, true), "
    "(SELECT 1 FROM (SELECT pg_advisory_xact_lock(hashtext(x.concurrency_key))) AS l) "
    "FROM (SELECT u.id, u.concurrency_key FROM "
    "(SELECT * FROM p UNION ALL SELECT * FROM e UNION ALL SELECT * FROM w) AS u "
    "ORDER BY u.created_at, u.id LIMIT 1) AS x"
)
_CLAIM_LEASE = (
    "UPDATE durably_runs AS c SET status = 'leased', lease_owner = ?, lease_expires_at = ?, "
    "lease_generation = c.lease_generation + 1, started_at = COALESCE(c.started_at, ?), "
    "updated_at = ?, waiting_on_wait_id = NULL, wake_at = NULL "
    "WHERE c.id = current_setting('durably.claim', true) "
    f"AND {_CLAIM_KEY_FREE} RETURNING {RUN_COLUMNS}"
)
#: Keys found held by a concurrent claim before the claim gives up for this round.
_MAX_SKIPPED_KEYS = 16

# -- writes of several statements --

# The run's advance past a completed step (parameters: step.index + 1, now, run id,
# generation): SQLite's MAX(a, b) is GREATEST here.
_ADVANCE = (
    "UPDATE durably_runs SET current_step_index = "
    "GREATEST(current_step_index, CAST(? AS INTEGER)), "
    "completed_step_count = completed_step_count + 1, updated_at = ? "
    f"WHERE id = ? AND {FENCE}"
)
_CHECKPOINT = (
    f"WITH adv AS ({_ADVANCE} RETURNING id) "
    'INSERT INTO durably_steps (id, run_id, name, "index", status, output, error, started_at, '
    "completed_at) SELECT ?, adv.id, ?, CAST(? AS INTEGER), ?, ?, ?, ?, ? FROM adv RETURNING 1"
)
# The run row locked while this generation holds its lease (FOR UPDATE judges the fence
# on the row's newest version, re-read if it changed after the statement began): a row
# back means every fenced statement after it in the transaction applies, none back that
# none does (parameters: run id, generation).
_HOLD = f"SELECT 1 FROM durably_runs WHERE id = ? AND {FENCE} FOR UPDATE"


def _cascade(*tables: str) -> str:
    """CTEs deleting the rows of ``tables`` that belong to the runs of the CTE ``gone``."""
    return "".join(
        f", d{i} AS (DELETE FROM {table} WHERE run_id IN (SELECT id FROM gone))"
        for i, table in enumerate(tables)
    )


_OWNED = (
    "durably_steps",
    "durably_logs",
    "durably_run_labels",
    "durably_waits",
    "durably_step_attempts",
)
# The run's own fenced UPDATE first (its row lock before the waits'), then what goes
# with it, on exactly the run it matched. Parameters: the UPDATE's, then resolved_at.
_CLOSE_WAITS_OF_GONE = (
    ", w AS (UPDATE durably_waits SET status = 'closed', resolved_at = ? "
    "WHERE run_id IN (SELECT id FROM gone) AND status = 'pending')"
)
_FINISH: dict[tuple[str, bool], str] = {
    (update, deleting): f"WITH gone AS ({update} RETURNING id)"
    + _CLOSE_WAITS_OF_GONE
    + (_cascade(*_OWNED[:2]) if deleting else "")
    + " SELECT 1 FROM gone"
    for update in (_COMPLETE, _FAIL)
    for deleting in (False, True)
}
_DELETE = (
    f"WITH gone AS ({_DELETE_RUN[-1]})" + _cascade(*_OWNED) + f" SELECT {RUN_COLUMNS} FROM gone"
)
_PURGE = (
    f"WITH gone AS (DELETE FROM durably_runs WHERE id IN ({_PURGE_IDS}) "
    f"AND status IN {_TERMINAL} RETURNING id)" + _cascade(*_OWNED) + " SELECT count(*) FROM gone"
)
_LOCK_RUN = "SELECT 1 FROM durably_runs WHERE id = ? FOR UPDATE"
# text in the stored format, whatever the driver makes of a timestamptz
_CLOCK = "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"
_NOTIFY = "SELECT 1 FROM (SELECT pg_notify(?, '')) AS n"


class PostgresStorage(SqlStorage):
    """:class:`durably.Storage` on PostgreSQL over an :class:`~durably.sql.Executor`
    that accepts ``?`` placeholders (see the module docstring for what differs from
    SQLite). ``channel`` is the ``NOTIFY`` channel of runs becoming claimable."""

    fence_lock = " FOR SHARE OF r"
    tables_sql = _TABLES
    columns_sql = _COLUMNS
    migration_lock = _MIGRATION_LOCK

    def __init__(
        self, executor: Executor, *, channel: str = DEFAULT_CHANNEL, schema: str | None = None
    ) -> None:
        super().__init__(executor)
        if schema is not None and not _IDENTIFIER.match(schema):
            raise ValidationError(f"Invalid schema name {schema!r}: letters, digits and _ only")
        self.channel = channel
        #: The schema ``migrate()`` creates when it is missing (the executor's
        #: connections must have it first in their ``search_path``).
        self.schema = schema

    async def migrate(self, now: datetime | None = None) -> None:
        """:meth:`SqlStorage.migrate <durably.sql.SqlStorage.migrate>` under an advisory
        lock, after creating :attr:`schema` when it is missing."""
        if self.schema is not None and not await self.executor.fetch(
            "SELECT 1 FROM pg_namespace WHERE nspname = ?", (self.schema,)
        ):
            # two processes creating it at once: one of them meets the other's row
            with contextlib.suppress(ConstraintViolation):
                await self.executor.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
        await super().migrate(now)

    # -- the database's clock --

    async def database_time(self) -> datetime:
        """The server's clock now (``clock_timestamp()``, milliseconds), so that workers
        on machines whose clocks differ judge leases by one clock."""
        rows = await self.executor.fetch(_CLOCK)
        return parse_ts(rows[0][0])

    # -- wake-ups --

    async def _announce(self) -> None:
        """Tell listening workers that a run became claimable (after the commit)."""
        await self.executor.fetch(_NOTIFY, (self.channel,))

    async def subscribe_claimable(
        self, callback: Callable[[], None]
    ) -> Callable[[], Awaitable[None]]:
        """Call ``callback`` whenever any process announces a claimable run; returns
        the coroutine function that stops it. Needs an executor with ``listen``."""
        listen: Any = getattr(self.executor, "listen", None)
        if listen is None:
            raise NotImplementedError("this executor cannot LISTEN")
        stop: Callable[[], Awaitable[None]] = await listen(self.channel, callback)
        return stop

    async def enqueue(self, run: NewRun, *, coalesce: bool = False) -> EnqueueResult:
        """:meth:`durably.Storage.enqueue`; a created run is announced (``NOTIFY``)."""
        result = await super().enqueue(run, coalesce=coalesce)
        if result.disposition == "created":
            await self._announce()
        return result

    async def enqueue_many(self, runs: Sequence[tuple[NewRun, bool]]) -> list[EnqueueResult]:
        """:meth:`durably.Storage.enqueue_many`; created runs are announced once."""
        results = await super().enqueue_many(runs)
        if any(r.disposition == "created" for r in results):
            await self._announce()
        return results

    async def retry_run(self, run_id: str, now: datetime) -> Run | None:
        """:meth:`durably.Storage.retry_run`; the run, pending again, is announced."""
        run = await super().retry_run(run_id, now)
        if run is not None:
            await self._announce()
        return run

    async def fire_schedule(self, fire: ScheduleFire) -> list[EnqueueResult] | None:
        """:meth:`durably.Storage.fire_schedule`; the runs it created are announced."""
        results = await super().fire_schedule(fire)
        if results and any(r.disposition == "created" for r in results):
            await self._announce()
        return results

    async def renew_lease(
        self, run_id: str, generation: int, now: datetime, lease_expires_at: datetime
    ) -> bool:
        """:meth:`durably.Storage.renew_lease`; a lease handed back (renewed to expire
        by ``now``: a worker stopping before its run ended) is announced."""
        renewed = await super().renew_lease(run_id, generation, now, lease_expires_at)
        if renewed and lease_expires_at <= now:
            await self._announce()
        return renewed

    async def suspend_run(
        self, run_id: str, generation: int, wait_id: str, now: datetime
    ) -> Run | None:
        """:meth:`durably.Storage.suspend_run`; a run whose wait had its result
        already (claimable at once) is announced."""
        run = await super().suspend_run(run_id, generation, wait_id, now)
        if run is not None and run.wake_at is not None and run.wake_at <= now:
            await self._announce()
        return run

    async def signal_wait(
        self, run_id: str, name: str, signal: NewSignal, now: datetime
    ) -> SignalOutcome:
        """:meth:`durably.Storage.signal_wait`; an accepted signal (which wakes the run
        suspended on its wait) is announced."""
        outcome = await super().signal_wait(run_id, name, signal, now)
        if outcome.disposition == "accepted":
            await self._announce()
        return outcome

    # -- leases --

    async def claim_next(
        self,
        owner: str,
        now: datetime,
        lease_expires_at: datetime,
        job_names: Sequence[str] | None = None,
    ) -> Run | None:
        """:meth:`durably.Storage.claim_next`, as the reference claims on PostgreSQL
        (see the module docstring): row locks skipped, a lock per concurrency key."""
        if job_names is not None and not job_names:
            return None
        now_s = format_ts(now)
        names: Sequence[str] = job_names or ()
        jobs = f" AND c.job_name IN {_in_list(len(names))}" if job_names else ""
        older_jobs = jobs.replace("c.job_name", "o.job_name")
        lease: Params = (owner, format_ts(lease_expires_at), now_s, now_s, now_s)
        skipped: list[str] = []
        while True:
            skip = ""
            if skipped:
                skip = (
                    " AND (c.concurrency_key IS NULL OR c.concurrency_key NOT IN "
                    f"{_in_list(len(skipped))})"
                )
            # per branch: (due,) job names, skipped keys, key free, oldest of its key
            guards = (*names, *skipped, now_s, now_s, now_s, *names)
            params: list[SqlValue] = [*guards, now_s, *guards, now_s, *guards]
            candidates = _CLAIM_LOCK.format(jobs=jobs, skip=skip, older_jobs=older_jobs)
            found, leased = await self.executor.batch([(candidates, params), (_CLAIM_LEASE, lease)])
            if leased:
                return to_run(leased[0])
            key = found[0][1] if found else None
            if key is None or len(skipped) >= _MAX_SKIPPED_KEYS:
                return None
            # another process leased a run of this key after our snapshot: try the
            # next candidate without it (the reference's loop does the same)
            skipped.append(key)

    async def release_expired_leases(self, now: datetime) -> int:
        """:meth:`durably.Storage.release_expired_leases`, again when a run of the same
        key became pending meanwhile; released runs are announced."""
        for _ in range(3):
            try:
                released = await super().release_expired_leases(now)
            except ConstraintViolation:
                # a run of the same key became pending concurrently (a trigger, a retry):
                # the next statement sees it and leaves this lease expired, as SQLite would
                continue
            if released:
                await self._announce()
            return released
        return 0

    # -- writes of several statements --

    async def _checkpoint(self, insert: Params, advance: Params) -> bool:
        return bool(await self.executor.fetch(_CHECKPOINT, (*advance, *insert[:8])))

    async def _finish(self, update: str, params: Params, now_s: str, *, delete_steps: bool) -> bool:
        return bool(await self.executor.fetch(_FINISH[update, delete_steps], (*params, now_s)))

    async def _run_batch(self, run_id: str, statements: Sequence[Statement]) -> list[list[Row]]:
        results = await self.executor.batch([(_LOCK_RUN, (run_id,)), *statements])
        return results[1:]

    async def _write_attempt(
        self, run_id: str, generation: int, write_attempt: Statement, back_off: Statement | None
    ) -> bool:
        statements = [(_HOLD, (run_id, generation)), write_attempt]
        if back_off is not None:
            statements.append(back_off)
        return bool((await self.executor.batch(statements))[0])

    async def _persist_with_attempt(
        self,
        run_id: str,
        generation: int,
        step: NewStep,
        insert: Params,
        attempt: NewAttempt,
        now_s: str,
    ) -> bool:
        statements: list[Statement] = [
            (_HOLD, (run_id, generation)),
            (_INSERT_STEP, insert),
            attempt_write(run_id, generation, attempt),
        ]
        if step.status is StepStatus.COMPLETED:
            statements.append((_ADVANCE, (step.index + 1, now_s, run_id, generation)))
        return bool((await self.executor.batch(statements))[0])

    async def delete_run(self, run_id: str) -> Run | None:
        """:meth:`durably.Storage.delete_run` as one statement: the steps, logs, labels
        and waits of the run its own ``DELETE`` matched (a run retried meanwhile keeps
        them)."""
        rows = await self.executor.fetch(_DELETE, (run_id,))
        return to_run(rows[0]) if rows else None

    async def purge_runs(self, completed_before: datetime, limit: int) -> int:
        """:meth:`durably.Storage.purge_runs` as one statement (as :meth:`delete_run`)."""
        if limit <= 0:
            return 0
        rows = await self.executor.fetch(_PURGE, (format_ts(completed_before), limit))
        return int(rows[0][0])
