"""Eight worker processes on one real PostgreSQL server, and the server crashed and
started again while they work (the workers and the checks of
``test_libsql_multiprocess``: records outside the database, read afterwards):

- every run completes, exactly once (one ``run:complete`` in all processes);
- a step whose checkpoint was acknowledged never executes again;
- runs sharing a concurrency key never execute at the same time;
- the server's immediate shutdown (its processes killed, the WAL replayed at the
  next start) while runs are in flight, down for longer than the executor retries,
  loses nothing and runs nothing twice: the workers report ``worker:error``, back
  off, and finish every run once it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest
from postgres_support import PostgresServer
from test_libsql_multiprocess import (
    STEPS,
    Workers,
    check_records,
    trigger_runs,
    trigger_side,
    wait_all_completed,
)

from durably_postgres._executor import RETRY_FOR

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


async def test_eight_workers__server_crashed_mid_run__every_run_finishes_once(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    url = postgres_server.url_for(schema="mp")
    d = trigger_side(url)
    await d.migrate()
    try:
        # leases long enough for eight processes starting at once on two loaded cores (a
        # worker stalled past its lease would start a step again: issue 12); a run whose
        # worker lost its connection is taken over when its lease expires
        with Workers(url, tmp_path, 8, lease=15.0) as workers:
            ids = await trigger_runs(d, plain=252, keyed=48)
            assert len(set(ids)) == 300
            deadline = time.monotonic() + 120
            while sum(r["event"] == "complete" for r in workers.records()) < 40:
                workers.check_alive()
                assert time.monotonic() < deadline, "the workers made no progress"
                await asyncio.sleep(0.05)
            postgres_server.crash()  # every connection cut, mid-statement or not
            # down longer than the executor retries connecting (and repeats a read), so
            # the workers' operations fail instead of only waiting: they report it
            await asyncio.sleep(RETRY_FOR + 3.0)
            postgres_server.start()  # same data directory, same port
            runs = await wait_all_completed(d, ids, workers, timeout=300)
            assert workers.stop() == [0] * 8
        assert len(runs) == 300
        for run in runs:
            assert run.output == {"i": run.input["i"], "total": 30 * run.input["i"] + 3}
        records = workers.records()
        counts = check_records(records, ids, in_flight_reruns_allowed=True)
        assert counts["execs"] >= 300 * len(STEPS)
        errors = [r for r in records if r["event"] == "worker-error"]
        assert errors, "no worker noticed the server was gone"
        assert any("PostgreSQL" in str(r["error"]) for r in errors), errors[:3]
        pids = {r["pid"] for r in records if r["event"] == "complete"}
        assert len(pids) > 1, "one worker did all the work"
    finally:
        with contextlib.suppress(Exception):
            await d.storage.close()
