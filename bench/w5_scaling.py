"""W5 — scaling: 1, 2, 4 and 8 worker processes on one SQLite file.

The worker processes start first (``max_concurrent_runs`` 1 each, polling
0.05 s; each has already run one warm-up run on a throwaway file, so what a
first run imports lazily is not counted) and wait on an empty queue; this
process then enqueues R runs x S trivial steps with one ``batch_trigger`` and
waits until every run is completed (read from the file every 10 ms). With
``DURABLY_W5_COUNT=1`` each worker also counts what its executor did (slow paths,
their attempts, its thread's CPU, WAL checkpoints, claims that found nothing).
Raw one-``INSERT`` baselines (unless ``--no-inserts``): the same number of
processes each doing INSERT + commit in a loop on one shared file (busy timeout
30 s), as total inserts per second.

And the raw mix: the same number of plain ``sqlite3`` processes running, on a
file migrated and filled by durably (every index there, the same R runs from one
``batch_trigger``), the statements a durably worker runs per run — its SQL taken
from ``durably.sql.storage`` itself: the claim (one autocommit statement, as the
executor runs it), the read of the run's completed steps, S checkpoints (``BEGIN
IMMEDIATE``, the fenced step ``INSERT``, the fenced run ``UPDATE``, ``changes()``,
``COMMIT``) and the completion (its waits closed, its steps and logs deleted, the
fenced ``UPDATE … RETURNING 1``, in one ``BEGIN IMMEDIATE`` … ``COMMIT``), until a
claim finds nothing; SQLite's own busy handler waits for the lock (timeout 30 s).
No engine, no event loop: the ceiling of SQLite itself for durably's statements.
Both are timed the same way, from the first run's ``started_at`` to the last
run's ``completed_at`` as written in the file, and CPU is the processes' own.

    uv run python bench/w5_scaling.py [--runs R] [--steps S] [--sync NORMAL]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from _bench import emit, enqueue, header, print_table, raw_connect, sqlite_url, transaction

from durably import Step, create_durably, define_job
from durably._timefmt import format_ts, parse_ts
from durably.sql import storage as sql

POLL = 0.05
PROCESSES = (1, 2, 4, 8)


async def trivial() -> int:
    return 1


@define_job("w5")
async def w5_job(step: Step, payload: dict[str, Any]) -> int:
    for i in range(payload["steps"]):
        await step.run(f"s{i}", trivial)
    return payload["steps"]


class Counts:
    """What a worker's executor did (``DURABLY_W5_COUNT=1``): how often an operation
    found the write lock taken and went to the slow path, how many attempts the slow
    path made, the CPU of the executor's thread, the WAL checkpoints it started, and
    the claims that found nothing. Wraps the executor's methods in this process only."""

    def __init__(self) -> None:
        self.figures: dict[str, float] = dict.fromkeys(
            (
                "slow_paths",
                "slow_path_seconds",
                "attempts",
                "busy",
                "thread_cpu",
                "checkpoints",
                "checkpoint_seconds",
                "empty_claims",
            ),
            0,
        )

    def install(self) -> None:
        from durably_sqlite import _executor

        figures = self.figures
        cls = _executor.SqliteExecutor
        slow_path, in_thread, checkpoint = cls._slow_path, cls._in_thread, cls._checkpoint

        async def counted_slow_path(executor: Any, fn: Any, *args: Any) -> Any:
            figures["slow_paths"] += 1
            started = time.perf_counter()
            try:
                return await slow_path(executor, fn, *args)
            finally:
                figures["slow_path_seconds"] += time.perf_counter() - started

        def counted_in_thread(executor: Any, fn: Any, args: Any, timeout: float) -> Any:
            cpu0 = time.thread_time()

            def attempt(*a: Any) -> Any:
                figures["attempts"] += 1
                try:
                    return fn(*a)
                except sqlite3.Error:
                    figures["busy"] += 1
                    raise

            try:
                return in_thread(executor, attempt, args, timeout)
            finally:
                figures["thread_cpu"] += time.thread_time() - cpu0

        def counted_checkpoint(executor: Any, mode: str = "PASSIVE") -> bool:
            cpu0, started = time.thread_time(), time.perf_counter()
            figures["checkpoints"] += 1
            try:
                return checkpoint(executor, mode)
            finally:
                figures["thread_cpu"] += time.thread_time() - cpu0
                figures["checkpoint_seconds"] += time.perf_counter() - started

        from durably.sql import SqlStorage

        claim = SqlStorage.claim_next

        async def counted_claim(storage: Any, *a: Any, **k: Any) -> Any:
            run = await claim(storage, *a, **k)
            if run is None:
                figures["empty_claims"] += 1
            return run

        cls._slow_path = counted_slow_path  # type: ignore[method-assign]
        cls._in_thread = counted_in_thread  # type: ignore[method-assign]
        cls._checkpoint = counted_checkpoint  # type: ignore[method-assign]
        SqlStorage.claim_next = counted_claim  # type: ignore[method-assign]


