"""The engine's own cost per step, without a database: CPU µs per ``step.run``.

A run of N trivial ``async def`` steps on the memory backend whose ``persist_step``
accepts without doing anything, so what is timed is durably's per-step path
alone (name check, replay lookup, lease check, events, encoding, the record):
what a change to ``Step`` / ``Execution.checkpoint`` adds or saves. Also the same
steps replayed (a second execution of the run, every step already checkpointed),
and — on a version that has them — the same steps under a job retry policy (none
fails: the attempt path's cost when nothing goes wrong).

Measured in CPU time of the loop's thread (``time.thread_time``), which a busy
machine disturbs far less than wall time; minimum and median over the rounds. To
compare two versions of the code, run them alternately, several times each:

    uv run python bench/step_overhead.py [--steps N] [--rounds R]
    PYTHONPATH=/path/to/other/packages/durably-core/src uv run python bench/step_overhead.py
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from datetime import datetime
from typing import Any

from _bench import emit, header, print_table

from durably import NewStep, Step, create_durably, define_job
from durably_testing.memory import MemoryStorage


class AcceptingStorage(MemoryStorage):
    """Memory storage whose step writes succeed without work, so they cost ~nothing."""

    async def persist_step(
        self,
        run_id: str,
        generation: int,
        step: NewStep,
        now: datetime,
        *,
        attempt: Any = None,
    ) -> bool:
        return True


async def trivial() -> int:
    return 1


@define_job("overhead")
async def overhead_job(step: Step, payload: dict[str, Any]) -> float:
    n = payload["steps"]
    t0 = time.thread_time()
    for i in range(n):
        await step.run(f"s{i}", trivial)
    return time.thread_time() - t0


async def one_round(n: int, *, policy: Any = None) -> float:
    """µs per step; with ``policy`` (a ``durably.Retry``) as the job's retry policy, so
    every step takes the attempt path (none fails)."""
    job = overhead_job
    if policy is not None:
        job = define_job("overhead", run=overhead_job.run, retry=policy)
    async with create_durably(AcceptingStorage(), jobs={"overhead": job}) as durably:
        result = await durably.jobs.overhead.trigger_and_wait({"steps": n})
    return result.output / n * 1e6


async def replay_round(n: int) -> float:
    """µs per replayed step: the run's first execution checkpoints N steps and
    fails; after retry() the second replays them all."""
    cpu: list[float] = []

    @define_job("replay")
    async def replay_job(step: Step, payload: dict[str, Any]) -> None:
        t0 = time.thread_time()
        for i in range(n):
            await step.run(f"s{i}", trivial)
        cpu.append(time.thread_time() - t0)
        if len(cpu) == 1:
            raise RuntimeError("run again")

    async with create_durably(MemoryStorage(), jobs={"replay": replay_job}) as durably:
        run = await durably.jobs.replay.trigger({})
        while not await durably.process_one():
            pass
        await durably.retry(run.id)
        while not await durably.process_one():
            pass
    return cpu[1] / n * 1e6


def _ns_per_call(check: Any, n: int = 200_000) -> float:
    """ns per ``check()`` minus an empty call's: the hook's own cost."""

    def empty() -> bool:
        return False

    costs = []
    for fn in (check, empty):
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter_ns()
            for _ in range(n):
                fn()
            best = min(best, (time.perf_counter_ns() - t0) / n)
        costs.append(best)
    return max(costs[0] - costs[1], 0.0)


async def hook_costs() -> dict[str, float]:
    """ns per step of each feature's guard on the success path, evaluated as
    ``Execution.checkpoint`` evaluates it, on a live execution that uses none of
    them. Durable waits have no code on a step's path (they are step.wait_for /
    step.sleep themselves)."""
    from durably.sql._group import GroupCommit, _others_ready

    costs: dict[str, float] = {}

    @define_job("hooks")
    async def hooks_job(step: Step, payload: dict[str, Any]) -> None:
        ex: Any = step._x  # the engine's own object: what checkpoint reads
        started = ex.now()
        retry = timeout = None
        group = GroupCommit(None)  # type: ignore[arg-type]  # its guard reads no executor
        loop = asyncio.get_running_loop()
        costs["lease check (fresh lease, not cancelled, nothing buffered)"] = _ns_per_call(
            lambda: started >= ex.fresh_until or ex.cancel_flag.is_set() or ex.flush_needed()
        )
        costs["retries and attempt records (no policy, no timeout)"] = _ns_per_call(
            lambda: retry is not None or timeout is not None or ex.policied
        )
        costs["group commit (a lone run: nothing queued, nothing else ready)"] = _ns_per_call(
            lambda: not group._queue and not _others_ready(loop)
        )

    async with create_durably(MemoryStorage(), jobs={"hooks": hooks_job}) as durably:
        await durably.jobs.hooks.trigger_and_wait({})
    return costs


async def main(n: int, rounds: int) -> None:
    header(f"engine overhead per step: {n} trivial steps, {rounds} rounds, no database")
    await one_round(n)  # warm-up: validators, caches
    ran = [await one_round(n) for _ in range(rounds)]
    replayed = [await replay_round(n) for _ in range(rounds)]
    figures = [("CPU µs per step", ran), ("CPU µs per replayed step", replayed)]
    try:  # a version of durably with retry policies
        from durably import Retry
    except ImportError:
        pass
    else:
        policy = Retry(max_attempts=3)
        policied = [await one_round(n, policy=policy) for _ in range(rounds)]
        figures.append(("CPU µs per step, job retry policy", policied))
    for figure, samples in figures:
        emit(
            "overhead",
            figure,
            min(samples),
            "µs",
            median=statistics.median(samples),
            steps=n,
            rounds=rounds,
            samples=[round(x, 2) for x in samples],
            note="minimum of the rounds; thread CPU time, no database",
        )
    for hook, ns in (await hook_costs()).items():
        emit("hook", hook, ns / 1000, "µs", note="per step when unused; wall time, best of 5")
    print_table()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    asyncio.run(main(args.steps, args.rounds))
