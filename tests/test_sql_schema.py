"""Schema version 1 equals what the TypeScript reference creates; the Python-side
migrations only add to it; migrate() is idempotent and safe from several
connections and processes at once.

The expected schema and rows come from ``fixtures/reference_0.15.0_schema_v1.json``,
written by ``@coji/durably`` 0.15.0 itself (``fixtures/make_reference_db.mjs``).
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from durably import (
    AttemptStatus,
    NewAttempt,
    NewRun,
    NewWait,
    Progress,
    RunFilter,
    RunStatus,
    SchemaVersionError,
    StepStatus,
)
from durably.sql import PY_MIGRATIONS, Migration, SqlStorage, migrate
from durably_sqlite import SqliteExecutor, open_sqlite

FIXTURE = json.loads(
    (Path(__file__).parent / "fixtures" / "reference_0.15.0_schema_v1.json").read_text("utf-8")
)
TABLES = list(FIXTURE["table_info"])
TS_FORMAT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
PY_TABLE = (
    "table",
    "durably_py_schema_versions",
    "durably_py_schema_versions",
    "CREATE TABLE durably_py_schema_versions "
    "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)",
)


def master(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY rowid"
        ).fetchall()


def query(path: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


async def migrated(path: Path) -> SqlStorage:
    storage = open_sqlite(f"sqlite:///{path}")
    await storage.migrate()
    return storage


async def reference_only(path: Path) -> None:
    """Schema version 1 alone (no Python-side migration)."""
    ex = SqliteExecutor(path)
    try:
        await migrate(ex, "2026-01-01T00:00:00.000Z", ())
    finally:
        await ex.close()


#: Added by the Python-side migrations: the columns (with ``pragma table_info``'s
#: cid, name, type, notnull, default, pk) and the objects.
RUNS_COLUMNS_ADDED = [
    (19, "waiting_on_wait_id", "TEXT", 0, None, 0),
    (20, "wake_at", "TEXT", 0, None, 0),
    (21, "attempt", "INTEGER", 1, "1", 0),
]
OBJECTS_ADDED = [
    ("table", "durably_waits"),
    ("index", "sqlite_autoindex_durably_waits_1"),
    ("index", "idx_durably_waits_run_name"),
    ("index", "idx_durably_runs_status_wake"),
    ("table", "durably_schedules"),
    ("index", "sqlite_autoindex_durably_schedules_1"),
    ("index", "idx_durably_schedules_upcoming"),
    ("table", "durably_step_attempts"),
    ("index", "sqlite_autoindex_durably_step_attempts_1"),
    ("index", "idx_durably_step_attempts_run_started"),
]
#: What the Python-side migrations add at the end of durably_runs' DDL.
RUNS_DDL_ADDED = ", waiting_on_wait_id TEXT, wake_at TEXT, attempt INTEGER NOT NULL DEFAULT 1)"


def full_schema() -> list[tuple[Any, ...]]:
    """sqlite_master after every migration: the reference's objects (the runs table
    with the added columns at its end), then the Python ones."""
    rows = []
    for row in FIXTURE["sqlite_master"]:
        row = tuple(row)
        if row[1] == "durably_runs":
            sql = row[3][:-1] + RUNS_DDL_ADDED
            row = (*row[:3], sql)
        rows.append(row)
    return [*rows, PY_TABLE]


def names(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [(r[0], r[1]) for r in rows]


async def test_schema__objects_equal_the_reference_ddl(tmp_path: Path) -> None:
    db = tmp_path / "d.db"
    await reference_only(db)
    expected = [tuple(row) for row in FIXTURE["sqlite_master"]]
    assert master(db) == [*expected, PY_TABLE]


async def test_schema__python_migrations_only_add(tmp_path: Path) -> None:
    db = tmp_path / "d.db"
    await (await migrated(db)).close()
    got = master(db)
    reference = full_schema()
    assert got[: len(reference)] == reference
    assert names(got[len(reference) :]) == OBJECTS_ADDED


async def test_schema__columns_types_notnull_defaults(tmp_path: Path) -> None:
    db = tmp_path / "d.db"
    await (await migrated(db)).close()
    for table in TABLES:
        got = query(db, f"PRAGMA table_info({table})")
        expected = [tuple(c) for c in FIXTURE["table_info"][table]]
        if table == "durably_runs":
            expected += RUNS_COLUMNS_ADDED
        assert got == expected, table
    waits = [c[1] for c in query(db, "PRAGMA table_info(durably_waits)")]
    # the reference's names (its main branch, schema version 2), then Python's "kind"
    assert waits == [
        "id",
        "run_id",
        "name",
        "metadata",
        "status",
        "payload",
        "signal_id",
        "created_at",
        "deadline_at",
        "deadline_ms",
        "outcome",
        "suspended_at",
        "resolved_at",
        "first_resumed_at",
        "timing_known",
        "kind",
    ]
    attempts = [c[1] for c in query(db, "PRAGMA table_info(durably_step_attempts)")]
    # the reference's names (its main branch), then Python's attempt and next_attempt_at
    assert attempts == [
        "id",
        "run_id",
        "step_name",
        "step_index",
        "lease_generation",
        "status",
        "metadata",
        "error",
        "started_at",
        "completed_at",
        "attempt",
        "next_attempt_at",
    ]


async def test_schema__indexes_unique_and_partial(tmp_path: Path) -> None:
    db = tmp_path / "d.db"
    await (await migrated(db)).close()
    indexes = {
        name: (unique, partial)
        for table in [*TABLES, "durably_waits"]
        for _, name, unique, _, partial in query(db, f"PRAGMA index_list({table})")
    }
    assert indexes["idx_durably_runs_job_idempotency"] == (1, 0)
    assert indexes["idx_durably_runs_pending_concurrency"] == (1, 1)
    assert indexes["idx_durably_steps_completed_unique"] == (1, 1)
    assert indexes["idx_durably_run_labels_pk"] == (1, 0)
    assert indexes["idx_durably_runs_status_created"] == (0, 0)
    assert indexes["idx_durably_waits_run_name"] == (1, 0)
    assert indexes["idx_durably_runs_status_wake"] == (0, 0)
    attempts = query(db, "PRAGMA index_info(idx_durably_step_attempts_run_started)")
    assert [r[2] for r in attempts] == ["run_id", "started_at"]
    cols = [r[2] for r in query(db, "PRAGMA index_info(idx_durably_steps_run_index)")]
    assert cols == ["run_id", "index"]


async def test_schema__version_1_recorded_like_the_reference(tmp_path: Path) -> None:
    db = tmp_path / "d.db"
    await (await migrated(db)).close()
    [(version, applied_at)] = query(db, "SELECT version, applied_at FROM durably_schema_versions")
    assert version == 1
    assert TS_FORMAT.match(applied_at)
    # the Python-side versions are recorded in their own table only
    py_versions = query(db, "SELECT version FROM durably_py_schema_versions")
    assert py_versions == [(m.version,) for m in PY_MIGRATIONS]
    [(ref_version, ref_applied)] = FIXTURE["rows"]["durably_schema_versions"]
    assert ref_version == 1
    assert TS_FORMAT.match(ref_applied)


async def test_migrate__idempotent(tmp_path: Path) -> None:
    db = tmp_path / "d.db"
    storage = await migrated(db)
    first = master(db)
    for _ in range(3):
        await storage.migrate()
    await storage.close()
    again = await migrated(db)
    await again.close()
    assert master(db) == first
    assert query(db, "SELECT COUNT(*) FROM durably_schema_versions") == [(1,)]


async def test_migrate__concurrent_connections(tmp_path: Path) -> None:
    db = tmp_path / "d.db"
    storages = [open_sqlite(f"sqlite:///{db}") for _ in range(4)]
    await asyncio.gather(*(s.migrate() for s in storages))
    for s in storages:
        await s.close()
    got = master(db)
    assert got[: len(full_schema())] == full_schema()
    assert names(got[len(full_schema()) :]) == OBJECTS_ADDED
    assert query(db, "SELECT version FROM durably_schema_versions") == [(1,)]


MIGRATE_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys, time
    from durably_sqlite import open_sqlite

    async def main():
        start = float(sys.argv[2])
        while time.time() < start:
            time.sleep(0.001)
        s = open_sqlite("sqlite:///" + sys.argv[1])
        await s.migrate()
        await s.close()

    asyncio.run(main())
    """
)


