"""Crash a small multi-step job at every storage call, on every backend.

The job's steps record each execution in a list that lives outside the database
(like the side effects a real step has), so the checks do not trust the database
under test:

- a step checkpointed before the crash never runs again;
- the step in flight runs at most once more;
- the final output equals that of an uninterrupted run;
- no run is lost: a trigger that returned is in the database and completes; one
  that crashed before returning may be absent, but if it is there it completes.

Crashes (``SimulatedCrash``) kill the simulated process: it is abandoned without
cleanup and a new ``Durably`` takes over on the same database once the lease has
expired. Transient faults (a ``StorageError``, also the ambiguous commit) are
survived: the background worker reports ``worker:error`` and the run finishes
after its lease expires and it is claimed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import SEPARATE_CONNECTIONS

from durably import (
    Durably,
    RunStatus,
    Step,
    Storage,
    StorageError,
    WorkerErrorEvent,
    create_durably,
    define_job,
)
from durably.plugins import BackendRegistry
from durably_testing import (
    FaultKind,
    FaultPlan,
    FaultyStorage,
    ManualClock,
    MemoryStorage,
    SimulatedCrash,
)
from durably_testing.faults import CRASH_KINDS, TRANSIENT_KINDS

LEASE = 30.0
STEPS = ("fetch", "double", "total")
INPUT = {"n": 4}
EXPECTED_OUTPUT = {"items": [2, 4, 6, 8], "total": 20}
IDEMPOTENCY_KEY = "fault-injection-1"


@dataclass
class Recorder:
    """Side effects kept outside the database: one entry per step execution."""

    executions: list[str] = field(default_factory=list)

    def counts(self) -> Counter[str]:
        return Counter(self.executions)


def make_job(recorder: Recorder) -> Any:
    async def fetch(n: int) -> list[int]:
        recorder.executions.append("fetch")
        return list(range(1, n + 1))

    async def double(items: list[int]) -> list[int]:
        recorder.executions.append("double")
        return [2 * i for i in items]

    async def total(items: list[int]) -> int:
        recorder.executions.append("total")
        return sum(items)

    @define_job("fault-job")
    async def job(step: Step, payload: dict[str, int]) -> dict[str, Any]:
        items = await step.run("fetch", fetch, payload["n"])
        step.progress(1, 3, "fetched")
        doubled = await step.run("double", double, items)
        result = await step.run("total", total, doubled)
        return {"items": doubled, "total": result}

    return job


def new_durably(storage: Storage, clock: ManualClock, recorder: Recorder) -> Durably:
    return create_durably(
        storage,
        jobs={"job": make_job(recorder)},
        clock=clock,
        lease_duration=LEASE,
        lease_renew_interval=5.0,
        polling_interval=1.0,
    )


async def process_a(d: Durably) -> str:
    """What the first process does: trigger one run, then process until idle."""
    await d.migrate()
    result = await d.jobs.job.trigger(INPUT, idempotency_key=IDEMPOTENCY_KEY)
    await d.process_until_idle()
    return result.id


@functools.cache
def uninterrupted_calls() -> tuple[str, ...]:
    """The storage calls of the scenario without faults (learned on the memory backend)."""

    async def scenario() -> tuple[str, ...]:
        probe = FaultyStorage(MemoryStorage())
        d = new_durably(probe, ManualClock(), Recorder())
        await process_a(d)
        return tuple(probe.calls)

    return asyncio.run(scenario())


def call_cases(*, past_the_end: bool) -> list[Any]:
    """``(index, operation)`` for each call, and optionally one index past the end
    (no fault fires: the control case)."""
    calls = uninterrupted_calls()
    cases = [pytest.param(i, op, id=f"{i}-{op}") for i, op in enumerate(calls)]
    if past_the_end:
        cases.append(pytest.param(len(calls), None, id=f"{len(calls)}-none"))
    return cases


class Database:
    """The database under test, as separate processes see it: the same storage
    object for in-process databases, a new connection for a file."""

    def __init__(self, backend: str, url: str) -> None:
        self.backend = backend
        self.url = url
        self.opened: list[Storage] = []
        self._observer: Storage | None = None

    def open(self) -> Storage:
        if self.opened and self.backend not in SEPARATE_CONNECTIONS:
            return self.opened[0]
        storage = BackendRegistry().open(self.url)
        self.opened.append(storage)
        return storage

    async def observer(self) -> Storage:
        """A migrated storage over the database for the test's own reads (never faulty)."""
        if self._observer is None:
            self._observer = self.open()
            await self._observer.migrate()
        return self._observer

    async def close_all(self) -> None:
        for storage in reversed(self.opened):
            with contextlib.suppress(Exception):
                await storage.close()


