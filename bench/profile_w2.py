"""Where a checkpoint's time goes: W2's job (one run of N trivial steps) under cProfile.

Prints the functions by own time, and how much of the total is SQLite's own work
(``sqlite3.Cursor.execute``/``fetchall``: what raw sqlite3 pays too) against the
Python around it. cProfile inflates the Python share (it times every call); the
split is the guide to what to remove, ``bench/w2_checkpoint.py`` the figure.

    uv run python bench/profile_w2.py [--steps N] [--sync NORMAL|FULL] [--out FILE.prof]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import tempfile
import time
from pathlib import Path
from typing import Any

from _bench import sqlite_share, sqlite_url

from durably import Step, create_durably, define_job


async def trivial() -> int:
    return 1


@define_job("w2")
async def w2_job(step: Step, payload: dict[str, Any]) -> float:
    n = payload["steps"]
    t0 = time.perf_counter()
    for i in range(n):
        await step.run(f"s{i}", trivial)
    return time.perf_counter() - t0


async def main(n: int, synchronous: str, out: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = sqlite_url(Path(tmp) / "d.db")
        async with create_durably(url, jobs={"w2": w2_job}, synchronous=synchronous) as durably:
            await durably.jobs.w2.trigger_and_wait({"steps": 200})  # warm-up
            profile = cProfile.Profile()
            profile.enable()
            result = await durably.jobs.w2.trigger_and_wait({"steps": n})
            profile.disable()
    print(f"synchronous={synchronous}: {result.output / n * 1e6:.1f} µs per step under cProfile")
    stats = pstats.Stats(profile)
    if out:
        stats.dump_stats(out)
    share = sqlite_share(stats)
    print(f"SQLite's own work: {share:.0%} of the profiled time; the rest is Python")
    stats.sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--sync", default="NORMAL")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    asyncio.run(main(args.steps, args.sync, args.out))
