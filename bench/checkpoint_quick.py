"""Quick check: µs per checkpoint through SqlStorage.persist_step vs raw sqlite3.

Raw: one ``INSERT`` + commit on a WAL file (the floor), into a bare 5-column
table and into a table shaped like ``durably_steps`` (same columns and indexes,
so the same pages are written). durably: a fenced
``persist_step`` of a completed step (INSERT … SELECT guard + UPDATE of the run,
one ``BEGIN IMMEDIATE`` transaction) through ``SqlStorage`` and the SQLite
executor, called from a coroutine. Medians of 3 rounds of N steps, at
``synchronous`` NORMAL and FULL.

    uv run python bench/checkpoint_quick.py [N]
"""

from __future__ import annotations

import asyncio
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from _bench import raw_us_per_insert

from durably import NewRun, NewStep, StepStatus
from durably_sqlite import open_sqlite

T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def durably_round(path: Path, synchronous: str, n: int, round_no: int) -> float:
    storage = open_sqlite(f"sqlite:///{path}", synchronous=synchronous)
    await storage.migrate()
    run_id = f"01BENCH{synchronous}{round_no:02d}".ljust(26, "0")
    await storage.enqueue(NewRun(id=run_id, job_name="bench", input_json="{}", created_at=T0))
    claimed = await storage.claim_next("w", T0, T0 + timedelta(hours=1), ["bench"])
    assert claimed is not None
    assert claimed.id == run_id
    gen = claimed.lease_generation
    steps = [
        NewStep(
            id=f"S{round_no}{synchronous[0]}{i:023d}",
            name=f"step-{i}",
            index=i,
            status=StepStatus.COMPLETED,
            output_json='{"i":1}',
            started_at=T0,
            completed_at=T0,
        )
        for i in range(n)
    ]
    start = time.perf_counter()
    for step in steps:
        ok = await storage.persist_step(run_id, gen, step, T0)
        assert ok
    elapsed = time.perf_counter() - start
    await storage.close()
    return elapsed / n * 1e6


async def main(n: int) -> None:
    print(f"SQLite {sqlite3.sqlite_version}, {n} checkpoints per round, median of 3 rounds")
    for synchronous in ("NORMAL", "FULL"):
        with tempfile.TemporaryDirectory() as tmp:
            bare: list[float] = []
            steps: list[float] = []
            ours: list[float] = []
            for r in range(3):  # interleaved, so load changes hit all three alike
                bare.append(raw_us_per_insert(Path(tmp) / "raw.db", synchronous, n, "bare"))
                steps.append(raw_us_per_insert(Path(tmp) / "raw_steps.db", synchronous, n, "steps"))
                ours.append(await durably_round(Path(tmp) / "durably.db", synchronous, n, r))
        b, s, d = (statistics.median(x) for x in (bare, steps, ours))
        print(
            f"synchronous={synchronous:<6}  raw INSERT+commit: bare table {b:7.1f} µs, "
            f"steps-shaped {s:7.1f} µs   persist_step {d:7.1f} µs   "
            f"ratio {d / b:4.2f}x / {d / s:4.2f}x"
        )


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000))
