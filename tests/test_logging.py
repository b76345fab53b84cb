"""durably and the standard ``logging`` module: ``step.log`` lines on
``durably.job.<job>`` with the run's context in ``extra``, worker errors on
``durably.worker`` (whether or not anyone listens to ``worker:error``), and quiet
until the application configures logging (docs/guides/observability.md)."""

from __future__ import annotations

import logging
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from process_support import run_captured

from durably import Step, define_job
from durably_testing.clock import ManualClock
from durably_testing.faults import Fault, FaultKind, FaultPlan, FaultyStorage
from durably_testing.memory import MemoryStorage


@define_job("logger")
async def logging_job(step: Step, payload: Any) -> Any:
    step.log.info("starting", items=3)

    def in_thread() -> str:
        step.log.warn("from the step's thread", path=Path("/tmp/x"))
        return threading.current_thread().name

    thread = await step.run("work", in_thread)
    step.log.error("%s is not a format", extra_field=1)
    step.log.write("info", "done")
    return thread


def records(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == name]


@pytest.mark.parametrize("persist_logs", [True, False])
async def test_step_log__goes_to_the_jobs_logger_with_the_run_in_extra(
    make_durably: Any, caplog: pytest.LogCaptureFixture, persist_logs: bool
) -> None:
    d = make_durably(jobs={"logger": logging_job}, persist_logs=persist_logs, preserve_steps=True)
    caplog.set_level(logging.INFO, logger="durably.job")
    result = await d.jobs.logger.trigger(None)
    await d.process_one()
    run = await d.get_run(result.id)
    assert run is not None
    got = records(caplog, "durably.job.logger")
    assert [(r.levelno, r.getMessage()) for r in got] == [
        (logging.INFO, "starting"),
        (logging.WARNING, "from the step's thread"),
        (logging.ERROR, "%s is not a format"),  # the message is never %-formatted
        (logging.INFO, "done"),
    ]
    for r in got:
        assert r.run_id == result.id  # type: ignore[attr-defined]
        assert r.job_name == "logger"  # type: ignore[attr-defined]
        assert r.lease_generation == 1  # type: ignore[attr-defined]
    assert [r.step_name for r in got] == [None, "work", None, None]  # type: ignore[attr-defined]
    assert [r.data for r in got] == [  # type: ignore[attr-defined]
        {"items": 3},
        {"path": Path("/tmp/x")},  # the values as given (stored: their repr)
        {"extra_field": 1},
        {},
    ]
    # logged where the job's code ran: the sync step's line in its worker thread
    assert got[1].threadName == run.output
    assert got[1].threadName != got[0].threadName
    assert len(await d.get_logs(result.id)) == (4 if persist_logs else 0)


async def test_step_log__below_the_loggers_level_costs_no_record(
    make_durably: Any, caplog: pytest.LogCaptureFixture
) -> None:
    d = make_durably(jobs={"logger": logging_job})
    caplog.set_level(logging.ERROR, logger="durably.job.logger")
    await d.jobs.logger.trigger(None)
    await d.process_one()
    assert [r.getMessage() for r in records(caplog, "durably.job.logger")] == ["%s is not a format"]


async def test_worker_errors__logged_even_with_a_listener(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    from durably import create_durably

    storage = FaultyStorage(
        MemoryStorage(), FaultPlan([Fault(FaultKind.ERROR, operation="claim_next")])
    )
    d = create_durably(storage, clock=clock)
    events: list[Any] = []
    d.on("worker:error", events.append)
    caplog.set_level(logging.WARNING, logger="durably.worker")
    await d.init()
    try:
        from engine_support import eventually

        await eventually(lambda: events, "the claim's failure")
    finally:
        await d.stop(timeout=0)
    (record,) = records(caplog, "durably.worker")
    assert record.levelno == logging.WARNING
    assert record.context == "claim"  # type: ignore[attr-defined]
    assert record.run_id is None  # type: ignore[attr-defined]
    assert "claim" in record.getMessage()
    assert record.exc_info is None  # a durably error: the message says it all
    assert [e.context for e in events] == ["claim"]


def test_worker_errors__a_bug_is_logged_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from durably._logging import log_worker_error

    caplog.set_level(logging.WARNING, logger="durably.worker")
    try:
        raise KeyError("oops")
    except KeyError as exc:
        log_worker_error(exc, "run-execution", "01RUN")
    (record,) = records(caplog, "durably.worker")
    assert record.exc_info is not None
    assert record.run_id == "01RUN"  # type: ignore[attr-defined]
    assert "run 01RUN" in record.getMessage()


@pytest.mark.slow
def test_quiet_by_default__until_logging_is_configured(tmp_path: Path) -> None:
    """A process that configures no logging prints nothing for durably's warnings and
    errors (without the NullHandler, Python's last-resort handler would); one that
    calls basicConfig sees them."""
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent("""
            import asyncio, logging, sys
            from durably import Step, create_durably, define_job

            @define_job("noisy")
            async def noisy(step: Step, payload: object) -> None:
                step.log.error("a step says so")

            async def main() -> None:
                async with create_durably("memory://", jobs={"noisy": noisy}) as d:
                    await d.jobs.noisy.trigger_and_wait(None)
                    d._services.report_error(RuntimeError("a worker error"), "claim")

            if sys.argv[1:] == ["configured"]:
                logging.basicConfig(format="%(name)s %(levelname)s %(message)s %(run_id)s")
            asyncio.run(main())
        """)
    )
    quiet = run_captured([sys.executable, script], cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""
    loud = run_captured([sys.executable, script, "configured"], cwd=tmp_path)
    assert loud.returncode == 0, loud.stderr
    lines = loud.stderr.splitlines()
    assert lines[0].startswith("durably.job.noisy ERROR a step says so 01")
    assert lines[1].startswith("durably.worker WARNING durably worker error (claim): a worker")