@pytest.fixture
async def database(backend: str, db_url: str) -> AsyncIterator[Database]:
    db = Database(backend, db_url)
    yield db
    await db.close_all()


async def run_state(storage: Storage) -> tuple[list[Any], dict[str, Any]]:
    """All runs, and the completed steps of each (by run id)."""
    from durably import RunFilter

    runs = await storage.get_runs(RunFilter())
    steps = {r.id: await storage.get_completed_steps(r.id) for r in runs}
    return runs, steps


def test_uninterrupted_call_sequence__covers_every_kind_of_write() -> None:
    calls = uninterrupted_calls()
    assert calls[:3] == ("migrate", "enqueue", "claim_next")
    assert calls.count("persist_step") == len(STEPS)
    for op in ("get_completed_steps", "update_progress", "complete_run"):
        assert op in calls


async def test_uninterrupted_run__same_calls_on_every_backend(
    database: Database, clock: ManualClock
) -> None:
    recorder = Recorder()
    faulty = FaultyStorage(database.open())
    d = new_durably(faulty, clock, recorder)
    run_id = await process_a(d)
    assert tuple(faulty.calls) == uninterrupted_calls()
    run = await (await database.observer()).get_run(run_id)
    assert run is not None
    assert run.status is RunStatus.COMPLETED
    assert run.output == EXPECTED_OUTPUT
    assert recorder.executions == list(STEPS)


@pytest.mark.parametrize(("index", "operation"), call_cases(past_the_end=True))
@pytest.mark.parametrize("kind", CRASH_KINDS, ids=str)
async def test_crash_at_every_call__restart_finishes_without_redoing_checkpoints(
    database: Database, clock: ManualClock, kind: FaultKind, index: int, operation: str | None
) -> None:
    recorder = Recorder()
    faulty = FaultyStorage(database.open(), FaultPlan.at_call(index, kind))
    first = new_durably(faulty, clock, recorder)

    returned_id: str | None = None
    crashed = False
    try:
        returned_id = await process_a(first)
    except SimulatedCrash:
        crashed = True  # the process is gone: `first` is abandoned without cleanup
    assert crashed == (operation is not None)
    if crashed:
        assert faulty.crash is not None
        assert faulty.crash.index == index

    # what the crash left behind, and what ran before it
    runs, steps = await run_state(await database.observer())
    assert len(runs) <= 1
    checkpointed: set[str] = set()
    if runs:
        run = runs[0]
        checkpointed = {s.name for s in steps[run.id]}
        if run.status is RunStatus.COMPLETED:
            checkpointed = set(STEPS)  # its steps may be deleted; none may run again
        else:
            assert run.status in (RunStatus.PENDING, RunStatus.LEASED), run
    before = recorder.counts()
    assert all(before[name] <= 1 for name in STEPS), before
    in_flight = {name for name in STEPS if before[name] and name not in checkpointed}
    assert len(in_flight) <= 1, (in_flight, checkpointed)

    # restart: a new process on the same database, after the lease has expired
    await clock.advance(LEASE + 1)
    second = new_durably(database.open(), clock, recorder)
    await second.process_until_idle()

    after = recorder.counts() - before
    runs, _ = await run_state(await database.observer())
    if returned_id is not None:
        assert [r.id for r in runs] == [returned_id], "a triggered run was lost"
    assert len(runs) <= 1
    for run in runs:
        assert run.status is RunStatus.COMPLETED, run
        assert run.output == EXPECTED_OUTPUT
        for name in STEPS:
            if name in checkpointed:
                assert after[name] == 0, f"checkpointed step {name!r} ran again"
            else:
                assert after[name] == 1, f"step {name!r} ran {after[name]} times after restart"
    if not runs:
        assert returned_id is None
        assert not recorder.executions


