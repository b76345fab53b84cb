"""Fault injection at every storage call: a pytest base class any adapter runs.

:class:`FaultInjectionSuite` runs a small three-step job once without faults to
learn the storage calls the engine makes, then, for each call index, runs it
again with that call failing — on your storage, through :class:`FaultyStorage`::

    import pytest
    from durably.plugins import BackendRegistry
    from durably_testing.fault_suite import FaultInjectionSuite

    class TestMyFaults(FaultInjectionSuite):
        @pytest.fixture
        def open_storage(self, tmp_path):
            url = f"mydb:///{tmp_path / 'faults.db'}"
            return lambda: BackendRegistry().open(url)

``open_storage`` returns a callable that opens (without migrating) a storage over
one fresh database per test, as another process would: a new connection each
call. For a database that lives inside one process (``:memory:``), return the
same object on every call. The suite closes what it opened.

The job's steps record each execution in a list outside the database (like a
real step's side effects), so the checks do not trust the storage under test:

``crash`` (before or after the call — :data:`~durably_testing.faults.CRASH_KINDS`)
    the simulated process dies (``SimulatedCrash``) and is abandoned without
    cleanup; a new ``Durably`` on the same database takes over once the lease
    has expired. A step checkpointed before the crash never runs again, the step
    in flight runs at most once more, the output equals that of an
    uninterrupted run, and no run is lost (a trigger that returned is in the
    database and completes; one that crashed before returning may be absent).
``transient`` (a ``StorageError``, also after a commit — the ambiguous commit)
    the process survives: the caller retries its own calls, the worker reports
    ``worker:error``, and the run completes once, with a step run again only
    when its checkpoint was never written.

What this asks of an adapter is what the contract asks: each operation atomic,
so that after any crash the database holds all of a write or none of it.
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

from durably import (
    Durably,
    JobDefinition,
    Run,
    RunFilter,
    RunStatus,
    Step,
    StepRecord,
    Storage,
    StorageError,
    WorkerErrorEvent,
    create_durably,
    define_job,
)

from .clock import ManualClock
from .faults import (
    CRASH_KINDS,
    TRANSIENT_KINDS,
    FaultKind,
    FaultPlan,
    FaultyStorage,
    SimulatedCrash,
)
from .memory import MemoryStorage

__all__ = [
    "EXPECTED_OUTPUT",
    "STEPS",
    "FaultInjectionSuite",
    "OpenStorage",
    "uninterrupted_calls",
]

OpenStorage = Callable[[], Storage]
"""``open_storage()``: a storage over the test's database, not yet migrated."""

LEASE = 30.0
INPUT = {"n": 4}

STEPS = ("fetch", "double", "total")
"""The job's steps, in order."""

EXPECTED_OUTPUT = {"items": [2, 4, 6, 8], "total": 20}
"""The output of an uninterrupted run."""

IDEMPOTENCY_KEY = "fault-injection-1"


@dataclass
class _Recorder:
    """Side effects kept outside the database: one entry per step execution."""

    executions: list[str] = field(default_factory=list)

    def counts(self) -> Counter[str]:
        return Counter(self.executions)


def _job(recorder: _Recorder) -> JobDefinition[Any, Any]:
    async def fetch(n: int) -> list[int]:
        recorder.executions.append("fetch")
        return list(range(1, n + 1))

    async def double(items: list[int]) -> list[int]:
        recorder.executions.append("double")
        return [2 * i for i in items]

    async def total(items: list[int]) -> int:
        recorder.executions.append("total")
        return sum(items)

    async def run(step: Step, payload: dict[str, int]) -> dict[str, Any]:
        items = await step.run("fetch", fetch, payload["n"])
        step.progress(1, 3, "fetched")
        doubled = await step.run("double", double, items)
        result = await step.run("total", total, doubled)
        return {"items": doubled, "total": result}

    return define_job(name="fault-job", run=run)


def _durably(storage: Storage, clock: ManualClock, recorder: _Recorder) -> Durably:
    return create_durably(
        storage,
        jobs={"job": _job(recorder)},
        clock=clock,
        lease_duration=LEASE,
        lease_renew_interval=5.0,
        polling_interval=1.0,
    )