async def warm_up(synchronous: str) -> None:
    """One run of the job on a throwaway file before "ready": what a process's first
    run imports and builds lazily (pydantic and its validators: ~150 ms of CPU where
    bytecode is not cached, as with PYTHONDONTWRITEBYTECODE) is start-up, not work
    per step. Without it each process added its own to the measured CPU: 8
    processes, 8 times (~300 µs per step of the 642 measured at 8)."""
    with tempfile.TemporaryDirectory() as tmp:
        async with create_durably(
            sqlite_url(Path(tmp) / "warm.db"), jobs={"w5": w5_job}, synchronous=synchronous
        ) as durably:
            await durably.jobs.w5.trigger_and_wait({"steps": 2})


async def worker(db: str, synchronous: str) -> None:
    """Work until SIGTERM; then print the CPU seconds used since "ready" (the run's
    share, without the start-up's imports), and with ``DURABLY_W5_COUNT`` what its
    executor did (``Counts``)."""
    profile_dir = os.environ.get("DURABLY_W5_PROFILE")
    # the loop thread's CPU time, not wall time: its waits (another process holding the
    # write lock, an idle queue) are not work
    profile = cProfile.Profile(time.thread_time) if profile_dir else None
    counts = Counts() if os.environ.get("DURABLY_W5_COUNT") else None
    if counts is not None:
        counts.install()
    await warm_up(synchronous)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with create_durably(
        sqlite_url(Path(db)), jobs={"w5": w5_job}, synchronous=synchronous, polling_interval=POLL
    ):
        if profile is not None:  # where a worker's time goes, dumped at the end
            profile.enable()
        cpu0 = time.process_time()
        print("ready", flush=True)
        await stop.wait()
        cpu = time.process_time() - cpu0
        if counts is not None:
            print(json.dumps(counts.figures), flush=True)
        if profile is not None:
            profile.disable()
            profile.dump_stats(str(Path(profile_dir) / f"w5-{Path(db).stem}-{os.getpid()}.prof"))
    print(json.dumps(cpu), flush=True)


RAW_CHILD = """
import json, sqlite3, sys, time
sys.path.insert(0, {bench!r})
from _bench import raw_connect, raw_insert
conn, sql = raw_connect({path!r}, {sync!r}, {shape!r})
key = "p%d" % {index}
raw_insert(conn, sql, {shape!r}, key, -1)
t0 = time.time()
for i in range({n}):
    raw_insert(conn, sql, {shape!r}, key, i)
print(json.dumps([t0, time.time()]))
"""


def raw_scaling(d: Path, synchronous: str, procs: int, shape: str, n: int) -> float:
    """Total INSERT + commit per second for ``procs`` processes on one file."""
    path = d / f"raw_{shape}_{procs}.db"
    conn, _ = raw_connect(path, synchronous, shape)  # create the file and table once
    conn.close()
    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                RAW_CHILD.format(
                    bench=str(Path(__file__).parent),
                    path=str(path),
                    sync=synchronous,
                    shape=shape,
                    index=i,
                    n=n,
                ),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(procs)
    ]
    spans = [json.loads(c.communicate()[0]) for c in children]
    start = min(s for s, _ in spans)
    end = max(e for _, e in spans)
    return procs * n / (end - start)


