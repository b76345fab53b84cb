"""W4 — latency from trigger to the first step's start.

- In-process: the worker runs in the process that triggers (default
  ``polling_interval`` 1 s: the in-process wake-up, not polling, must start the
  run). N sequential ``trigger_and_wait`` calls; the first step returns
  ``perf_counter()``; latency = that − the time just before ``trigger``.
- From another process: a worker process (``polling_interval`` P) and this
  process triggering without a worker; the first step returns ``time.time()``.
  Bounded by P (plus a claim): the worker only learns of the run when it polls.

Raw sqlite3 in the same run: one INSERT + commit (a trigger's floor).

    uv run python bench/w4_latency.py [--samples N] [--remote-samples M]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _bench import emit, header, percentile, print_table, raw_baseline, sqlite_url

from durably import Step, create_durably, define_job

SYNC = "NORMAL"


async def mark_perf() -> float:
    return time.perf_counter()


async def mark_wall() -> float:
    return time.time()


@define_job("w4")
async def w4_job(step: Step, payload: dict[str, Any]) -> float:
    fn = mark_wall if payload.get("wall") else mark_perf
    started = await step.run("first", fn)
    await step.run("second", mark_perf)
    return started


async def in_process(path: Path, samples: int) -> list[float]:
    latencies: list[float] = []
    async with create_durably(
        sqlite_url(path), jobs={"w4": w4_job}, synchronous=SYNC, polling_interval=1.0
    ) as durably:
        for i in range(samples + 5):
            t0 = time.perf_counter()
            result = await durably.jobs.w4.trigger_and_wait({})
            if i >= 5:  # warm-up
                latencies.append((result.output - t0) * 1000.0)
    return latencies


async def worker(path: str, poll: float) -> None:
    async with create_durably(
        sqlite_url(Path(path)), jobs={"w4": w4_job}, synchronous=SYNC, polling_interval=poll
    ):
        print("ready", flush=True)
        await asyncio.Event().wait()


def spawn_worker(path: Path, poll: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, "--worker", str(path), str(poll)],
        stdout=subprocess.PIPE,
        text=True,
    )


async def other_process(path: Path, poll: float, samples: int) -> list[float]:
    durably = create_durably(
        sqlite_url(path), jobs={"w4": w4_job}, synchronous=SYNC, polling_interval=0.01
    )
    await durably.migrate()
    proc = spawn_worker(path, poll)
    latencies: list[float] = []
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        # warm-up, not counted: the worker's first run builds its validators and caches
        warm = await durably.jobs.w4.trigger({"wall": True})
        await durably.wait_for_run(warm.id, timeout=30)
        for _ in range(samples):
            await asyncio.sleep(random.uniform(0, poll))  # any phase of the worker's poll
            t0 = time.time()
            run = await durably.jobs.w4.trigger({"wall": True})
            result = await durably.wait_for_run(run.id, timeout=30)
            latencies.append((result.output - t0) * 1000.0)
    finally:
        proc.terminate()
        proc.wait()
        await durably.close()
    return latencies


async def main(samples: int, remote_samples: int) -> None:
    header(f"W4 latency, synchronous={SYNC}")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        bare, shaped = raw_baseline(d, SYNC, 1000)
        lat = await in_process(d / "inproc.db", samples)
        med = statistics.median(lat)
        raw_ms = bare / 1000.0
        emit(
            "W4",
            "trigger → first step, in-process, median",
            med,
            "ms",
            raw=raw_ms,
            raw_steps=shaped / 1000.0,
            raw_unit="ms",
            ratio=med / raw_ms,
            ratio_steps=med / (shaped / 1000.0),
            samples=samples,
            note="raw = one INSERT + commit",
        )
        emit("W4", "trigger → first step, in-process, p99", percentile(lat, 99), "ms")
        for poll in (0.1, 1.0):
            remote = await other_process(d / f"remote{poll}.db", poll, remote_samples)
            emit(
                "W4",
                f"trigger → first step, other process, polling {poll:g} s, median",
                statistics.median(remote),
                "ms",
                samples=remote_samples,
                bound_ms=poll * 1000.0,
                note=f"bound: polling interval {poll * 1000:g} ms",
            )
            emit(
                "W4",
                f"trigger → first step, other process, polling {poll:g} s, max",
                max(remote),
                "ms",
                p99=percentile(remote, 99),
                bound_ms=poll * 1000.0,
            )
    print_table()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        os.environ.setdefault("PYTHONUNBUFFERED", "1")
        asyncio.run(worker(sys.argv[2], float(sys.argv[3])))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--remote-samples", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(main(args.samples, args.remote_samples))
