"""W1, W2, W4 and W5 on PostgreSQL, beside SQLite, and two peers on the same server.

One PostgreSQL cluster is started for the run (tests/postgres_support.py: a fresh
data directory on a free loopback port, ``fsync`` and ``synchronous_commit`` on, as
a production server), and every figure is measured against it in the same run:

- raw: asyncpg, one prepared ``INSERT`` of a step-shaped row per commit (the floor of
  a checkpoint on this server), µs (``--no-fsync``: a server that does not wait for
  the disk, to see what each costs in CPU);
- W2: one run of N trivial async steps, µs per step inside the job (durably on
  PostgreSQL; the same on a SQLite file at ``synchronous=FULL``, whose commit also
  reaches the disk, with raw sqlite3 beside it);
- W1: R runs x S steps, one worker process with 1 and 8 slots, steps per second;
- W4: trigger → first step, in-process, and from another process whose worker polls
  every second (LISTEN/NOTIFY wakes it: the figure is not the polling interval);
- W5: 1, 2 and 4 worker processes, R runs x S steps, steps per second;
- peers (``--peers``; they are not dependencies of the workspace:
  ``uv run --with dbos --with procrastinate python bench/pg_workloads.py --peers``):
  DBOS Transact, one async workflow of N async steps on a PostgreSQL system database
  (µs per step), and procrastinate, one job per step through a worker (µs per job).

Ratios are to the raw PostgreSQL insert measured in the same run.

    uv run python bench/pg_workloads.py [--steps N] [--runs R] [--peers]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _bench import (
    completions,
    emit,
    header,
    percentile,
    print_table,
    raw_us_per_insert,
    sqlite_url,
)

from durably import Step, create_durably, define_job

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from postgres_support import PostgresServer, postgres_bindir

PRODUCTION = {"fsync": "on", "synchronous_commit": "on", "shared_buffers": "128MB"}


async def trivial() -> int:
    return 1


@define_job("pg-w2")
async def w2_job(step: Step, payload: dict[str, Any]) -> float:
    t0 = time.perf_counter()
    for i in range(payload["steps"]):
        await step.run(f"s{i}", trivial)
    return time.perf_counter() - t0


@define_job("pg-w1")
async def w1_job(step: Step, payload: dict[str, Any]) -> int:
    for i in range(payload["steps"]):
        await step.run(f"s{i}", trivial)
    return payload["steps"]


@define_job("pg-w4")
async def w4_job(step: Step, payload: dict[str, Any]) -> float:
    return await step.run("first", time.time)


# -- raw --


async def raw_pg_us(url: str, n: int) -> float:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS raw_steps (id text PRIMARY KEY, run_id text NOT NULL, "
            'name text NOT NULL, "index" integer NOT NULL, status text NOT NULL, output text, '
            "error text, started_at text NOT NULL, completed_at text)"
        )
        await conn.execute("CREATE INDEX IF NOT EXISTS raw_steps_run ON raw_steps (run_id)")
        stmt = await conn.prepare(
            'INSERT INTO raw_steps (id, run_id, name, "index", status, output, started_at, '
            "completed_at) VALUES ($1, $2, $3, $4, 'completed', $5, $6, $6)"
        )
        key = f"r{time.perf_counter_ns()}"
        ts = "2026-01-01T00:00:00.000Z"
        t0 = time.perf_counter()
        for i in range(n):
            await stmt.fetch(f"{key}-{i}", key, f"s{i}", i, '{"i":1}', ts)
        return (time.perf_counter() - t0) / n * 1e6
    finally:
        await conn.close()


# -- durably --


async def w2_round(url: str, n: int, **options: Any) -> float:
    async with create_durably(url, jobs={"w2": w2_job}, **options) as d:
        result = await d.jobs.w2.trigger_and_wait({"steps": n})
    return float(result.output) / n * 1e6


async def w1_round(url: str, runs: int, steps: int, slots: int) -> float:
    d = create_durably(url, jobs={"w1": w1_job}, max_concurrent_runs=slots, polling_interval=0.05)
    await d.migrate()
    await d.jobs.w1.batch_trigger([{"steps": steps} for _ in range(runs)])
    done = completions(d, runs)
    t0 = time.perf_counter()
    d.start()
    await done.wait()
    elapsed = time.perf_counter() - t0
    await d.close()
    return runs * steps / elapsed


WORKER = """
import asyncio, sys, time
sys.path.insert(0, {bench!r})
from pg_workloads import w1_job, w4_job
from durably import create_durably
async def main():
    d = create_durably({url!r}, jobs={{"w1": w1_job, "w4": w4_job}}, polling_interval={poll})
    await d.init()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await d.close()