def raw_mix_child(db: str, synchronous: str, steps: int) -> None:
    """Run durably's per-run statements with plain sqlite3 until a claim finds nothing;
    then print [CPU seconds, runs done]. Waits for a line on stdin to start."""
    conn = sqlite3.connect(db, isolation_level=None, timeout=30.0, cached_statements=1024)
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    cur = conn.cursor()
    owner = f"raw:{os.getpid()}"
    print("ready", flush=True)
    sys.stdin.readline()
    cpu0 = time.process_time()
    done = 0
    while True:
        now = datetime.now(UTC)
        row = cur.execute(*sql._claim_statement(owner, now, now + timedelta(seconds=30)))
        claimed = row.fetchall()
        if not claimed:
            break
        run_id, generation = claimed[0][0], claimed[0][14]
        cur.execute(sql._GET_COMPLETED_STEPS, (run_id,)).fetchall()
        for i in range(steps):
            now_s = format_ts(datetime.now(UTC))
            step = (f"{run_id}-{i}", f"s{i}", i, "completed", "1", None, now_s, now_s)
            advance = (i + 1, now_s, run_id, generation)
            transaction(cur, sql._checkpoint_statements((*step, run_id, generation), advance))
        now_s = format_ts(datetime.now(UTC))
        complete = (str(steps), now_s, now_s, run_id, generation)
        transaction(cur, sql._finish_statements(sql._COMPLETE, complete, now_s, delete_steps=True))
        done += 1
    print(json.dumps([time.process_time() - cpu0, done]), flush=True)
    conn.close()


def spawn_raw_mix(db: Path, synchronous: str, steps: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, "--raw-mix", str(db), synchronous, str(steps)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def span(db: Path) -> float:
    """Seconds from the first run's start to the last run's completion, as written."""
    conn = sqlite3.connect(db)
    first, last = conn.execute(
        "SELECT MIN(started_at), MAX(completed_at) FROM durably_runs"
    ).fetchone()
    conn.close()
    return (parse_ts(last) - parse_ts(first)).total_seconds()


async def raw_mix_scaling(
    d: Path, synchronous: str, procs: int, runs: int, steps: int
) -> tuple[float, float]:
    """(span, CPU seconds) of ``procs`` plain sqlite3 processes running durably's
    statements for ``runs`` runs of ``steps`` checkpoints on a durably-made file."""
    db = d / f"rawmix_{procs}.db"
    await enqueue(db, w5_job, runs, {"steps": steps})
    children = [spawn_raw_mix(db, synchronous, steps) for _ in range(procs)]
    for c in children:
        assert c.stdout is not None
        assert c.stdout.readline().strip() == "ready"
    for c in children:
        assert c.stdin is not None
        c.stdin.write("go\n")
        c.stdin.flush()
    cpu = 0.0
    done = 0
    for c in children:
        out, _ = c.communicate()
        used, n = json.loads(out.strip().splitlines()[-1])
        cpu += used
        done += n
    assert done == runs, (done, runs)
    return span(db), cpu


def spawn_worker(db: Path, synchronous: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, "--worker", str(db), synchronous],
        stdout=subprocess.PIPE,
        text=True,
    )


async def durably_scaling(
    d: Path, synchronous: str, procs: int, runs: int, steps: int
) -> tuple[float, float, float, dict[str, float]]:
    """(seconds from the enqueue to the last completion with ``procs`` workers, the
    same from the first run's start to the last run's completion as written in the
    file, CPU seconds the workers used from start to exit: where the time went, and
    with ``DURABLY_W5_COUNT`` the workers' ``Counts`` summed, plus the WAL's largest
    size seen)."""
    db = d / f"durably_{procs}.db"
    durably = create_durably(sqlite_url(db), jobs={"w5": w5_job}, synchronous=synchronous)
    await durably.migrate()
    workers = [spawn_worker(db, synchronous) for _ in range(procs)]
    try:
        for w in workers:
            assert w.stdout is not None
            assert w.stdout.readline().strip() == "ready"
        await durably.jobs.w5.batch_trigger([{"steps": steps}] * runs)
        t0 = time.perf_counter()
        conn = sqlite3.connect(db)
        wal_max = 0.0
        while True:
            (done,) = conn.execute(
                "SELECT COUNT(*) FROM durably_runs WHERE status = 'completed'"
            ).fetchone()
            wal_max = max(wal_max, wal_size(db))
            if done >= runs:
                break
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - t0
        conn.close()
    finally:
        for w in workers:
            w.terminate()
        cpu = 0.0
        counts: dict[str, float] = {}
        for w in workers:
            out, _ = w.communicate()
            lines = out.strip().splitlines()
            cpu += json.loads(lines[-1])
            if len(lines) > 1 and lines[-2].startswith("{"):
                for key, value in json.loads(lines[-2]).items():
                    counts[key] = counts.get(key, 0) + value
        await durably.close()
    counts["wal_bytes"] = wal_max
    return elapsed, span(db), cpu, counts


