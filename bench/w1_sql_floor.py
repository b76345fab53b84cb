"""W1's SQL alone: what a worker's statements cost with no engine around them.

W1 (400 runs x 10 trivial steps, 8 slots, ``synchronous=NORMAL``) sends, per wave
of 8 runs: 8 claims (each its own transaction), 8 reads of the runs' checkpoints,
10 groups of 8 checkpoints (the step INSERT, the run UPDATE and ``changes()`` per
step, one ``BEGIN IMMEDIATE`` … ``COMMIT`` per group) and one group of 8
completions (close waits, delete steps and logs, the fenced UPDATE). This sends the
same statements (durably's own SQL, imported) in the same order and grouping
straight through ``sqlite3``, WAL checkpoints on a second thread as the SQLite
executor does, and prints µs per step (wall and the thread's CPU) against the raw
one-INSERT-per-commit rate measured around it in the same round: the ratio W1
would reach at NORMAL if durably's Python cost nothing.

    uv run python bench/w1_sql_floor.py [--runs R] [--steps S] [--slots N] [--rounds K]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _bench import enqueue, raw_baseline, transaction
from w1_throughput import w1_job

from durably._timefmt import format_ts
from durably.sql import Statement
from durably.sql import storage as sql

_NOW = datetime(2026, 12, 4, 0, 0, 1, tzinfo=UTC)
_TS = format_ts(_NOW)
_EXPIRES = datetime(2100, 1, 1, tzinfo=UTC)
#: Rows changed between two WAL checkpoints on the other thread (the executor's own).
_CHECKPOINT_EVERY = 400


def replay(path: Path, steps: int, slots: int) -> tuple[float, float, dict[str, float]]:
    """(wall seconds, the thread's CPU seconds, seconds by part) of W1's statements."""
    conn = sqlite3.connect(path, isolation_level=None, cached_statements=1024)
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA busy_timeout = 0")
    conn.execute("PRAGMA wal_autocheckpoint = 4000")
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("PRAGMA synchronous = NORMAL")
    pool = ThreadPoolExecutor(1)
    running: Future[Any] | None = None
    cur = conn.cursor()
    claim = sql._claim_statement("w", _NOW, _EXPIRES)
    parts = dict.fromkeys(("claim", "read", "checkpoints", "completion"), 0.0)
    mark = conn.total_changes
    n = 0
    t0, c0 = time.perf_counter(), time.thread_time()
    while True:
        a = time.perf_counter()
        ids: list[str] = []
        for _ in range(slots):
            rows = cur.execute(*claim).fetchall()
            if not rows:
                break
            ids.append(rows[0][0])
        b = time.perf_counter()
        parts["claim"] += b - a
        if not ids:
            break
        for run_id in ids:
            cur.execute(sql._GET_COMPLETED_STEPS, (run_id,)).fetchall()
        c = time.perf_counter()
        parts["read"] += c - b
        for i in range(steps):
            statements: list[Statement] = []
            for run_id in ids:
                n += 1
                insert = (f"S{n:025d}", f"s{i}", i, "completed", "1", None, _TS, _TS, run_id, 1)
                statements += sql._checkpoint_statements(insert, (i + 1, _TS, run_id, 1))
            transaction(cur, statements)
            if conn.total_changes - mark >= _CHECKPOINT_EVERY and (
                running is None or running.done()
            ):
                mark = conn.total_changes
                running = pool.submit(other.execute, "PRAGMA wal_checkpoint(PASSIVE)")
        d = time.perf_counter()
        parts["checkpoints"] += d - c
        statements = []
        for run_id in ids:
            complete = ("1", _TS, _TS, run_id, 1)
            statements += sql._finish_statements(sql._COMPLETE, complete, _TS, delete_steps=True)
        transaction(cur, statements)
        parts["completion"] += time.perf_counter() - d
    elapsed, cpu = time.perf_counter() - t0, time.thread_time() - c0
    pool.shutdown()
    conn.close()
    other.close()
    return elapsed, cpu, parts


def main(args: argparse.Namespace) -> None:
    total = args.runs * args.steps
    for r in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            bare, _ = raw_baseline(d, "NORMAL", 1000)
            asyncio.run(enqueue(d / "d.db", w1_job, args.runs, {"steps": args.steps}))
            elapsed, cpu, parts = replay(d / "d.db", args.steps, args.slots)
            bare2, _ = raw_baseline(d, "NORMAL", 1000)
        raw = (bare + bare2) / 2
        wall = elapsed / total * 1e6
        split = ", ".join(f"{k} {v / total * 1e6:.1f}" for k, v in parts.items())
        print(
            f"round {r}: SQL alone {wall:.1f} µs per step ({cpu / total * 1e6:.1f} µs CPU); "
            f"raw insert {raw:.1f} µs: {raw / wall:.2f}x the raw rate with no engine; "
            f"µs per step: {split}",
            flush=True,
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    main(parser.parse_args())
