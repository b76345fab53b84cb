"""W5 — scaling: 1, 2, 4 and 8 worker processes on one SQLite file.

The worker processes start first (``max_concurrent_runs`` 1 each, polling
0.05 s) and wait on an empty queue; this process then enqueues R runs x S
trivial steps with one ``batch_trigger`` and the clock runs until every run is
completed (read from the file every 10 ms). Raw sqlite3 in the same run: the
same number of processes each doing INSERT + commit in a loop on one shared
file (busy timeout 30 s), as total inserts per second.

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
from pathlib import Path
from typing import Any

from _bench import emit, header, print_table, raw_connect, sqlite_url

from durably import Step, create_durably, define_job

POLL = 0.05
PROCESSES = (1, 2, 4, 8)


async def trivial() -> int:
    return 1


@define_job("w5")
async def w5_job(step: Step, payload: dict[str, Any]) -> int:
    for i in range(payload["steps"]):
        await step.run(f"s{i}", trivial)
    return payload["steps"]


async def worker(db: str, synchronous: str) -> None:
    """Work until SIGTERM; then print the CPU seconds used since "ready" (the run's
    share, without the start-up's imports)."""
    profile_dir = os.environ.get("DURABLY_W5_PROFILE")
    profile = cProfile.Profile() if profile_dir else None
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


def spawn_worker(db: Path, synchronous: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, "--worker", str(db), synchronous],
        stdout=subprocess.PIPE,
        text=True,
    )


async def durably_scaling(
    d: Path, synchronous: str, procs: int, runs: int, steps: int
) -> tuple[float, float]:
    """(seconds from the enqueue to the last completion with ``procs`` workers, CPU
    seconds the workers used from start to exit: where the time went)."""
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
        while True:
            (done,) = conn.execute(
                "SELECT COUNT(*) FROM durably_runs WHERE status = 'completed'"
            ).fetchone()
            if done >= runs:
                break
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - t0
        conn.close()
    finally:
        for w in workers:
            w.terminate()
        cpu = 0.0
        for w in workers:
            out, _ = w.communicate()
            cpu += json.loads(out.strip().splitlines()[-1])
        await durably.close()
    return elapsed, cpu


async def main(runs: int, steps: int, synchronous: str, processes: tuple[int, ...]) -> None:
    header(f"W5 scaling: {runs} runs x {steps} steps, 1/2/4/8 worker processes, {synchronous}")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for procs in processes:
            bare = raw_scaling(d, synchronous, procs, "bare", 2000)
            shaped = raw_scaling(d, synchronous, procs, "steps", 2000)
            elapsed, cpu = await durably_scaling(d, synchronous, procs, runs, steps)
            steps_s = runs * steps / elapsed
            emit(
                "W5",
                f"steps/s, {procs} worker process(es), synchronous={synchronous}",
                steps_s,
                "steps/s",
                raw=bare,
                raw_steps=shaped,
                raw_unit="inserts/s",
                ratio=bare / steps_s,
                ratio_steps=shaped / steps_s,
                processes=procs,
                runs_per_s=runs / elapsed,
                cpu_us_per_step=cpu / (runs * steps) * 1e6,
                cores_busy=cpu / elapsed,
                note=(
                    f"{runs / elapsed:,.0f} runs/s; workers' CPU {cpu / (runs * steps) * 1e6:,.0f} "
                    f"µs per step, {cpu / elapsed:.2f} cores busy; raw = {procs} process(es) "
                    "inserting"
                ),
            )
    print_table()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        asyncio.run(worker(sys.argv[2], sys.argv[3]))
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
    args = parser.parse_args()
    if args.profile_dir:
        os.environ["DURABLY_W5_PROFILE"] = str(Path(args.profile_dir).resolve())
    counts = tuple(int(p) for p in args.processes.split(","))
    asyncio.run(main(args.runs, args.steps, args.sync, counts))
