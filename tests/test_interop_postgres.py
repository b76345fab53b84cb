"""Interop with the real npm package ``@coji/durably@0.15.0`` on one PostgreSQL database
(Kysely's ``PostgresDialect`` over ``pg``, which the reference detects as its
PostgreSQL backend: its advisory-lock claim), on a real server:

- the schema it creates equals ours (every column with its type, default and
  nullability, every index with its definition, every constraint) but for what the
  Python-side migrations add, and it accepts a database that Python created;
- a run triggered from Node is executed by a Python worker and read back by Node,
  as it reads a run that Node executed itself; and the reverse.

The Node side is ``tests/interop/durably_node.mjs`` (the same job as
``test_interop_node.interop_job``); ``pg`` is installed by
``scripts/setup-postgres.sh`` into ``.cache/interop-postgres``. Each test gets
databases of its own on the session's server.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from ci_support import unavailable
from postgres_support import PostgresServer
from test_interop_node import (
    INPUT,
    TABLES,
    TS,
    ULID,
    InteropOut,
    node,
    node_ready,  # noqa: F401 - a fixture, used by name
    normalize_node,
    normalize_python,
    python_durably,
    python_read,
    python_trigger,
    python_work,
    without_by,
)

ROOT = Path(__file__).parent.parent
PG_NODE_MODULES = ROOT / ".cache" / "interop-postgres" / "node_modules"
_databases = itertools.count(1)


@pytest.fixture
def node_pg(node_ready: None, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    if not (PG_NODE_MODULES / "pg" / "package.json").exists():
        unavailable("the npm package pg is not installed: run scripts/setup-postgres.sh")
    monkeypatch.setenv("DURABLY_NODE_PG", str(PG_NODE_MODULES))


@pytest.fixture
def new_database(postgres: PostgresServer) -> Iterator[Any]:
    """``new_database()`` → the URL of a new, empty database on the session's server."""
    made: list[str] = []

    def make() -> str:
        name = f"interop_{os.getpid()}_{next(_databases)}"
        postgres.psql(f"CREATE DATABASE {name}")
        made.append(name)
        return postgres.url_for(name)

    yield make
    for name in made:
        postgres.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def query(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(url)
    try:
        return [tuple(r) for r in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


async def raw_rows(url: str, run_id: str) -> dict[str, list[tuple[Any, ...]]]:
    """The rows of one run as stored, with ids and times blanked."""

    def blank(row: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(
            "<ts>"
            if isinstance(v, str) and TS.match(v)
            else "<ulid>"
            if isinstance(v, str) and ULID.match(v)
            else v
            for v in row
        )

    async def rows(sql: str) -> list[tuple[Any, ...]]:
        return [blank(r) for r in await query(url, sql, run_id)]

    return {
        "run": await rows(
            "SELECT job_name, input, status, idempotency_key, concurrency_key, labels, "
            "current_step_index, completed_step_count, progress, output, error, lease_owner, "
            "lease_expires_at, lease_generation, "
            "started_at, completed_at, created_at, updated_at FROM durably_runs WHERE id = $1"
        ),
        "labels": await rows(
            "SELECT key, value FROM durably_run_labels WHERE run_id = $1 ORDER BY key"
        ),
        "steps": await rows(
            'SELECT name, "index", status, output, error, started_at, completed_at '
            'FROM durably_steps WHERE run_id = $1 ORDER BY "index"'
        ),
        "logs": await rows(
            "SELECT step_name, level, message, data, created_at FROM durably_logs "
            "WHERE run_id = $1 ORDER BY created_at, id"
        ),
    }


# The reference on PostgreSQL writes progress without waiting (no per-process mutex as
# on SQLite): on a loaded machine its last progress write can arrive after the run
# completed and be refused by the fence, so a Node-executed run may keep an earlier
# progress. The runs are compared without it; Python's progress is checked exactly.


def without_progress(view: dict[str, Any]) -> dict[str, Any]:
    return {**view, "run": {k: v for k, v in view["run"].items() if k != "progress"}}


def comparable(rows: dict[str, list[tuple[Any, ...]]]) -> dict[str, list[tuple[Any, ...]]]:
    """:func:`without_by`, and without the progress column (index 8)."""
    out = without_by(rows)
    out["run"] = [row[:8] + row[9:] for row in out["run"]]
    return out


_COLUMNS = (
    "SELECT table_name, ordinal_position, column_name, data_type, column_default, is_nullable "
    "FROM information_schema.columns WHERE table_schema = 'public' "
    "AND table_name <> 'durably_py_schema_versions' ORDER BY table_name, ordinal_position"
)
_INDEXES = (
    "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' "
    "AND tablename <> 'durably_py_schema_versions' ORDER BY tablename, indexname"
)
_CONSTRAINTS = (
    "SELECT conrelid::regclass::text, conname, contype, pg_get_constraintdef(oid) "
    "FROM pg_constraint WHERE connamespace = 'public'::regnamespace "
    "AND conrelid::regclass::text <> 'durably_py_schema_versions' ORDER BY 1, 2"
)


#: What the Python-side migrations add: tables (py migrations 1, durable waits, 2,
#: schedules, and 3, retries), an index on durably_runs, and columns at the end of
#: durably_runs.
PY_TABLES = frozenset({"durably_waits", "durably_schedules", "durably_step_attempts"})
PY_INDEXES = frozenset({"idx_durably_runs_status_wake"})
PY_COLUMNS = ("waiting_on_wait_id", "wake_at", "attempt")


def without_python_additions(sql: str, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The rows of one of the catalog queries above but for Python's additions (the
    added columns must come last)."""
    out = [row for row in rows if row[0] not in PY_TABLES and row[1] not in PY_INDEXES]
    if sql is _COLUMNS:
        runs = [row[2] for row in out if row[0] == "durably_runs"]
        assert tuple(runs[-len(PY_COLUMNS) :]) == PY_COLUMNS, runs
        out = [row for row in out if not (row[0] == "durably_runs" and row[2] in PY_COLUMNS)]
    return out


@pytest.mark.usefixtures("node_pg")
async def test_schema_created_by_node_equals_ours(new_database: Any) -> None:
    node_url, py_url = new_database(), new_database()
    node("schema", node_url)
    d = python_durably(py_url)
    try:
        await d.migrate()
    finally:
        await d.close()
    for sql in (_COLUMNS, _INDEXES, _CONSTRAINTS):
        ours = without_python_additions(sql, await query(py_url, sql))
        assert ours == await query(node_url, sql), sql
    tables = {r[0] for r in await query(node_url, _COLUMNS)}
    assert tables == set(TABLES)
    assert len(await query(node_url, _INDEXES)) == 16  # 12 of the reference + 4 primary keys
    for url in (node_url, py_url):
        assert await query(url, "SELECT version FROM durably_schema_versions") == [(1,)]
    # Node accepts a database that Python created (it finds version 1, adds nothing)
    before = await query(py_url, _INDEXES)
    node("schema", py_url)
    assert await query(py_url, _INDEXES) == before
    # and Python one that Node created (migrate adds only its own tables and columns)
    d = python_durably(node_url)
    try:
        await d.migrate()
    finally:
        await d.close()
    assert await query(node_url, _COLUMNS) == await query(py_url, _COLUMNS)


@pytest.mark.usefixtures("node_pg")
async def test_node_triggers__python_executes__node_reads(new_database: Any) -> None:
    url, reference_url = new_database(), new_database()
    run_id = node("trigger", url, json.dumps(INPUT))["run"]["id"]
    await python_work(url, run_id)
    seen = node("get", url, run_id)

    run = seen["run"]
    assert run["id"] == run_id
    assert run["status"] == "completed"
    assert run["output"] == {"total": 42, "count": 3, "summary": "seven: 42/3", "by": "python"}
    assert run["progress"] == {"current": 3, "message": "done"}
    assert run["labels"] == {"origin": "node", "team/x": "a-1"}
    assert [s["output"] for s in seen["steps"]] == [42, {"n": 3}, "seven: 42/3"]
    assert [(e["message"], e["data"]) for e in seen["logs"]] == [
        ("counted", {"count": 3, "label": "seven"})
    ]

    ref_id = node("trigger", reference_url, json.dumps(INPUT))["run"]["id"]
    node("work", reference_url, ref_id)
    reference = node("get", reference_url, ref_id)
    assert reference["run"]["output"]["by"] == "node"
    reference["run"]["output"]["by"] = "python"
    assert without_progress(normalize_node(seen)) == without_progress(normalize_node(reference))
    assert comparable(await raw_rows(url, run_id)) == comparable(
        await raw_rows(reference_url, ref_id)
    )


@pytest.mark.usefixtures("node_pg")
async def test_python_triggers__node_executes__python_reads(new_database: Any) -> None:
    url, reference_url = new_database(), new_database()
    run_id = await python_trigger(url)
    executed = node("work", url, run_id)["run"]
    assert executed["status"] == "completed", executed
    seen = await python_read(url, run_id)

    run = seen["run"]
    assert run.status == "completed"
    assert run.output == {"total": 42, "count": 3, "summary": "seven: 42/3", "by": "node"}
    assert InteropOut.model_validate(run.output).total == 42
    assert run.labels == {"origin": "python", "team/x": "a-1"}
    assert [(s.name, s.output) for s in seen["steps"]] == [
        ("sum", 42),
        ("count", {"n": 3}),
        ("describe", "seven: 42/3"),
    ]

    ref_id = await python_trigger(reference_url)
    await python_work(reference_url, ref_id)
    reference = await python_read(reference_url, ref_id)
    expected = normalize_python(reference)
    expected["run"]["output"] = {**expected["run"]["output"], "by": "node"}
    assert without_progress(normalize_python(seen)) == without_progress(expected)
    assert comparable(await raw_rows(url, run_id)) == comparable(
        await raw_rows(reference_url, ref_id)
    )
