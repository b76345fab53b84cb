"""A worker process that shuts down cleanly on SIGTERM / Ctrl-C.

    uv run python examples/graceful_shutdown.py       # then Ctrl-C, or `kill <pid>`

What a deployment (systemd, Docker, Kubernetes) expects from a worker: on SIGTERM
stop taking new work, let the current run finish for a grace period, and exit 0.
``durably.stop(timeout=...)`` does exactly that: it stops claiming, waits for the
runs in flight, and after the timeout cancels them *without* writing anything —
their lease simply expires and another worker resumes them after their last
completed step. Run the program again and it picks up the runs left behind.
"""

from __future__ import annotations

import asyncio
import os
import signal

from pydantic import BaseModel

from durably import RunCompleteEvent, Step, create_durably, define_job

STEP_SECONDS = float(os.environ.get("SHUTDOWN_STEP_SECONDS", "1.0"))
# How long a shutdown waits for the current run (Kubernetes' default grace is 30 s;
# keep this below the grace your platform gives before it sends SIGKILL).
GRACE_SECONDS = float(os.environ.get("SHUTDOWN_GRACE_SECONDS", "10"))
# A lease short enough that a run abandoned after the grace period is soon taken
# over by the next worker (the lease is renewed every quarter of it while running).
LEASE_SECONDS = float(os.environ.get("SHUTDOWN_LEASE_SECONDS", "10"))


class BatchIn(BaseModel):
    batch: int


@define_job("process-batch", input=BatchIn, output=int)
async def process_batch(step: Step, job: BatchIn) -> int:
    total = 0
    for part in range(3):
        total += await step.run(f"part-{part}", work, job.batch, part)
    return total


async def work(batch: int, part: int) -> int:
    print(f"  batch {batch} part {part} ...", flush=True)
    await asyncio.sleep(STEP_SECONDS)
    return part


async def main() -> None:
    # Turn SIGTERM and SIGINT into an event instead of an exception (on Windows,
    # which lacks add_signal_handler, Ctrl-C raises KeyboardInterrupt instead).
    shutdown = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig, shutdown)

    async with create_durably(
        jobs={"batch": process_batch},
        lease_duration=LEASE_SECONDS,
        lease_renew_interval=LEASE_SECONDS / 4,
    ) as durably:
        durably.on("run:complete", on_complete)
        # Some work to do; the keys make a restart find these runs instead of adding more.
        runs = await durably.jobs.batch.batch_trigger(
            [({"batch": n}, {"idempotency_key": f"batch-{n}"}) for n in range(3)]
        )
        print(f"worker {os.getpid()} running; Ctrl-C or SIGTERM to stop", flush=True)

        await shutdown.wait()
        print(f"stopping: finishing the current run (up to {GRACE_SECONDS:g} s)", flush=True)
        await durably.stop(timeout=GRACE_SECONDS)

        for result in runs:
            run = await durably.get_run(result.id)
            assert run is not None
            note = " (abandoned: resumes when its lease expires)" if run.status == "leased" else ""
            print(f"  batch-{run.input['batch']}: {run.status.value}{note}", flush=True)
    print("bye")


def on_complete(event: RunCompleteEvent) -> None:
    print(f"  run {event.run_id} completed", flush=True)


def on_signal(sig: signal.Signals, shutdown: asyncio.Event) -> None:
    print(f"received {sig.name}", flush=True)
    shutdown.set()


if __name__ == "__main__":
    asyncio.run(main())
