"""The crash harness (durably_testing.crash): a few real kills in the default test
run and a few real stalls in the slow one (``nox -s crash`` does ≥ 200 of each),
and its checks shown to catch what they look for on hand-written records.

Nothing here depends on the machine's speed: a slow machine changes how many
kills land in a run (coverage), so these runs ask for no coverage
(``min_coverage=0``), and with a correct engine no timing makes a re-execution."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from process_support import run_captured

from durably import RunFailedError, RunStatus, ValidationError, create_durably
from durably_testing.crash import (
    JOB_NAME,
    CrashConfig,
    CrashReport,
    _analyse,
    _crash_job,
    _Harness,
    _Trial,
    expected_output,
    run_crash_harness,
    signal_value,
)

pytestmark = pytest.mark.slow


def test_crash_harness__kills_on_a_sqlite_file_lose_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'crash.db'}"
    report = run_crash_harness(url, kills=8, seed=1, min_coverage=0)
    print(report.format())
    assert report.problems == ()
    assert report.kills == 8
    assert report.stalls == 0
    assert 0 <= report.interruptions_covered <= 8
    assert report.trials > 0
    assert report.checkpointed_steps > 0
    assert report.checkpointed_steps_reexecuted == 0
    assert report.checkpoints_changed == 0
    assert report.runs_lost == 0
    assert report.wrong_outputs == 0
    # every run waited for a signal (a third slept first): none lost, none wrong
    assert report.signals == report.trials
    assert report.wrong_signals == 0
    assert report.signalled_before_suspension + report.suspensions == report.trials
    assert report.ok
    assert report.records_dir is None  # removed after a clean run


def test_crash_harness__command_line_on_an_adapters_own_url(tmp_path: Path) -> None:
    # Any URL an installed backend opens: here the example adapter of the guide.
    records = tmp_path / "records"
    done = _command_line(
        [
            "--url",
            f"sqlite3sync:///{tmp_path / 'crash.db'}",
            "--kills",
            "4",
            "--seed",
            "2",
            "--workers",
            "2",
            "--min-coverage",
            "0",  # how many kills land in a run depends on the machine's speed
            "--settle-timeout",
            "240",
            "--records-dir",
            str(records),
        ]
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for figure in (
        "trials:",
        "kills:                          4",
        "stalls:                         0",
        "coverage:",
        "checkpointed steps re-executed: 0",
        "in-flight re-executions:",
        "runs lost:                      0",
        "wrong outputs:                  0",
        "elapsed:",
        "result: OK",
    ):
        assert figure in done.stdout
    assert list(records.glob("p*.jsonl"))  # --records-dir keeps them
    assert (records / "harness.jsonl").read_text().count('"kill"') == 4


@pytest.mark.slow
def test_crash_harness__stalls_past_the_lease_on_a_sqlite_file_rerun_nothing(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'crash.db'}"
    report = run_crash_harness(url, kills=0, stalls=3, seed=4, min_coverage=0)
    print(report.format())
    assert report.problems == ()
    assert (report.kills, report.stalls) == (0, 3)
    assert report.checkpointed_steps > 0
    assert report.checkpointed_steps_reexecuted == 0
    assert report.ok


def test_crash_harness__every_invocation_triggers_runs_of_its_own(tmp_path: Path) -> None:
    # fresh idempotency keys: a second invocation on the same database tests it again
    url = f"sqlite:///{tmp_path / 'crash.db'}"
    first = run_crash_harness(url, kills=0, workers=1, seed=1)
    second = run_crash_harness(url, kills=0, workers=1, seed=1)
    assert first.ok, first.format()
    assert second.ok, second.format()
    assert first.trials > 0
    assert second.trials > 0

    async def count() -> int:
        async with create_durably(url) as durably:
            return len(await durably.get_runs(job_name=JOB_NAME, limit=1000))

    assert asyncio.run(count()) == first.trials + second.trials


def test_crash_harness__the_url_never_reaches_a_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "postgresql://me:hunter2@127.0.0.1:1/jobs?sslpassword=hunter3"
    harness = _Harness(CrashConfig(secret, backend_options={"token": "t0k"}), tmp_path, None)  # type: ignore[arg-type]
    harness.spawn()
    worker = harness.workers[0]
    try:
        cmdline = Path(f"/proc/{worker.process.pid}/cmdline")
        deadline = time.monotonic() + 60
        while b"--worker" not in (command := cmdline.read_bytes()):  # until it has exec'd
            assert time.monotonic() < deadline, command
            time.sleep(0.01)
        assert b"hunter" not in command
        assert b"t0k" not in command
        assert b"--worker" in command
    finally:
        harness.kill_all()
    assert harness.workers == {}


def test_crash_harness__url_from_the_environment_and_redacted_in_the_report(
    tmp_path: Path,
) -> None:
    records = tmp_path / "records"
    records.mkdir()
    config = CrashConfig("http://me:hunter2@127.0.0.1:1/?authToken=t0k", seed=1, steps=1)
    report = _analyse(config, records, [], {}, deaths={}, kills=0, problems=(), elapsed=0.0)
    assert report.url == "http://me:***@127.0.0.1:1/?***"
    assert "hunter2" not in report.format()
    assert "t0k" not in report.format()
    without = {k: v for k, v in os.environ.items() if k != "DURABLY_DATABASE_URL"}
    done = _command_line(["--kills", "1"], env={**without, "DURABLY_DATABASE_URL": "memory://"})
    assert "several processes share" in done.stderr  # it read the URL from there
    done = _command_line(["--kills", "1"], env=without)
    assert done.returncode != 0
    assert "pass --url, or set $DURABLY_DATABASE_URL" in done.stderr


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
        ({"stalls": -1}, "stalls >= 0, got -1; pass --stalls 0 or more"),
        ({"stalls": 1, "workers": 1}, "pass --workers 2 or more"),
        ({"stall_time": (3.0, 1.0)}, "--min-stall 1.5 --max-stall 3"),
        ({"min_coverage": 1.5}, "--min-coverage 0.5"),
    ],
    ids=["kills", "workers", "slots", "steps", "interval", "stalls", "alone", "stall", "cover"],
)
def test_crash_harness__bad_figures_refused_before_anything_starts(
    tmp_path: Path, options: dict[str, Any], says: str
) -> None:
    with pytest.raises(ValidationError, match=re.escape(says)):
        run_crash_harness(f"sqlite:///{tmp_path / 'crash.db'}", **options)
    assert not (tmp_path / "crash.db").exists()  # refused before the database was opened


def _command_line(
    args: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return run_captured([sys.executable, "-m", "durably_testing.crash", *args], Path.cwd(), env)


def test_crash_harness__command_line_reports_a_bad_url_without_a_traceback() -> None:
    done = _command_line(["--url", "memory://", "--kills", "1"])
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
    config = CrashConfig("sqlite:///unused.db", seed=1, steps=1, min_coverage=0, waits=False)
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


def test_checks__a_wrong_signal_is_counted(tmp_path: Path) -> None:
    right = json.dumps({"v": signal_value(1, 0)})
    _write(tmp_path, 0, ("got", "r", -1, right, 100), ("got", "r", -1, '{"v": -1}', 200))
    report = _analyse_records(tmp_path, deaths={})
    assert report.wrong_signals == 1
    assert not report.ok


def test_checks__changed_checkpoint_lost_and_wrong_runs(tmp_path: Path) -> None:
    _write(tmp_path, 0, ("start", "r", 0, "0:1", 100), ("done", "r", 0, "0:1", 150))
    _write(tmp_path, 1, ("done", "r", 0, "1:7", 300))
    report = _analyse_records(tmp_path, deaths={0: 200, 1: 500})
    assert report.checkpoints_changed == 1
    assert _analyse_records(tmp_path, {}, runs={}).runs_lost == 1
    assert _analyse_records(tmp_path, {}, runs={"r": _Done({"total": -1})}).wrong_outputs == 1


def _put(records: Path, **record: Any) -> None:
    with open(records / f"p{record['p']}.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def test_checks__a_stalled_worker_starting_a_step_checkpointed_meanwhile(tmp_path: Path) -> None:
    # The pattern: process 0 committed step 0, stalled past its lease;
    # process 1 took the run over and checkpointed step 1; process 0 resumed and
    # decided to call step 1 (its lease check, or none, after the stall): a bug.
    _put(tmp_path, e="start", run="r", i=0, x="0:1", p=0, t=100, d=100)
    _put(tmp_path, e="done", run="r", i=0, x="0:1", p=0, t=150)
    _put(tmp_path, e="done", run="r", i=0, x="0:1", p=1, t=400)
    _put(tmp_path, e="start", run="r", i=1, x="1:1", p=1, t=410, d=410)
    _put(tmp_path, e="done", run="r", i=1, x="1:1", p=1, t=450)
    _put(tmp_path, e="start", run="r", i=1, x="0:2", p=0, t=901, d=900)
    report = _analyse_records(tmp_path, deaths={})
    assert report.checkpointed_steps_reexecuted == 1
    assert not report.ok


def test_checks__a_start_decided_before_a_stall_is_in_flight(tmp_path: Path) -> None:
    # Process 0 checked its lease and decided to call step 1 at 200, was stopped before
    # the function's first statement, and began it at 900, after process 1 had
    # checkpointed it: no lease can prevent that; counted, allowed.
    _put(tmp_path, e="start", run="r", i=1, x="1:1", p=1, t=410, d=410)
    _put(tmp_path, e="done", run="r", i=1, x="1:1", p=1, t=450)
    _put(tmp_path, e="start", run="r", i=1, x="0:2", p=0, t=900, d=200)
    report = _analyse_records(tmp_path, deaths={})
    assert report.checkpointed_steps_reexecuted == 0
    assert report.in_flight_reexecutions == 1
    assert report.starts_delayed_past_lease == 1
    assert report.ok


def test_checks__coverage_counts_interruptions_that_hit_a_run_past_a_checkpoint(
    tmp_path: Path,
) -> None:
    _put(tmp_path, e="start", run="r", i=0, x="0:1", p=0, t=100, d=100)
    _put(tmp_path, e="done", run="r", i=0, x="0:1", p=0, t=150)
    _put(tmp_path, e="start", run="r", i=1, x="0:2", p=0, t=200, d=200)
    _put(tmp_path, e="done", run="r", i=1, x="0:2", p=0, t=300)
    config = CrashConfig("sqlite:///unused.db", seed=1, steps=2, min_coverage=0.6, waits=False)
    trials = [_Trial(0, "r")]
    runs = {"r": _Done(expected_output(1, 0, 2))}
    interruptions = [
        (0, "stall", 250),  # in r, after step 0's checkpoint: covered
        (1, "kill", 260),  # process 1 had done nothing
        (0, "kill", 120),  # in r, before any checkpoint
        (0, "stall", 400),  # r finished by then
    ]
    report = _analyse(
        config,
        tmp_path,
        trials,
        runs,
        deaths={},
        kills=2,
        stalls=2,
        interruptions=interruptions,  # type: ignore[arg-type]
        problems=(),
        elapsed=0.0,
    )
    assert report.interruptions_covered == 1
    assert report.trials_interrupted_after_checkpoint == 1
    assert report.coverage == 0.25
    assert not report.ok
    assert "coverage below 60%" in report.format()
    assert replace(report, min_coverage=0.25).ok


# -- schedules: kills around fires --


def test_crash_harness__kills_around_schedule_fires_fire_each_slot_once(tmp_path: Path) -> None:
    report = run_crash_harness(
        f"sqlite:///{tmp_path / 'crash.db'}", kills=10, seed=3, schedules=True, min_coverage=0
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


# -- retries: kills in backoffs --


def test_crash_harness__kills_in_backoffs_retry_once_and_on_time(tmp_path: Path) -> None:
    report = run_crash_harness(
        f"sqlite:///{tmp_path / 'crash.db'}", kills=8, seed=5, retries=True, min_coverage=0
    )
    print(report.format())
    assert report.problems == ()
    assert report.retries > 0
    assert (report.retries_early, report.attempt_counts_reset) == (0, 0)
    assert "retries early:                  0" in report.format()
    assert report.ok


def test_checks__a_retry_written_after_a_stall_is_not_a_count_that_went_back(
    tmp_path: Path,
) -> None:
    # process 0 starts attempt 1 of step 0 and is stalled (SIGSTOP) before its step:retry
    # listener writes the record; process 1 takes the run over, records attempt 2; process
    # 0 writes attempt 1's record after its SIGCONT: [2, 1] by time, yet no reset.
    # Without the stall, the same order is a reset.
    ms = 1_000_000
    _put(tmp_path, e="start", run="r", i=0, x="0:1", p=0, t=100, w=100 * ms)
    _put(tmp_path, e="start", run="r", i=0, x="1:1", p=1, t=300, w=300 * ms)
    _put(tmp_path, e="retry", run="r", i=0, k=2, due=300 * ms, p=1, t=310)
    _put(tmp_path, e="retry", run="r", i=0, k=1, due=100 * ms, p=0, t=400)
    config = CrashConfig("sqlite:///unused.db", seed=1, steps=1, min_coverage=0)
    runs = {"r": _Done(expected_output(1, 0, 1))}

    def analyse(interruptions: list[tuple[int, Any, int]]) -> Any:
        return _analyse(
            config,
            tmp_path,
            [_Trial(0, "r")],
            runs,
            deaths={},
            kills=0,
            problems=(),
            elapsed=0.0,
            interruptions=interruptions,
        )

    assert analyse([(0, "stall", 150)]).attempt_counts_reset == 0
    assert analyse([]).attempt_counts_reset == 1
    assert analyse([(0, "stall", 350)]).attempt_counts_reset == 1  # stalled after it


def test_checks__a_retry_before_its_due_time_and_a_count_that_went_back(tmp_path: Path) -> None:
    # step 0: attempt 1 failed, due at wall time 1_000 ms; the next start was decided
    # at 990 ms (early). Step 1: attempts 1 and 2 retried, then attempt 1 again (reset).
    ms = 1_000_000
    _put(tmp_path, e="start", run="r", i=0, x="0:1", p=0, t=100, w=500 * ms)
    _put(tmp_path, e="retry", run="r", i=0, k=1, due=1000 * ms, p=0, t=110)
    _put(tmp_path, e="start", run="r", i=0, x="0:2", p=0, t=200, w=995 * ms, dw=990 * ms)
    for k, t in ((1, 300), (2, 400), (1, 500)):
        _put(tmp_path, e="retry", run="r", i=1, k=k, due=t * ms, p=0, t=t)
    config = CrashConfig("sqlite:///unused.db", seed=1, steps=2, min_coverage=0)
    runs = {"r": _Done(expected_output(1, 0, 2))}
    report = _analyse(
        config,
        tmp_path,
        [_Trial(0, "r")],
        runs,
        deaths={},
        kills=1,
        problems=(),
        elapsed=0.0,
        interruptions=[(0, "kill", 120)],
    )
    assert (report.retries, report.retries_early, report.attempt_counts_reset) == (4, 1, 1)
    assert report.kills_during_backoff == 1  # killed after its retry, before the next start
    assert not report.ok
    # on time: decided at the due time (the stored due is in milliseconds)
    for path in tmp_path.glob("p*.jsonl"):
        path.unlink()
    _put(tmp_path, e="retry", run="r", i=0, k=1, due=1000 * ms, p=0, t=110)
    _put(tmp_path, e="start", run="r", i=0, x="0:2", p=0, t=200, w=1000 * ms, dw=999 * ms)
    report = _analyse(
        config, tmp_path, [_Trial(0, "r")], runs, deaths={}, kills=0, problems=(), elapsed=0.0
    )
    assert (report.retries, report.retries_early, report.attempt_counts_reset) == (1, 0, 0)
