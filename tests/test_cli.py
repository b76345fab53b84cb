"""The ``durably`` command line, used as a person uses it: the installed console
script in subprocesses, a real worker process executing the runs, a real SQLite
file (tests/cli_support.py). Nothing waits on a timer: the job waits for gate files
the test creates, and the test polls the command's own output until what it waits
for appears.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cli_support import DURABLY, Ops, eventually, ops_env

from durably import NewRun, RunStatus
from durably.cli import EXIT_CODES
from durably.sql import SqlStorage
from durably_sqlite import SqliteExecutor

pytestmark = pytest.mark.slow  # subprocesses: a worker, the CLI itself


@pytest.fixture
def ops(tmp_path: Path) -> Iterator[Ops]:
    with ops_env(tmp_path) as ops:
        ops.ok("migrate")
        yield ops


def test_cli__a_newcomer_finds_inspects_and_retries_a_failed_run(ops: Ops) -> None:
    worker = ops.start("worker", "ops_app:durably", "--concurrency", "2")
    run_id = ops.trigger(rows=3, fail_until_fixed=True)

    # find it: one command
    found = eventually(lambda: ops.json("runs", "list", "--status", "failed"), "a failed run")
    assert [r["id"] for r in found] == [run_id]
    listed = ops.ok("runs", "list", "--status", "failed")
    assert run_id in listed
    assert "row 2: price is not a number" in listed

    # inspect it: one command, the steps, the error, the logs
    shown = ops.ok("runs", "show", run_id)
    for text in ("failed", "row-0", "row-1", "check", "row 2: price is not a number ('12,50')"):
        assert text in shown, shown
    detail = ops.run(run_id)
    assert [(s["name"], s["status"]) for s in detail["steps"]] == [
        ("row-0", "completed"),
        ("row-1", "completed"),
        ("check", "failed"),
    ]
    assert [log["message"] for log in detail["logs"]] == ["imported row", "imported row"]

    # fix the cause, retry it: one command; it resumes after its completed steps
    ops.fix()
    out = ops.ok("runs", "retry", run_id)
    assert f"run {run_id} (import-csv) is pending again" in out
    done = ops.status_is(run_id, "completed")
    assert done["run"]["output"] == {"imported": 3}
    assert done["run"]["completed_step_count"] == 4  # row-0, row-1 kept; check, row-2 new

    # a retry of a completed run is refused with its own exit code
    again = ops.durably("runs", "retry", run_id)
    assert again.returncode == EXIT_CODES["conflict"]
    assert "only failed or cancelled runs can be retried" in again.stderr
    missing = ops.durably("runs", "show", "01NOSUCHRUN")
    assert missing.returncode == EXIT_CODES["not-found"]
    assert "not found" in missing.stderr

    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.output()
    lines = worker.output()
    assert f"run:fail       import-csv {run_id}" in lines
    assert f"run:complete   import-csv {run_id}" in lines
    assert "durably worker stopped: 1 completed, 1 failed, 0 cancelled" in lines


def test_cli__trigger_waits_with_progress_and_exits_by_outcome(ops: Ops) -> None:
    worker = ops.start("worker", "ops_app:durably")
    app = ("--app", "ops_app:durably")
    ok = ops.durably("trigger", "import-csv", "--input", '{"rows": 2}', "--wait", *app)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == {"imported": 2}
    # not a terminal: one line per change of status or progress, on stderr
    assert "completed 2/2 row 2 of 2" in ok.stderr.splitlines()
    failed = ops.durably(
        "trigger", "import-csv", "--input", '{"fail_until_fixed": true}', "--wait", *app
    )
    assert failed.returncode == EXIT_CODES["failed"]
    assert "failed: row 2: price is not a number" in failed.stderr
    invalid = ops.durably("trigger", "import-csv", "--input", '{"rows": "many"}', *app)
    assert invalid.returncode == EXIT_CODES["usage"]
    assert "rows" in invalid.stderr
    no_app = ops.durably("trigger", "import-csv", "--input", "{}")
    assert no_app.returncode == EXIT_CODES["usage"]
    assert "--app module:attribute" in no_app.stderr
    worker.signal(signal.SIGINT)
    assert worker.wait() == 0


def test_cli__events_follows_runs_that_another_process_executes(ops: Ops) -> None:
    events = ops.start("events", "--json", "--interval", "0.1")
    # it says so once it has taken stock (its first reading reports nothing)
    eventually(lambda: "following runs in" in events.output(), "events started")
    worker = ops.start("worker", "ops_app:durably")
    run_id = ops.trigger(rows=2, gate="e")

    def seen() -> list[dict[str, object]]:
        return [json.loads(line) for line in events.lines() if line.startswith("{")]

    eventually(lambda: any(e["type"] == "run:leased" for e in seen()), "run:leased")
    ops.open_gate("e-0")
    eventually(lambda: any(e["type"] == "run:progress" for e in seen()), "run:progress")
    ops.open_gate("e-1")
    eventually(lambda: any(e["type"] == "run:complete" for e in seen()), "run:complete")
    mine = [e for e in seen() if e.get("run_id") == run_id]
    types = [e["type"] for e in mine]
    assert types[0] == "run:trigger"
    assert types[-1] == "run:complete"
    assert types.index("run:leased") < types.index("run:complete")
    assert mine[-1]["output"] == {"imported": 2}
    assert {"step:complete", "log:write", "run:progress"} <= set(types)
    worker.signal(signal.SIGTERM)
    worker.wait()
    events.signal(signal.SIGINT)
    assert events.wait() == EXIT_CODES["interrupted"]


#: ``durably ARGS`` with a SIGINT raised the moment asyncio.run has installed its
#: handler, handled before asyncio.run resets its count of interrupts to 0.
SIGINT_AS_ASYNCIO_RUN_STARTS = """
import signal, sys
from durably.cli import main
install = signal.signal
def installing(signum, handler):
    previous = install(signum, handler)
    if getattr(getattr(handler, "func", None), "__name__", "") == "_on_sigint":
        signal.raise_signal(signal.SIGINT)  # its handler runs as this call returns
    return previous
