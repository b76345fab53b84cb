"""Many worker processes against one real libSQL server (tursodb, Hrana over HTTP).

The workers (``tests/libsql_mp_worker.py``) record what they do in files outside
the database under test; the checks read those records, and the database only for
the final state:

- every run completes, exactly once (one ``run:complete`` in all processes);
- a step whose checkpoint was acknowledged never executes again;
- runs sharing a concurrency key never execute at the same time;
- killing the server and starting it again while runs are in flight loses nothing
  and runs nothing twice: the workers report ``worker:error``, back off, and finish
  every run once the server is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
from libsql_support import TursoServer

from durably import ConflictError, Durably, RunStatus, create_durably, define_job

WORKER = Path(__file__).parent / "libsql_mp_worker.py"
STEPS = ("a", "b", "c")
JOBS = ("mp-0", "mp-1", "mp-2", "mp-3")
KEYS = ("k0", "k1", "k2")

# each phase may wait up to 240 s for its workers on a loaded machine
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


async def _noop(step: Any, payload: Any) -> None:  # the trigger side never executes runs
    return None


def trigger_side(url: str) -> Durably:
    return create_durably(url, jobs={name: define_job(name, run=_noop) for name in JOBS})


class Workers:
    """Worker processes; always reaped (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, url: str, directory: Path, count: int, lease: float = 10.0) -> None:
        self.url = url
        self.lease = lease
        self.directory = directory
        self.count = count
        self.processes: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Workers:
        for n in range(self.count):
            log = (self.directory / f"worker-{n}.log").open("wb")
            try:
                self.processes.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            str(WORKER),
                            self.url,
                            str(self.records_file(n)),
                            str(self.lease),
                        ],
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
            finally:
                log.close()
        return self

    def records_file(self, n: int) -> Path:
        return self.directory / f"worker-{n}.jsonl"

    def records(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for n in range(self.count):
            path = self.records_file(n)
            if path.exists():
                out += [json.loads(line) for line in path.read_text().splitlines() if line]
        return out

    def check_alive(self) -> None:
        for n, process in enumerate(self.processes):
            if process.poll() is not None:
                log = (self.directory / f"worker-{n}.log").read_text()[-3000:]
                raise AssertionError(f"worker {n} exited with {process.returncode}:\n{log}")

    def stop(self, timeout: float = 20) -> list[int | None]:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        codes: list[int | None] = []
        deadline = time.monotonic() + timeout
        for process in self.processes:
            try:
                codes.append(process.wait(timeout=max(deadline - time.monotonic(), 0.1)))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                codes.append(None)
        return codes

    def __exit__(self, *exc: object) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait()


async def trigger_runs(d: Durably, plain: int, keyed: int) -> list[str]:
    """``plain`` runs without a key (batches of 50), then ``keyed`` runs over KEYS and
    JOBS; a keyed trigger retries while its (job, key) already has a pending run."""
    ids: list[str] = []
    for start in range(0, plain, 50):
        items = [{"i": i} for i in range(start, min(start + 50, plain))]
        ids += [r.id for r in await d.jobs["mp-0"].batch_trigger(items)]
    for n in range(keyed):
        i = plain + n
        job = d.jobs[JOBS[n % len(JOBS)]]
        key = KEYS[n % len(KEYS)]
        while True:
            try:
                result = await job.trigger({"i": i, "key": key}, concurrency_key=key)
            except ConflictError:
                await asyncio.sleep(0.05)
                continue
            ids.append(result.id)
            break
    return ids


async def wait_all_completed(
    d: Durably, ids: list[str], workers: Workers, timeout: float
) -> list[Any]:
    deadline = time.monotonic() + timeout
    while True:
        runs = await d.get_runs()
        done = [r for r in runs if r.status is RunStatus.COMPLETED]
        if len(done) == len(ids):
            return runs
        bad = [r for r in runs if r.status in (RunStatus.FAILED, RunStatus.CANCELLED)]
        assert not bad, bad[:3]
        workers.check_alive()
        if time.monotonic() > deadline:
            counts = Counter(r.status.value for r in runs)
            raise AssertionError(f"not all runs completed within {timeout}s: {counts}")
        await asyncio.sleep(0.25)


def check_records(
    records: list[dict[str, Any]], ids: list[str], *, in_flight_reruns_allowed: bool
) -> dict[str, int]:
    """The invariants over all workers' records; returns a few counts."""
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_kind[r["event"]].append(r)

    # every run completed exactly once (one run:complete across all processes); with a
    # server killed mid-request a completion can be committed with its answer lost
    completes = Counter(r["run"] for r in by_kind["complete"])
    assert all(n == 1 for n in completes.values()), completes.most_common(3)
    if not in_flight_reruns_allowed:
        assert set(completes) == set(ids)

    # a step whose checkpoint was acknowledged never runs again (a run taken over
    # after a lost lease replays it: "checkpointed" again, without an "exec")
    acked: dict[tuple[str, str], int] = {}
    for r in by_kind["checkpointed"]:
        key = (r["run"], r["step"])
        acked[key] = min(acked.get(key, r["t"]), r["t"])
    execs: dict[tuple[str, str], list[int]] = defaultdict(list)
    for r in by_kind["exec"]:
        execs[(r["run"], r["step"])].append(r["t"])
    for key, times in execs.items():
        if key in acked:
            assert all(t < acked[key] for t in times), f"checkpointed step {key} ran again"
        limit = 2 if in_flight_reruns_allowed else 1
        assert len(times) <= limit, f"step {key} ran {len(times)} times"
    for run_id in ids:
        for step in STEPS:
            assert execs.get((run_id, step)), f"step {step} of {run_id} never ran"

    # concurrency keys: the executions of runs sharing a key never overlap
    spans: dict[str, dict[str, list[int]]] = defaultdict(dict)
    for r in by_kind["begin"] + by_kind["end"]:
        if r["key"] is not None:
            spans[r["key"]].setdefault(r["run"], []).append(r["t"])
    for concurrency_key, runs in spans.items():
        intervals = sorted((min(ts), max(ts)) for ts in runs.values())
        for (_, end), (start, _) in itertools.pairwise(intervals):
            assert end < start, f"two runs of concurrency key {concurrency_key!r} executed at once"
    return {
        "completes": len(completes),
        "execs": sum(len(t) for t in execs.values()),
        "worker_errors": len(by_kind["worker-error"]),
    }


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    directory = tmp_path / "workers"
    directory.mkdir()
    return directory


async def test_eight_workers__300_runs_each_completed_once(
    libsql_server: TursoServer, workdir: Path
) -> None:
    d = trigger_side(libsql_server.url)
    await d.migrate()
    try:
        with Workers(libsql_server.url, workdir, 8) as workers:
            ids = await trigger_runs(d, plain=252, keyed=48)
            assert len(set(ids)) == 300
            runs = await wait_all_completed(d, ids, workers, timeout=240)
            assert workers.stop() == [0] * 8
        for run in runs:
            assert run.output == {"i": run.input["i"], "total": 30 * run.input["i"] + 3}
        counts = check_records(workers.records(), ids, in_flight_reruns_allowed=False)
        assert counts["completes"] == 300
        assert counts["execs"] == 300 * len(STEPS)
        pids = {r["pid"] for r in workers.records() if r["event"] == "complete"}
        assert len(pids) > 1, "one worker did all the work"
    finally:
        await d.storage.close()


async def test_server_killed_and_restarted__every_run_finishes_once(
    libsql_server: TursoServer, workdir: Path
) -> None:
    d = trigger_side(libsql_server.url)
    await d.migrate()
    try:
        # short leases: a run whose worker lost the server is taken over soon after
        with Workers(libsql_server.url, workdir, 4, lease=3.0) as workers:
            ids = await trigger_runs(d, plain=100, keyed=0)
            # let the workers get going, then pull the server out from under them
            deadline = time.monotonic() + 60
            while sum(r["event"] == "complete" for r in workers.records()) < 15:
                workers.check_alive()
                assert time.monotonic() < deadline, "the workers made no progress"
                await asyncio.sleep(0.05)
            libsql_server.kill()
            await asyncio.sleep(2.0)  # long enough for every worker to hit it
            libsql_server.start()  # same file, same port
            runs = await wait_all_completed(d, ids, workers, timeout=240)
            assert workers.stop() == [0] * 4
        assert len(runs) == 100
        records = workers.records()
        counts = check_records(records, ids, in_flight_reruns_allowed=True)
        assert counts["worker_errors"] > 0, "no worker noticed the server was gone"
        errors = [r for r in records if r["event"] == "worker-error"]
        assert any("libSQL server" in str(r["error"]) for r in errors), errors[:3]
        for run in runs:
            assert run.output == {"i": run.input["i"], "total": 30 * run.input["i"] + 3}
    finally:
        with contextlib.suppress(Exception):
            await d.storage.close()


def test_records__checker_catches_a_double_run() -> None:
    """The checker itself: a step executed after its acknowledged checkpoint fails it."""
    base: list[dict[str, Any]] = [
        {"event": "begin", "run": "r1", "key": None, "t": 1},
        {"event": "exec", "run": "r1", "step": "a", "t": 2},
        {"event": "checkpointed", "run": "r1", "step": "a", "t": 3},
        {"event": "exec", "run": "r1", "step": "a", "t": 4},
        {"event": "exec", "run": "r1", "step": "b", "t": 5},
        {"event": "exec", "run": "r1", "step": "c", "t": 6},
        {"event": "complete", "run": "r1", "t": 7},
    ]
    with pytest.raises(AssertionError, match="ran again"):
        check_records(base, ["r1"], in_flight_reruns_allowed=True)
    overlapping = [
        {"event": "begin", "run": "r1", "key": "k", "t": 1},
        {"event": "begin", "run": "r2", "key": "k", "t": 2},
        {"event": "end", "run": "r1", "key": "k", "t": 3},
        {"event": "end", "run": "r2", "key": "k", "t": 4},
    ]
    with pytest.raises(AssertionError, match="at once"):
        check_records(overlapping, [], in_flight_reruns_allowed=True)
