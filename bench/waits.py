"""Durable waits on a SQLite file (WAL, synchronous=NORMAL) and, when it is installed
(scripts/setup-postgres.sh), on a PostgreSQL server started for the run: what issue
14 asks to measure.

- Slots: a worker with ``max_concurrent_runs=1`` and 100 (then 1000) runs waiting
  for a signal; one more trigger: ms from ``trigger`` to that run's completion,
  against the same with no waiting runs (its baseline, measured in the same run).
- Resume after a signal, in-process: ms from ``durably.signal`` to the first step
  after the wait (the worker is woken at once; the default polling interval of 1 s
  is not waited for).
- Resume after a signal from another process: this process signals, a worker in
  another process (``polling_interval`` P) resumes the run. The signal comes as soon
  as the run is seen waiting, just after the poll that follows the suspension: the
  worst case for polling, about P on SQLite (plus a claim: the worker counts P from
  the end of its last round, not its start);
  on PostgreSQL the accepted signal is announced (``NOTIFY``): not the polling
  interval but a round trip.
- Restart: runs suspend in a worker process that is then killed (SIGKILL); they are
  signalled with no worker alive, and a new worker process resumes them all: how
  many resumed with their signal's payload, each step run once, and ms from that
  process's start to the last completion (Python's start-up and imports included).
- Suspension and resumption cost: ms per run of a job that waits once (trigger,
  run to the wait, suspend, signal, resume, complete) against the same job without
  the wait.

Raw in the same run: one INSERT + commit (the floor of any write), sqlite3 on the
SQLite legs, asyncpg on the PostgreSQL leg.

    uv run python bench/waits.py [--samples N] [--no-postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _bench import emit, header, percentile, print_table, raw_baseline, sqlite_url

from durably import Durably, RunStatus, Step, create_durably, define_job

SYNC = "NORMAL"
#: The polling interval of the worker in another process.
POLLING = 0.5


async def now_perf() -> float:
    return time.perf_counter()


async def now_wall() -> float:
    return time.time()


@define_job("waiter")
async def waiter(step: Step, payload: dict[str, Any]) -> Any:
    got = await step.wait_for(await step.prepare_wait("go"))
    fn = now_wall if payload.get("wall") else now_perf
    return {"resumed": await step.run("resumed", fn), "got": got.payload}


@define_job("plain")
async def plain(step: Step, payload: dict[str, Any]) -> float:
    return await step.run("only", now_perf)


@define_job("once")
async def once(step: Step, payload: dict[str, Any]) -> Any:
    before = await step.run("before", now_perf)
    got = None
    if payload.get("wait"):
        got = (await step.wait_for(await step.prepare_wait("go"))).payload
    return {"before": before, "got": got, "after": await step.run("after", now_perf)}


JOBS = {"waiter": waiter, "plain": plain, "once": once}


async def until(d: Durably, run_id: str, status: RunStatus) -> None:
    for _ in range(20_000):
        run = await d.get_run(run_id)
        if run is not None and run.status is status:
            return
        await asyncio.sleep(0.003)
    raise AssertionError(f"run {run_id} never became {status.value}")


async def slots(url: str, waiting: int, samples: int, **options: Any) -> list[float]:
    """ms from trigger to completion of a plain run with ``waiting`` runs waiting."""
    async with create_durably(url, jobs=JOBS, max_concurrent_runs=1, **options) as d:
        ids = [(await d.jobs.waiter.trigger({"i": i})).id for i in range(waiting)]
        for run_id in ids:
            await until(d, run_id, RunStatus.WAITING)
        out = []
        for _ in range(samples):
            t0 = time.perf_counter()
            await d.jobs.plain.trigger_and_wait({}, timeout=60)
            out.append((time.perf_counter() - t0) * 1000)
        return out


async def resume_in_process(url: str, samples: int, **options: Any) -> list[float]:
    out = []
    async with create_durably(url, jobs=JOBS, **options) as d:
        for i in range(samples):
            run_id = (await d.jobs.waiter.trigger({"i": i})).id
            await until(d, run_id, RunStatus.WAITING)
            t0 = time.perf_counter()
            await d.signal(run_id, "go", i)
            run = await d.wait_for_run(run_id, timeout=60)
            out.append((run.output["resumed"] - t0) * 1000)
    return out


WORKER = """
import asyncio, sys
sys.path.insert(0, sys.argv[3])
from waits import JOBS
from durably import create_durably

async def main():
    async with create_durably(sys.argv[1], jobs=JOBS, polling_interval=float(sys.argv[2])):
        await asyncio.Event().wait()