@pytest.mark.slow
def test_migrate__concurrent_processes(tmp_path: Path) -> None:
    import time

    db = tmp_path / "d.db"
    start = str(time.time() + 1.0)  # both start migrating at the same instant
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", MIGRATE_SCRIPT, str(db), start],
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    # collect every process before asserting, so a failure leaks none of them
    errors = [proc.communicate(timeout=60)[1] for proc in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    got = master(db)
    assert got[: len(full_schema())] == full_schema()
    assert names(got[len(full_schema()) :]) == OBJECTS_ADDED
    assert query(db, "SELECT version FROM durably_schema_versions") == [(1,)]


# -- Python-side migrations --

PY_V1 = Migration(1, "a test table", ("CREATE TABLE durably_py_test (x INTEGER)",))
PY_V2 = Migration(2, "a test column", ("ALTER TABLE durably_py_test ADD COLUMN y TEXT",))


async def test_py_migrations__applied_once_in_order(tmp_path: Path) -> None:
    ex = SqliteExecutor(tmp_path / "d.db")
    try:
        await migrate(ex, "2026-01-01T00:00:00.000Z", [PY_V1])
        await migrate(ex, "2026-01-02T00:00:00.000Z", [PY_V2, PY_V1])
        await migrate(ex, "2026-01-03T00:00:00.000Z", [PY_V1, PY_V2])
        rows = await ex.fetch("SELECT version, applied_at FROM durably_py_schema_versions")
        assert rows == [(1, "2026-01-01T00:00:00.000Z"), (2, "2026-01-02T00:00:00.000Z")]
        cols = [r[1] for r in await ex.fetch("PRAGMA table_info(durably_py_test)")]
        assert cols == ["x", "y"]
        # the reference's table never gets Python rows
        assert await ex.fetch("SELECT version FROM durably_schema_versions") == [(1,)]
    finally:
        await ex.close()


async def test_py_migrations__concurrent_racers_apply_each_once(tmp_path: Path) -> None:
    executors = [SqliteExecutor(tmp_path / "d.db") for _ in range(4)]
    try:
        await asyncio.gather(*(migrate(ex, "t", [PY_V1, PY_V2]) for ex in executors))
        rows = await executors[0].fetch("SELECT version FROM durably_py_schema_versions")
        assert rows == [(1,), (2,)]
    finally:
        for ex in executors:
            await ex.close()


async def test_py_migrations__newer_database_refused(tmp_path: Path) -> None:
    ex = SqliteExecutor(tmp_path / "d.db")
    try:
        await migrate(ex, "t", [PY_V1, PY_V2])
        before = await ex.fetch("SELECT type, name, sql FROM sqlite_master")
        with pytest.raises(SchemaVersionError, match="Upgrade durably"):
            await migrate(ex, "t", [PY_V1])
        assert await ex.fetch("SELECT type, name, sql FROM sqlite_master") == before
    finally:
        await ex.close()


async def test_py_migrations__database_where_the_reference_made_waits_first(
    tmp_path: Path,
) -> None:
    """A later release of the reference (its main branch's schema version 2) adds
    durably_waits and durably_runs.waiting_on_wait_id itself: migrating such a database
    here adds only what it lacks, and waits work on it."""
    db = tmp_path / "d.db"
    await reference_only(db)
    conn = sqlite3.connect(db)
    conn.execute("ALTER TABLE durably_runs ADD COLUMN waiting_on_wait_id TEXT")
    conn.execute(
        "CREATE TABLE durably_waits (id TEXT PRIMARY KEY, run_id TEXT NOT NULL, name TEXT NOT "
        "NULL, metadata TEXT, status TEXT NOT NULL, payload TEXT, signal_id TEXT, created_at "
        "TEXT NOT NULL, deadline_at TEXT, deadline_ms INTEGER, outcome TEXT, suspended_at TEXT, "
        "resolved_at TEXT, first_resumed_at TEXT, timing_known INTEGER NOT NULL DEFAULT 0)"
    )
    conn.execute("INSERT INTO durably_schema_versions VALUES (2, '2026-01-01T00:00:00.000Z')")
    conn.commit()
    conn.close()
    storage = await migrated(db)
    try:
        runs = [c[1] for c in query(db, "PRAGMA table_info(durably_runs)")]
        assert runs[-3:] == ["waiting_on_wait_id", "wake_at", "attempt"]
        waits = [c[1] for c in query(db, "PRAGMA table_info(durably_waits)")]
        assert waits[-1] == "kind"
        now = datetime(2026, 1, 1, tzinfo=UTC)
        new = NewRun(id="01J00000000000000000000001", job_name="j", input_json="{}", created_at=now)
        await storage.enqueue(new)
        run = await storage.claim_next("w", now, now.replace(minute=1))
        assert run is not None
        wait = await storage.prepare_wait(
            run.id, 1, NewWait(id="01J00000000000000000000002", name="w", created_at=now), now
        )
        assert wait is not None
        assert wait.kind == "signal"
        waiting = await storage.suspend_run(run.id, 1, wait.id, now)
        assert waiting is not None
        assert waiting.status is RunStatus.WAITING
    finally:
        await storage.close()


async def test_py_migrations__database_where_the_reference_made_step_attempts_first(
    tmp_path: Path,
) -> None:
    """The reference's main branch has durably_step_attempts (its columns, without
    Python's attempt and next_attempt_at): migrating such a database adds those, and
    attempt records work on it."""
    db = tmp_path / "d.db"
    await reference_only(db)
    conn = sqlite3.connect(db)
    conn.execute(
        "CREATE TABLE durably_step_attempts (id TEXT PRIMARY KEY, run_id TEXT NOT NULL, "
        "step_name TEXT NOT NULL, step_index INTEGER NOT NULL, lease_generation INTEGER NOT "
        "NULL, status TEXT NOT NULL, metadata TEXT, error TEXT, started_at TEXT NOT NULL, "
        "completed_at TEXT)"
    )
    conn.commit()
    conn.close()
    storage = await migrated(db)
    try:
        columns = [c[1] for c in query(db, "PRAGMA table_info(durably_step_attempts)")]
        assert columns[-2:] == ["attempt", "next_attempt_at"]
        now = datetime(2026, 1, 1, tzinfo=UTC)
        new = NewRun(id="01J00000000000000000000001", job_name="j", input_json="{}", created_at=now)
        await storage.enqueue(new)
        run = await storage.claim_next("w", now, now.replace(minute=1))
        assert run is not None
        attempt = NewAttempt(
            id="01J00000000000000000000002",
            step_name="fetch",
            step_index=0,
            attempt=2,
            status=AttemptStatus.FAILED,
            error="boom",
            started_at=now,
            completed_at=now,
            next_attempt_at=now.replace(second=5),
        )
        assert await storage.record_attempt(run.id, 1, attempt, now, wake_at=now.replace(second=5))
        [stored] = await storage.get_attempts(run.id)
        assert (stored.attempt, stored.next_attempt_at) == (2, now.replace(second=5))
        waiting = await storage.get_run(run.id)
        assert waiting is not None
        assert (waiting.status, waiting.attempt) == (RunStatus.WAITING, 1)
    finally:
        await storage.close()


# -- interoperability with a database the reference wrote --


async def test_reference_rows__read_claimed_and_resumed(tmp_path: Path) -> None:
    db = tmp_path / "ref.db"
    conn = sqlite3.connect(db)
    for row in FIXTURE["sqlite_master"]:
        if row[3]:
            conn.execute(row[3])
    for table, rows in FIXTURE["rows"].items():
        for row in rows:
            conn.execute(f"INSERT INTO {table} VALUES ({', '.join('?' * len(row))})", row)
    conn.commit()
    conn.close()

    storage = await migrated(db)
    try:
        [ref_run] = FIXTURE["rows"]["durably_runs"]
        run = await storage.get_run(ref_run[0])
        assert run is not None
        assert run.job_name == "ref-job"
        assert run.input == {"n": 21}
        assert run.status is RunStatus.COMPLETED
        assert run.labels == {"team": "a", "env/x": "b"}
        assert run.progress == Progress(2)
        assert run.output == {"total": 42}
        assert run.completed_at == datetime.fromisoformat(ref_run[16])
        steps = await storage.get_completed_steps(run.id)
        assert [(s.name, s.index, s.output, s.status) for s in steps] == [
            ("first", 0, {"v": 21}, StepStatus.COMPLETED),
            ("second", 1, 42, StepStatus.COMPLETED),
        ]
        assert [r.id for r in await storage.get_runs(RunFilter(labels={"env/x": "b"}))] == [run.id]
        # the reference's idempotency reservation holds for us too
        now = datetime.now(UTC)
        dup = await storage.enqueue(
            NewRun(
                id="01ZZZZZZZZZZZZZZZZZZZZZZZZ",
                job_name="ref-job",
                input_json="{}",
                idempotency_key="idem-1",
                created_at=now,
            )
        )
        assert dup.disposition == "idempotent"
        assert dup.run.id == run.id
        assert await storage.delete_run(run.id) is not None
        assert query(db, "SELECT COUNT(*) FROM durably_run_labels") == [(0,)]
    finally:
        await storage.close()


async def test_migrate__records_the_engines_clock(tmp_path: Path) -> None:
    from durably import create_durably
    from durably_testing.clock import ManualClock

    clock = ManualClock(datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=UTC))
    d = create_durably(f"sqlite:///{tmp_path / 'clock.db'}", clock=clock)
    await d.migrate()
    await d.close()
    conn = sqlite3.connect(tmp_path / "clock.db")
    try:
        rows = conn.execute("SELECT applied_at FROM durably_schema_versions").fetchall()
    finally:
        conn.close()
    assert rows == [("2031-05-06T07:08:09.123Z",)]
