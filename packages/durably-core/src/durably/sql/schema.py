"""The SQLite-dialect schema and its migrations.

Schema version 1 is, byte for byte, what the TypeScript reference
(``@coji/durably`` 0.15, migration 1, through Kysely) creates, so a database
made by either one can be used by the other. The statements below are the
exact SQL Kysely sends (``sqlite_master`` then keeps them from the object name
on, with the prefix normalized to ``CREATE TABLE`` / ``CREATE [UNIQUE] INDEX``),
including the whitespace of the two raw partial-index statements.

Versions are recorded in two tables:

- ``durably_schema_versions`` (the reference's): version 1, with ``applied_at``
  in the database timestamp format. Python never adds rows here — the reference
  applies every migration numbered above the highest row it finds, and its later
  releases use versions 2–4 for their own tables.
- ``durably_py_schema_versions``: Python-only, additive migrations (new tables,
  new nullable or defaulted columns). A database whose Python-side version is
  newer than this release knows raises :class:`durably.SchemaVersionError`
  before anything is written.

:func:`migrate` is idempotent and safe from several processes at once: every
write is one atomic batch (``BEGIN IMMEDIATE`` … ``COMMIT``); version 1 is all
``IF NOT EXISTS`` plus ``ON CONFLICT DO NOTHING``; a Python migration inserts its
version row first, so a second process racing it fails on the primary key,
rolls back, and moves on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .._errors import SchemaVersionError
from .executor import ConstraintViolation, Executor, Statement

__all__ = [
    "ATTEMPTS",
    "COLUMNS_SQL",
    "PY_MIGRATIONS",
    "PY_SCHEMA_VERSION",
    "PY_VERSIONS_DDL",
    "REFERENCE_SCHEMA_VERSION",
    "SCHEDULES",
    "SCHEMA_V1",
    "TABLES_SQL",
    "WAITS",
    "Migration",
    "migrate",
]

SCHEMA_V1: tuple[str, ...] = (
    (
        'create table if not exists "durably_runs" ("id" text primary key, "job_name" text not'
        ' null, "input" text not null, "status" text not null, "idempotency_key" text,'
        ' "concurrency_key" text, "labels" text default \'{}\' not null, "current_step_index"'
        ' integer default 0 not null, "completed_step_count" integer default 0 not null, "progress"'
        ' text, "output" text, "error" text, "lease_owner" text, "lease_expires_at" text,'
        ' "lease_generation" integer default 0 not null, "started_at" text, "completed_at" text,'
        ' "created_at" text not null, "updated_at" text not null)'
    ),
    (
        'create unique index if not exists "idx_durably_runs_job_idempotency" on "durably_runs"'
        ' ("job_name", "idempotency_key")'
    ),
    (
        'create index if not exists "idx_durably_runs_status_concurrency" on "durably_runs"'
        ' ("status", "concurrency_key")'
    ),
    (
        'create index if not exists "idx_durably_runs_status_created" on "durably_runs" ("status",'
        ' "created_at")'
    ),
    (
        'create index if not exists "idx_durably_runs_status_lease_expires" on "durably_runs"'
        ' ("status", "lease_expires_at")'
    ),
    (
        'create index if not exists "idx_durably_runs_job_created" on "durably_runs" ("job_name",'
        ' "created_at")'
    ),
    (
        'create index if not exists "idx_durably_runs_status_completed" on "durably_runs"'
        ' ("status", "completed_at")'
    ),
    (
        'create table if not exists "durably_run_labels" ("run_id" text not null, "key" text not'
        ' null, "value" text not null)'
    ),
    (
        'create unique index if not exists "idx_durably_run_labels_pk" on "durably_run_labels"'
        ' ("run_id", "key")'
    ),
    (
        'create index if not exists "idx_durably_run_labels_key_value" on "durably_run_labels"'
        ' ("key", "value")'
    ),
    (
        'create table if not exists "durably_steps" ("id" text primary key, "run_id" text not null,'
        ' "name" text not null, "index" integer not null, "status" text not null, "output" text,'
        ' "error" text, "started_at" text not null, "completed_at" text)'
    ),
    (
        'create index if not exists "idx_durably_steps_run_index" on "durably_steps" ("run_id",'
        ' "index")'
    ),
    (
        "\n        CREATE UNIQUE INDEX IF NOT EXISTS idx_durably_steps_completed_unique\n        ON"
        " durably_steps(run_id, name) WHERE status = 'completed'\n      "
    ),
    (
        'create table if not exists "durably_logs" ("id" text primary key, "run_id" text not null,'
        ' "step_name" text, "level" text not null, "message" text not null, "data" text,'
        ' "created_at" text not null)'
    ),
    (
        'create index if not exists "idx_durably_logs_run_created" on "durably_logs" ("run_id",'
        ' "created_at")'
    ),
    (
        'create table if not exists "durably_schema_versions" ("version" integer primary key,'
        ' "applied_at" text not null)'
    ),
    (
        "\n        CREATE UNIQUE INDEX IF NOT EXISTS idx_durably_runs_pending_concurrency\n       "
        " ON durably_runs (job_name, concurrency_key)\n        WHERE status = 'pending' AND"
        " concurrency_key IS NOT NULL\n      "
    ),
)
"""Schema version 1: the reference's statements, in its order (tables, then their
indexes)."""

#: The highest reference (``durably_schema_versions``) version this release creates.
REFERENCE_SCHEMA_VERSION = 1

PY_VERSIONS_DDL = (
    "CREATE TABLE IF NOT EXISTS durably_py_schema_versions "
    "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
)


@dataclass(frozen=True)
class Migration:
    """A Python-only schema change: additive statements applied in one transaction.

    ``columns`` are ``(table, column, definition)`` added with ``ALTER TABLE … ADD
    COLUMN`` when the table exists without the column: a later release of the
    reference may create the table, or add a column of the same name, itself (SQLite
    has no ``ADD COLUMN IF NOT EXISTS``), and a database it migrated first must still
    migrate here. They are added before ``statements`` run."""

    version: int
    description: str
    statements: tuple[str, ...]
    columns: tuple[tuple[str, str, str], ...] = ()


WAITS = Migration(
    1,
    "durable waits: durably_waits, durably_runs.waiting_on_wait_id and wake_at",
    (
        "CREATE TABLE IF NOT EXISTS durably_waits (id TEXT PRIMARY KEY, run_id TEXT NOT NULL, "
        "name TEXT NOT NULL, metadata TEXT, status TEXT NOT NULL, payload TEXT, "
        "signal_id TEXT, created_at TEXT NOT NULL, deadline_at TEXT, deadline_ms BIGINT, "
        "outcome TEXT, suspended_at TEXT, resolved_at TEXT, first_resumed_at TEXT, "
        "timing_known INTEGER NOT NULL DEFAULT 1, kind TEXT NOT NULL DEFAULT 'signal')",
        "CREATE UNIQUE INDEX IF NOT EXISTS idx_durably_waits_run_name "
        "ON durably_waits (run_id, name)",
        "CREATE INDEX IF NOT EXISTS idx_durably_runs_status_wake ON durably_runs (status, wake_at)",
    ),
    columns=(
        ("durably_runs", "waiting_on_wait_id", "TEXT"),
        ("durably_runs", "wake_at", "TEXT"),
        # when the reference created durably_waits (without Python's column)
        ("durably_waits", "kind", "TEXT NOT NULL DEFAULT 'signal'"),
    ),
)
"""Python migration 1, durable waits (``step.prepare_wait``/``wait_for``,
``durably.signal``, ``step.sleep``). Table and column names are those of the
reference's main branch (its schema version 2: ``durably_waits``,
``durably_runs.waiting_on_wait_id``); ``kind`` and ``durably_runs.wake_at`` are
Python's (a timer takes no signal; a waiting run is claimable from ``wake_at`` on,
found through an index). A Node 0.15 worker never claims a ``waiting`` run (its
claim takes pending runs and expired leases) and names its columns when it
inserts, so the new ones stay NULL for its runs."""

SCHEDULES = Migration(
    2,
    "schedules: durably_schedules",
    (
        "CREATE TABLE IF NOT EXISTS durably_schedules (name TEXT PRIMARY KEY, "
        "job_name TEXT NOT NULL, cron TEXT NOT NULL, timezone TEXT NOT NULL, "
        "input TEXT NOT NULL, labels TEXT NOT NULL DEFAULT '{}', catch_up TEXT NOT NULL, "
        "max_catch_up INTEGER NOT NULL, slot_field TEXT, status TEXT NOT NULL, "
        "next_fire_at TEXT, last_fired_at TEXT, fire_token TEXT, revision INTEGER NOT NULL, "
        "created_at TEXT NOT NULL, updated_at TEXT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS idx_durably_schedules_upcoming "
        "ON durably_schedules (status, next_fire_at)",
    ),
)
"""Schedules (``durably.schedules``, ``define_job(schedule=…)``): one row per schedule.
A new table only, which a Node 0.15 worker never reads."""


ATTEMPTS = Migration(
    3,
    "retries: durably_step_attempts, durably_runs.attempt",
    (
        "CREATE TABLE IF NOT EXISTS durably_step_attempts (id TEXT PRIMARY KEY, "
        "run_id TEXT NOT NULL, step_name TEXT NOT NULL, step_index INTEGER NOT NULL, "
        "lease_generation INTEGER NOT NULL, status TEXT NOT NULL, metadata TEXT, "
        "error TEXT, started_at TEXT NOT NULL, completed_at TEXT, "
        "attempt INTEGER NOT NULL DEFAULT 1, next_attempt_at TEXT)",
        "CREATE INDEX IF NOT EXISTS idx_durably_step_attempts_run_started "
        "ON durably_step_attempts (run_id, started_at)",
    ),
    columns=(
        ("durably_runs", "attempt", "INTEGER NOT NULL DEFAULT 1"),
        # when the reference created durably_step_attempts (without Python's columns)
        ("durably_step_attempts", "attempt", "INTEGER NOT NULL DEFAULT 1"),
        ("durably_step_attempts", "next_attempt_at", "TEXT"),
    ),
)
"""Python migration 3, retries (``Retry``, ``define_job(retry=…, run_retry=…)``): one
row per recorded attempt of a step, and the run's attempt number. The table, its
columns and its index are named as on the reference's main branch (its
``durably_step_attempts``, unreleased as of 0.15); ``attempt`` and
``next_attempt_at`` are Python's (a retry's series and when its next attempt is due),
as is ``durably_runs.attempt``. A Node 0.15 worker never reads the table, and names
its columns when it inserts a run, so its runs get ``attempt`` 1."""

PY_MIGRATIONS: tuple[Migration, ...] = (WAITS, SCHEDULES, ATTEMPTS)
"""Python-only migrations, oldest first (versions 1, 2, …)."""

PY_SCHEMA_VERSION = max((m.version for m in PY_MIGRATIONS), default=0)
"""The Python-side schema version of this release."""

#: Which of the two version tables exist (SQLite); a dialect passes its own.
TABLES_SQL = (
    "SELECT name FROM sqlite_master WHERE type = 'table' "
    "AND name IN ('durably_schema_versions', 'durably_py_schema_versions')"
)


async def _versions(executor: Executor, tables_sql: str) -> tuple[int, int | None]:
    """(reference version, Python version or None when its table does not exist)."""
    tables = {row[0] for row in await executor.fetch(tables_sql)}
    reference = 0
    if "durably_schema_versions" in tables:
        rows = await executor.fetch("SELECT MAX(version) FROM durably_schema_versions")
        reference = int(rows[0][0] or 0) if rows else 0
    python: int | None = None
    if "durably_py_schema_versions" in tables:
        rows = await executor.fetch("SELECT MAX(version) FROM durably_py_schema_versions")
        python = int(rows[0][0] or 0) if rows else 0
    return reference, python


#: The column names of the table ``{table}`` (SQLite); a dialect passes its own.
COLUMNS_SQL = "SELECT name FROM pragma_table_info('{table}')"


async def _missing_columns(executor: Executor, migration: Migration, columns_sql: str) -> list[str]:
    """The ``ALTER TABLE … ADD COLUMN`` statements of the columns not there yet (of
    tables that exist: a new table is made whole by the migration's statements)."""
    statements = []
    for table, column, definition in migration.columns:
        rows = await executor.fetch(columns_sql.format(table=table))
        present = {row[0] for row in rows}
        if present and column not in present:
            statements.append(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
    return statements


async def migrate(
    executor: Executor,
    applied_at: str,
    migrations: Sequence[Migration] = PY_MIGRATIONS,
    *,
    tables_sql: str = TABLES_SQL,
    columns_sql: str = COLUMNS_SQL,
    lock: Statement | None = None,
) -> None:
    """Create or upgrade the schema. ``applied_at`` is the timestamp text recorded
    for the versions applied now. A dialect passes its own ``tables_sql`` (the names of
    the existing version tables), ``columns_sql`` (the names of a table's columns) and
    a ``lock`` statement run first in each batch."""
    known = max((m.version for m in migrations), default=0)
    first: list[Statement] = [] if lock is None else [lock]
    reference, python = await _versions(executor, tables_sql)
    if python is not None and python > known:
        raise SchemaVersionError(
            f"This database has durably (Python) schema version {python}, but this "
            f"release only knows versions up to {known}. Upgrade durably to a release "
            "that supports it; the database was not changed."
        )
    if reference < REFERENCE_SCHEMA_VERSION:
        statements: list[Statement] = [*first, *((ddl, ()) for ddl in SCHEMA_V1)]
        statements.append(
            (
                "INSERT INTO durably_schema_versions (version, applied_at) VALUES (1, ?) "
                "ON CONFLICT DO NOTHING",
                (applied_at,),
            )
        )
        statements.append((PY_VERSIONS_DDL, ()))
        await executor.batch(statements)
    elif python is None:
        await executor.batch([*first, (PY_VERSIONS_DDL, ())])
    current = python or 0
    for migration in sorted(migrations, key=lambda m: m.version):
        if migration.version <= current:
            continue
        batch: list[Statement] = [
            *first,
            (PY_VERSIONS_DDL, ()),
            (
                "INSERT INTO durably_py_schema_versions (version, applied_at) VALUES (?, ?)",
                (migration.version, applied_at),
            ),
            *((ddl, ()) for ddl in await _missing_columns(executor, migration, columns_sql)),
            *((ddl, ()) for ddl in migration.statements),
        ]
        try:
            await executor.batch(batch)
        except ConstraintViolation as exc:
            if exc.table != "durably_py_schema_versions":
                raise
            # Another process applied this version first; its batch did the work.
            continue