def wal_size(db: Path) -> float:
    """The WAL file's size now (it grows until a checkpoint lets a writer start it
    again from the beginning; the last connection to close deletes it)."""
    wal = db.with_name(db.name + "-wal")
    return float(wal.stat().st_size) if wal.exists() else 0.0


async def main(
    runs: int, steps: int, synchronous: str, processes: tuple[int, ...], inserts: bool
) -> None:
    header(f"W5 scaling: {runs} runs x {steps} steps, 1/2/4/8 worker processes, {synchronous}")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for procs in processes:
            extra: dict[str, Any] = {}
            if inserts:
                bare = raw_scaling(d, synchronous, procs, "bare", 2000)
                shaped = raw_scaling(d, synchronous, procs, "steps", 2000)
                extra = {"raw_inserts_bare": bare, "raw_inserts_steps": shaped}
            mix_span, mix_cpu = await raw_mix_scaling(d, synchronous, procs, runs, steps)
            elapsed, our_span, cpu, counts = await durably_scaling(
                d, synchronous, procs, runs, steps
            )
            n = runs * steps
            for key in ("slow_paths", "attempts", "busy", "checkpoints", "empty_claims"):
                if key in counts:
                    extra[f"{key}_per_run"] = counts[key] / runs
            if "thread_cpu" in counts:
                extra["executor_thread_cpu_us_per_step"] = counts["thread_cpu"] / n * 1e6
                # the share of the workers' time spent waiting in the slow path
                extra["slow_path_share"] = counts["slow_path_seconds"] / (procs * our_span)
                # the share of the executor thread's time in WAL checkpoints (a slow
                # path arriving meanwhile waits for the thread)
                extra["checkpoint_share"] = counts["checkpoint_seconds"] / (procs * our_span)
            extra["wal_max_kib"] = counts["wal_bytes"] / 1024  # seen every 10 ms
            steps_s = n / our_span
            mix_s = n / mix_span
            emit(
                "W5",
                f"steps/s, {procs} worker process(es), synchronous={synchronous}",
                steps_s,
                "steps/s",
                raw=mix_s,
                raw_unit="steps/s (raw mix)",
                ratio=steps_s / mix_s,
                processes=procs,
                steps_s_from_enqueue=n / elapsed,
                runs_per_s=runs / our_span,
                cpu_us_per_step=cpu / n * 1e6,
                raw_mix_cpu_us_per_step=mix_cpu / n * 1e6,
                cpu_ratio=cpu / mix_cpu,
                cores_busy=cpu / our_span,
                raw_mix_cores_busy=mix_cpu / mix_span,
                **extra,
                note=(
                    f"{steps_s / mix_s:.2f}x the raw mix's rate; CPU per step "
                    f"{cpu / n * 1e6:,.0f} µs vs {mix_cpu / n * 1e6:,.0f} µs raw "
                    f"({cpu / mix_cpu:.2f}x); cores busy {cpu / our_span:.2f} vs "
                    f"{mix_cpu / mix_span:.2f}"
                ),
            )
    print_table()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        asyncio.run(worker(sys.argv[2], sys.argv[3]))
        sys.exit(0)
    if len(sys.argv) == 5 and sys.argv[1] == "--raw-mix":
        raw_mix_child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--sync", default="NORMAL")
    parser.add_argument("--processes", default=",".join(map(str, PROCESSES)))
    parser.add_argument(
        "--profile-dir",
        default=None,
        help="write each worker's cProfile stats there (w5-durably_<procs>-<pid>.prof)",
    )
    parser.add_argument(
        "--no-inserts",
        action="store_true",
        help="skip the one-INSERT-per-commit baselines (the raw mix is always measured)",
    )
    args = parser.parse_args()
    if args.profile_dir:
        os.environ["DURABLY_W5_PROFILE"] = str(Path(args.profile_dir).resolve())
    counts = tuple(int(p) for p in args.processes.split(","))
    asyncio.run(main(args.runs, args.steps, args.sync, counts, not args.no_inserts))