async def _first_process(d: Durably) -> str:
    """What the first process does: trigger one run, then process until idle."""
    await d.migrate()
    result = await d.jobs.job.trigger(INPUT, idempotency_key=IDEMPOTENCY_KEY)
    await d.process_until_idle()
    return result.id


@functools.cache
def uninterrupted_calls() -> tuple[str, ...]:
    """The storage calls of the scenario without faults (learned on ``MemoryStorage``;
    the engine makes them, so they are the same on every backend)."""

    async def scenario() -> tuple[str, ...]:
        probe = FaultyStorage(MemoryStorage())
        await _first_process(_durably(probe, ManualClock(), _Recorder()))
        return tuple(probe.calls)

    return asyncio.run(scenario())


def _call_cases(*, past_the_end: bool) -> list[Any]:
    """``(index, operation)`` for each call, and optionally one index past the end
    (no fault fires: the control case)."""
    calls = uninterrupted_calls()
    cases = [pytest.param(i, op, id=f"{i}-{op}") for i, op in enumerate(calls)]
    if past_the_end:
        cases.append(pytest.param(len(calls), None, id=f"{len(calls)}-none"))
    return cases


class _Database:
    """The database under test as the simulated processes open it."""

    def __init__(self, open_storage: OpenStorage) -> None:
        self._open = open_storage
        self.opened: list[Storage] = []
        self._observer: Storage | None = None

    def open(self) -> Storage:
        storage = self._open()
        if not any(storage is s for s in self.opened):
            self.opened.append(storage)
        return storage

    async def observer(self) -> Storage:
        """A migrated storage for the test's own reads (never faulty)."""
        if self._observer is None:
            self._observer = self.open()
            await self._observer.migrate()
        return self._observer

    async def close_all(self) -> None:
        for storage in reversed(self.opened):
            with contextlib.suppress(Exception):  # a crashed test must not hide its result
                await storage.close()


async def _state(storage: Storage) -> tuple[list[Run], dict[str, list[StepRecord]]]:
    """All runs, and the completed steps of each (by run id)."""
    runs = await storage.get_runs(RunFilter())
    return runs, {r.id: await storage.get_completed_steps(r.id) for r in runs}


