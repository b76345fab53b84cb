"""Several worker processes sharing one database file; every run executes once.

    uv run python examples/multi_worker.py            # 3 workers, 30 runs

The parent queues the runs, then starts worker processes that compete for them.
A claim is one atomic statement in the database, so two workers never get the
same run, and each run's writes are fenced by its lease. Each worker drains the
queue with ``process_until_idle()`` and reports which runs it executed; the
parent checks that together they executed every run exactly once.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor

from pydantic import BaseModel

from durably import RunCompleteEvent, Step, create_durably, define_job

WORKERS = int(os.environ.get("MULTI_WORKERS", "3"))
RUNS = int(os.environ.get("MULTI_RUNS", "30"))
STEP_SECONDS = float(os.environ.get("MULTI_STEP_SECONDS", "0.1"))


class ThumbIn(BaseModel):
    image: int


@define_job("thumbnail", input=ThumbIn, output=str)
async def thumbnail(step: Step, job: ThumbIn) -> str:
    await step.run("render", asyncio.sleep, STEP_SECONDS)
    return f"thumbs/{job.image}.png"


async def drain(name: str) -> list[str]:
    """One worker: execute runs until none is left to claim; return their ids."""
    executed: list[str] = []

    def on_complete(event: RunCompleteEvent) -> None:
        executed.append(event.run_id)

    durably = create_durably(jobs={"thumbnail": thumbnail})
    durably.on("run:complete", on_complete)
    try:
        # No background worker: process_until_idle() claims and runs one run after
        # another in this task and returns when nothing is left (cron/serverless style).
        await durably.process_until_idle()
    finally:
        await durably.close()
    return executed


def worker_process(name: str) -> tuple[str, list[str]]:
    executed = asyncio.run(drain(name))
    # reported by the parent: lines printed by several processes at once can interleave
    return f"{name} (pid {os.getpid()}) executed {len(executed)} runs", executed


async def enqueue() -> list[str]:
    durably = create_durably(jobs={"thumbnail": thumbnail})
    try:
        results = await durably.jobs.thumbnail.batch_trigger([{"image": i} for i in range(RUNS)])
        return [r.id for r in results]
    finally:
        await durably.close()


async def check(run_ids: list[str], executed: list[str]) -> bool:
    durably = create_durably(jobs={"thumbnail": thumbnail})
    try:
        runs = [await durably.get_run(run_id) for run_id in run_ids]
    finally:
        await durably.close()
    counts = Counter(executed)
    completed = sum(1 for run in runs if run is not None and run.status == "completed")
    twice = [run_id for run_id, n in counts.items() if n > 1]
    missing = set(run_ids) - set(counts)
    print(f"runs: {len(run_ids)}, completed: {completed}, executions: {len(executed)}")
    print(f"executed twice: {len(twice)}, never executed: {len(missing)}")
    return completed == len(run_ids) and not twice and not missing


def main() -> None:
    run_ids = asyncio.run(enqueue())
    print(f"queued {len(run_ids)} runs; starting {WORKERS} workers", flush=True)
    # "spawn": fresh interpreters, as separate machines or containers would be
    # (and the only start method that is safe with threads and event loops).
    context = multiprocessing.get_context("spawn")
    names = [f"worker-{n}" for n in range(1, WORKERS + 1)]
    with ProcessPoolExecutor(max_workers=WORKERS, mp_context=context) as pool:
        reports = list(pool.map(worker_process, names))
    for line, _ in reports:
        print(line)
    executed = [run_id for _, report in reports for run_id in report]
    ok = asyncio.run(check(run_ids, executed))
    print("check: every run executed exactly once" if ok else "check: FAILED")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
