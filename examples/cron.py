"""Run a job on a cron schedule from any number of workers: each slot runs once.

    uv run python examples/cron.py                                     # every minute, forever
    uv run python examples/cron.py --every "* * * * * *" --runs 3      # every second, 3 runs

The schedule is declared with the job (``define_job(schedule=Schedule(...))``); a
worker stores it in the database when it starts, and every worker that has the
job fires its slots. Start this program twice (or on two machines sharing a
libSQL database) and each slot still produces exactly one run: the workers race
for it and one of them wins, in one transaction with the run. The slot time
reaches the job in its input (``slot_field``) and as the run's ``durably.slot``
label. A worker that was down when slots passed catches up by the schedule's
``catch_up`` policy (here the default, ``"latest"``: the most recent missed slot).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
from datetime import datetime

from pydantic import BaseModel

from durably import (
    Durably,
    RunStatus,
    Schedule,
    ScheduleFireEvent,
    Step,
    create_durably,
    define_job,
)

# Shown in the output, to tell workers apart.
NAME = os.environ.get("CRON_WORKER_NAME", f"{socket.gethostname()}:{os.getpid()}")


class ReportIn(BaseModel):
    region: str
    slot: datetime  # filled in by the scheduler (slot_field="slot")


class ReportOut(BaseModel):
    slot: datetime
    rows: int


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--every",
        default="* * * * *",
        help="cron expression; 6 fields put the seconds first (default: every minute)",
    )
    parser.add_argument("--timezone", default="UTC", help="IANA time zone of the calendar")
    parser.add_argument(
        "--runs", type=int, help="stop once this many runs of the schedule completed"
    )
    return parser.parse_args()


async def main() -> None:
    args = parse_args()

    @define_job(
        "report",
        input=ReportIn,
        output=ReportOut,
        schedule=Schedule(
            args.every, timezone=args.timezone, input={"region": "eu"}, slot_field="slot"
        ),
    )
    async def report(step: Step, job: ReportIn) -> ReportOut:
        rows = await step.run("query", lambda: 1234)
        await step.run("email", lambda: print(f"[{NAME}] report for {job.slot:%H:%M:%S} sent"))
        return ReportOut(slot=job.slot, rows=rows)

    def fired(event: ScheduleFireEvent) -> None:
        print(f"[{NAME}] slot {event.slot.isoformat()} -> run {event.run_id} ({event.disposition})")

    async with create_durably(jobs={"report": report}, polling_interval=0.2) as durably:
        durably.on("schedule:fire", fired)
        await durably.schedules.sync()  # the worker stores the declaration as it starts, too
        schedule = await durably.schedules.get("report")
        assert schedule is not None
        upcoming = durably.schedules.next_fire_times(schedule, 3)
        print(f"[{NAME}] schedule {schedule.cron!r} next: {[t.isoformat() for t in upcoming]}")
        # runs completed by the other worker are seen only by reading: poll
        while args.runs is None or len(done := await completed(durably)) < args.runs:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        for run_id, slot in done[: args.runs]:
            print(f"[{NAME}] slot {slot} run {run_id} completed")


async def completed(durably: Durably) -> list[tuple[str, str]]:
    """The schedule's completed runs, oldest slot first, as (run id, slot)."""
    runs = await durably.get_runs(
        status=RunStatus.COMPLETED.value, labels={"durably.schedule": "report"}
    )
    return sorted(((r.id, r.labels["durably.slot"]) for r in runs), key=lambda x: x[1])


if __name__ == "__main__":
    asyncio.run(main())
