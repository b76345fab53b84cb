"""The example adapter of docs/writing-a-storage-adapter.md (``tests/adapter_example``,
installed into the workspace through its own ``durably`` entry point) passes the
whole conformance suite once (on a file: discovery and reopening included), and the
guide's fault-injection and stateful-model examples; a copy of it with the fencing
condition dropped fails the suite's fencing cases."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test
from lock_support import LockHolder, Ticker

from durably import Step, Storage, StorageBusyError, create_durably, define_job
from durably.plugins import BackendRegistry
from durably.sql import Executor, SqlStorage
from durably_testing.conformance import FENCED_WRITES, StorageConformance
from durably_testing.fault_suite import FaultInjectionSuite, OpenStorage
from durably_testing.stateful import StorageStateMachine

pytestmark = pytest.mark.slow


class TestExampleAdapterFile(StorageConformance):
    supports_reopen = True
    entry_point_name = "sqlite3sync"

    @pytest.fixture
    def storage_url(self, tmp_path: Path) -> str:
        return f"sqlite3sync:///{tmp_path / 'example.db'}"


class TestExampleAdapterFaults(FaultInjectionSuite):
    """The guide's fault-injection step: a fault at every storage call."""

    @pytest.fixture
    def open_storage(self, tmp_path: Path) -> OpenStorage:
        url = f"sqlite3sync:///{tmp_path / 'faults.db'}"
        return lambda: BackendRegistry().open(url)


async def test_example_adapter__runs_a_job_end_to_end(tmp_path: Path) -> None:
    @define_job("double")
    async def double(step: Step, payload: dict[str, int]) -> int:
        return await step.run("double", lambda: payload["n"] * 2)

    url = f"sqlite3sync:///{tmp_path / 'jobs.db'}"
    async with create_durably(url, jobs={"double": double}, polling_interval=0.01) as durably:
        result = await durably.jobs.double.trigger_and_wait({"n": 21}, timeout=10)
    assert result.output == 42


def example_executor(path: Path, busy_timeout: float) -> Executor:
    """The example's executor, opened as users open it: through its URL."""
    storage = BackendRegistry().open(f"sqlite3sync:///{path}", busy_timeout=busy_timeout)
    assert isinstance(storage, SqlStorage)
    return storage.executor


async def test_example_adapter__waits_for_a_lock_without_blocking_the_loop(
    tmp_path: Path,
) -> None:
    # What the guide teaches: a worker whose loop froze on a lock wait would stop
    # renewing its leases; this executor waits with asyncio.sleep instead.
    path = tmp_path / "locked.db"
    executor = example_executor(path, busy_timeout=60)
    await executor.execute("CREATE TABLE t (a TEXT)")
    ticker = Ticker()
    try:
        with LockHolder(path) as holder:
            assert await executor.fetch("SELECT count(*) FROM t") == [(0,)]  # WAL: reads go on
            write = asyncio.ensure_future(executor.execute("INSERT INTO t VALUES ('x')"))
            batch = asyncio.ensure_future(executor.batch([("INSERT INTO t VALUES ('y')", ())]))
            await ticker.ticks_while(write, 20)
            await ticker.ticks_while(batch, 1)
            holder.release()
            assert await write == 1
            assert await batch == [[]]
        assert await executor.fetch("SELECT a FROM t ORDER BY a") == [("x",), ("y",)]
    finally:
        await ticker.stop()
        await executor.close()


async def test_example_adapter__gives_up_after_its_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    executor = example_executor(path, busy_timeout=0.1)
    await executor.execute("CREATE TABLE t (a TEXT)")
    try:
        with LockHolder(path), pytest.raises(StorageBusyError, match="stayed locked"):
            await executor.execute("INSERT INTO t VALUES ('x')")
        assert await executor.execute("INSERT INTO t VALUES ('x')") == 1
    finally:
        await executor.close()


# A copy of the example adapter with ONE guarantee broken: every statement goes
# through an executor that turns `lease_generation = ?` into a condition that is
# always true, so a worker whose lease was taken over can still write. Everything
# else (claims, status checks, constraints) is intact.
BROKEN_ADAPTER_SUITE = r"""
import re

import pytest

from durably.sql import SqlStorage
from durably_adapter_example.executor import SyncSqliteExecutor
from durably_testing.conformance import StorageConformance

_GENERATION = re.compile(r"((?:\w+\.)?lease_generation) = \?")


def drop_fencing(sql):
    return _GENERATION.sub(r"(\1 = ? OR 1 = 1)", sql)


class FenceDroppingExecutor(SyncSqliteExecutor):
    async def fetch(self, sql, params=()):
        return await super().fetch(drop_fencing(sql), params)

    async def execute(self, sql, params=()):
        return await super().execute(drop_fencing(sql), params)

    async def batch(self, statements):
        return await super().batch([(drop_fencing(sql), params) for sql, params in statements])


class TestBrokenCopy(StorageConformance):
    @pytest.fixture
    async def storage(self, tmp_path):
        s = SqlStorage(FenceDroppingExecutor(str(tmp_path / "broken.db")))
        await s.migrate()
        yield s
        await s.close()
"""

#: Where a worker with a stale generation writes while the run is still leased (by
#: someone else, or under another generation): the cases the fencing condition decides.
EXPECTED_FAILURES = {
    *(
        f"test_fenced_write__refused_without_the_lease[{scenario}-{write}]"
        for scenario in ("reclaimed", "wrong_generation")
        for write in FENCED_WRITES
    ),
    "test_renew_lease__refused_with_wrong_generation",
    "test_renew_lease__refused_after_reclaim",
    # the fenced wait operations of the lease holder
    *(
        f"test_{operation}__refused_without_the_lease{suffix}[{scenario}]"
        for operation, suffix in (("prepare_wait", ""), ("suspend_run", "_or_the_wait"))
        for scenario in ("reclaimed", "wrong_generation")
    ),
    "test_wait_result__refused_without_the_lease",
    # checkpoints of several runs written together, one of them fenced out
    "test_concurrent__checkpoints_of_several_runs_each_fenced_by_its_own_lease",
}


def test_broken_copy__conformance_suite_fails_on_fencing(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        """
        [pytest]
        asyncio_mode = auto
        asyncio_default_fixture_loop_scope = function
        filterwarnings = error
        """
    )
    pytester.makepyfile(test_broken_adapter=BROKEN_ADAPTER_SUITE)
    recorder = pytester.inline_run("-p", "no:cacheprovider")
    passed, _skipped, failed = recorder.listoutcomes()
    failed_names = {report.nodeid.rpartition("::")[2] for report in failed}
    assert failed_names == EXPECTED_FAILURES
    # everything that does not depend on the generation still passes
    assert len(passed) > 100


class ExampleAdapterMachine(StorageStateMachine):
    """The stateful machine of the guide: the example adapter against the model."""

    async def open_storages(self) -> Mapping[str, Storage]:
        return {"sqlite3sync": BackendRegistry().open(f"sqlite3sync:///{self.tmp_path / 'm.db'}")}


def test_example_adapter__matches_the_lifecycle_model() -> None:
    run_state_machine_as_test(
        ExampleAdapterMachine,
        settings=settings(
            max_examples=25,
            stateful_step_count=25,
            deadline=None,
            derandomize=True,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
