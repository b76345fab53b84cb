"""Interop with the real npm package ``@coji/durably@0.15.0`` on one SQLite file.

- the schema it creates equals ours but for our Python-side migrations, which
  only add (every object of ``sqlite_master``, every column of ``pragma
  table_info``, every index);
- a run triggered from Node is executed to completion by a Python worker and
  read back by Node: Node sees the same run, steps and logs (ids and times
  aside) as for a run that Node executed itself;
- a run triggered from Python is executed by a Node worker and read back by
  Python: Python sees the same as for a run that Python executed itself.

Logs: Python stores ``step.log`` entries always; the reference only with its
``withLogPersistence()`` plugin, which the Node side installs so both write them.

The Node side is ``tests/interop/durably_node.mjs`` (the same job as ``interop_job``
below), its packages are installed by ``scripts/setup-interop.sh`` into
``.cache/interop`` (``uv run nox -s tests`` runs it first); without them the tests fail.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Any, NoReturn

import pytest
from ci_support import unavailable
from pydantic import BaseModel

from durably import Durably, Step, create_durably, define_job

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parent.parent
INTEROP = Path(__file__).parent / "interop"
SCRIPT = INTEROP / "durably_node.mjs"
SETUP = ROOT / "scripts" / "setup-interop.sh"
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
ULID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
INPUT = {"values": [3, 4, 35], "label": "seven"}
TABLES = [
    "durably_runs",
    "durably_run_labels",
    "durably_steps",
    "durably_logs",
    "durably_schema_versions",
]


class InteropIn(BaseModel):
    values: list[int]
    label: str


class InteropOut(BaseModel):
    total: int
    count: int
    summary: str
    by: str


@define_job("interop-job", input=InteropIn, output=InteropOut)
async def interop_job(step: Step, payload: InteropIn) -> InteropOut:
    async def add() -> int:
        return sum(payload.values)

    async def count_values() -> dict[str, int]:
        return {"n": len(payload.values)}

    total = await step.run("sum", add)
    step.progress(1, 3, "summed")
    count = await step.run("count", count_values)
    step.progress(2, 3)
    step.log.info("counted", count=count["n"], label=payload.label)

    async def describe() -> str:
        return f"{payload.label}: {total}/{count['n']}"

    summary = await step.run("describe", describe)
    step.progress(3, message="done")
    return InteropOut(total=total, count=count["n"], summary=summary, by="python")


def _unavailable(reason: str) -> NoReturn:
    unavailable(f"interop with @coji/durably: {reason}")


@pytest.fixture(scope="module")
def node_ready() -> None:
    """Node and the packages scripts/setup-interop.sh installs (never installed here)."""
    if shutil.which("node") is None:
        _unavailable(f"node is not installed: run {SETUP.relative_to(ROOT)}")
    if not (INTEROP / "node_modules" / "@coji" / "durably" / "package.json").exists():
        _unavailable(f"the npm packages are not installed: run {SETUP.relative_to(ROOT)}")


def node(*args: str) -> dict[str, Any]:
    """Run a command of durably_node.mjs; its JSON answer (``{}`` when it prints none)."""
    done = subprocess.run(
        ["node", str(SCRIPT), *args],
        cwd=INTEROP,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"node {args[0]} failed:\n{done.stdout}\n{done.stderr}"
    assert "worker:error" not in done.stderr, done.stderr
    lines = done.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else {}


def query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def python_durably(db: Path | str) -> Durably:
    """A Python side on the SQLite file ``db`` (or on the database URL ``db``)."""
    return create_durably(
        db if isinstance(db, str) else f"sqlite:///{db}",
        jobs={"interop_job": interop_job},
        polling_interval=0.05,
        # no loaded machine outlasts it: a run claimed twice would have generation 2,
        # and the tests compare runs field by field
        lease_duration=60.0,
        lease_renew_interval=1.0,
        preserve_steps=True,
    )


async def python_trigger(db: Path | str) -> str:
    d = python_durably(db)  # migrated, never started: a Node worker executes the run
    try:
        await d.migrate()
        result = await d.jobs.interop_job.trigger(
            INPUT,
            labels={"origin": "python", "team/x": "a-1"},
            idempotency_key="from-python",
            concurrency_key="interop",
        )
        return result.run.id
    finally:
        await d.close()


async def python_work(db: Path | str, run_id: str) -> None:
    async with python_durably(db) as d:
        run = await d.wait_for_run(run_id, timeout=20)
        assert run.status == "completed"


async def python_read(db: Path | str, run_id: str) -> dict[str, Any]:
    d = python_durably(db)
    try:
        await d.migrate()
        run = await d.get_run(run_id)
        assert run is not None
        steps = await d.get_steps(run_id)
        logs = await d.get_logs(run_id)
        return {"run": run, "steps": steps, "logs": logs}
    finally:
        await d.close()


# -- normalizing what differs between two runs of the same input -----------------


def normalize_node(view: dict[str, Any]) -> dict[str, Any]:
    """Node's ``{run, steps, logs}`` with ids, times and owners replaced by their shape."""

    def scrub(record: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in record.items():
            if isinstance(value, str) and TS.match(value):
                out[key] = "<ts>"
            elif isinstance(value, str) and ULID.match(value):
                out[key] = "<ulid>"
            elif key == "leaseOwner" and value is not None:
                out[key] = "<owner>"
            else:
                out[key] = value
        return out

    return {
        "run": scrub(view["run"]),
        "steps": [scrub(s) for s in view["steps"]],
        "logs": [scrub(entry) for entry in view["logs"]],
    }


def normalize_python(view: dict[str, Any]) -> dict[str, Any]:
    run = view["run"]
    return {
        "run": {
            "job_name": run.job_name,
            "input": run.input,
            "status": str(run.status),
            "idempotency_key": run.idempotency_key,
            "concurrency_key": run.concurrency_key,
            "labels": run.labels,
            "current_step_index": run.current_step_index,
            "completed_step_count": run.completed_step_count,
            "progress": run.progress,
            "output": run.output,
            "error": run.error,
            "lease_owner": run.lease_owner,
            "lease_expires_at": run.lease_expires_at,
            "lease_generation": run.lease_generation,
            "times": [run.started_at is not None, run.completed_at is not None],
        },
        "steps": [(s.name, s.index, str(s.status), s.output, s.error) for s in view["steps"]],
        "logs": [(e.step_name, str(e.level), e.message, e.data) for e in view["logs"]],
    }


def raw_rows(db: Path, run_id: str) -> dict[str, list[tuple[Any, ...]]]:
    """The rows of one run as stored, with ids and times blanked: the on-disk formats."""

    def blank(row: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(
            "<ts>"
            if isinstance(v, str) and TS.match(v)
            else "<ulid>"
            if isinstance(v, str) and ULID.match(v)
            else v
            for v in row
        )

    def rows(sql: str) -> list[tuple[Any, ...]]:
        return [blank(r) for r in query(db, sql.replace("?", f"'{run_id}'"))]

    return {
        "run": rows(
            "SELECT job_name, input, status, idempotency_key, concurrency_key, labels, "
            "current_step_index, completed_step_count, progress, output, error, lease_owner, "
            "lease_expires_at, lease_generation, "
            "started_at, completed_at, created_at, updated_at FROM durably_runs WHERE id = ?"
        ),
        "labels": rows("SELECT key, value FROM durably_run_labels WHERE run_id = ? ORDER BY key"),
        "steps": rows(
            'SELECT name, "index", status, output, error, started_at, completed_at '
            'FROM durably_steps WHERE run_id = ? ORDER BY "index"'
        ),
        "logs": rows(
            "SELECT step_name, level, message, data, created_at FROM durably_logs "
            "WHERE run_id = ? ORDER BY created_at, id"
        ),
    }


def without_by(rows: dict[str, list[tuple[Any, ...]]]) -> dict[str, list[tuple[Any, ...]]]:
    """The output names who executed the run; everything else must be equal."""
    out = dict(rows)
    out["run"] = [
        tuple(
            v.replace('"by":"node"', '"by":"?"').replace('"by":"python"', '"by":"?"')
            if isinstance(v, str)
            else v
            for v in row
        )
        for row in rows["run"]
    ]
    return out


# -- the tests -------------------------------------------------------------------


@pytest.mark.usefixtures("node_ready")
async def test_schema_created_by_node_equals_ours(tmp_path: Path) -> None:
    node_db, py_db = tmp_path / "node.db", tmp_path / "py.db"
    node("schema", str(node_db))
    d = python_durably(py_db)
    try:
        await d.migrate()
    finally:
        await d.close()

    def master(db: Path) -> list[tuple[Any, ...]]:
        return query(
            db,
            "SELECT type, name, tbl_name, sql FROM sqlite_master "
            "WHERE name != 'durably_py_schema_versions' ORDER BY rowid",
        )

    # what the Python-side migrations add: durably_waits with its indexes, three
    # columns (with an index) at the end of durably_runs, durably_schedules,
    # durably_step_attempts
    added_objects = {
        "durably_waits",
        "idx_durably_runs_status_wake",
        "durably_schedules",
        "durably_step_attempts",
    }
    added_columns = ", waiting_on_wait_id TEXT, wake_at TEXT, attempt INTEGER NOT NULL DEFAULT 1)"

    def without_python_additions(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        out = []
        for kind, name, table, sql in rows:
            if name in added_objects or table in added_objects:
                continue
            if name == "durably_runs":
                assert sql.endswith(added_columns)
                sql = sql[: -len(added_columns)] + ")"
            out.append((kind, name, table, sql))
        return out

    assert without_python_additions(master(py_db)) == master(node_db)
    assert [r[1] for r in master(node_db) if r[0] == "table"] == TABLES
    for table in TABLES:
        py_columns = query(py_db, f"PRAGMA table_info({table})")
        node_columns = query(node_db, f"PRAGMA table_info({table})")
        assert py_columns[: len(node_columns)] == node_columns, table
        # (name, unique, origin, partial); the position differs with an added index
        node_indexes = [i[1:] for i in query(node_db, f"PRAGMA index_list({table})")]
        py_indexes = [
            i[1:] for i in query(py_db, f"PRAGMA index_list({table})") if i[1] not in added_objects
        ]
        assert sorted(py_indexes) == sorted(node_indexes), table
    for (index,) in query(node_db, "SELECT name FROM sqlite_master WHERE type = 'index'"):
        assert query(py_db, f"PRAGMA index_xinfo({index})") == query(
            node_db, f"PRAGMA index_xinfo({index})"
        ), index
    assert [r[0] for r in query(node_db, "SELECT version FROM durably_schema_versions")] == [1]
    assert [r[0] for r in query(py_db, "SELECT version FROM durably_schema_versions")] == [1]
    # Node accepts a database that Python created (it finds version 1 and adds nothing)
    before = query(py_db, "SELECT type, name, sql FROM sqlite_master ORDER BY rowid")
    node("schema", str(py_db))
    assert query(py_db, "SELECT type, name, sql FROM sqlite_master ORDER BY rowid") == before


@pytest.mark.usefixtures("node_ready")
async def test_node_triggers__python_executes__node_reads(tmp_path: Path) -> None:
    db, reference_db = tmp_path / "shared.db", tmp_path / "node-only.db"
    run_id = node("trigger", str(db), json.dumps(INPUT))["run"]["id"]
    await python_work(db, run_id)
    seen = node("get", str(db), run_id)

    run = seen["run"]
    assert run["id"] == run_id
    assert run["status"] == "completed"
    assert run["output"] == {"total": 42, "count": 3, "summary": "seven: 42/3", "by": "python"}
    assert run["progress"] == {"current": 3, "message": "done"}
    assert run["labels"] == {"origin": "node", "team/x": "a-1"}
    assert [s["name"] for s in seen["steps"]] == ["sum", "count", "describe"]
    assert [s["output"] for s in seen["steps"]] == [42, {"n": 3}, "seven: 42/3"]
    assert [(e["message"], e["data"]) for e in seen["logs"]] == [
        ("counted", {"count": 3, "label": "seven"})
    ]
    for key in ("startedAt", "completedAt", "createdAt", "updatedAt"):
        assert TS.match(run[key]), (key, run[key])

    # what Node sees equals what it sees of the same run executed by Node itself
    ref_id = node("trigger", str(reference_db), json.dumps(INPUT))["run"]["id"]
    node("work", str(reference_db), ref_id)
    reference = node("get", str(reference_db), ref_id)
    assert reference["run"]["output"]["by"] == "node"
    reference["run"]["output"]["by"] = "python"
    assert normalize_node(seen) == normalize_node(reference)
    assert without_by(raw_rows(db, run_id)) == without_by(raw_rows(reference_db, ref_id))


@pytest.mark.usefixtures("node_ready")
async def test_python_triggers__node_executes__python_reads(tmp_path: Path) -> None:
    db, reference_db = tmp_path / "shared.db", tmp_path / "python-only.db"
    run_id = await python_trigger(db)
    executed = node("work", str(db), run_id)["run"]
    assert executed["status"] == "completed", executed
    seen = await python_read(db, run_id)

    run = seen["run"]
    assert run.id == run_id
    assert run.status == "completed"
    assert run.output == {"total": 42, "count": 3, "summary": "seven: 42/3", "by": "node"}
    assert InteropOut.model_validate(run.output).total == 42
    assert run.progress is not None
    assert (run.progress.current, run.progress.total, run.progress.message) == (3, None, "done")
    assert run.labels == {"origin": "python", "team/x": "a-1"}
    assert run.started_at is not None
    assert run.completed_at is not None
    assert run.started_at <= run.completed_at
    assert [(s.name, s.output) for s in seen["steps"]] == [
        ("sum", 42),
        ("count", {"n": 3}),
        ("describe", "seven: 42/3"),
    ]
    assert [(e.message, e.data) for e in seen["logs"]] == [
        ("counted", {"count": 3, "label": "seven"})
    ]

    # what Python sees equals what it sees of the same run executed by Python itself
    ref_id = await python_trigger(reference_db)
    await python_work(reference_db, ref_id)
    reference = await python_read(reference_db, ref_id)
    expected = normalize_python(reference)
    expected["run"]["output"] = {**expected["run"]["output"], "by": "node"}
    assert normalize_python(seen) == expected
    assert without_by(raw_rows(db, run_id)) == without_by(raw_rows(reference_db, ref_id))


@define_job("interop-wait")
async def interop_wait(step: Step, payload: Any) -> Any:
    async def before() -> int:
        return 1

    first = await step.run("before", before)
    result = await step.wait_for(await step.prepare_wait("go"))
    return {"before": first, "got": result.payload}


@pytest.mark.usefixtures("node_ready")
async def test_node_worker__leaves_a_waiting_python_run_alone(tmp_path: Path) -> None:
    """A Node 0.15 worker sharing the database never claims (nor touches) a run that
    waits; Python resumes it afterwards."""
    db = tmp_path / "shared.db"

    def python() -> Durably:
        return create_durably(
            f"sqlite:///{db}",
            jobs={"w": interop_wait, "interop_job": interop_job},
            polling_interval=0.05,
        )

    async with python() as d:
        waiting_id = (await d.jobs.w.trigger({})).id
        run = await d.get_run(waiting_id)
        for _ in range(2000):
            run = await d.get_run(waiting_id)
            if run is not None and run.status == "waiting":
                break
            await asyncio.sleep(0.01)
        assert run is not None
        assert run.status == "waiting"
    row = f"SELECT * FROM durably_runs WHERE id = '{waiting_id}'"
    before = query(db, row)
    node_run = node("trigger", str(db), json.dumps(INPUT))["run"]["id"]
    done = node("work", str(db), node_run)
    assert done["run"]["status"] == "completed"
    assert node("get", str(db), waiting_id)["run"]["status"] == "waiting"
    assert query(db, row) == before, "the Node worker changed the waiting run"
    async with python() as d:
        await d.signal(waiting_id, "go", {"from": "python"})
        finished = await d.wait_for_run(waiting_id, timeout=20)
        assert finished.output == {"before": 1, "got": {"from": "python"}}
