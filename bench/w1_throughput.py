"""W1 — throughput: R runs x S trivial steps, one worker process.

For ``max_concurrent_runs`` 1 and 8, at ``synchronous`` NORMAL and FULL (WAL
file): the runs are enqueued with one ``batch_trigger`` (timed on its own), then
the worker starts and the clock runs until the last ``run:complete``. Raw
sqlite3 in the same run: one INSERT + commit per step, as steps per second.

    uv run python bench/w1_throughput.py [--runs R] [--steps S]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from _bench import SYNCS, completions, emit, header, print_table, raw_baseline, sqlite_url

from durably import Step, create_durably, define_job


async def trivial() -> int:
    return 1


@define_job("w1")
async def w1_job(step: Step, payload: dict[str, Any]) -> int:
    for i in range(payload["steps"]):
        await step.run(f"s{i}", trivial)
    return payload["steps"]


async def durably_round(
    path: Path, synchronous: str, runs: int, steps: int, slots: int
) -> tuple[float, float]:
    """(seconds to enqueue, seconds from worker start to the last completion)."""
    durably = create_durably(
        sqlite_url(path), jobs={"w1": w1_job}, synchronous=synchronous, max_concurrent_runs=slots
    )
    await durably.migrate()
    t0 = time.perf_counter()
    await durably.jobs.w1.batch_trigger([{"steps": steps}] * runs)
    enqueue = time.perf_counter() - t0
    done = completions(durably, runs)
    t0 = time.perf_counter()
    durably.start()
    await done.wait()
    elapsed = time.perf_counter() - t0
    await durably.close()
    return enqueue, elapsed


async def main(runs: int, steps: int) -> None:
    header(f"W1 throughput: {runs} runs x {steps} trivial steps, one worker process")
    for synchronous in SYNCS:
        for slots in (1, 8):
            with tempfile.TemporaryDirectory() as tmp:
                d = Path(tmp)
                bare, shaped = raw_baseline(d, synchronous, 1000)
                enqueue, elapsed = await durably_round(
                    d / "durably.db", synchronous, runs, steps, slots
                )
                bare2, shaped2 = raw_baseline(d, synchronous, 1000)
            bare, shaped = (bare + bare2) / 2, (shaped + shaped2) / 2
            total_steps = runs * steps
            steps_s = total_steps / elapsed
            emit(
                "W1",
                f"steps/s, max_concurrent_runs={slots}, synchronous={synchronous}",
                steps_s,
                "steps/s",
                raw=1e6 / bare,
                raw_steps=1e6 / shaped,
                raw_unit="inserts/s",
                ratio=(1e6 / bare) / steps_s,
                ratio_steps=(1e6 / shaped) / steps_s,
                synchronous=synchronous,
                slots=slots,
                runs=runs,
                steps=steps,
                note="ratio = time per step / raw time per insert",
            )
            emit(
                "W1",
                f"runs/s, max_concurrent_runs={slots}, synchronous={synchronous}",
                runs / elapsed,
                "runs/s",
                synchronous=synchronous,
                slots=slots,
                seconds=elapsed,
            )
            if slots == 1:
                emit(
                    "W1",
                    f"batch_trigger of {runs} runs, synchronous={synchronous}",
                    enqueue / runs * 1e6,
                    "µs/run",
                    raw=bare,
                    raw_steps=shaped,
                    ratio=enqueue / runs * 1e6 / bare,
                    ratio_steps=enqueue / runs * 1e6 / shaped,
                    synchronous=synchronous,
                    note="one transaction; raw = one INSERT + commit each",
                )
    print_table()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.steps))
