"""``SqlStorage``: every :class:`durably.Storage` operation as SQLite-dialect SQL.

Each operation is ONE statement or ONE atomic batch (see :mod:`durably.sql.executor`),
so the same code runs on a local file and over remote libSQL, where a call is one
request. The guarantees live in the statements themselves (docs/schema.md):

- the claim is a single ``UPDATE … WHERE id = (SELECT … LIMIT 1) RETURNING``;
- every fenced write carries ``status = 'leased' AND lease_generation = ?``; an
  ``INSERT`` of a step or log row is an ``INSERT … SELECT … FROM durably_runs WHERE
  <guard>``, so it writes nothing when the guard fails;
- the statements of a batch that must apply together carry the same guard and are
  evaluated before any of them changes the run row (the run's own update comes last);
- a trigger inserts first: ``ON CONFLICT`` on the idempotency index (and, when
  coalescing, on the pending-concurrency index) does nothing, and reads in the same
  transaction say which run stands for the request; a pending-concurrency violation
  without coalescing fails the whole batch and becomes ``ConflictError``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from .._errors import ConflictError, StorageOutcomeUnknownError
from .._records import (
    EnqueueResult,
    LogRecord,
    NewAttempt,
    NewLog,
    NewRun,
    NewStep,
    Progress,
    Run,
    RunFilter,
    RunStatus,
    StepRecord,
    StepStatus,
    progress_data,
)
from .._timefmt import format_ts, parse_ts
from ..lifecycle import CANCELLABLE_STATUSES, RETRYABLE_STATUSES, TERMINAL_STATUSES
from ._attempts import DELETE_ATTEMPTS, SqlAttempts, attempt_write
from ._group import GroupCommit
from ._outcome import resolve_lost, resolved
from ._rows import (
    FENCE,
    HELD,
    LOG_COLUMNS,
    RUN_COLUMNS,
    STEP_COLUMNS,
    encode_json,
    status_list,
    to_log,
    to_run,
    to_run_status,
    to_step,
)
from ._schedules import ScheduleSql
from ._waits import END_WAITS, REOPEN_WAITS, SqlWaits
from .executor import (
    ConstraintViolation,
    Executor,
    Params,
    Row,
    SqlValue,
    Statement,
    unstorable_text,
)
from .schema import COLUMNS_SQL, PY_MIGRATIONS, TABLES_SQL, _versions
from .schema import migrate as _migrate

__all__ = ["SqlStorage"]

_TERMINAL = status_list(TERMINAL_STATUSES)

# -- trigger --

_INSERT_RUN = (
    "INSERT INTO durably_runs (id, job_name, input, status, idempotency_key, concurrency_key, "
    "labels, current_step_index, completed_step_count, lease_generation, created_at, updated_at) "
    "VALUES (?, ?, ?, 'pending', ?, ?, ?, 0, 0, 0, ?, ?) "
)
# Without coalescing only the idempotency index is a no-op: a clash on the pending-
# concurrency index fails the statement (→ ConflictError). Coalescing, any unique clash
# is a no-op (written without a target, the one form SQLite and PostgreSQL share), and
# the reads that follow say which run stands for the request.
_INSERT_RUN_PLAIN = (
    _INSERT_RUN + f"ON CONFLICT (job_name, idempotency_key) DO NOTHING RETURNING {RUN_COLUMNS}"
)
_INSERT_RUN_COALESCE = _INSERT_RUN + f"ON CONFLICT DO NOTHING RETURNING {RUN_COLUMNS}"
_SELECT_IDEMPOTENT = (
    f"SELECT {RUN_COLUMNS} FROM durably_runs WHERE job_name = ? AND idempotency_key = ?"
)
_SELECT_PENDING = (
    f"SELECT {RUN_COLUMNS} FROM durably_runs WHERE job_name = ? AND concurrency_key = ? "
    "AND status = 'pending' ORDER BY created_at, id LIMIT 1"
)

# -- leases --

_CLAIM_KEY_FREE = (
    "(c.concurrency_key IS NULL OR NOT EXISTS (SELECT 1 FROM durably_runs AS a "
    "WHERE a.concurrency_key = c.concurrency_key AND a.id <> c.id AND a.status = 'leased' "
    "AND a.lease_expires_at IS NOT NULL AND a.lease_expires_at > ?))"
)
# The oldest claimable run is the oldest of the oldest claimable pending run, expired
# lease and waiting run due to wake up. Written as three ordered LIMIT 1 subqueries (not
# one `status = 'pending' OR …`), each walks an index and stops at the first match
# instead of sorting every pending run on every claim.
_CLAIM = (
    "UPDATE durably_runs SET status = 'leased', lease_owner = ?, lease_expires_at = ?, "
    "lease_generation = lease_generation + 1, started_at = COALESCE(started_at, ?), "
    "updated_at = ?, waiting_on_wait_id = NULL, wake_at = NULL "
    "WHERE id = (SELECT id FROM ("
    "SELECT * FROM (SELECT c.id, c.created_at FROM durably_runs AS c "
    "WHERE c.status = 'pending'{jobs} "
    f"AND {_CLAIM_KEY_FREE} ORDER BY c.created_at, c.id LIMIT 1) "
    "UNION ALL "
    "SELECT * FROM (SELECT c.id, c.created_at FROM durably_runs AS c "
    "WHERE c.status = 'leased' AND c.lease_expires_at IS NOT NULL "
    "AND c.lease_expires_at <= ?{jobs} "
    f"AND {_CLAIM_KEY_FREE} ORDER BY c.created_at, c.id LIMIT 1) "
    "UNION ALL "
    "SELECT * FROM (SELECT c.id, c.created_at FROM durably_runs AS c "
    "WHERE c.status = 'waiting' AND c.wake_at IS NOT NULL AND c.wake_at <= ?{jobs} "
    f"AND {_CLAIM_KEY_FREE} ORDER BY c.created_at, c.id LIMIT 1)"
    f") ORDER BY created_at, id LIMIT 1) RETURNING {RUN_COLUMNS}"
)
_RENEW = (
    "UPDATE durably_runs SET lease_expires_at = ?, updated_at = ? "
    f"WHERE id = ? AND {FENCE} AND lease_expires_at > ?"
)
# The oldest expired lease of a (job, concurrency key) goes back to pending, unless that
# key already has a pending run (the partial unique index allows one).
_RELEASE = (
    "UPDATE durably_runs SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL, "
    "updated_at = ? "
    "WHERE status = 'leased' AND lease_expires_at IS NOT NULL AND lease_expires_at <= ? "
    "AND (concurrency_key IS NULL OR NOT EXISTS (SELECT 1 FROM durably_runs AS o "
    "WHERE o.job_name = durably_runs.job_name AND o.concurrency_key = durably_runs.concurrency_key "
    "AND o.id <> durably_runs.id AND (o.status = 'pending' OR (o.status = 'leased' "
    "AND o.lease_expires_at IS NOT NULL AND o.lease_expires_at <= ? "
    "AND (o.created_at < durably_runs.created_at OR (o.created_at = durably_runs.created_at "
    "AND o.id < durably_runs.id))))))"
)

# -- fenced writes --

# (CAST: a parameter in a SELECT list has no column to take its type from on a server
# database; on SQLite it is a no-op.)
_INSERT_STEP = (
    'INSERT INTO durably_steps (id, run_id, name, "index", status, output, error, '
    "started_at, completed_at) SELECT ?, r.id, ?, CAST(? AS INTEGER), ?, ?, ?, ?, ? "
    f"FROM durably_runs AS r WHERE r.id = ? AND {FENCE}"
)
_ADVANCE = (
    "UPDATE durably_runs SET current_step_index = MAX(current_step_index, ?), "
    f"completed_step_count = completed_step_count + 1, updated_at = ? WHERE id = ? AND {FENCE}"
)
_PROGRESS = f"UPDATE durably_runs SET progress = ?, updated_at = ? WHERE id = ? AND {FENCE}"
_CHANGES = "SELECT changes()"
_HOLDS = f"SELECT 1 FROM durably_runs WHERE id = ? AND {FENCE}"
# After a lost answer (durably/sql/_outcome.py), one read: did the write land (the
# row it inserted exists, or the run is in the state it set under this generation),
# and does this generation still hold the lease (then send it again)? The fence is
# the writes' own FENCE.
_LANDED_IN_STATUS = (
    f"SELECT status = ? AND lease_generation = ?, {FENCE} FROM durably_runs WHERE id = ?"
)
_LANDED_RENEWAL = (
    f"SELECT {FENCE} AND lease_expires_at = ?, {FENCE} AND lease_expires_at > ? "
    "FROM durably_runs WHERE id = ?"
)
_LANDED_STEP = (
    "SELECT EXISTS (SELECT 1 FROM durably_steps WHERE id = ?), "
    f"{FENCE} FROM durably_runs WHERE id = ?"
)
_LANDED_LOG = (
    f"SELECT EXISTS (SELECT 1 FROM durably_logs WHERE id = ?), {FENCE} FROM durably_runs "
    "WHERE id = ?"
)
_RUNS_BY_ID = f"SELECT {RUN_COLUMNS} FROM durably_runs WHERE id IN "
_LOG_CHUNK = 100
#: ``LIMIT`` when only an offset is given (SQLite takes -1, PostgreSQL no negative number).
_NO_LIMIT = 2**63 - 1
_COMPLETE = (
    "UPDATE durably_runs SET status = 'completed', output = ?, error = NULL, "
    "lease_owner = NULL, lease_expires_at = NULL, completed_at = ?, updated_at = ? "
    f"WHERE id = ? AND {FENCE}"
)
_FAIL = (
    "UPDATE durably_runs SET status = 'failed', error = ?, lease_owner = NULL, "
    "lease_expires_at = NULL, completed_at = ?, updated_at = ? "
    f"WHERE id = ? AND {FENCE}"
)
# The database server's clock, in the timestamp format (SqlStorage.database_time)
_DATABASE_TIME = "SELECT strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
_DELETE_STEPS_IF_HELD = f"DELETE FROM durably_steps WHERE run_id = ? AND {HELD}"
_DELETE_LOGS_IF_HELD = f"DELETE FROM durably_logs WHERE run_id = ? AND {HELD}"

# -- control --

_CANCELLABLE = f"status IN {status_list(CANCELLABLE_STATUSES)}"
_CANCEL = (
    "UPDATE durably_runs SET status = 'cancelled', lease_owner = NULL, lease_expires_at = NULL, "
    "waiting_on_wait_id = NULL, wake_at = NULL, "
    f"completed_at = ?, updated_at = ? WHERE id = ? AND {_CANCELLABLE} "
    f"RETURNING {RUN_COLUMNS}"
)
_CANCEL_WAITS = END_WAITS.format(
    guard=f"EXISTS (SELECT 1 FROM durably_runs WHERE id = ? AND {_CANCELLABLE})"
)
_CLOSE_WAITS = END_WAITS.format(guard=HELD)
_RETRY = (
    "UPDATE durably_runs SET status = 'pending', output = NULL, error = NULL, "
    "lease_owner = NULL, lease_expires_at = NULL, started_at = NULL, completed_at = NULL, "
    "updated_at = ?, attempt = 1 "
    f"WHERE id = ? AND status IN {status_list(RETRYABLE_STATUSES)} RETURNING {RUN_COLUMNS}"
)
_IS_TERMINAL = f"EXISTS (SELECT 1 FROM durably_runs WHERE id = ? AND status IN {_TERMINAL})"
_DELETE_RUN: tuple[str, ...] = (
    f"DELETE FROM durably_steps WHERE run_id = ? AND {_IS_TERMINAL}",
    f"DELETE FROM durably_logs WHERE run_id = ? AND {_IS_TERMINAL}",
    f"DELETE FROM durably_run_labels WHERE run_id = ? AND {_IS_TERMINAL}",
    f"DELETE FROM durably_waits WHERE run_id = ? AND {_IS_TERMINAL}",
    DELETE_ATTEMPTS.format(runs=f"= ? AND {_IS_TERMINAL}"),
    f"DELETE FROM durably_runs WHERE id = ? AND status IN {_TERMINAL} RETURNING {RUN_COLUMNS}",
)
_PURGE_IDS = (
    f"SELECT id FROM durably_runs WHERE status IN {_TERMINAL} AND completed_at IS NOT NULL "
    "AND completed_at < ? ORDER BY completed_at, id LIMIT ?"
)
_PURGE: tuple[str, ...] = (
    f"DELETE FROM durably_steps WHERE run_id IN ({_PURGE_IDS})",
    f"DELETE FROM durably_logs WHERE run_id IN ({_PURGE_IDS})",
    f"DELETE FROM durably_run_labels WHERE run_id IN ({_PURGE_IDS})",
    f"DELETE FROM durably_waits WHERE run_id IN ({_PURGE_IDS})",
    DELETE_ATTEMPTS.format(runs=f"IN ({_PURGE_IDS})"),
    f"DELETE FROM durably_runs WHERE id IN ({_PURGE_IDS}) RETURNING id",
)

# -- reads --

_GET_RUN = f"SELECT {RUN_COLUMNS} FROM durably_runs WHERE id = ?"
_GET_STEPS = (
    f'SELECT {STEP_COLUMNS} FROM durably_steps WHERE run_id = ? ORDER BY "index", started_at, id'
)
_GET_COMPLETED_STEPS = (
    f"SELECT {STEP_COLUMNS} FROM durably_steps WHERE run_id = ? AND status = 'completed' "
    'ORDER BY "index", started_at, id'
)
_GET_LOGS = f"SELECT {LOG_COLUMNS} FROM durably_logs WHERE run_id = ? ORDER BY created_at, id"


def _label_match(count: int) -> str:
    """Runs carrying all of ``count`` labels (``count`` key and value parameters
    follow): one subquery whatever the count, counting the run's labels among the
    pairs — a run has one row per key. One ``EXISTS`` per label made a statement
    of one more table (a libSQL server allows 63) and one more level of ``AND``
    (SQLite's expression depth ran out at ~500) per label."""
    pairs = ", ".join(["(?, ?)"] * count)
    return (
        "(SELECT count(*) FROM durably_run_labels AS l WHERE l.run_id = durably_runs.id "
        f"AND (l.key, l.value) IN (VALUES {pairs})) = {count}"
    )


def _json_text(value: Any) -> str:
    """Compact JSON of a value holding user text (labels, progress): text that is not
    valid Unicode is a ValidationError, as every executor reports it for parameters."""
    try:
        return encode_json(value).decode()
    except UnicodeEncodeError as exc:
        raise unstorable_text(exc) from exc


def progress_json(progress: Progress) -> str:
    """The reference's progress JSON: ``{"current":n,"total":n,"message":s}``, unset
    ``total``/``message`` keys omitted."""
    return _json_text(progress_data(progress))


def _in_list(count: int) -> str:
    return "(" + ", ".join("?" * count) + ")"


def _claim_statement(
    owner: str, now: datetime, lease_expires_at: datetime, job_names: Sequence[str] = ()
) -> Statement:
    """The claim of the next claimable run (of ``job_names``, when given): one
    statement, its row ``RETURNING``. (Also sent as is by ``bench/``.)"""
    now_s = format_ts(now)
    jobs = f" AND c.job_name IN {_in_list(len(job_names))}" if job_names else ""
    params: list[SqlValue] = [owner, format_ts(lease_expires_at), now_s, now_s]
    params += (*job_names, now_s)  # pending: job names, key guard
    params += (now_s, *job_names, now_s)  # expired leases: expiry, job names, key guard
    params += (now_s, *job_names, now_s)  # waiting runs: wake-up, job names, key guard
    return _CLAIM.format(jobs=jobs), params


def _checkpoint_statements(insert: Params, advance: Params) -> list[Statement]:
    """A checkpoint: a completed step row (``_INSERT_STEP``'s parameters) and the run
    advanced (``step.index + 1, now, run_id, generation``), both fenced, then the
    UPDATE's ``changes()``. No RETURNING (it makes SQLite build a temporary table:
    ~10 µs of a ~50 µs checkpoint): the INSERT and the UPDATE carry the same fence in
    one transaction, so the UPDATE's changes() says whether both were written."""
    return [(_INSERT_STEP, insert), (_ADVANCE, advance), (_CHANGES, ())]


def _finish_statements(
    update: str, params: Params, now_s: str, *, delete_steps: bool
) -> list[Statement]:
    """A run's fenced final ``update`` (``_COMPLETE`` or ``_FAIL``; its parameters end
    with the run id and generation) with its pending waits closed and, with
    ``delete_steps``, its steps and logs deleted; the last statement returns a row
    when the update was written."""
    guard: Params = params[-2:]
    statements: list[Statement] = [(_CLOSE_WAITS, ("closed", now_s, guard[0], *guard))]
    if delete_steps:
        held = (guard[0], *guard)
        statements += [(_DELETE_STEPS_IF_HELD, held), (_DELETE_LOGS_IF_HELD, held)]
    statements.append((update + " RETURNING 1", params))
    return statements


def _pending_conflict(run: NewRun, pending_id: str | None) -> ConflictError:
    which = f" ({pending_id})" if pending_id else ""
    return ConflictError(
        f"Job {run.job_name!r} already has a pending run{which} with concurrency key "
        f"{run.concurrency_key!r}; wait for it to start, or trigger with "
        'coalesce="skip" to get that pending run back instead',
        run_id=pending_id,
        status=RunStatus.PENDING.value,
    )


def _where(query: RunFilter) -> tuple[str, list[SqlValue]]:
    """The ``WHERE`` clause (with its leading space, or empty) and parameters of a
    run query's statuses, job names and labels."""
    where: list[str] = []
    params: list[SqlValue] = []
    if query.statuses is not None:
        statuses = [RunStatus(s).value for s in query.statuses]
        where.append(f"status IN {_in_list(len(statuses))}" if statuses else "FALSE")
        params += statuses
    if query.job_names is not None:
        names = query.job_names
        where.append(f"job_name IN {_in_list(len(names))}" if names else "FALSE")
        params += names
    if query.labels:
        where.append(_label_match(len(query.labels)))
        for key, value in query.labels.items():
            params += (key, value)
    return (" WHERE " + " AND ".join(where) if where else ""), params


class SqlStorage(SqlWaits, SqlAttempts, ScheduleSql):
    """:class:`durably.Storage` over an :class:`~durably.sql.Executor` (SQLite dialect).

    The durable-wait operations are in :mod:`durably.sql._waits`, the retry
    operations in :mod:`durably.sql._attempts`, the schedule operations in
    :mod:`durably.sql._schedules`.

    A subclass for another dialect (:class:`durably.sql.PostgresStorage`) keeps every
    statement that both databases read alike and replaces the few that a database with
    row locks and per-statement snapshots must write otherwise: the claim, the
    multi-statement writes (``_checkpoint``, ``_complete``, ``_fail``, ``_run_batch``,
    deletes), the schema bookkeeping (``tables_sql``, ``columns_sql``,
    ``migration_lock``) and ``fence_lock``.
    """

    #: Appended to the ``SELECT … FROM durably_runs AS r WHERE <fence>`` of a fenced step
    #: or log insert. SQLite runs one writer at a time; a database where a concurrent
    #: claim can commit after the insert read the run locks the row (PostgreSQL:
    #: ``FOR SHARE OF r``), so the fence is judged on its newest version.
    fence_lock = ""
    #: The existing tables among the version tables (see :func:`durably.sql.migrate`).
    tables_sql = TABLES_SQL
    #: The names of a table's columns (see :func:`durably.sql.migrate`).
    columns_sql = COLUMNS_SQL
    #: A statement run first in every migration batch (PostgreSQL: a lock that makes
    #: concurrent migrations take turns; SQLite's ``BEGIN IMMEDIATE`` already does).
    migration_lock: Statement | None = None

    def __init__(self, executor: Executor) -> None:
        self.executor = executor
        #: checkpoints and completions of concurrent runs, written together
        #: (durably/sql/_group.py)
        self._group = GroupCommit(executor)

    async def migrate(self, now: datetime | None = None) -> None:
        applied_at = format_ts(now or datetime.now(UTC))
        # Migrating is idempotent (and safe against a racing process): after a lost
        # answer, run it again. Each migration is its own batch, so each may lose one.
        for attempt in range(len(PY_MIGRATIONS) + 2):
            try:
                await _migrate(
                    self.executor,
                    applied_at,
                    tables_sql=self.tables_sql,
                    columns_sql=self.columns_sql,
                    lock=self.migration_lock,
                )
                return
            except StorageOutcomeUnknownError:
                if attempt == len(PY_MIGRATIONS) + 1:
                    raise

    async def schema_versions(self) -> tuple[int, int | None]:
        """The database's schema versions: (the reference's, Python's or ``None`` when
        its table does not exist yet); ``(0, None)`` for an empty database."""
        return await _versions(self.executor, self.tables_sql)

    async def close(self) -> None:
        await self.executor.close()

    # -- optional capabilities, as far as the executor offers them --

    async def database_time(self) -> datetime | None:
        """:meth:`durably.SupportsDatabaseTime.database_time`: the server's clock when
        the executor talks to one (``remote = True``), else ``None`` (a local file is
        read on this machine's clock)."""
        if not getattr(self.executor, "remote", False):
            return None
        rows = await self.executor.fetch(_DATABASE_TIME)
        return parse_ts(rows[0][0])

    async def check_identity(self) -> None:
        """:meth:`durably.SupportsIdentityCheck.check_identity`: the executor's
        ``check_identity()`` when it has one (a local file), else nothing to check."""
        check = getattr(self.executor, "check_identity", None)
        if check is not None:
            await check()

    # -- triggering --

    @staticmethod
    def _enqueue_statements(run: NewRun, coalesce: bool) -> list[Statement]:
        coalescing = coalesce and run.concurrency_key is not None
        created = format_ts(run.created_at)
        statements: list[Statement] = [
            (
                _INSERT_RUN_COALESCE if coalescing else _INSERT_RUN_PLAIN,
                (
                    run.id,
                    run.job_name,
                    run.input_json,
                    run.idempotency_key,
                    run.concurrency_key,
                    _json_text(run.labels),
                    created,
                    created,
                ),
            )
        ]
        if run.labels:
            # Only when the run row was inserted by this statement group: a fresh id
            # exists only if the INSERT above applied.
            values = ", ".join(["(?, ?)"] * len(run.labels))
            params: list[SqlValue] = [run.id]
            for key, value in run.labels.items():
                params += (key, value)
            params.append(run.id)
            statements.append(
                (
                    "INSERT INTO durably_run_labels (run_id, key, value) "
                    f"SELECT ?, v.column1, v.column2 FROM (VALUES {values}) AS v "
                    "WHERE EXISTS (SELECT 1 FROM durably_runs WHERE id = ?)",
                    params,
                )
            )
        if run.idempotency_key is not None:
            statements.append((_SELECT_IDEMPOTENT, (run.job_name, run.idempotency_key)))
        if coalescing:
            statements.append((_SELECT_PENDING, (run.job_name, run.concurrency_key)))
        return statements

    @staticmethod
    def _enqueue_result(run: NewRun, coalesce: bool, results: list[list[Row]]) -> EnqueueResult:
        inserted = results[0]
        if inserted:
            return EnqueueResult(to_run(inserted[0]), "created")
        pos = 2 if run.labels else 1
        if run.idempotency_key is not None:
            found = results[pos]
            pos += 1
            if found:
                return EnqueueResult(to_run(found[0]), "idempotent")
        if coalesce and run.concurrency_key is not None and results[pos]:
            return EnqueueResult(to_run(results[pos][0]), "coalesced")
        raise ConflictError(  # pragma: no cover - the conflict targets above cover every case
            f"Run {run.id} of job {run.job_name!r} was neither inserted nor matched an "
            "existing run",
            run_id=run.id,
        )

    async def _enqueue_all(self, items: Sequence[tuple[NewRun, bool]]) -> list[EnqueueResult]:
        groups = [self._enqueue_statements(run, coalesce) for run, coalesce in items]
        statements = [statement for group in groups for statement in group]
        try:
            if len(statements) == 1:
                results = [await self.executor.fetch(*statements[0])]
            else:
                results = await self.executor.batch(statements)
        except ConstraintViolation as exc:
            raise await self._enqueue_conflict(items, exc) from exc
        out: list[EnqueueResult] = []
        pos = 0
        for (run, coalesce), group in zip(items, groups, strict=True):
            out.append(self._enqueue_result(run, coalesce, results[pos : pos + len(group)]))
            pos += len(group)
        return out

    async def _enqueue_conflict(
        self, items: Sequence[tuple[NewRun, bool]], exc: ConstraintViolation
    ) -> Exception:
        if exc.table == "durably_runs" and "concurrency_key" in exc.columns:
            # Name the run that clashed: with a pending run already stored, or with an
            # earlier item of the same batch.
            seen: dict[tuple[str, str], str] = {}
            for run, _ in items:
                if run.concurrency_key is None:
                    continue
                key = (run.job_name, run.concurrency_key)
                if key in seen:
                    return _pending_conflict(run, seen[key])
                seen[key] = run.id
                found = await self.executor.fetch(_SELECT_PENDING, key)
                if found:
                    return _pending_conflict(run, found[0][0])
            return ConflictError(f"A pending run already exists for a concurrency key ({exc})")
        if exc.table == "durably_runs" and exc.columns == ("id",):
            return ConflictError(f"A run with this id already exists ({exc})")
        return exc

    async def enqueue(self, run: NewRun, *, coalesce: bool = False) -> EnqueueResult:
        [result] = await self._enqueue_checked([(run, coalesce)])
        return result

    async def enqueue_many(self, runs: Sequence[tuple[NewRun, bool]]) -> list[EnqueueResult]:
        if not runs:
            return []
        return await self._enqueue_checked(runs)

    async def _enqueue_checked(self, items: Sequence[tuple[NewRun, bool]]) -> list[EnqueueResult]:
        """:meth:`_enqueue_all`, resolving a lost answer by the ids chosen for the runs
        (the batch is all or nothing: all of them are stored, or none)."""

        async def landed() -> list[EnqueueResult] | None:
            found = await self._runs_by_id([run.id for run, _ in items])
            if len(found) < len(items):
                return None
            return [EnqueueResult(found[run.id], "created") for run, _ in items]

        results = await resolved(lambda: self._enqueue_all(items), landed)
        # a second copy meets the first as an idempotent or coalesced match: ours
        return [
            EnqueueResult(result.run, "created") if result.run.id == run.id else result
            for (run, _), result in zip(items, results, strict=True)
        ]

    async def _runs_by_id(self, ids: Sequence[str]) -> dict[str, Run]:
        found: dict[str, Run] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            for row in await self.executor.fetch(_RUNS_BY_ID + _in_list(len(chunk)), chunk):
                run = to_run(row)
                found[run.id] = run
        return found

    async def _landed(self, sql: str, params: Params) -> bool | None:
        """After a lost answer, by ``sql`` (columns: did the write land; does the
        writer still hold the lease): ``True`` if it landed, ``None`` if the lease is
        still held (not landed: send again), ``False`` if the lease is gone."""
        rows = await self.executor.fetch(sql, params)
        if not rows:
            return False
        if rows[0][0]:
            return True
        return None if rows[0][1] else False

    async def _lease_state(
        self, run_id: str, generation: int, done: str | None = None
    ) -> bool | None:
        """:meth:`_landed` for a write that sets status ``done`` (``None``: a write
        that sets none, e.g. progress, never shows as landed: sent again while held)."""
        params = (done or "", generation, generation, run_id)
        return await self._landed(_LANDED_IN_STATUS, params)

    # -- reading --

    async def get_run(self, run_id: str) -> Run | None:
        rows = await self.executor.fetch(_GET_RUN, (run_id,))
        return to_run(rows[0]) if rows else None

    async def get_runs(self, query: RunFilter) -> list[Run]:
        where, params = _where(query)
        sql = f"SELECT {RUN_COLUMNS} FROM durably_runs{where} ORDER BY created_at DESC, id DESC"
        if query.limit is not None or query.offset:
            sql += " LIMIT ? OFFSET ?"
            limit = _NO_LIMIT if query.limit is None else max(query.limit, 0)
            params += (limit, max(query.offset, 0))
        return [to_run(row) for row in await self.executor.fetch(sql, params)]

    async def count_runs(self, query: RunFilter) -> dict[RunStatus, int]:
        where, params = _where(query)
        sql = f"SELECT status, COUNT(*) FROM durably_runs{where} GROUP BY status"
        return {
            to_run_status(row[0]): int(row[1]) for row in await self.executor.fetch(sql, params)
        }

    async def get_steps(self, run_id: str) -> list[StepRecord]:
        return [to_step(row) for row in await self.executor.fetch(_GET_STEPS, (run_id,))]

    async def get_completed_steps(self, run_id: str) -> list[StepRecord]:
        return [to_step(row) for row in await self.executor.fetch(_GET_COMPLETED_STEPS, (run_id,))]

    async def get_logs(self, run_id: str) -> list[LogRecord]:
        return [to_log(row) for row in await self.executor.fetch(_GET_LOGS, (run_id,))]

    # -- leases --

    async def claim_next(
        self,
        owner: str,
        now: datetime,
        lease_expires_at: datetime,
        job_names: Sequence[str] | None = None,
    ) -> Run | None:
        if job_names is not None and not job_names:
            return None
        sql, params = _claim_statement(owner, now, lease_expires_at, job_names or ())
        rows = await self.executor.fetch(sql, params)
        return to_run(rows[0]) if rows else None

    async def renew_lease(
        self, run_id: str, generation: int, now: datetime, lease_expires_at: datetime
    ) -> bool:
        now_s = format_ts(now)
        expires_s = format_ts(lease_expires_at)
        params = (expires_s, now_s, run_id, generation, now_s)

        async def write() -> bool:
            return await self.executor.execute(_RENEW, params) > 0

        async def landed() -> bool | None:
            params = (generation, expires_s, generation, now_s, run_id)
            return await self._landed(_LANDED_RENEWAL, params)

        return await resolved(write, landed)

    async def release_expired_leases(self, now: datetime) -> int:
        now_s = format_ts(now)
        return await self.executor.execute(_RELEASE, (now_s, now_s, now_s))

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
        try:
            return await self._persist_step(run_id, generation, step, now, attempt)
        except StorageOutcomeUnknownError:
            pass

        async def landed() -> bool | None:
            # one batch: the step row there means its attempt record is too
            return await self._landed(_LANDED_STEP, (step.id, generation, run_id))

        return await resolve_lost(
            lambda: self._persist_step(run_id, generation, step, now, attempt), landed
        )

    async def _persist_step(
        self,
        run_id: str,
        generation: int,
        step: NewStep,
        now: datetime,
        attempt: NewAttempt | None = None,
    ) -> bool:
        now_s = format_ts(now)
        # a step's instants are often the write's own (or of its millisecond): one
        # formatting instead of three
        started = step.started_at
        started_s = now_s if started == now else format_ts(started)
        completed = step.completed_at
        completed_s = (
            None if completed is None else now_s if completed == now else format_ts(completed)
        )
        insert: Params = (
            step.id,
            step.name,
            step.index,
            step.status.value,
            step.output_json,
            step.error,
            started_s,
            completed_s,
            run_id,
            generation,
        )
        try:
            if attempt is not None:
                return await self._persist_with_attempt(
                    run_id, generation, step, insert, attempt, now_s
                )
            if step.status is not StepStatus.COMPLETED:
                sql = _INSERT_STEP + self.fence_lock
                return await self.executor.execute(sql, insert) > 0
            return await self._checkpoint(insert, (step.index + 1, now_s, run_id, generation))
        except ConstraintViolation as exc:
            if exc.table == "durably_steps" and "name" in exc.columns:
                raise ConflictError(
                    f"Run {run_id} already has a completed step named {step.name!r}; a "
                    "completed step is replayed, never written twice",
                    run_id=run_id,
                    status=RunStatus.LEASED.value,
                ) from exc
            raise

    async def _checkpoint(self, insert: Params, advance: Params) -> bool:
        """Insert a completed step row and advance the run, both fenced, atomically
        (``_checkpoint_statements``). Whether both were written."""
        results = await self._group.write(_checkpoint_statements(insert, advance))
        return bool(results[2] and results[2][0][0])

    async def _persist_with_attempt(
        self,
        run_id: str,
        generation: int,
        step: NewStep,
        insert: Params,
        attempt: NewAttempt,
        now_s: str,
    ) -> bool:
        """The step row and the attempt's record in one batch. Every statement carries
        the fence, evaluated on a run row none of them changes but the last."""
        statements: list[Statement] = [
            (_INSERT_STEP, insert),
            attempt_write(run_id, generation, attempt),
        ]
        if step.status is StepStatus.COMPLETED:
            statements.append((_ADVANCE, (step.index + 1, now_s, run_id, generation)))
        statements.append((_CHANGES, ()))
        results = await self._group.write(statements)
        return bool(results[-1] and results[-1][0][0])

    async def update_progress(
        self, run_id: str, generation: int, progress: Progress, now: datetime
    ) -> bool:
        params = (progress_json(progress), format_ts(now), run_id, generation)

        async def write() -> bool:
            return await self.executor.execute(_PROGRESS, params) > 0

        try:
            return await write()
        except StorageOutcomeUnknownError:
            pass
        # writing the same progress twice is harmless: send again while the lease holds
        return await resolve_lost(write, lambda: self._lease_state(run_id, generation))

    async def append_logs(
        self, run_id: str, generation: int, logs: Sequence[NewLog], now: datetime
    ) -> bool:
        try:
            return await self._append_logs(run_id, generation, logs)
        except StorageOutcomeUnknownError:
            pass

        async def landed() -> bool | None:
            if not logs:
                return await self._lease_state(run_id, generation)
            return await self._landed(_LANDED_LOG, (logs[0].id, generation, run_id))

        return await resolve_lost(lambda: self._append_logs(run_id, generation, logs), landed)

    async def _append_logs(self, run_id: str, generation: int, logs: Sequence[NewLog]) -> bool:
        if not logs:
            return bool(await self.executor.fetch(_HOLDS, (run_id, generation)))
        statements: list[Statement] = []
        for start in range(0, len(logs), _LOG_CHUNK):
            chunk = logs[start : start + _LOG_CHUNK]
            params: list[SqlValue] = []
            for log in chunk:
                params += (
                    log.id,
                    log.step_name,
                    log.level,
                    log.message,
                    log.data_json,
                    format_ts(log.created_at),
                )
            params += (run_id, generation)
            values = ", ".join(["(?, ?, ?, ?, ?, ?)"] * len(chunk))
            statements.append(
                (
                    f"INSERT INTO durably_logs ({LOG_COLUMNS}) "
                    "SELECT v.column1, r.id, v.column2, v.column3, v.column4, v.column5, "
                    f"v.column6 FROM durably_runs AS r, (VALUES {values}) AS v "
                    "WHERE r.id = ? AND r.status = 'leased' AND r.lease_generation = ?"
                    f"{self.fence_lock} RETURNING 1",
                    params,
                )
            )
        if len(statements) == 1:
            return bool(await self.executor.fetch(*statements[0]))
        results = await self.executor.batch(statements)
        return bool(results[0])

    async def complete_run(
        self,
        run_id: str,
        generation: int,
        output_json: str,
        now: datetime,
        *,
        delete_steps: bool,
    ) -> bool:
        now_s = format_ts(now)
        complete: Params = (output_json, now_s, now_s, run_id, generation)

        async def write() -> bool:
            return await self._finish(_COMPLETE, complete, now_s, delete_steps=delete_steps)

        done = RunStatus.COMPLETED.value
        return await resolved(write, lambda: self._lease_state(run_id, generation, done))

    async def fail_run(self, run_id: str, generation: int, error: str, now: datetime) -> bool:
        now_s = format_ts(now)
        params: Params = (error, now_s, now_s, run_id, generation)

        async def write() -> bool:
            return await self._finish(_FAIL, params, now_s, delete_steps=False)

        done = RunStatus.FAILED.value
        return await resolved(write, lambda: self._lease_state(run_id, generation, done))

    async def _finish(self, update: str, params: Params, now_s: str, *, delete_steps: bool) -> bool:
        """A run's final write (``_finish_statements``): atomically, and only while the
        lease holds. Whether it was written. Group-committed with the checkpoints and
        completions of other runs ready in the same loop turn (``durably/sql/_group.py``):
        runs of a worker's slots often finish together, and a commit of its own would
        cost more than the statements (each member keeps its own fence)."""
        statements = _finish_statements(update, params, now_s, delete_steps=delete_steps)
        results = await self._group.write(statements)
        return bool(results[-1])

    # -- control --

    async def cancel_run(self, run_id: str, now: datetime) -> Run | None:
        now_s = format_ts(now)
        results = await self._run_batch(
            run_id,
            [
                (_CANCEL_WAITS, ("cancelled", now_s, run_id, run_id)),
                (_CANCEL, (now_s, now_s, run_id)),
            ],
        )
        return to_run(results[1][0]) if results[1] else None

    async def retry_run(self, run_id: str, now: datetime) -> Run | None:
        try:
            results = await self._run_batch(
                run_id, [(REOPEN_WAITS, (run_id, run_id)), (_RETRY, (format_ts(now), run_id))]
            )
        except ConstraintViolation as exc:
            if exc.table == "durably_runs" and "concurrency_key" in exc.columns:
                raise ConflictError(
                    f"Run {run_id} cannot go back to pending: another run of the same job "
                    "and concurrency key is already pending",
                    run_id=run_id,
                ) from exc
            raise
        rows = results[1]
        return to_run(rows[0]) if rows else None

    async def delete_run(self, run_id: str) -> Run | None:
        guard = (run_id, run_id)
        *children, run = _DELETE_RUN
        results = await self.executor.batch([*((sql, guard) for sql in children), (run, (run_id,))])
        rows = results[-1]
        return to_run(rows[0]) if rows else None

    async def purge_runs(self, completed_before: datetime, limit: int) -> int:
        if limit <= 0:
            return 0
        params = (format_ts(completed_before), limit)
        results = await self.executor.batch([(sql, params) for sql in _PURGE])
        return len(results[-1])
