"""Where W1's time goes: R runs x S trivial steps on N slots, under cProfile.

W1 (``bench/w1_throughput.py``) at 8 slots and ``synchronous=NORMAL`` is bound by
the Python of one core, not by SQLite's commits: this prints the functions by own
time from the worker's start to the last ``run:complete`` (the runs are enqueued
before, as in W1), and how much of it is SQLite's own work.

``--no-profile`` measures instead: steps/s without cProfile and the raw sqlite3
one-insert-per-commit rate measured around it in the same run (as W1 does), and CPU
per step (the process's, and the event loop's thread's alone), one line per round;
alternate it with another checkout's ``durably-core`` (``PYTHONPATH``) to compare
two versions on a shared machine.

    uv run python bench/profile_w1.py [--runs R] [--steps S] [--slots N] [--sync NORMAL|FULL]
        [--out FILE.prof] [--no-profile] [--rounds K]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import tempfile
import time
from pathlib import Path

from _bench import completions, raw_baseline, sqlite_share, sqlite_url
from w1_throughput import w1_job

import durably
from durably import create_durably


async def one_round(
    path: Path,
    synchronous: str,
    runs: int,
    steps: int,
    slots: int,
    profile: cProfile.Profile | None,
) -> tuple[float, float, float]:
    """(seconds, the process's CPU seconds, the loop thread's CPU seconds) from the
    worker's start to the last completion. The loop thread's CPU is what bounds W1 at
    NORMAL, and a shared machine disturbs it less than wall time."""
    app = create_durably(
        sqlite_url(path), jobs={"w1": w1_job}, synchronous=synchronous, max_concurrent_runs=slots
    )
    await app.migrate()
    await app.jobs.w1.batch_trigger([{"steps": steps}] * runs)
    done = completions(app, runs)
    if profile is not None:
        profile.enable()
    t0 = time.perf_counter()
    c0 = time.process_time()
    l0 = time.thread_time()
    app.start()
    await done.wait()
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - c0
    loop_cpu = time.thread_time() - l0
    if profile is not None:
        profile.disable()
    await app.close()
    return elapsed, cpu, loop_cpu


async def main(args: argparse.Namespace) -> None:
    total = args.runs * args.steps
    if args.no_profile:
        with tempfile.TemporaryDirectory() as tmp:  # warm-up: imports, caches
            await one_round(Path(tmp) / "warm.db", args.sync, 20, args.steps, args.slots, None)
        for r in range(args.rounds):
            with tempfile.TemporaryDirectory() as tmp:
                d = Path(tmp)
                bare, _ = raw_baseline(d, args.sync, 1000)
                elapsed, cpu, loop_cpu = await one_round(
                    d / "d.db", args.sync, args.runs, args.steps, args.slots, None
                )
                bare2, _ = raw_baseline(d, args.sync, 1000)
            raw = 1e6 / ((bare + bare2) / 2)
            steps_s = total / elapsed
            print(
                f"round {r}: {steps_s:,.0f} steps/s, raw {raw:,.0f} inserts/s, "
                f"{steps_s / raw:.3f}x raw, {cpu / total * 1e6:.1f} µs CPU per step "
                f"({loop_cpu / total * 1e6:.1f} on the loop's thread) "
                f"({Path(durably.__file__).parent})",
                flush=True,
            )
        return
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        await one_round(d / "warm.db", args.sync, 20, args.steps, args.slots, None)  # warm-up
        profile = cProfile.Profile(time.thread_time)  # CPU time: no noise from a shared machine
        elapsed, _, _ = await one_round(
            d / "d.db", args.sync, args.runs, args.steps, args.slots, profile
        )
    print(
        f"{args.runs} runs x {args.steps} steps, {args.slots} slots, synchronous={args.sync}: "
        f"{elapsed / total * 1e6:.1f} µs per step under cProfile"
    )
    stats = pstats.Stats(profile)
    if args.out:
        stats.dump_stats(args.out)
    share = sqlite_share(stats)
    print(f"SQLite's own work: {share:.0%} of the profiled time; the rest is Python")
    stats.sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--sync", default="NORMAL")
    parser.add_argument("--out", default=None)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    asyncio.run(main(args))
