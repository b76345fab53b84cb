"""Trigger a job on a cron schedule, safely from several schedulers at once.

    uv run python examples/cron.py                         # every minute, forever
    uv run python examples/cron.py --every "* * * * * */5" --ticks 3   # every 5 s, 3 times

Each scheduled slot gets an idempotency key built from the slot's time
(``"nightly-report:2025-01-01T00:00:00+00:00"``). Run this program on two
machines (or twice on one) against the same database and each slot still
produces exactly one run: the second trigger finds the first run by its key and
gets ``disposition="idempotent"`` instead of a duplicate. The jobs themselves
stay resumable: a scheduler that dies mid-report leaves a run that any worker on
the database finishes after its lease expires.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
from datetime import UTC, datetime

from croniter import croniter
from pydantic import BaseModel

from durably import Step, create_durably, define_job

# Shown in the output, to tell schedulers apart.
NAME = os.environ.get("CRON_SCHEDULER_NAME", f"{socket.gethostname()}:{os.getpid()}")


class ReportIn(BaseModel):
    slot: datetime


class ReportOut(BaseModel):
    slot: datetime
    rows: int


@define_job("nightly-report", input=ReportIn, output=ReportOut)
async def nightly_report(step: Step, report: ReportIn) -> ReportOut:
    rows = await step.run("query", lambda: 1234)
    await step.run("email", lambda: print(f"  [{NAME}] report for {report.slot:%H:%M:%S} sent"))
    return ReportOut(slot=report.slot, rows=rows)


def utc_time(text: str) -> datetime:
    when = datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--every",
        default="* * * * *",
        help="cron expression; a 6th field is seconds (default: every minute)",
    )
    parser.add_argument("--ticks", type=int, help="stop after this many slots (default: never)")
    parser.add_argument(
        "--start",
        type=utc_time,
        help="first slot is the next one after this time (default: now); "
        "schedulers given the same start fire the same slots",
    )
    return parser.parse_args()


async def main() -> None:
    args = parse_args()
    start = args.start or datetime.now(UTC)
    # croniter yields the slots after `start`; the slots are what makes the key,
    # so two schedulers agree on them no matter when each one woke up.
    slots = croniter(args.every, start)
    fired: list[str] = []
    async with create_durably(jobs={"report": nightly_report}, polling_interval=0.2) as durably:
        while args.ticks is None or len(fired) < args.ticks:
            slot = slots.get_next(datetime)
            # Sleep until the slot (a late scheduler fires an overdue slot at once).
            await asyncio.sleep(max(0.0, (slot - datetime.now(UTC)).total_seconds()))
            result = await durably.jobs.report.trigger(
                {"slot": slot},
                idempotency_key=f"{nightly_report.name}:{slot.isoformat()}",
            )
            print(f"[{NAME}] slot {slot.isoformat()} -> run {result.id} ({result.disposition})")
            fired.append(result.id)
        # Before exiting, wait for the runs of our slots, whichever process runs them.
        for run_id in fired:
            run = await durably.wait_for_run(run_id, timeout=60)
            print(f"[{NAME}] run {run_id} {run.status.value}")


if __name__ == "__main__":
    asyncio.run(main())