asyncio.run(main())
"""


def start_worker(url: str, polling: float) -> subprocess.Popen[bytes]:
    here = str(Path(__file__).parent)
    return subprocess.Popen([sys.executable, "-c", WORKER, url, str(polling), here])


def stop_worker(worker: subprocess.Popen[bytes], how: int = signal.SIGTERM) -> None:
    worker.send_signal(how)
    worker.wait(30)


async def resume_elsewhere(url: str, samples: int, polling: float, **options: Any) -> list[float]:
    worker = start_worker(url, polling)
    out = []
    try:
        d = create_durably(url, jobs=JOBS, **options)  # no worker here
        await d.migrate()
        for i in range(samples):
            run_id = (await d.jobs.waiter.trigger({"i": i, "wall": True})).id
            await until(d, run_id, RunStatus.WAITING)
            t0 = time.time()
            await d.signal(run_id, "go", i)
            run = await d.wait_for_run(run_id, timeout=60)
            out.append((run.output["resumed"] - t0) * 1000)
        await d.close()
    finally:
        stop_worker(worker)
    return out


async def restart(url: str, runs: int, **options: Any) -> tuple[int, float]:
    """``runs`` runs suspend in a worker process, which is killed; they are signalled
    with no worker alive, then a new worker process resumes them. Returns how many
    completed with their own payload and the checkpoint of the step before the wait
    replayed (the output the killed worker stored, not a new one), and ms from the
    new worker's start to the last completion."""
    d = create_durably(url, jobs=JOBS, **options)  # triggers and signals; no worker
    await d.migrate()
    first = start_worker(url, POLLING)
    try:
        ids = [(await d.jobs.once.trigger({"wait": True, "i": i})).id for i in range(runs)]
        for run_id in ids:
            await until(d, run_id, RunStatus.WAITING)
    finally:
        stop_worker(first, signal.SIGKILL)
    # what the step before the wait returned in the killed worker (its checkpoint)
    before = {run_id: (await d.get_steps(run_id))[0].output for run_id in ids}
    for i, run_id in enumerate(ids):
        await d.signal(run_id, "go", i)
    t0 = time.perf_counter()
    second = start_worker(url, POLLING)
    try:
        finished = [await d.wait_for_run(run_id, timeout=120) for run_id in ids]
        elapsed = (time.perf_counter() - t0) * 1000
    finally:
        stop_worker(second)
    good = 0
    for run in finished:
        if run.output["got"] == run.input["i"] and run.output["before"] == before[run.id]:
            good += 1
    await d.close()
    return good, elapsed


async def per_run(url: str, samples: int, wait: bool, **options: Any) -> float:
    """ms per run of ``once``, triggered and finished one after another."""
    async with create_durably(url, jobs=JOBS, **options) as d:
        t0 = time.perf_counter()
        for i in range(samples):
            run_id = (await d.jobs.once.trigger({"wait": wait, "i": i})).id
            if wait:
                await until(d, run_id, RunStatus.WAITING)
                await d.signal(run_id, "go", i)
            await d.wait_for_run(run_id, timeout=60)
        return (time.perf_counter() - t0) * 1000 / samples


async def measure(
    leg: str, url: Callable[[str], str], samples: int, raw: float, raw_unit: str, **options: Any
) -> None:
    """Every figure of one backend; ``url(name)`` gives a fresh database."""
    await slots(url("warm"), 0, 5, **options)  # imports, first connections
    none = await slots(url("s0"), 0, samples, **options)
    base = statistics.median(none)
    emit(leg, "trigger → completed, 1 slot, no waiting runs (ms, median)", base, "ms")
    for waiting in (100, 1000):
        times = await slots(url(f"s{waiting}"), waiting, samples, **options)
        emit(
            leg,
            f"trigger → completed, 1 slot, {waiting} runs waiting (ms, median)",
            statistics.median(times),
            "ms",
            note=f"{statistics.median(times) / base:.2f}x the baseline; max {max(times):.0f} ms",
        )
    inproc = await resume_in_process(url("r"), samples, **options)
    emit(leg, "signal → resumed, same process (ms, median)", statistics.median(inproc), "ms")
    emit(leg, "signal → resumed, same process (ms, p95)", percentile(inproc, 95), "ms")
    other = await resume_elsewhere(url("o"), samples, POLLING, **options)
    emit(
        leg,
        f"signal → resumed by another process, polling {POLLING} s (ms, median)",
        statistics.median(other),
        "ms",
        note=f"p95 {percentile(other, 95):.0f} ms, max {max(other):.0f} ms",
    )
    good, elapsed = await restart(url("k"), samples, **options)
    emit(
        leg,
        f"worker SIGKILLed with {samples} runs waiting, signalled, new worker: resumed right "
        "(own payload, step before the wait replayed)",
        good,
        "runs",
        note=f"of {samples}; {elapsed:.0f} ms from the new process's start to the last",
    )
    without = await per_run(url("p0"), samples, False, **options)
    with_wait = await per_run(url("p1"), samples, True, **options)
    emit(leg, "ms per run, 2 steps, no wait", without, "ms", raw=raw, raw_unit=raw_unit)
    emit(
        leg,
        "ms per run, 2 steps + one wait (suspend, signal, resume)",
        with_wait,
        "ms",
        raw=raw,
        raw_unit=raw_unit,
        note=f"{with_wait / without:.2f}x the run without the wait",
    )


async def on_postgres(samples: int) -> None:
    # imported here, not by the worker processes that import this module; pg_workloads
    # puts tests/ (postgres_support) on the path
    from pg_workloads import PRODUCTION, raw_pg_us
    from postgres_support import PostgresServer, postgres_bindir

    bindir = postgres_bindir()
    if bindir is None:
        print("PostgreSQL is not installed (scripts/setup-postgres.sh): leg left out")
        return
    server = PostgresServer(bindir, settings=PRODUCTION).start()
    try:
        raw = statistics.median([await raw_pg_us(server.url_for(), 500) for _ in range(3)])
        await measure(
            "waits/pg",
            lambda name: server.url_for(schema=f"waits_{name}"),
            samples,
            raw,
            "µs",
        )
    finally:
        server.remove()


async def main(samples: int, postgres: bool) -> None:
    header("durable waits")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        raw, _ = raw_baseline(base, SYNC, 2000)
        await measure(
            "waits",
            lambda name: sqlite_url(base / f"{name}.db"),
            samples,
            raw,
            "µs",
            synchronous=SYNC,
        )
    if postgres:
        await on_postgres(samples)
    print_table()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--no-postgres", dest="postgres", action="store_false")
    args = parser.parse_args()
    asyncio.run(main(args.samples, args.postgres))