async def _drive_until_finished(
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


async def _retrying(call: Callable[[], Awaitable[Any]], errors: list[StorageError]) -> Any:
    """What a careful caller does with a StorageError: note it and try again."""
    for _ in range(5):
        try:
            return await call()
        except StorageError as exc:
            errors.append(exc)
    raise AssertionError(f"still failing after retries: {errors}")


class FaultInjectionSuite:
    """Base class: a fault at every storage call (see the module docstring).
    Subclasses provide the ``open_storage`` fixture."""

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        """pytest hook: one case per storage call and fault kind (worked out at
        collection, not at import: learning the calls runs a job)."""
        name = metafunc.function.__name__
        if name == "test_crash_at_every_call__restart_finishes_without_redoing_checkpoints":
            metafunc.parametrize(("index", "operation"), _call_cases(past_the_end=True))
            metafunc.parametrize("kind", CRASH_KINDS, ids=str)
        elif name == "test_transient_error_at_every_call__worker_reports_and_finishes":
            # no past-the-end case: the worker keeps polling after the run has finished
            metafunc.parametrize(("index", "operation"), _call_cases(past_the_end=False))
            metafunc.parametrize("kind", TRANSIENT_KINDS, ids=str)

    @pytest.fixture
    def open_storage(self) -> OpenStorage:
        """Override: a callable opening a storage over this test's fresh database."""
        raise NotImplementedError(
            f"{type(self).__name__} must define the fixture open_storage: a callable "
            "returning a (not yet migrated) storage over one fresh database per test"
        )

    @pytest.fixture
    async def fault_database(self, open_storage: OpenStorage) -> AsyncIterator[_Database]:
        """The test's database, opened through ``open_storage``; closed afterwards."""
        database = _Database(open_storage)
        yield database
        await database.close_all()

    @pytest.fixture
    def fault_clock(self) -> ManualClock:
        """The manual clock of the test's ``Durably`` instances."""
        return ManualClock()

    async def test_uninterrupted_run__makes_the_calls_the_suite_learned(
        self, fault_database: _Database, fault_clock: ManualClock
    ) -> None:
        recorder = _Recorder()
        faulty = FaultyStorage(fault_database.open())
        run_id = await _first_process(_durably(faulty, fault_clock, recorder))
        assert tuple(faulty.calls) == uninterrupted_calls()
        run = await (await fault_database.observer()).get_run(run_id)
        assert run is not None
        assert run.status is RunStatus.COMPLETED
        assert run.output == EXPECTED_OUTPUT
        assert recorder.executions == list(STEPS)

    async def test_crash_at_every_call__restart_finishes_without_redoing_checkpoints(
        self,
        fault_database: _Database,
        fault_clock: ManualClock,
        kind: FaultKind,
        index: int,
        operation: str | None,
    ) -> None:
        recorder, clock = _Recorder(), fault_clock
        faulty = FaultyStorage(fault_database.open(), FaultPlan.at_call(index, kind))
        returned_id: str | None = None
        crashed = False
        try:
            returned_id = await _first_process(_durably(faulty, clock, recorder))
        except SimulatedCrash:
            crashed = True  # the process is gone: abandoned without cleanup
        assert crashed == (operation is not None)
        if crashed:
            assert faulty.crash is not None
            assert faulty.crash.index == index

        # what the crash left behind, and what ran before it
        runs, steps = await _state(await fault_database.observer())
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
        await _durably(fault_database.open(), clock, recorder).process_until_idle()

        after = recorder.counts() - before
        runs, _ = await _state(await fault_database.observer())
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

    async def test_transient_error_at_every_call__worker_reports_and_finishes(
        self,
        fault_database: _Database,
        fault_clock: ManualClock,
        kind: FaultKind,
        index: int,
        operation: str,
    ) -> None:
        recorder, clock = _Recorder(), fault_clock
        inner = fault_database.open()
        # by operation and occurrence rather than call index: on a slow (remote) backend
        # the manual clock moves further per run, so lease renewals add calls
        occurrence = uninterrupted_calls()[: index + 1].count(operation)
        plan = FaultPlan.on_operation(operation, kind, occurrence=occurrence)
        faulty = FaultyStorage(inner, plan)
        d = _durably(faulty, clock, recorder)
        worker_errors: list[WorkerErrorEvent] = []
        d.on("worker:error", worker_errors.append)
        caller_errors: list[StorageError] = []
        try:
            await _retrying(d.migrate, caller_errors)
            job = d.jobs.job
            # the idempotency key makes a retried trigger safe after an ambiguous commit
            triggered = await _retrying(
                lambda: job.trigger(INPUT, idempotency_key=IDEMPOTENCY_KEY), caller_errors
            )
            d.start()
            await _drive_until_finished(inner, triggered.id, clock)
            # a remote backend can finish the run before the worker's next call (the one
            # that fails when the fault is the idle claim after the run), and a write whose
            # answer was lost can be read back by another connection before the worker has
            # been told and reported it: let both happen
            worker_call = operation not in ("migrate", "enqueue")
            for _ in range(60):
                if faulty.fired and (worker_errors or not worker_call):
                    break
                await clock.advance(1.0)
                await asyncio.sleep(0.01)
        finally:
            await d.stop(timeout=0)

        assert not faulty.crashed
        assert [f.operation for f in faulty.fired] == [operation]
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
        assert len(await inner.get_runs(RunFilter())) == 1, "a retried trigger made a second run"

        # a step runs again only when its checkpoint was never written
        expected = Counter(STEPS)
        if kind is FaultKind.ERROR and operation == "persist_step":
            # the occurrence-th checkpoint was refused (counted by operation: lease
            # renewals, more of them on a slow backend, shift the call indexes)
            expected[STEPS[occurrence - 1]] += 1
        assert recorder.counts() == expected
