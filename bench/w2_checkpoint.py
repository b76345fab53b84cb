"""W2 — checkpoint overhead: one run of N sequential trivial steps, µs per step.

At ``synchronous`` NORMAL and FULL (WAL file). Per round, interleaved so load
changes hit all alike: raw sqlite3 (bare table, steps-shaped table, and the
checkpoint's shape: that INSERT and the run row's UPDATE in one transaction), then one
durably run of N ``await step.run(...)`` calls of a trivial ``async def`` step,
timed inside the job (first step to last). Medians over the rounds, after one
warm-up run. Also: the same run end to end (trigger → completed, per step) and
with a sync step function (each call hops to a worker thread by design). ``ratios``:
each round's figure over its own raw bare insert (the target: every one ≤ 2).

    uv run python bench/w2_checkpoint.py [--steps N] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _bench import SYNCS, emit, header, print_table, raw_us_per_insert, sqlite_url

from durably import Step, create_durably, define_job


async def trivial() -> int:
    return 1


def trivial_sync() -> int:
    return 1


@define_job("w2")
async def w2_job(step: Step, payload: dict[str, Any]) -> float:
    fn: Any = trivial_sync if payload.get("sync_fn") else trivial
    n = payload["steps"]
    t0 = time.perf_counter()
    for i in range(n):
        await step.run(f"s{i}", fn)
    return time.perf_counter() - t0


async def durably_round(path: Path, synchronous: str, n: int, sync_fn: bool) -> tuple[float, float]:
    """(µs per step inside the job, µs per step trigger → completed)."""
    async with create_durably(
        sqlite_url(path), jobs={"w2": w2_job}, synchronous=synchronous
    ) as durably:
        t0 = time.perf_counter()
        result = await durably.jobs.w2.trigger_and_wait({"steps": n, "sync_fn": sync_fn})
        total = time.perf_counter() - t0
    return result.output / n * 1e6, total / n * 1e6


async def main(n: int, rounds: int) -> None:
    header(f"W2 checkpoint overhead: 1 run x {n} trivial steps, {rounds} rounds")
    for synchronous in SYNCS:
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            await durably_round(d / "durably.db", synchronous, n, False)  # warm-up
            bare: list[float] = []
            steps: list[float] = []
            shaped: list[float] = []
            ours: list[float] = []
            e2e: list[float] = []
            for _ in range(rounds):
                bare.append(raw_us_per_insert(d / "raw_bare.db", synchronous, n, "bare"))
                steps.append(raw_us_per_insert(d / "raw_steps.db", synchronous, n, "steps"))
                shaped.append(raw_us_per_insert(d / "raw_ckpt.db", synchronous, n, "checkpoint"))
                inside, total = await durably_round(d / "durably.db", synchronous, n, False)
                ours.append(inside)
                e2e.append(total)
            threaded, _ = await durably_round(d / "durably.db", synchronous, n, True)
        b, s, c, o, e = (statistics.median(x) for x in (bare, steps, shaped, ours, e2e))
        emit(
            "W2",
            f"µs per step, async step fn, synchronous={synchronous}",
            o,
            "µs",
            raw=b,
            raw_steps=s,
            raw_checkpoint=c,
            ratio=o / b,
            ratio_steps=o / s,
            ratio_checkpoint=o / c,
            ratios=[round(x / y, 2) for x, y in zip(ours, bare, strict=True)],
            synchronous=synchronous,
            steps=n,
            rounds=rounds,
            samples=[round(x, 1) for x in ours],
        )
        emit(
            "W2",
            f"µs per step, trigger → completed, synchronous={synchronous}",
            e,
            "µs",
            raw=b,
            raw_steps=s,
            ratio=e / b,
            ratio_steps=e / s,
            synchronous=synchronous,
            note="includes trigger, claim, completion",
        )
        emit(
            "W2",
            f"µs per step, sync step fn (thread), synchronous={synchronous}",
            threaded,
            "µs",
            raw=b,
            raw_steps=s,
            ratio=threaded / b,
            ratio_steps=threaded / s,
            synchronous=synchronous,
            note="one round; sync fns run in a thread",
        )
    print_table()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.steps, args.rounds))
