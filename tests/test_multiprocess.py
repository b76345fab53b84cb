"""Four worker processes on one SQLite file.

510 runs of 5 steps: 340 without a concurrency key (triggered up front in one
batch), 170 with one of 3 keys, spread over two job names (a key guards runs
across jobs). Only one run per (job, key) may be pending, so keyed runs are fed
while the workers run: a trigger that hits the pending-key index is retried
once that run has been claimed — which also makes every keyed run wait for the
previous one of its key to finish, real contention on the claim guard.

The step functions record what really executed in per-process JSONL files
outside the database (``tests/workers/durably_worker.py``). Checked:

- every run completes exactly once: status ``completed`` with the expected
  output, claimed once (``lease_generation`` 1), its job function executed once;
- no step executes twice (one start and one end record per run and step), and
  the database holds exactly 5 completed steps per run;
- no two runs of one key overlap in time (job-start … job-end intervals per key,
  one monotonic clock for all processes);
- no storage error reaches the user: a ``SQLITE_BUSY`` that the SQLite executor
  could not absorb would surface as a ``worker:error`` event (claim, renewal,
  checkpoint…) or a failed run. We decided that *any* ``worker:error`` fails the
  test, transient or not: the executor's own bounded retries are the only
  acceptable handling of a busy database, so a busy that becomes visible at all
  is a bug — even when the worker loop's backoff would let the run complete.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
from process_support import Workers, query, read_records, wait_for
from workers.durably_worker import JOBS, STEPS

from durably import ConflictError, create_durably

pytestmark = pytest.mark.slow


WORKERS = 4
SLOTS = 4
UNKEYED = 340
KEYED = 170
KEYS = ["k0", "k1", "k2"]
TOTAL = UNKEYED + KEYED
DEADLINE = 60.0


def expected_values(n: int) -> list[int]:
    values, previous = [], n
    for i in range(STEPS):
        previous = (previous * 1_000_003 + n * 7 + i) % 2_147_483_647
        values.append(previous)
    return values


async def test_four_processes_share_one_file(tmp_path: Path) -> None:
    db = tmp_path / "mp.db"
    records = tmp_path / "records"
    logs = tmp_path / "logs"
    records.mkdir()
    logs.mkdir()
    started = time.monotonic()

    d = create_durably(f"sqlite:///{db}", jobs=JOBS)
    await d.migrate()  # the parent only triggers: its worker is never started
    try:
        unkeyed = [{"n": n} for n in range(UNKEYED)]
        await d.jobs.a.batch_trigger(unkeyed[: UNKEYED // 2])
        await d.jobs.b.batch_trigger(unkeyed[UNKEYED // 2 :])
        # keyed runs: n, key and job chosen round-robin; fed as the pending slots free up
        todo: list[tuple[int, str, str]] = [
            (UNKEYED + i, KEYS[i % len(KEYS)], "ab"[(i // len(KEYS)) % 2]) for i in range(KEYED)
        ]
        with Workers(db, records, logs) as workers:
            for _ in range(WORKERS):
                workers.start("--slots", str(SLOTS), "--poll", "0.02")
            conflicts = 0
            deadline = time.monotonic() + DEADLINE
            while todo:
                waiting: list[tuple[int, str, str]] = []
                for n, key, job in todo:
                    try:
                        await d.jobs[job].trigger({"n": n, "key": key}, concurrency_key=key)
                    except ConflictError:
                        conflicts += 1
                        waiting.append((n, key, job))
                if len(waiting) == len(todo):
                    workers.check_alive()
                    assert time.monotonic() < deadline, f"{len(todo)} keyed runs not triggered"
                    await asyncio.sleep(0.005)  # a pending run of each (job, key) waits for a claim
                todo = waiting
            fed = time.monotonic()

            def all_completed() -> bool:
                rows = query(db, "SELECT count(*) FROM durably_runs WHERE status = 'completed'")
                return bool(rows[0][0] == TOTAL)

            wait_for(
                all_completed,
                f"{TOTAL} runs completed",
                timeout=max(1.0, deadline - time.monotonic()),
                interval=0.05,
                check=workers.check_alive,
            )
            done = time.monotonic()
            workers.stop_all(timeout=15)
            pids = {w.pid for w in workers.started}
    finally:
        await d.close()

    runs = query(
        db,
        "SELECT id, status, concurrency_key, lease_generation, output, error, "
        "completed_step_count FROM durably_runs",
    )
    assert len(runs) == TOTAL
    by_id: dict[str, dict[str, Any]] = {}
    for rid, status, key, generation, output, error, completed_steps in runs:
        assert (status, error, generation, completed_steps) == ("completed", None, 1, STEPS), rid
        out = json.loads(output)
        assert out["values"] == expected_values(out["n"])
        by_id[rid] = {"key": key, "n": out["n"]}
    assert sorted(r["n"] for r in by_id.values()) == list(range(TOTAL))
    keys: dict[str | None, int] = {
        None: UNKEYED,
        **{k: KEYED // len(KEYS) + (1 if i < KEYED % len(KEYS) else 0) for i, k in enumerate(KEYS)},
    }
    assert Counter(r["key"] for r in by_id.values()) == keys
    steps = query(
        db,
        "SELECT run_id, count(*), count(DISTINCT name) FROM durably_steps "
        "WHERE status = 'completed' GROUP BY run_id",
    )
    assert len(steps) == TOTAL
    assert all(count == distinct == STEPS for _, count, distinct in steps)
    assert query(db, "SELECT count(*) FROM durably_steps WHERE status != 'completed'") == [(0,)]

    recs = read_records(records)
    errors = [r for r in recs if r["ev"] == "worker-error"]
    assert errors == [], errors
    by_event: dict[str, Counter[Any]] = defaultdict(Counter)
    for r in recs:
        if r["ev"] in ("job-start", "job-end"):
            by_event[r["ev"]][r["run"]] += 1
        elif r["ev"] in ("step-start", "step-end"):
            by_event[r["ev"]][(r["run"], r["step"])] += 1
    for ev in ("job-start", "job-end"):
        assert set(by_event[ev]) == set(by_id), ev
        assert set(by_event[ev].values()) == {1}, f"a run's job function executed twice ({ev})"
    for ev in ("step-start", "step-end"):
        assert len(by_event[ev]) == TOTAL * STEPS, ev
        assert set(by_event[ev].values()) == {1}, f"a step executed twice ({ev})"
    workers_used = Counter(r["pid"] for r in recs if r["ev"] == "job-start")
    assert set(workers_used) == pids, f"every worker executed runs: {workers_used}"

    # no two runs of one key overlap: sort each key's [job-start, job-end] intervals
    intervals: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    start_of = {r["run"]: r for r in recs if r["ev"] == "job-start"}
    for r in recs:
        if r["ev"] == "job-end" and r["key"] is not None:
            intervals[r["key"]].append((start_of[r["run"]]["t"], r["t"], r["run"]))
    keyed_pids = Counter(start_of[rid]["pid"] for rid, r in by_id.items() if r["key"])
    for key, spans in intervals.items():
        spans.sort()
        for (s1, e1, r1), (s2, e2, r2) in itertools.pairwise(spans):
            assert s1 < e1 <= s2 < e2, f"runs {r1} and {r2} of key {key} overlap"
    assert len(keyed_pids) > 1, "keyed runs ran in several processes"

    print(
        f"\n{TOTAL} runs x {STEPS} steps, {WORKERS} processes x {SLOTS} slots: fed keyed runs "
        f"in {fed - started:.1f}s ({conflicts} pending-key conflicts retried), all completed "
        f"after {done - started:.1f}s; runs per process {sorted(workers_used.values())}"
    )
