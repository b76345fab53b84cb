"""A worker process of tests/test_libsql_multiprocess.py (run by ``sys.executable``).

``python libsql_mp_worker.py <database url> <records.jsonl> [<lease seconds>]``: runs a
durably worker on the database until SIGTERM, then stops gracefully (it renews the
lease every sixth of its duration). Everything the test checks
is appended to the records file, outside the database under test, one JSON object
a line with ``t`` (``time.monotonic_ns()``: one clock for every process of the
machine) and ``pid``:

- ``begin`` / ``end``: the job body of a run starts / returns (``key``: its
  concurrency key);
- ``exec``: a step function runs; ``checkpointed``: ``step.run`` returned, i.e.
  the step's checkpoint was acknowledged;
- ``complete``: this process's ``run:complete`` event; ``leased`` / ``renewed``: its
  ``run:leased`` / ``run:lease-renewed`` events (for reading a failure);
- ``worker-error``: a ``worker:error`` event (``context``, ``error``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from typing import Any

from durably import Event, Step, create_durably, define_job

STEPS = ("a", "b", "c")
JOBS = ("mp-0", "mp-1", "mp-2", "mp-3")


def main() -> None:
    url, records = sys.argv[1], sys.argv[2]
    lease = float(sys.argv[3]) if len(sys.argv) > 3 else 10.0
    fd = os.open(records, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def record(**data: Any) -> None:
        data["t"] = time.monotonic_ns()
        data["pid"] = os.getpid()
        os.write(fd, (json.dumps(data) + "\n").encode())  # one write: lines never interleave

    async def body(step: Step, payload: dict[str, Any]) -> dict[str, Any]:
        key = payload.get("key")
        record(event="begin", run=step.run_id, key=key)
        total = 0
        for index, name in enumerate(STEPS):

            async def work(name: str = name, index: int = index) -> int:
                record(event="exec", run=step.run_id, step=name)
                if key is not None and name == "b":
                    await asyncio.sleep(0.02)  # widen the window a second holder would hit
                return int(payload["i"]) * 10 + index

            total += await step.run(name, work)
            record(event="checkpointed", run=step.run_id, step=name)
        record(event="end", run=step.run_id, key=key)
        return {"i": payload["i"], "total": total}

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        d = create_durably(
            url,
            jobs={name: define_job(name, run=body) for name in JOBS},
            max_concurrent_runs=2,
            polling_interval=0.1,
            lease_duration=lease,
            lease_renew_interval=lease / 6,
        )

        def on_complete(event: Event) -> None:
            record(event="complete", run=getattr(event, "run_id", None))

        def on_error(event: Event) -> None:
            record(
                event="worker-error",
                context=getattr(event, "context", None),
                error=getattr(event, "error", None),
            )

        def on_leased(event: Event) -> None:
            record(
                event="leased",
                run=getattr(event, "run_id", None),
                expires=str(getattr(event, "lease_expires_at", None)),
                wall=time.time(),
            )

        def on_renewed(event: Event) -> None:
            record(
                event="renewed",
                run=getattr(event, "run_id", None),
                expires=str(getattr(event, "lease_expires_at", None)),
                wall=time.time(),
            )

        d.on("run:leased", on_leased)
        d.on("run:lease-renewed", on_renewed)
        d.on("run:complete", on_complete)
        d.on("worker:error", on_error)
        await d.migrate()
        d.start()
        record(event="started")
        await stop.wait()
        await d.stop(timeout=10)
        await d.storage.close()

    try:
        asyncio.run(run())
    finally:
        os.close(fd)


if __name__ == "__main__":
    main()
