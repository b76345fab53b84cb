"""Schema version 1 equals what the TypeScript reference creates, and migrate() is
idempotent and safe from several connections and processes at once.

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

from durably import NewRun, Progress, RunFilter, RunStatus, SchemaVersionError, StepStatus
from durably.sql import Migration, SqlStorage, migrate
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


async def test_schema__objects_equal_the_reference_ddl(tmp_path: Path) -> None:
    db = tmp_path / "d.db"
    await (await migrated(db)).close()
    expected = [tuple(row) for row in FIXTURE["sqlite_master"]]
    assert master(db) == [*expected, PY_TABLE]


async def test_schema__columns_types_notnull_defaults(tmp_path: Path) -> None:
    db = tmp_path / "d.db"
    await (await migrated(db)).close()
    for table in TABLES:
        got = query(db, f"PRAGMA table_info({table})")
        assert got == [tuple(c) for c in FIXTURE["table_info"][table]], table


async def test_schema__indexes_unique_and_partial(tmp_path: Path) -> None:
    db = tmp_path / "d.db"
    await (await migrated(db)).close()
    indexes = {
        name: (unique, partial)
        for table in TABLES
        for _, name, unique, _, partial in query(db, f"PRAGMA index_list({table})")
    }
    assert indexes["idx_durably_runs_job_idempotency"] == (1, 0)
    assert indexes["idx_durably_runs_pending_concurrency"] == (1, 1)
    assert indexes["idx_durably_steps_completed_unique"] == (1, 1)
    assert indexes["idx_durably_run_labels_pk"] == (1, 0)
    assert indexes["idx_durably_runs_status_created"] == (0, 0)
    cols = [r[2] for r in query(db, "PRAGMA index_info(idx_durably_steps_run_index)")]
    assert cols == ["run_id", "index"]


async def test_schema__version_1_recorded_like_the_reference(tmp_path: Path) -> None:
    db = tmp_path / "d.db"
    await (await migrated(db)).close()
    [(version, applied_at)] = query(db, "SELECT version, applied_at FROM durably_schema_versions")
    assert version == 1
    assert TS_FORMAT.match(applied_at)
    assert query(db, "SELECT * FROM durably_py_schema_versions") == []
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
    assert master(db) == [*(tuple(r) for r in FIXTURE["sqlite_master"]), PY_TABLE]
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
    assert master(db) == [*(tuple(r) for r in FIXTURE["sqlite_master"]), PY_TABLE]
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