asyncio.run(main())
"""


def start_workers(url: str, count: int, poll: float) -> list[subprocess.Popen[str]]:
    code = WORKER.format(bench=str(Path(__file__).parent), url=url, poll=poll)
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for _ in range(count)
    ]
    for w in workers:
        assert w.stdout is not None
        assert w.stdout.readline().strip() == "ready"
    return workers


def stop_workers(workers: list[subprocess.Popen[str]]) -> None:
    for w in workers:
        assert w.stdin is not None
        w.stdin.close()
    for w in workers:
        w.wait(timeout=60)


async def w4_other_process(url: str, samples: int) -> list[float]:
    """Trigger here, a worker process (polling every second) runs it: ms to first step."""
    workers = start_workers(url, 1, poll=1.0)
    try:
        d = create_durably(url, jobs={"w4": w4_job})
        await d.migrate()
        out = []
        for i in range(samples + 1):
            await asyncio.sleep(0.05)
            t0 = time.time()
            run = (await d.jobs.w4.trigger({"i": i})).run
            finished = await d.wait_for_run(run.id, timeout=30)
            if i:  # the first one builds the worker's validators
                out.append((float(finished.output) - t0) * 1000)
        await d.close()
        return out
    finally:
        stop_workers(workers)


async def w4_in_process(url: str, samples: int) -> list[float]:
    out = []
    async with create_durably(url, jobs={"w4": w4_job}) as d:
        for i in range(samples + 1):
            t0 = time.time()
            result = await d.jobs.w4.trigger_and_wait({"i": i})
            if i:
                out.append((float(result.output) - t0) * 1000)
    return out


async def w5_round(url: str, processes: int, runs: int, steps: int) -> float:
    workers = start_workers(url, processes, poll=0.05)
    try:
        import asyncpg

        d = create_durably(url, jobs={"w1": w1_job})
        await d.migrate()
        schema = url.rpartition("schema=")[2]
        conn = await asyncpg.connect(url.partition("?")[0])
        count = f"SELECT count(*) FROM {schema}.durably_runs WHERE status = 'completed'"
        t0 = time.perf_counter()
        await d.jobs.w1.batch_trigger([{"steps": steps} for _ in range(runs)])
        while await conn.fetchval(count) < runs:  # noqa: ASYNC110 - other processes' work
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - t0
        await conn.close()
        await d.close()
        return runs * steps / elapsed
    finally:
        stop_workers(workers)


# -- peers --


def dbos_us_per_step(url: str, n: int) -> float:
    """DBOS Transact: one async workflow of ``n`` async steps on its PostgreSQL system
    database (in a process of its own: DBOS is a process-wide singleton)."""
    code = f"""
import asyncio, time
from dbos import DBOS
@DBOS.step()
async def trivial():
    return 1
@DBOS.workflow()
async def wf(n):
    t0 = time.perf_counter()
    for _ in range(n):
        await trivial()
    return time.perf_counter() - t0
DBOS(config={{"name": "bench", "system_database_url": {url!r}}})
DBOS.launch()
async def main():
    await wf(50)
    samples = [await wf({n}) for _ in range(3)]
    print(sorted(samples)[1])
asyncio.run(main())
DBOS.destroy()
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True
    )
    return float(done.stdout.strip().splitlines()[-1]) / n * 1e6


async def procrastinate_us_per_job(url: str, n: int) -> float:
    """procrastinate: one job per step, deferred in one go, then a worker (concurrency
    1) runs them all; µs per job from the first defer to the last job's end."""
    from procrastinate import App, PsycopgConnector

    app = App(connector=PsycopgConnector(conninfo=url))

    @app.task(name="trivial")
    async def trivial_job(i: int) -> int:
        return i

    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        t0 = time.perf_counter()
        for i in range(n):
            await trivial_job.defer_async(i=i)
        await app.run_worker_async(wait=False, concurrency=1, install_signal_handlers=False)
        return (time.perf_counter() - t0) / n * 1e6


