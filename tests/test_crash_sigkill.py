"""A real crash: a worker process is SIGKILLed inside step ``s2`` of a 5-step run.

A second process takes the run over once the lease (1.5 s) has expired, replays
``s0`` and ``s1`` from their checkpoints without executing them, executes ``s2``
… ``s4`` and completes the run. The output equals that of the same run executed
uninterrupted by a third process on another database. What executed is known
from the step functions' own records, outside the database
(``tests/workers/durably_worker.py``).
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from process_support import Workers, query, read_records, wait_for
from workers.durably_worker import JOBS

from durably import create_durably

pytestmark = pytest.mark.slow


LEASE = ["--lease", "1.5", "--renew", "0.3", "--poll", "0.05", "--slots", "2"]
HOLD = "s2"
TIMEOUT = 20.0


async def trigger(db: Path) -> str:
    d = create_durably(f"sqlite:///{db}", jobs=JOBS)
    try:
        await d.migrate()
        return (await d.jobs.a.trigger({"n": 42})).run.id
    finally:
        await d.close()


def run_row(db: Path, run_id: str) -> dict[str, Any]:
    conn_rows = query(db, "SELECT * FROM durably_runs WHERE id = ?", run_id)
    names = [r[1] for r in query(db, "PRAGMA table_info(durably_runs)")]
    assert len(conn_rows) == 1
    return dict(zip(names, conn_rows[0], strict=True))


def of(records: list[dict[str, Any]], pid: int) -> list[tuple[str, str | None]]:
    return [
        (r["ev"], r.get("step"))
        for r in records
        if r["pid"] == pid and r["ev"] in ("job-start", "step-start", "step-end", "job-end")
    ]


def parse_ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


async def test_sigkill_mid_run_resumes_in_a_new_process(tmp_path: Path) -> None:
    crashed_db, clean_db = tmp_path / "crashed.db", tmp_path / "clean.db"
    records, clean_records, logs = tmp_path / "rec", tmp_path / "clean-rec", tmp_path / "logs"
    for p in (records, clean_records, logs, logs / "clean"):
        p.mkdir()
    run_id = await trigger(crashed_db)
    clean_id = await trigger(clean_db)

    with (
        Workers(crashed_db, records, logs) as workers,
        Workers(clean_db, clean_records, logs / "clean") as clean,
    ):
        first = workers.start(*LEASE, "--hold-step", HOLD)
        uninterrupted = clean.start(*LEASE)

        def inside_hold_step() -> bool:
            return ("step-start", HOLD) in of(read_records(records), first.pid)

        wait_for(inside_hold_step, f"worker inside {HOLD}", TIMEOUT, check=first.check_alive)
        first.kill()  # SIGKILL, reaped
        killed_at = time.monotonic_ns()
        assert first.proc.returncode == -9
        assert of(read_records(records), first.pid) == [
            ("job-start", None),
            ("step-start", "s0"),
            ("step-end", "s0"),
            ("step-start", "s1"),
            ("step-end", "s1"),
            ("step-start", "s2"),
        ]
        dead = run_row(crashed_db, run_id)
        assert dead["status"] == "leased"
        assert dead["lease_generation"] == 1
        assert query(
            crashed_db,
            "SELECT name FROM durably_steps WHERE run_id = ? AND status = 'completed' "
            'ORDER BY "index"',
            run_id,
        ) == [("s0",), ("s1",)]

        second = workers.start(*LEASE)

        def completed(db: Path, rid: str) -> bool:
            return query(db, "SELECT status FROM durably_runs WHERE id = ?", rid) == [
                ("completed",)
            ]

        wait_for(
            lambda: completed(crashed_db, run_id),
            "resumed run completed",
            TIMEOUT,
            check=second.check_alive,
        )
        wait_for(
            lambda: completed(clean_db, clean_id),
            "uninterrupted run completed",
            TIMEOUT,
            check=uninterrupted.check_alive,
        )
        workers.stop_all(timeout=10)
        clean.stop_all(timeout=10)

    recs = read_records(records)
    # the new process replayed s0 and s1 (no records) and executed s2..s4 once
    assert of(recs, second.pid) == [
        ("job-start", None),
        ("step-start", "s2"),
        ("step-end", "s2"),
        ("step-start", "s3"),
        ("step-end", "s3"),
        ("step-start", "s4"),
        ("step-end", "s4"),
        ("job-end", None),
    ]
    assert all(r["t"] > killed_at for r in recs if r["pid"] == second.pid and "step" in r)
    # ... and only once the dead worker's lease had expired
    leased = [r for r in recs if r["ev"] == "leased"]
    assert [(r["pid"], r["run"]) for r in leased] == [(first.pid, run_id), (second.pid, run_id)]
    assert leased[1]["wall"] >= parse_ts(dead["lease_expires_at"])
    assert [r for r in recs if r["ev"] == "worker-error"] == []

    done = run_row(crashed_db, run_id)
    assert done["lease_generation"] == 2
    assert done["started_at"] == dead["started_at"]  # the first claim's start is kept
    assert done["completed_step_count"] == 5
    assert query(
        crashed_db,
        "SELECT name, count(*) FROM durably_steps WHERE run_id = ? GROUP BY name ORDER BY name",
        run_id,
    ) == [(f"s{i}", 1) for i in range(5)]
    clean_run = run_row(clean_db, clean_id)
    assert clean_run["lease_generation"] == 1
    assert json.loads(done["output"]) == json.loads(clean_run["output"])
    assert done["output"] == clean_run["output"]
