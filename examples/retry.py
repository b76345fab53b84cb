"""Failed runs: find them, retry them (they resume), and cancel a running one.

    uv run python examples/retry.py

A failed run keeps its completed steps. ``retry(run_id)`` puts it back to
``pending`` — same id, same input — and the worker resumes it after the last
completed step: the functions of finished steps are not called again.
``cancel(run_id)`` stops a pending or running run; a cancelled run can be
retried the same way.
"""

from __future__ import annotations

import asyncio
import os
import threading

from pydantic import BaseModel

from durably import (
    RunCancelledError,
    RunFailedError,
    Step,
    StepCompleteEvent,
    create_durably,
    define_job,
)

STEP_SECONDS = float(os.environ.get("RETRY_STEP_SECONDS", "0.3"))

# The "upstream API" is down until we say it is back.
upstream_is_back = threading.Event()


class ImportIn(BaseModel):
    source: str


def fetch(source: str) -> list[int]:
    print(f"  fetch({source!r}) called", flush=True)
    return [3, 1, 2]


def transform(rows: list[int]) -> list[int]:
    print(f"  transform({rows}) called", flush=True)
    if not upstream_is_back.is_set():
        raise ConnectionError("upstream API unavailable (503)")
    return sorted(rows)


def save(rows: list[int]) -> int:
    print(f"  save({rows}) called", flush=True)
    return len(rows)


@define_job("import-orders", input=ImportIn, output=int)
async def import_orders(step: Step, job: ImportIn) -> int:
    rows = await step.run("fetch", fetch, job.source)
    rows = await step.run("transform", transform, rows)
    saved: int = await step.run("save", save, rows)
    return saved


@define_job("export-all", output=int)
async def export_all(step: Step, _: None) -> int:
    for page in range(100):
        # Async steps are cancelled at once; sync code in a thread should poll
        # step.cancelled (or call step.raise_if_cancelled()) in its loops.
        await step.run(f"page-{page}", asyncio.sleep, STEP_SECONDS)
        print(f"  exported page {page}", flush=True)
    return 100


async def main() -> None:
    async with create_durably(
        jobs={"import_orders": import_orders, "export_all": export_all}, polling_interval=0.2
    ) as durably:
        print("1. first attempt")
        try:
            await durably.jobs.import_orders.trigger_and_wait({"source": "shop-eu"})
        except RunFailedError as exc:
            print(f"   failed: {exc}")

        print("2. inspect failed runs")
        failed = await durably.get_runs(status="failed", job_name="import-orders")
        for run in failed:
            steps = await durably.get_steps(run.id)
            done = ", ".join(f"{s.name}={s.status.value}" for s in steps)
            print(f"   {run.id} error={run.error!r} steps: {done}")

        print("3. upstream is back: retry (fetch is replayed, not called)")
        upstream_is_back.set()
        for run in failed:
            await durably.retry(run.id)
            done_run = await durably.wait_for_run(run.id)
            print(f"   {done_run.id} {done_run.status.value}, output={done_run.output}")

        print("4. cancel a running export")
        export = await durably.jobs.export_all.trigger(None)
        # Wait until it has made some progress, then cancel it.
        two_pages = asyncio.Event()

        def on_step(event: StepCompleteEvent) -> None:
            if event.run_id == export.id and event.step_index == 1:
                two_pages.set()

        durably.on("step:complete", on_step)
        await two_pages.wait()
        await durably.cancel(export.id)
        try:
            await durably.wait_for_run(export.id)
        except RunCancelledError as exc:
            print(f"   {exc}")
        cancelled = await durably.get_run(export.id)
        assert cancelled is not None
        print(f"   status={cancelled.status.value} after {cancelled.completed_step_count} pages")


if __name__ == "__main__":
    asyncio.run(main())
