"""A durably worker process for the multi-process schedule test, on simulated time.

    python tests/workers/schedule_worker.py DB_PATH RECORDS_DIR --epoch E --origin ISO --speed S

Every process reads the same simulated clock: ``origin + (time.time() - epoch) * speed``
(one machine, one wall clock), and sleeps ``seconds / speed``: a cron slot per minute
passes every ``60 / speed`` real seconds. It runs a worker with the job ``tick`` on
``sqlite:///DB_PATH`` until its stdin is closed; each ``schedule:fire`` this process
makes is appended to ``RECORDS_DIR/<pid>.jsonl`` (outside the database), as is any
``worker:error``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from durably import Event, ScheduleFireEvent, Step, create_durably, define_job


class ScaledClock:
    def __init__(self, epoch: float, origin: datetime, speed: float) -> None:
        self.epoch, self.origin, self.speed = epoch, origin, speed

    def now(self) -> datetime:
        return self.origin + timedelta(seconds=(time.time() - self.epoch) * self.speed)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.speed)


async def tick(step: Step, payload: Any) -> Any:
    return payload


JOBS = {"tick": define_job("tick", run=tick)}


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("db")
    parser.add_argument("records", type=Path)
    parser.add_argument("--epoch", type=float, required=True)
    parser.add_argument("--origin", required=True)
    parser.add_argument("--speed", type=float, required=True)
    args = parser.parse_args(argv)
    fd = os.open(args.records / f"{os.getpid()}.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND)

    def record(event: Event) -> None:
        line: dict[str, object]
        if isinstance(event, ScheduleFireEvent):
            line = {"ev": "fire", "slot": event.slot.isoformat(), "run": event.run_id}
            line.update(pid=os.getpid(), how=event.disposition)
        else:
            line = {"ev": "error", "error": getattr(event, "error", "")}
            line["context"] = getattr(event, "context", "")
        os.write(fd, (json.dumps(line) + "\n").encode())

    clock = ScaledClock(args.epoch, datetime.fromisoformat(args.origin), args.speed)
    durably = create_durably(
        f"sqlite:///{args.db}",
        jobs=JOBS,
        clock=clock,
        # in simulated seconds: a poll every 5 real ms, leases of ~10 real seconds
        polling_interval=0.005 * args.speed,
        lease_duration=10 * args.speed,
        lease_renew_interval=2 * args.speed,
        max_concurrent_runs=4,
    )
    durably.on("schedule:fire", record)
    durably.on("worker:error", record)
    async with durably:
        # closing stdin is the stop signal (and a dead parent stops its workers)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.buffer.read)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
