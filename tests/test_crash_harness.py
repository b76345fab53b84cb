"""The SIGKILL crash harness (durably_testing.crash): a few real kills in the
default test run (``nox -s crash`` does ≥ 200), and its checks shown to catch
what they look for."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from durably import RunFailedError, RunStatus, ValidationError, create_durably
from durably_testing.crash import (
    CrashConfig,
    CrashReport,
    _analyse,
    _crash_job,
    _Trial,
    expected_output,
    run_crash_harness,
)

pytestmark = pytest.mark.slow


def test_crash_harness__kills_on_a_sqlite_file_lose_nothing(tmp_path: Path) -> None:
    report = run_crash_harness(f"sqlite:///{tmp_path / 'crash.db'}", kills=8, seed=1)
    print(report.format())
    assert report.problems == ()
    assert report.kills == 8
    assert report.trials > 0
    assert report.checkpointed_steps > 0
    assert report.checkpointed_steps_reexecuted == 0
    assert report.checkpoints_changed == 0
    assert report.runs_lost == 0
    assert report.wrong_outputs == 0
    assert report.ok
    assert report.records_dir is None  # removed after a clean run


def test_crash_harness__command_line_on_an_adapters_own_url(tmp_path: Path) -> None:
    # Any URL an installed backend opens: here the example adapter of the guide.
    records = tmp_path / "records"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "durably_testing.crash",
            "--url",
            f"sqlite3sync:///{tmp_path / 'crash.db'}",
            "--kills",
            "4",
            "--seed",
            "2",
            "--workers",
            "2",
            "--records-dir",
            str(records),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for figure in (
        "trials:",
        "kills:                          4",
        "checkpointed steps re-executed: 0",
        "in-flight re-executions:",
        "runs lost:                      0",
        "wrong outputs:                  0",
        "elapsed:",
        "result: OK",
    ):
        assert figure in done.stdout
    assert list(records.glob("p*.jsonl"))  # --records-dir keeps them


@pytest.mark.parametrize("url", ["memory://", "sqlite:///:memory:"])
def test_crash_harness__refuses_a_database_private_to_one_process(url: str) -> None:
    with pytest.raises(ValidationError, match="several processes"):
        run_crash_harness(url, kills=1)


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"kills": -1}, "kills >= 0, got -1; pass --kills 0 or more"),
        ({"workers": 0}, "workers >= 1, got 0; pass --workers 1 or more"),
        ({"slots": 0}, "slots >= 1, got 0; pass --slots 1 or more"),
        ({"steps": 0}, "steps >= 1, got 0; pass --steps 1 or more"),
        ({"kill_interval": (0.5, 0.1)}, "--min-gap 0.02 --max-gap 0.3"),
    ],
    ids=["kills", "workers", "slots", "steps", "interval"],
)
def test_crash_harness__bad_figures_refused_before_anything_starts(
    tmp_path: Path, options: dict[str, Any], says: str
) -> None:
    with pytest.raises(ValidationError, match=re.escape(says)):
        run_crash_harness(f"sqlite:///{tmp_path / 'crash.db'}", **options)
    assert not (tmp_path / "crash.db").exists()  # refused before the database was opened


def test_crash_harness__command_line_reports_a_bad_url_without_a_traceback() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "durably_testing.crash", "--url", "memory://", "--kills", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "several processes share" in done.stderr


def test_crash_job__refuses_to_run_outside_a_worker_process() -> None:
    async def run_here() -> None:
        async with create_durably("memory://", jobs={"crash": _crash_job(None)}) as durably:
            payload = {"seed": 1, "trial": 0, "steps": 1}
            await durably.jobs.crash.trigger_and_wait(payload, timeout=10)

    with pytest.raises(RunFailedError, match="runs only in the crash harness's worker"):
        asyncio.run(run_here())


# -- the checks, on hand-written records --


class _Done:
    def __init__(self, output: Any) -> None:
        self.status = RunStatus.COMPLETED
        self.output = output
        self.error = None


def _write(records: Path, process: int, *entries: tuple[str, str, int, str, int]) -> None:
    with open(records / f"p{process}.jsonl", "a") as f:
        for event, run, index, token, t in entries:
            f.write(json.dumps({"e": event, "run": run, "i": index, "x": token, "t": t}) + "\n")


def _analyse_records(
    records: Path, deaths: dict[int, int], runs: dict[str, Any] | None = None
) -> CrashReport:
    config = CrashConfig("sqlite:///unused.db", seed=1, steps=1)
    trials = [_Trial(0, "r")]
    if runs is None:
        runs = {"r": _Done(expected_output(1, 0, 1))}
    return _analyse(config, records, trials, runs, deaths=deaths, kills=1, problems=(), elapsed=0.0)


def test_checks__in_flight_re_execution_is_allowed(tmp_path: Path) -> None:
    # process 0 starts the step and is killed; process 1 runs it again and checkpoints it
    _write(tmp_path, 0, ("start", "r", 0, "0:1", 100))
    _write(tmp_path, 1, ("start", "r", 0, "1:1", 300), ("done", "r", 0, "1:1", 400))
    report = _analyse_records(tmp_path, deaths={0: 200, 1: 500})
    assert report.in_flight_reexecutions == 1
    assert report.checkpointed_steps_reexecuted == 0
    assert report.ok


def test_checks__step_started_after_its_done_record_is_a_re_execution(tmp_path: Path) -> None:
    _write(tmp_path, 0, ("start", "r", 0, "0:1", 100), ("done", "r", 0, "0:1", 150))
    _write(tmp_path, 1, ("start", "r", 0, "1:1", 300), ("done", "r", 0, "0:1", 400))
    report = _analyse_records(tmp_path, deaths={0: 200, 1: 500})
    assert report.checkpointed_steps_reexecuted == 1
    assert not report.ok


def test_checks__committed_before_the_kill_without_done_record(tmp_path: Path) -> None:
    # process 0 committed (its token is the checkpoint) but died before writing
    # "done": a start after its death is still a re-execution of a checkpointed step
    _write(tmp_path, 0, ("start", "r", 0, "0:1", 100))
    _write(tmp_path, 1, ("start", "r", 0, "1:1", 300), ("done", "r", 0, "0:1", 400))
    report = _analyse_records(tmp_path, deaths={0: 200, 1: 500})
    assert report.checkpointed_steps_reexecuted == 1
    assert not report.ok


def test_checks__changed_checkpoint_lost_and_wrong_runs(tmp_path: Path) -> None:
    _write(tmp_path, 0, ("start", "r", 0, "0:1", 100), ("done", "r", 0, "0:1", 150))
    _write(tmp_path, 1, ("done", "r", 0, "1:7", 300))
    report = _analyse_records(tmp_path, deaths={0: 200, 1: 500})
    assert report.checkpoints_changed == 1
    assert _analyse_records(tmp_path, {}, runs={}).runs_lost == 1
    assert _analyse_records(tmp_path, {}, runs={"r": _Done({"total": -1})}).wrong_outputs == 1


# -- schedules: kills around fires --


def test_crash_harness__kills_around_schedule_fires_fire_each_slot_once(tmp_path: Path) -> None:
    report = run_crash_harness(
        f"sqlite:///{tmp_path / 'crash.db'}", kills=10, seed=3, schedules=True
    )
    print(report.format())
    assert report.problems == ()
    assert report.schedule_slots >= 2
    assert (report.slots_fired_twice, report.slots_missed) == (0, 0)
    assert report.ok


def test_checks__a_slot_fired_twice_or_missed(tmp_path: Path) -> None:
    slots = [datetime(2026, 1, 1, 0, 0, s, tzinfo=UTC) for s in (1, 2, 3)]
    fires = [(0, slots[0], "created"), (1, slots[0], "created"), (1, slots[1], "idempotent")]
    for process, slot, how in fires:
        with open(tmp_path / f"p{process}.jsonl", "a") as f:
            entry = {"e": "fire", "slot": slot.isoformat(), "run": "x", "how": how, "t": 1}
            f.write(json.dumps(entry) + "\n")
    config = CrashConfig("sqlite:///unused.db", seed=1, steps=1)
    stored = {"2026-01-01T00:00:01.000Z", "2026-01-01T00:00:02.000Z"}
    report = _analyse(
        config,
        tmp_path,
        [],
        {},
        deaths={},
        kills=0,
        problems=(),
        elapsed=0.0,
        scheduled=(slots, stored),
    )
    assert (report.schedule_slots, report.slots_fired_twice, report.slots_missed) == (3, 2, 1)
    assert not report.ok