signal.signal = installing
sys.argv = ["durably", *sys.argv[1:]]
main()
"""


def test_cli__ctrl_c_as_the_command_starts_is_an_interruption(ops: Ops) -> None:
    """asyncio.run's handler cancels the command's task and counts the interrupt, then
    sets the count to 0 (CPython 3.11 to 3.13): the cancellation came out of
    asyncio.run instead of KeyboardInterrupt, a traceback and exit 1."""
    done = subprocess.run(
        [sys.executable, "-c", SIGINT_AS_ASYNCIO_RUN_STARTS, "events"],
        capture_output=True,
        text=True,
        env=ops.env,
        timeout=60,
        check=False,
    )
    assert done.returncode == EXIT_CODES["interrupted"], done.stderr
    assert done.stderr == "durably: interrupted\n"


def test_cli__acting_on_runs_needs_no_job_code(ops: Ops) -> None:
    app = ("--app", "ops_app:durably")
    pending = ops.trigger(rows=1)
    # no worker: the run stays pending; without the job module on the path
    bare = {**ops.env, "PYTHONPATH": ""}
    cancelled = ops.durably("runs", "cancel", pending, env=bare)
    assert cancelled.returncode == 0, cancelled.stderr
    assert ops.run(pending)["run"]["status"] == "cancelled"
    assert ops.durably("runs", "cancel", pending, env=bare).returncode == EXIT_CODES["conflict"]
    retried = ops.durably("runs", "retry", pending, "--json", env=bare)
    assert json.loads(retried.stdout)["status"] == "pending"
    ops.ok("runs", "cancel", pending)
    # retrigger validates the input again: it needs the jobs
    no_app = ops.durably("runs", "retrigger", pending, env=bare)
    assert no_app.returncode == EXIT_CODES["usage"]
    new = ops.json("runs", "retrigger", pending, *app)
    assert new["status"] == "pending"
    assert new["id"] != pending
    deleted = ops.durably("runs", "delete", pending, env=bare)
    assert deleted.returncode == 0
    assert ops.durably("runs", "show", pending).returncode == EXIT_CODES["not-found"]
    assert ops.durably("runs", "delete", new["id"]).returncode == EXIT_CODES["conflict"]
    ops.ok("runs", "cancel", new["id"])
    assert ops.json("runs", "purge", "--older-than", "1d") == {"deleted": 0}
    assert ops.json("runs", "purge", "--older-than", "0s", "--status", "failed") == {"deleted": 0}
    assert ops.json("runs", "purge", "--older-than", "0s", "--status", "cancelled") == {
        "deleted": 1
    }
    assert ops.json("runs", "list") == []


def test_cli__list_filters_and_doctor(ops: Ops, tmp_path: Path) -> None:
    asyncio.run(_seed(ops.db))
    listed = ops.json("runs", "list")
    assert [r["id"] for r in listed] == ["run-new", "run-old", "run-expired"]
    assert [r["id"] for r in ops.json("runs", "list", "--label", "team=a")] == ["run-new"]
    assert [r["id"] for r in ops.json("runs", "list", "--since", "1h")] == ["run-new"]
    assert [r["id"] for r in ops.json("runs", "list", "-s", "leased")] == ["run-expired"]
    assert [r["id"] for r in ops.json("runs", "list", "--job", "nightly", "-n", "1")] == ["run-old"]
    bad = ops.durably("runs", "list", "--status", "done")
    assert bad.returncode == EXIT_CODES["usage"]
    assert "Invalid status 'done'" in bad.stderr

    before = ops.db.read_bytes()
    report = ops.durably("doctor", "--json")
    assert report.returncode == EXIT_CODES["ok"], report.stderr  # warnings are not problems
    doctor = json.loads(report.stdout)
    assert doctor["backend"] == "sqlite"
    assert doctor["schema"]["reference"] == 1
    assert doctor["journal_mode"] == "wal"
    assert {s: n for s, n in doctor["runs"].items() if n} == {"pending": 2, "leased": 1}
    assert set(doctor["runs"]) == {s.value for s in RunStatus}
    assert doctor["expired_leases"] == 1
    assert doctor["oldest_pending"]["id"] == "run-old"
    assert any("lease expired" in w for w in doctor["warnings"])
    assert any("oldest pending run" in w for w in doctor["warnings"])
    text = ops.ok("doctor")
    assert "expired leases  1" in text
    assert ops.db.read_bytes() == before  # reading changed nothing

    # not a durably database: exit 5, and nothing is created in it
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    other = {"--url": f"sqlite:///{empty}"}
    for command in (["runs", "list"], ["runs", "show", "x"], ["events"]):
        done = ops.durably(*command, *[a for kv in other.items() for a in kv])
        assert done.returncode == EXIT_CODES["database"], (command, done.stderr)
        assert "holds no durably tables" in done.stderr
    sick = ops.durably("doctor", "--url", f"sqlite:///{empty}")
    assert sick.returncode == EXIT_CODES["failed"]
    assert "no durably tables" in sick.stdout
    assert sqlite3.connect(empty).execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)

    # a mistyped path: a clear error, and no file left behind (SQLite creates one on open)
    typo = tmp_path / "opss.db"
    for url in (f"sqlite:///{typo}", f"file:{typo}"):
        for command in (
            ["runs", "list"],
            ["runs", "show", "x"],
            ["runs", "purge", "--older-than", "1d"],
            ["events"],
        ):
            done = ops.durably(*command, "--url", url)
            assert done.returncode == EXIT_CODES["database"], (command, done.stderr)
            assert f"the SQLite file '{typo}' does not exist" in done.stderr, done.stderr
        lost = json.loads(ops.durably("doctor", "--json", "--url", url).stdout)
        assert lost["problems"] == [
            f"the SQLite file '{typo}' does not exist: check the URL, or create it with "
            "`durably migrate`"
        ]
    assert list(tmp_path.glob("opss.db*")) == []


async def _seed(db: Path) -> None:
    """Runs written straight through storage: an old pending run, a new labelled one,
    and one leased by a worker that died (its lease expired a minute ago)."""
    storage = SqlStorage(SqliteExecutor(str(db)))
    now = datetime.now(UTC)
    try:

        async def add(run_id: str, job: str, age: timedelta, labels: dict[str, str]) -> None:
            at = now - age
            new = NewRun(id=run_id, job_name=job, input_json="{}", labels=labels, created_at=at)
            await storage.enqueue(new)

        await add("run-expired", "import-csv", timedelta(days=2, minutes=1), {})
        claimed = await storage.claim_next(
            "dead-worker", now - timedelta(minutes=2), now - timedelta(minutes=1)
        )
        assert claimed is not None
        assert claimed.id == "run-expired"
        await add("run-old", "nightly", timedelta(days=2), {"team": "b"})
        await add("run-new", "import-csv", timedelta(minutes=5), {"team": "a"})
    finally:
        await storage.close()


def test_cli__worker_live_view_on_a_terminal_and_a_graceful_stop(ops: Ops) -> None:
    """The worker's live display in tmux (a real terminal); Ctrl-C lets the run in
    flight finish (its gate is opened only after the Ctrl-C), then the worker exits."""
    terminal = ops.terminal("worker", "worker", "ops_app:durably", "-c", "2")
    try:
        terminal.shows("durably worker", "running 0/2")
        run_id = ops.trigger(rows=2, gate="t")
        terminal.shows(run_id, "running 1/2")
        ops.open_gate("t-0")
        terminal.shows("1/2 row 1 of 2")
        terminal.keys("C-c")
        terminal.shows("stopping; waiting up to 25s for 1 run(s)")
        ops.open_gate("t-1")
        final = terminal.shows("EXIT=")
        assert "EXIT=0" in final
        assert "durably worker stopped: 1 completed, 0 failed, 0 cancelled" in final
        assert ops.run(run_id)["run"]["status"] == "completed"
    finally:
        terminal.close()


def test_cli__trigger_wait_shows_a_progress_bar_on_a_terminal(ops: Ops) -> None:
    worker = ops.start("worker", "ops_app:durably")
    payload = json.dumps({"rows": 2, "gate": "b"})
    app = ("--app", "ops_app:durably")
    terminal = ops.terminal("trigger", "trigger", "import-csv", "-i", payload, "--wait", *app)
    try:
        terminal.shows("leased", "0:00:")  # the status and the elapsed time, live
        ops.open_gate("b-0")
        terminal.shows("1/2", "row 1 of 2", "━")  # the bar moves with the progress
        ops.open_gate("b-1")
        final = terminal.shows("EXIT=")
        assert "EXIT=0" in final
        assert '{"imported":2}' in final
        assert "completed" in final
    finally:
        terminal.close()
        worker.signal(signal.SIGTERM)
        worker.wait()


def test_cli__without_the_extra_says_what_to_install(tmp_path: Path) -> None:
    # a Python that cannot import click: the console script names the extra
    blocker = tmp_path / "click.py"
    blocker.write_text("raise ImportError('blocked', name='click')\n")
    done = subprocess.run(
        [str(DURABLY), "runs", "list"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        timeout=60,
        check=False,
    )
    assert done.returncode == EXIT_CODES["usage"]
    assert "pip install 'durably-core[cli]'" in done.stderr


def test_cli__a_worker_stopped_mid_run_hands_its_lease_back(ops: Ops) -> None:
    """SIGTERM lets the run in flight go on (grace); a second SIGTERM stops it now and
    hands its lease back, so the next worker resumes it at once, not after the
    30 s lease of ops_app."""
    worker = ops.start("worker", "ops_app:durably", "--grace", "600")
    run_id = ops.trigger(rows=2, gate="h")
    ops.status_is(run_id, "leased")
    ops.open_gate("h-0")
    eventually(lambda: ops.run(run_id)["run"]["completed_step_count"] == 1, "a step done")
    worker.signal(signal.SIGTERM)
    eventually(lambda: "stopping; waiting up to 600s for 1 run(s)" in worker.output(), "grace")
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.output()
    assert "durably worker stopped: 0 completed, 0 failed, 0 cancelled" in worker.output()
    run = ops.run(run_id)["run"]
    assert run["status"] == "leased"
    expires = datetime.fromisoformat(run["lease_expires_at"].replace("Z", "+00:00"))
    assert expires <= datetime.now(UTC)  # handed back, not left to expire in 30 s
    second = ops.start("worker", "ops_app:durably")
    ops.open_gate("h-1")
    done = ops.status_is(run_id, "completed")
    assert done["run"]["output"] == {"imported": 2}
    second.signal(signal.SIGTERM)
    assert second.wait() == 0


def test_cli__worker_prints_retries_and_counts_runs_waiting_to_retry(ops: Ops) -> None:
    """A step's backoff longer than the lease renewal releases the slot: the worker
    prints the retry (attempt, error, delay) and counts the run as waiting to retry,
    not as running or failed."""
    worker = ops.start("worker", "ops_app:durably", "--concurrency", "1")
    run_id = ops.trigger(rows=1, flaky=True)
    assert ops.status_is(run_id, "completed")["run"]["output"] == {"imported": 1}
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.output()
    out = worker.output()
    line = f"step:retry     import-csv {run_id}  fetch attempt 1 failed: HTTP 503; next in 0.3s"
    assert line in out, out
    assert "1 completed, 0 failed, 0 cancelled, 0 suspended, 1 waiting to retry" in out


def test_cli__signal_answers_a_waiting_run_that_holds_no_worker(ops: Ops) -> None:
    """A run waiting for a person releases its worker's only slot; ``durably signal``
    (another process, no job code) answers it, and the worker resumes it."""
    worker = ops.start("worker", "ops_app:durably", "--concurrency", "1")
    app = ("--app", "ops_app:durably")
    waiting = ops.json("trigger", "expense", "--input", '{"amount": 120}', *app)["run"]["id"]
    ops.status_is(waiting, "waiting")
    # the one slot is free: another run completes while the first one waits
    other = ops.trigger(rows=1)
    assert ops.status_is(other, "completed")["run"]["output"] == {"imported": 1}
    assert [r["id"] for r in ops.json("runs", "list", "--status", "waiting")] == [waiting]
    shown = ops.ok("runs", "show", waiting)
    for text in ("waiting", "waits", "approval", "the run waits here"):
        assert text in shown, shown
    [wait] = ops.run(waiting)["waits"]
    assert (wait["name"], wait["status"], wait["metadata"]) == (
        "approval",
        "pending",
        {"amount": 120},
    )

    # refused signals: unknown wait, bad JSON; neither changes anything
    unknown = ops.durably("signal", waiting, "nope", "--payload", "{}")
    assert unknown.returncode == EXIT_CODES["not-found"]
    assert "has no wait named 'nope'" in unknown.stderr
    bad = ops.durably("signal", waiting, "approval", "--payload", "{yes")
    assert bad.returncode == EXIT_CODES["usage"]
    assert "--payload is not JSON" in bad.stderr

    decision = '{"approved": true, "by": "ann"}'
    out = ops.ok("signal", waiting, "approval", "--payload", decision, "--signal-id", "ann-1")
    assert f"signalled wait 'approval' of run {waiting}" in out
    done = ops.status_is(waiting, "completed")
    assert done["run"]["output"] == {"status": "paid", "by": "ann"}
    # how long it waited for the answer, then for a worker (durations: not compared)
    shown = ops.ok("runs", "show", waiting)
    assert "WAITED / FOR A WORKER" in shown, shown
    assert re.search(r"\d+(\.\d)?(ms|s|m) / \d+(\.\d)?(ms|s|m)", shown), shown
    # the same signal again is a duplicate (exit 0); another one is refused
    again = ops.json("signal", waiting, "approval", "--payload", decision, "--signal-id", "ann-1")
    assert again["disposition"] == "duplicate"
    other_answer = ops.durably("signal", waiting, "approval", "--payload", '{"approved": false}')
    assert other_answer.returncode == EXIT_CODES["conflict"]
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0, worker.output()
    assert f"run:waiting    expense {waiting}" in worker.output()