async def main(n: int, runs: int, steps: int, rounds: int, peers: bool, fsync: bool) -> None:
    header(f"PostgreSQL: W2 {n} steps, W1/W5 {runs} runs x {steps} steps, {rounds} rounds")
    bindir = postgres_bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL is not installed: run scripts/setup-postgres.sh")
    settings = PRODUCTION if fsync else {**PRODUCTION, "fsync": "off"}
    server = PostgresServer(bindir, settings=settings).start()
    base = server.url_for()
    schemas = iter(range(1, 1000))

    def fresh() -> str:
        return server.url_for(schema=f"bench_{next(schemas)}")

    try:
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            raw, ours, lite, raw_lite = [], [], [], []
            await w2_round(fresh(), 100)  # warm-up
            await w2_round(sqlite_url(d / "w.db"), 100, synchronous="FULL")
            for _ in range(rounds):
                raw.append(await raw_pg_us(base, n))
                ours.append(await w2_round(fresh(), n))
                raw_lite.append(raw_us_per_insert(d / "raw.db", "FULL", n, "steps"))
                lite.append(await w2_round(sqlite_url(d / "w.db"), n, synchronous="FULL"))
        r, o, rl, sl = (statistics.median(x) for x in (raw, ours, raw_lite, lite))
        emit("PG", "raw asyncpg INSERT + commit (step-shaped)", r, "µs", samples=raw)
        emit("W2", "µs per step, PostgreSQL", o, "µs", raw=r, ratio=o / r, samples=ours)
        emit(
            "W2",
            "µs per step, SQLite synchronous=FULL (same run)",
            sl,
            "µs",
            raw=rl,
            ratio=sl / rl,
            note="raw = sqlite3 INSERT + commit, FULL",
        )
        for slots in (1, 8):
            rates = [await w1_round(fresh(), runs, steps, slots) for _ in range(rounds)]
            rate = statistics.median(rates)
            emit(
                "W1",
                f"steps/s, PostgreSQL, 1 process, {slots} slot(s)",
                rate,
                "steps/s",
                raw=1e6 / r,
                ratio=rate / (1e6 / r),
                raw_unit="inserts/s",
            )
        local = await w4_in_process(fresh(), 30)
        emit(
            "W4",
            "trigger → first step, in-process (p50)",
            percentile(local, 50),
            "ms",
            p95=percentile(local, 95),
        )
        other = await w4_other_process(fresh(), 30)
        emit(
            "W4",
            "trigger → first step, another process polling every 1 s (p50)",
            percentile(other, 50),
            "ms",
            p95=percentile(other, 95),
            note="LISTEN/NOTIFY wakes it",
        )
        for processes in (1, 2, 4):
            rate = await w5_round(fresh(), processes, runs, steps)
            emit(
                "W5",
                f"steps/s, PostgreSQL, {processes} worker process(es)",
                rate,
                "steps/s",
                raw=1e6 / r,
                ratio=rate / (1e6 / r),
                raw_unit="inserts/s",
            )
        if peers:
            server.psql("CREATE DATABASE dbos_bench")
            dbos = dbos_us_per_step(server.url_for("dbos_bench"), n)
            figure = "DBOS Transact: µs per step (async workflow)"
            emit("peer", figure, dbos, "µs", raw=r, ratio=dbos / r)
            server.psql("CREATE DATABASE procrastinate_bench")
            proc = await procrastinate_us_per_job(server.url_for("procrastinate_bench"), n)
            emit(
                "peer",
                "procrastinate: µs per job (a job per step)",
                proc,
                "µs",
                raw=r,
                ratio=proc / r,
            )
    finally:
        server.remove()
    print_table()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--run-steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--peers", action="store_true")
    parser.add_argument(
        "--no-fsync",
        action="store_true",
        help="the server without fsync (commits still written to the OS): what it costs in CPU",
    )
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    asyncio.run(
        main(args.steps, args.runs, args.run_steps, args.rounds, args.peers, not args.no_fsync)
    )