async def drive_until_finished(
    storage: Storage, run_id: str, clock: ManualClock, *, max_seconds: int = 600
) -> None:
    """Move the manual clock one second at a time until the run is terminal,
    yielding to the event loop (and to database threads) in between."""
    for _ in range(max_seconds):
        run = await storage.get_run(run_id)
        if run is not None and run.is_terminal:
            return
        await clock.advance(1.0)
        await asyncio.sleep(0.001)  # real time for database I/O threads, not for leases
    raise AssertionError(f"run {run_id} did not finish within {max_seconds}s of clock time")


async def retrying(call: Callable[[], Awaitable[Any]], errors: list[StorageError]) -> Any:
    """What a careful caller does with a StorageError: note it and try again."""
    for _ in range(5):
        try:
            return await call()
        except StorageError as exc:
            errors.append(exc)
    raise AssertionError(f"still failing after retries: {errors}")


# (no past-the-end case here: the worker keeps polling after the run has finished)
@pytest.mark.parametrize(("index", "operation"), call_cases(past_the_end=False))
@pytest.mark.parametrize("kind", TRANSIENT_KINDS, ids=str)
async def test_transient_storage_error_at_every_call__worker_reports_and_finishes(
    database: Database, clock: ManualClock, kind: FaultKind, index: int, operation: str | None
) -> None:
    recorder = Recorder()
    inner = database.open()
    # by operation and occurrence rather than call index: on a slow (remote) backend
    # the manual clock moves further per run, so lease renewals add calls
    assert operation is not None
    occurrence = uninterrupted_calls()[: index + 1].count(operation)
    plan = FaultPlan.on_operation(operation, kind, occurrence=occurrence)
    faulty = FaultyStorage(inner, plan)
    d = new_durably(faulty, clock, recorder)
    worker_errors: list[WorkerErrorEvent] = []
    d.on("worker:error", worker_errors.append)
    caller_errors: list[StorageError] = []
    try:
        await retrying(d.migrate, caller_errors)
        job = d.jobs.job
        # the idempotency key makes a retried trigger safe after an ambiguous commit
        triggered = await retrying(
            lambda: job.trigger(INPUT, idempotency_key=IDEMPOTENCY_KEY), caller_errors
        )
        d.start()
        await drive_until_finished(inner, triggered.id, clock)
        # a remote backend can finish the run before the worker's next call (the one
        # that fails when the fault is the idle claim after the run): let it happen
        for _ in range(60):
            if faulty.fired:
                break
            await clock.advance(1.0)
            await asyncio.sleep(0.01)
    finally:
        await d.stop(timeout=0)

    assert not faulty.crashed
    fired = [f.operation for f in faulty.fired]
    assert fired == [operation]
    if operation in ("migrate", "enqueue"):
        assert len(caller_errors) == 1
        assert not worker_errors
    else:
        assert not caller_errors
        assert [e.run_id for e in worker_errors] in ([triggered.id], [None])

    run = await inner.get_run(triggered.id)
    assert run is not None
    assert run.status is RunStatus.COMPLETED, run
    assert run.output == EXPECTED_OUTPUT
    from durably import RunFilter

    assert len(await inner.get_runs(RunFilter())) == 1, "a retried trigger made a second run"

    # a step runs again only when its checkpoint was never written
    expected = Counter(STEPS)
    if kind is FaultKind.ERROR and operation == "persist_step":
        lost = faulty.calls[: index + 1].count("persist_step") - 1
        expected[STEPS[lost]] += 1
    assert recorder.counts() == expected
