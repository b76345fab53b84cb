"""Durable waits on a SQLite file (WAL, synchronous=NORMAL): what issue 14 asks to measure.

- Slots: a worker with ``max_concurrent_runs=1`` and 100 runs waiting for a signal;
  one more trigger: ms from ``trigger`` to that run's completion, against the same
  with no waiting runs (its baseline, measured in the same run).
- Resume after a signal, in-process: ms from ``durably.signal`` to the first step
  after the wait (the worker is woken at once; the default polling interval of 1 s
  is not waited for).
- Resume after a signal from another process: this process signals, a worker in
  another process (``polling_interval`` P) resumes the run: bounded by P.
- Suspension and resumption cost: ms per run of a job that waits once (trigger,
  run to the wait, suspend, signal, resume, complete) against the same job without
  the wait.

Raw sqlite3 in the same run: one INSERT + commit (the floor of any write).

    uv run python bench/waits.py [--samples N]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _bench import emit, header, percentile, print_table, raw_baseline, sqlite_url

from durably import Durably, RunStatus, Step, create_durably, define_job

SYNC = "NORMAL"


async def now_perf() -> float:
    return time.perf_counter()


async def now_wall() -> float:
    return time.time()


@define_job("waiter")
async def waiter(step: Step, payload: dict[str, Any]) -> Any:
    got = await step.wait_for(await step.prepare_wait("go"))
    fn = now_wall if payload.get("wall") else now_perf
    return {"resumed": await step.run("resumed", fn), "got": got.payload}


@define_job("plain")
async def plain(step: Step, payload: dict[str, Any]) -> float:
    return await step.run("only", now_perf)


@define_job("once")
async def once(step: Step, payload: dict[str, Any]) -> Any:
    await step.run("before", now_perf)
    if payload.get("wait"):
        await step.wait_for(await step.prepare_wait("go"))
    return await step.run("after", now_perf)


JOBS = {"waiter": waiter, "plain": plain, "once": once}


async def until(d: Durably, run_id: str, status: RunStatus) -> None:
    for _ in range(100_000):
        run = await d.get_run(run_id)
        if run is not None and run.status is status:
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"run {run_id} never became {status.value}")


async def slots(path: Path, waiting: int, samples: int) -> list[float]:
    """ms from trigger to completion of a plain run with ``waiting`` runs waiting."""
    async with create_durably(
        sqlite_url(path), jobs=JOBS, synchronous=SYNC, max_concurrent_runs=1
    ) as d:
        ids = [(await d.jobs.waiter.trigger({"i": i})).id for i in range(waiting)]
        for run_id in ids:
            await until(d, run_id, RunStatus.WAITING)
        out = []
        for _ in range(samples):
            t0 = time.perf_counter()
            await d.jobs.plain.trigger_and_wait({}, timeout=60)
            out.append((time.perf_counter() - t0) * 1000)
        return out


async def resume_in_process(path: Path, samples: int) -> list[float]:
    out = []
    async with create_durably(sqlite_url(path), jobs=JOBS, synchronous=SYNC) as d:
        for i in range(samples):
            run_id = (await d.jobs.waiter.trigger({"i": i})).id
            await until(d, run_id, RunStatus.WAITING)
            t0 = time.perf_counter()
            await d.signal(run_id, "go", i)
            run = await d.wait_for_run(run_id, timeout=60)
            out.append((run.output["resumed"] - t0) * 1000)
    return out


WORKER = """
import asyncio, sys
sys.path.insert(0, sys.argv[3])
from waits import JOBS
from durably import create_durably

async def main():
    async with create_durably(sys.argv[1], jobs=JOBS, polling_interval=float(sys.argv[2])):
        await asyncio.Event().wait()

asyncio.run(main())
"""


def start_worker(url: str, polling: float) -> subprocess.Popen[bytes]:
    here = str(Path(__file__).parent)
    return subprocess.Popen([sys.executable, "-c", WORKER, url, str(polling), here])


async def resume_elsewhere(path: Path, samples: int, polling: float) -> list[float]:
    url = sqlite_url(path)
    worker = start_worker(url, polling)
    out = []
    try:
        d = create_durably(url, jobs=JOBS, synchronous=SYNC)  # no worker here
        await d.migrate()
        for i in range(samples):
            run_id = (await d.jobs.waiter.trigger({"i": i, "wall": True})).id
            await until(d, run_id, RunStatus.WAITING)
            t0 = time.time()
            await d.signal(run_id, "go", i)
            run = await d.wait_for_run(run_id, timeout=60)
            out.append((run.output["resumed"] - t0) * 1000)
        await d.close()
    finally:
        worker.terminate()
        worker.wait(30)
    return out


async def per_run(path: Path, samples: int, wait: bool) -> float:
    """ms per run of ``once``, triggered and finished one after another."""
    async with create_durably(sqlite_url(path), jobs=JOBS, synchronous=SYNC) as d:
        t0 = time.perf_counter()
        for i in range(samples):
            run_id = (await d.jobs.once.trigger({"wait": wait, "i": i})).id
            if wait:
                await until(d, run_id, RunStatus.WAITING)
                await d.signal(run_id, "go", i)
            await d.wait_for_run(run_id, timeout=60)
        return (time.perf_counter() - t0) * 1000 / samples


async def main(samples: int) -> None:
    header("durable waits")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        raw, _ = raw_baseline(base, SYNC, 2000)
        none = await slots(base / "s0.db", 0, samples)
        hundred = await slots(base / "s100.db", 100, samples)
        emit(
            "waits",
            "trigger → completed, 1 slot, no waiting runs (ms, median)",
            statistics.median(none),
            "ms",
        )
        emit(
            "waits",
            "trigger → completed, 1 slot, 100 runs waiting (ms, median)",
            statistics.median(hundred),
            "ms",
            note=f"{statistics.median(hundred) / statistics.median(none):.2f}x the baseline",
        )
        inproc = await resume_in_process(base / "r.db", samples)
        median = statistics.median(inproc)
        emit("waits", "signal → resumed, same process (ms, median)", median, "ms")
        emit("waits", "signal → resumed, same process (ms, p95)", percentile(inproc, 95), "ms")
        polling = 0.5
        other = await resume_elsewhere(base / "o.db", samples, polling)
        emit(
            "waits",
            f"signal → resumed by another process, polling {polling} s (ms, median)",
            statistics.median(other),
            "ms",
            note=f"max {max(other):.0f} ms; bounded by the polling interval",
        )
        without = await per_run(base / "p0.db", samples, wait=False)
        with_wait = await per_run(base / "p1.db", samples, wait=True)
        emit("waits", "ms per run, 2 steps, no wait", without, "ms", raw=raw, raw_unit="µs")
        emit(
            "waits",
            "ms per run, 2 steps + one wait (suspend, signal, resume)",
            with_wait,
            "ms",
            raw=raw,
            raw_unit="µs",
            note=f"{with_wait / without:.2f}x the run without the wait",
        )
    print_table()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(main(args.samples))
