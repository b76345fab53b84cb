"""A durably worker process for the multi-process and crash tests.

    python tests/workers/durably_worker.py DB_PATH RECORDS_DIR [--slots N] [--poll S]
        [--lease S] [--renew S] [--hold-step NAME]

It runs a worker on ``sqlite:///DB_PATH`` until its stdin is closed, then stops
gracefully and exits 0.

Every step function appends a ``step-start`` and a ``step-end`` record, and every
execution of a job function a ``job-start`` and a ``job-end`` record, to
``RECORDS_DIR/<pid>.jsonl`` (JSON lines, one ``os.write`` each on an ``O_APPEND``
descriptor; ``t`` is ``time.monotonic_ns()``, one clock for all processes of the
machine). ``worker:error`` and ``run:leased`` events are recorded there too. The
records live outside the database: they show what really executed, whatever the
database says.

``--hold-step NAME`` makes the step ``NAME`` block (after its ``step-start``
record) until the process is killed: the crash test SIGKILLs it there.

The test modules import this file for the job definitions (to trigger runs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from durably import Event, RunLeasedEvent, Step, WorkerErrorEvent, create_durably, define_job

STEPS = 5


class WorkIn(BaseModel):
    n: int
    key: str | None = None


class WorkOut(BaseModel):
    n: int
    values: list[int]
    total: int


class _Recorder:
    def __init__(self) -> None:
        self.fd: int | None = None
        self.hold_step: str | None = None

    def open(self, directory: Path) -> None:
        path = directory / f"{os.getpid()}.jsonl"
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, event: str, **fields: Any) -> None:
        if self.fd is None:
            raise RuntimeError("records are written by worker processes only")
        record = {"ev": event, "pid": os.getpid(), "t": time.monotonic_ns(), **fields}
        os.write(self.fd, (json.dumps(record) + "\n").encode())


RECORDS = _Recorder()


async def _work(step: Step, payload: WorkIn) -> WorkOut:
    """Five checkpointed steps; each value depends on the input and the previous one."""
    RECORDS.write("job-start", run=step.run_id, key=payload.key)
    values: list[int] = []
    previous = payload.n
    for i in range(STEPS):
        name = f"s{i}"

        async def body(i: int = i, name: str = name, previous: int = previous) -> int:
            RECORDS.write("step-start", run=step.run_id, step=name, key=payload.key)
            if RECORDS.hold_step == name:
                await asyncio.sleep(3600)  # killed here by the crash test
            await asyncio.sleep(0.001)  # a step takes time: overlaps would show
            value = (previous * 1_000_003 + payload.n * 7 + i) % 2_147_483_647
            RECORDS.write("step-end", run=step.run_id, step=name, key=payload.key)
            return value

        previous = await step.run(name, body)
        values.append(previous)
        step.progress(i + 1, STEPS, name)
    RECORDS.write("job-end", run=step.run_id, key=payload.key)
    return WorkOut(n=payload.n, values=values, total=sum(values))


# Two job names with one body: a concurrency key guards runs across jobs.
JOB_A = define_job(name="mp-a", input=WorkIn, output=WorkOut, run=_work)
JOB_B = define_job(name="mp-b", input=WorkIn, output=WorkOut, run=_work)
JOBS = {"a": JOB_A, "b": JOB_B}


def _on_event(event: Event) -> None:
    if isinstance(event, WorkerErrorEvent):
        RECORDS.write("worker-error", error=event.error, context=event.context, run=event.run_id)
    elif isinstance(event, RunLeasedEvent):
        RECORDS.write(
            "leased",
            run=event.run_id,
            owner=event.lease_owner,
            wall=time.time(),
            expires=event.lease_expires_at.timestamp(),
        )


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("db")
    parser.add_argument("records", type=Path)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--poll", type=float, default=0.02)
    parser.add_argument("--lease", type=float, default=10.0)
    parser.add_argument("--renew", type=float, default=2.0)
    parser.add_argument("--hold-step", default=None)
    args = parser.parse_args(argv)
    RECORDS.open(args.records)
    RECORDS.hold_step = args.hold_step
    durably = create_durably(
        f"sqlite:///{args.db}",
        jobs=JOBS,
        max_concurrent_runs=args.slots,
        polling_interval=args.poll,
        lease_duration=args.lease,
        lease_renew_interval=args.renew,
        preserve_steps=True,
    )
    durably.on("worker:error", _on_event)
    durably.on("run:leased", _on_event)
    async with durably:
        RECORDS.write("ready")
        # closing stdin is the stop signal (and a dead parent stops its workers)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.buffer.read)
    RECORDS.write("stopped")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
