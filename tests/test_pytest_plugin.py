"""The pytest plugin durably-testing installs (entry point ``pytest11``), used the
way a project's own test suite would use it."""

from __future__ import annotations

import pytest

USER_TESTS = """
from datetime import timedelta

import pytest
from pydantic import BaseModel

from durably import RunFailedError, Step, define_job
from durably_testing import ManualClock

calls = []


class In(BaseModel):
    n: int


class Out(BaseModel):
    doubled: int


@define_job("double", input=In, output=Out)
async def double(step: Step, payload: In) -> Out:
    value = await step.run("double", lambda: calls.append(payload.n) or payload.n * 2)
    return Out(doubled=value)


@define_job("boom")
async def boom(step: Step, payload: object) -> None:
    raise RuntimeError("boom")


MARK


async def test_run_to_completion(durably, durably_run):
    durably.register({"double": double})
    result = await durably_run(durably.jobs.double, {"n": 21})
    assert result.output == Out(doubled=42)
    assert result.disposition == "created"
    assert (await durably.get_run(result.id)).status == "completed"


MARK


async def test_failed_run_raises(durably, durably_run):
    durably.register({"boom": boom})
    with pytest.raises(RunFailedError, match="boom"):
        await durably_run(durably.jobs.boom, None)


MARK


async def test_clock_is_manual_and_shared(durably, durably_clock):
    assert isinstance(durably_clock, ManualClock)
    assert durably.clock is durably_clock
    start = durably_clock.now()
    await durably_clock.advance(5)
    assert (durably_clock.now() - start).total_seconds() == 5


MARK


async def test_advance_past_lease_lets_a_new_worker_resume(
    durably, durably_clock, durably_advance_past_lease
):
    durably.register({"double": double})
    run = await durably.jobs.double.trigger({"n": 3})
    # a worker that claimed the run and died: its lease blocks everyone else
    now = durably_clock.now()
    lease = timedelta(seconds=durably.settings.lease_duration)
    claimed = await durably.storage.claim_next("dead-worker", now, now + lease)
    assert claimed is not None
    assert await durably.process_until_idle() == 0
    await durably_advance_past_lease()
    assert await durably.process_until_idle() == 1
    assert (await durably.get_run(run.id)).output == {"doubled": 6}


MARK


async def test_each_test_gets_a_fresh_database(durably):
    assert await durably.get_runs() == []
"""


def write_user_tests(pytester: pytest.Pytester, mark: str) -> None:
    pytester.makepyfile(test_durably_user_suite=USER_TESTS.replace("MARK", mark))


def test_fixtures__work_in_asyncio_auto_mode(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        """
        [pytest]
        asyncio_mode = auto
        asyncio_default_fixture_loop_scope = function
        filterwarnings = error
        """
    )
    write_user_tests(pytester, "")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=5)


def test_fixtures__work_in_asyncio_strict_mode(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        """
        [pytest]
        asyncio_mode = strict
        asyncio_default_fixture_loop_scope = function
        filterwarnings = error
        """
    )
    write_user_tests(pytester, "@pytest.mark.asyncio")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=5)


def test_plugin__registered_through_its_entry_point_with_documented_fixtures(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(
        test_durably_plugin_loaded="""
        def test_loaded(request):
            plugin = request.config.pluginmanager.get_plugin("durably")
            assert plugin is not None
            assert plugin.__name__ == "durably_testing.pytest_plugin"
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
    result = pytester.runpytest("--fixtures", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*durably_clock*", "*manual clock*"])
    for name in ("durably", "durably_run", "durably_advance_past_lease"):
        assert any(line.startswith(name) for line in result.stdout.lines), name
