"""Durable timers: reminders sent after a delay by runs that hold no worker slot while
they sleep, and that no worker needs to watch.

    uv run python examples/reminder.py demo                  # everything in one process
    uv run python examples/reminder.py remind "stand up" 60  # schedule one; exits at once
    uv run python examples/reminder.py worker                # send what is due; exits

``step.sleep("wait", seconds)`` fixes the deadline the first time it runs and
suspends the run (status ``waiting``): its lease and slot are free for other work.
A worker sleeps until the next deadline rather than polling faster; and when no
worker is alive at the deadline, the first one to start afterwards sends the
reminder. The demo runs one worker with a single slot and a long polling interval
(30 s): three reminders sleep side by side, each is sent at its own deadline, and a
job triggered meanwhile runs at once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from datetime import UTC, datetime

from pydantic import BaseModel

from durably import Step, create_durably, define_job

URL = os.environ.get("DURABLY_DATABASE_URL", "sqlite:///reminder.db")
#: The demo's delays are scaled by this (the tests shorten them).
SCALE = float(os.environ.get("REMINDER_SCALE", "1"))
STARTED = time.monotonic()


class Reminder(BaseModel):
    text: str
    seconds: float


def send(text: str, due: str) -> str:
    late = (datetime.now(UTC) - datetime.fromisoformat(due)).total_seconds()
    print(f"  reminder: {text!r} ({late:.1f} s after its time)", flush=True)
    return "sent"


@define_job("reminder", input=Reminder)
async def reminder(step: Step, r: Reminder) -> str:
    # the due time is a checkpoint: replays (after the sleep) read the same value
    due = await step.run("due", lambda: datetime.now(UTC).timestamp() + r.seconds)
    await step.sleep("wait", r.seconds)
    return await step.run("send", send, r.text, datetime.fromtimestamp(due, UTC).isoformat())


@define_job("report")
async def report(step: Step, payload: dict[str, str]) -> str:
    return await step.run("report", lambda: f"report for {payload['who']} done")


async def demo() -> None:
    async with create_durably(
        URL,
        jobs={"reminder": reminder, "report": report},
        max_concurrent_runs=1,
        polling_interval=30,
    ) as d:
        runs = [
            await d.jobs.reminder.trigger({"text": text, "seconds": seconds * SCALE})
            for text, seconds in (("tea", 3), ("stretch", 1), ("stand up", 2))
        ]
        # one slot, three sleeping runs: other work still starts at once
        done = await d.jobs.report.trigger_and_wait({"who": "ann"}, timeout=60)
        print(f"while they sleep: {done.output} at {time.monotonic() - STARTED:.1f} s")
        for run in runs:
            await d.wait_for_run(run.id, timeout=120)
        waiting = await d.get_runs(status="waiting")
        print(f"all sent at {time.monotonic() - STARTED:.1f} s; still waiting: {len(waiting)}")


async def remind(text: str, seconds: float) -> None:
    # no worker here (not `async with`, which starts one): `worker` runs it
    d = create_durably(URL, jobs={"reminder": reminder})
    try:
        await d.migrate()
        result = await d.jobs.reminder.trigger({"text": text, "seconds": seconds})
        print(f"scheduled: run {result.id}", flush=True)
    finally:
        await d.close()


async def worker() -> None:
    d = create_durably(URL, jobs={"reminder": reminder, "report": report})
    try:
        count = await d.process_until_idle()
        print(f"worker: processed {count} run(s)", flush=True)
    finally:
        await d.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("demo")
    cmd = commands.add_parser("remind")
    cmd.add_argument("text")
    cmd.add_argument("seconds", type=float)
    commands.add_parser("worker")
    args = parser.parse_args()
    if args.command == "remind":
        asyncio.run(remind(args.text, args.seconds))
    elif args.command == "worker":
        asyncio.run(worker())
    else:
        asyncio.run(demo())
    return 0


if __name__ == "__main__":
    sys.exit(main())
