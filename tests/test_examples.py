"""Every program in examples/ runs here as a real subprocess on a temporary SQLite
file, and what it prints is checked (not only its exit code).

Timings are shortened through the environment variables each example reads.
Nothing sleeps for a fixed time: the tests wait for lines of output, with a
bounded timeout on every process.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import pytest
from process_support import abort_hung

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TIMEOUT = 30.0  # the most any one example may take here; they need a few seconds

pytestmark = pytest.mark.slow  # each example is a process of its own (POSIX: sent signals)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The environment of an example: its own SQLite file, unbuffered output."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DURABLY_", "TTY_", "FORCE_COLOR", "COLUMNS"))
    }
    return base | {
        "DURABLY_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
        "PYTHONUNBUFFERED": "1",
        "NO_COLOR": "1",
        "PYTHONFAULTHANDLER": "1",  # SIGABRT dumps every thread (Example.finish)
    }


class Example:
    """An example running in the background; its output is read line by line."""

    def __init__(self, name: str, *args: str, cwd: Path, env: dict[str, str]) -> None:
        # "-m": a module's command line (``-m flask --app examples/flask_app.py ...``)
        argv = ["-m", *args] if name == "-m" else [str(EXAMPLES / name), *args]
        self.proc = subprocess.Popen(
            [sys.executable, *argv],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for(self, pattern: str, *, count: int = 1, timeout: float = TIMEOUT) -> str:
        """Wait until ``count`` lines match the regex; returns the last of them."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [line for line in self.lines if regex.search(line)]
                if len(found) >= count:
                    return found[count - 1]
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no {count}x {pattern!r} in output:\n{self.output}")
                self._changed.wait(min(left, 0.1))

    def finish(self, timeout: float = TIMEOUT) -> tuple[int, str]:
        """Wait for the process to exit; its exit code and whole output."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            signals = abort_hung(self.proc)  # PYTHONFAULTHANDLER: the env fixture
            self.close()
            raise AssertionError(
                f"still running after {timeout}s; its signals: {signals}; its threads and "
                f"output:\n{self.output}"
            ) from None
        self._reader.join(timeout)
        return code, self.output

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(TIMEOUT)
        self._reader.join(TIMEOUT)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


class Starter(Protocol):
    """The ``start`` fixture: start an example with extra environment variables."""

    def __call__(self, name: str, *args: str, **extra_env: str) -> Example: ...


@pytest.fixture
def start(tmp_path: Path, env: dict[str, str]) -> Iterator[Starter]:
    started: list[Example] = []

    def start_example(name: str, *args: str, **extra_env: str) -> Example:
        example = Example(name, *args, cwd=tmp_path, env=env | extra_env)
        started.append(example)
        return example

    yield start_example
    for example in started:
        example.close()


def run(start: Starter, name: str, *args: str, **extra_env: str) -> str:
    """Run an example to the end; it must exit 0. Returns its output."""
    code, output = start(name, *args, **extra_env).finish()
    assert code == 0, output
    return output


def matching(pattern: str, output: str) -> list[str]:
    return [line for line in output.splitlines() if re.search(pattern, line)]


# -- basic.py --


def test_basic__runs_to_completion(start: Starter) -> None:
    output = run(start, "basic.py", BASIC_STEP_SECONDS="0.05")
    assert [line.split()[0] for line in output.splitlines()[:3]] == [
        "downloading",
        "resizing",
        "uploading",
    ]
    assert re.search(
        r'^run \w{26} \(created\) -> \{"url":"https://cdn\.example\.com/images/\d+\.png",'
        r'"size":\d+\}$',
        output,
        re.M,
    ), output


def test_basic__killed_during_a_step__resumes_without_repeating_finished_steps(
    start: Starter,
) -> None:
    first = start("basic.py", BASIC_STEP_SECONDS="1.5")
    first.wait_for(r"resizing to 800px")  # the 2nd step has begun: download is checkpointed
    first.proc.send_signal(signal.SIGKILL)
    assert first.finish()[0] == -signal.SIGKILL
    assert "uploading" not in first.output

    # The rerun finds the run by its idempotency key, waits for the dead lease to
    # expire (3 s in the example), replays download and continues with resize.
    output = run(start, "basic.py", BASIC_STEP_SECONDS="0.05")
    assert "downloading" not in output
    assert matching(r"resizing to 800px", output)
    assert matching(r"uploading \d+ bytes", output)
    assert re.search(r"^run \w{26} \(idempotent\) -> \{\"url\":", output, re.M), output


# -- events.py --


def test_events__logs_the_lifecycle_in_order(start: Starter) -> None:
    output = run(start, "events.py")
    kinds = [line.split()[0] for line in output.splitlines()]
    assert kinds == [
        "run:trigger",
        "run:leased",
        "step:complete",
        "step:complete",
        "run:complete",
        "result:",
        "run:trigger",
        "run:leased",
        "run:fail",
        "failed:",
    ], output
    assert re.search(r"^run:complete +\w+ in \d+\.\d ms output=\{'receipt'", output, re.M)
    assert matching(r"^run:fail .* step=charge error=cannot charge 0$", output)
    assert matching(r"^failed: step charge: cannot charge 0$", output)


# -- cron.py --


def test_cron__two_workers_fire_each_slot_once(start: Starter) -> None:
    # A schedule every second, declared by both workers: they race for each slot.
    args = ("--every", "* * * * * *", "--runs", "3")
    a = start("cron.py", *args, CRON_WORKER_NAME="A")
    b = start("cron.py", *args, CRON_WORKER_NAME="B")
    outputs = {}
    for name, worker in (("A", a), ("B", b)):
        code, outputs[name] = worker.finish()
        assert code == 0, outputs[name]
    both = "\n".join(outputs.values())

    assert len(matching(r"^\[\w\] schedule '\* \* \* \* \* \*' next: ", both)) == 2, both
    fired = re.findall(r"^\[(\w)\] slot (\S+) -> run (\w+) \((\w+)\)$", both, re.M)
    slots = [slot for _, slot, _, _ in fired]
    assert len(slots) >= 3, both
    assert len(set(slots)) == len(slots), f"a slot fired twice: {both}"
    assert {how for *_, how in fired} == {"created"}, both
    assert all(datetime.fromisoformat(s).microsecond == 0 for s in slots)
    # Each fired run's job ran at most once (a run fired as both stopped may not run).
    reports = matching(r"report for \d\d:\d\d:\d\d sent", both)
    assert 3 <= len(reports) <= len(slots), both
    # Both saw the same three completed runs, one per slot.
    done = {
        name: re.findall(r"slot (\S+) run (\w+) completed$", out, re.M)
        for name, out in outputs.items()
    }
    assert len(done["A"]) == len(done["B"]) == 3, both
    assert done["A"] == done["B"] or set(done["A"]) & set(done["B"]), both
    fired_runs = {run_id for _, _, run_id, _ in fired}
    assert {run_id for _, run_id in done["A"]} <= fired_runs, both


# -- cli.py --


def test_cli__progress_bar_reaches_100_percent(start: Starter, tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("".join(f"line {n} of data\n" for n in range(45)))
    # Make rich draw the live bar as on a terminal, so intermediate frames show.
    terminal = {"TTY_INTERACTIVE": "1", "TTY_COMPATIBLE": "1", "COLUMNS": "100"}
    output = run(start, "cli.py", "process", "data.txt", CLI_BATCH_SECONDS="0.15", **terminal)
    frames = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", output).replace("\r", "\n")
    percents = [int(p) for p in re.findall(r"(\d+)% ", frames)]
    assert percents, output
    assert percents[-1] == 100
    assert set(percents) & {22, 44, 67, 89}, percents  # the bar moved with run:progress
    assert percents == sorted(percents)
    assert re.search(r"done run \w{26}: 45 lines, 180 words", frames), frames

    # The same, unchanged file again: the earlier run's result, no work redone.
    again = run(start, "cli.py", "process", "data.txt", CLI_BATCH_SECONDS="5")
    assert "100%" in again
    assert re.search(r"done run \w{26}: 45 lines, 180 words", again), again


def test_cli__missing_file(start: Starter) -> None:
    code, output = start("cli.py", "process", "nope.txt").finish()
    assert (code, output.strip()) == (1, "no such file: nope.txt")


# -- idempotency.py, concurrency.py --


def test_idempotency__second_trigger_gets_the_same_run(start: Starter) -> None:
    output = run(start, "idempotency.py")
    first = re.search(r"^1st trigger: created +run (\w+)$", output, re.M)
    assert first, output
    run_id = first[1]
    assert re.search(rf"^2nd trigger: idempotent run {run_id}$", output, re.M), output
    assert "same run: True; its input: 'Welcome!'" in output
    assert re.search(rf"^3rd trigger: idempotent run {run_id} -> msg-1$", output, re.M), output
    assert re.search(r"^other key: +created +run (?!" + run_id + r")\w+ -> msg-2$", output, re.M)
    assert output.splitlines()[-1].startswith("emails sent: 2 ")


def test_concurrency__conflict_coalesce_and_one_run_per_key(start: Starter) -> None:
    output = run(start, "concurrency.py", CONCURRENCY_SYNC_SECONDS="0.3")
    first = re.search(r"^ada #1: created (\w+)$", output, re.M)
    assert first, output
    assert re.search(r"^ada #2: ConflictError: .*pending run.* concurrency key 'ada'", output, re.M)
    assert f"ada #3: coalesced {first[1]} (same as #1: True)" in output
    assert matching(r"^bob #1: created \w+$", output)
    assert matching(r"^ada #4: created \w+ \(queued while #1 runs\)$", output)
    assert output.splitlines()[-1] == "all done"
    syncs = [line.split()[1:3] for line in output.splitlines() if line.startswith("  sync ")]
    ada = [what for who, what in syncs if who == "ada"]
    assert ada == ["start", "done", "start", "done"], output  # never two at once
    # Different keys do run side by side: bob started before ada's first run ended.
    assert syncs.index(["bob", "start"]) < syncs.index(["ada", "done"]), output


# -- retry.py --


def test_retry__resumes_after_the_last_completed_step_and_cancels(start: Starter) -> None:
    output = run(start, "retry.py", RETRY_STEP_SECONDS="0.2")
    calls = [line.split("(")[0].strip() for line in output.splitlines() if ") called" in line]
    # fetch ran once; transform failed, then ran again on retry; then save.
    assert calls == ["fetch", "transform", "transform", "save"], output
    assert matching(r"failed: Run \w+ failed in step 'transform': upstream API unavailable", output)
    assert matching(
        r"error='upstream API unavailable \(503\)' steps: fetch=completed, "
        r"transform=failed$",
        output,
    )
    assert matching(r"^   \w+ completed, output=3$", output)
    assert matching(r"^   Run \w+ was cancelled$", output)
    assert output.splitlines()[-1] == "   status=cancelled after 2 pages"
    assert "exported page 2" not in output


# -- flaky_api.py --


def test_flaky_api__attempts_1_to_3_with_growing_delays_then_a_bad_request(
    start: Starter, tmp_path: Path
) -> None:
    output = run(start, "flaky_api.py", FLAKY_INITIAL="0.3")
    retries = re.findall(r"^step:retry attempt (\d) failed .*; next in (\S+)s at", output, re.M)
    assert retries == [("1", "0.3"), ("2", "0.6")], output
    assert matching(r"API call #", output) == [
        "  API call #1 for EUR/USD",
        "  API call #2 for EUR/USD",
        "  API call #3 for EUR/USD",
        "  API call #4 for XXX/YYY",
    ]
    assert re.search(
        r'^run \w{26} \(created\) -> \{"pair":"EUR/USD","rate":1.0842\}$', output, re.M
    )
    assert matching(r"recorded: attempt", output) == [
        "  recorded: attempt 1 failed: HTTP 503: service unavailable",
        "  recorded: attempt 2 failed: HTTP 503: service unavailable",
    ]
    # the bad request failed at once: one call, no retry
    assert output.splitlines()[-1].startswith("bad request: Run ")
    assert "HTTP 400: unknown currency pair" in output.splitlines()[-1]
    calls = json.loads((tmp_path / "flaky-api-calls.json").read_text())
    assert calls[1] - calls[0] >= 0.3 - 0.002
    assert calls[2] - calls[1] >= 0.6 - 0.002


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_flaky_api__killed_during_the_backoff__resumes_the_count_on_time(
    start: Starter, tmp_path: Path, database: str, request: pytest.FixtureRequest
) -> None:
    # the attempt records and the wait for attempt 3 are read back from the database
    # by a second process: on a SQLite file, and on a real PostgreSQL server
    urls = (
        {}
        if database == "sqlite"
        else {"DURABLY_DATABASE_URL": request.getfixturevalue("postgres_url")}
    )
    first = start("flaky_api.py", FLAKY_INITIAL="1.0", **urls)
    first.wait_for(r"^step:retry attempt 2 failed")  # waiting 2 s for attempt 3
    first.proc.send_signal(signal.SIGKILL)
    assert first.finish()[0] == -signal.SIGKILL
    assert "API call #3" not in first.output

    # The rerun finds the run by its idempotency key: attempt 3, at its time.
    output = run(start, "flaky_api.py", FLAKY_INITIAL="1.0", **urls)
    assert not matching(r"^step:retry", output), "attempts 1 and 2 are not made again"
    assert matching(r"API call #", output)[0] == "  API call #3 for EUR/USD"
    assert re.search(r"^run \w{26} \(idempotent\) -> \{", output, re.M), output
    assert matching(r"recorded: attempt", output) == [
        "  recorded: attempt 1 failed: HTTP 503: service unavailable",
        "  recorded: attempt 2 failed: HTTP 503: service unavailable",
    ]
    calls = json.loads((tmp_path / "flaky-api-calls.json").read_text())
    assert calls[2] - calls[1] >= 2.0 - 0.002, "attempt 3 not before its time"


# -- graceful_shutdown.py --


def test_graceful_shutdown__sigterm_finishes_the_current_run(start: Starter) -> None:
    worker = start("graceful_shutdown.py", SHUTDOWN_STEP_SECONDS="0.3")
    worker.wait_for(r"batch 0 part 1 \.\.\.")
    worker.proc.send_signal(signal.SIGTERM)
    code, output = worker.finish()
    assert code == 0, output
    assert "received SIGTERM" in output
    assert output.splitlines()[-4:] == [
        "  batch-0: completed",
        "  batch-1: pending",
        "  batch-2: pending",
        "bye",
    ]
    assert "batch 1 part" not in output  # nothing new was claimed after the signal


def test_graceful_shutdown__after_the_grace_period_the_run_is_left_to_resume(
    start: Starter,
) -> None:
    timings = {"SHUTDOWN_LEASE_SECONDS": "1", "SHUTDOWN_GRACE_SECONDS": "0.2"}
    # Steps of 1 s: the signal comes at the start of part 1, which outlasts the grace.
    worker = start("graceful_shutdown.py", SHUTDOWN_STEP_SECONDS="1", **timings)
    worker.wait_for(r"batch 0 part 1 \.\.\.")
    worker.proc.send_signal(signal.SIGINT)
    code, output = worker.finish()
    assert code == 0, output
    assert "received SIGINT" in output
    assert "  batch-0: leased (abandoned: resumes when its lease expires)" in output

    # The next worker takes the abandoned run over once its lease (1 s) expires
    # and continues after part 0; then it finishes the others.
    worker = start("graceful_shutdown.py", SHUTDOWN_STEP_SECONDS="0.05", **timings)
    worker.wait_for(r"run \w+ completed", count=3)
    worker.proc.send_signal(signal.SIGTERM)
    code, output = worker.finish()
    assert code == 0, output
    assert "batch 0 part 0" not in output
    assert "batch 0 part 1 ..." in output
    assert [line for line in output.splitlines() if line.startswith("  batch-")] == [
        "  batch-0: completed",
        "  batch-1: completed",
        "  batch-2: completed",
    ]


# -- multi_worker.py --


def test_multi_worker__every_run_executed_exactly_once(start: Starter) -> None:
    output = run(start, "multi_worker.py", MULTI_RUNS="24", MULTI_STEP_SECONDS="0.05")
    counts = [
        int(n) for n in re.findall(r"^worker-\d \(pid \d+\) executed (\d+) runs$", output, re.M)
    ]
    assert len(counts) == 3, output
    assert sum(counts) == 24
    assert "runs: 24, completed: 24, executions: 24" in output
    assert "executed twice: 0, never executed: 0" in output
    assert output.splitlines()[-1] == "check: every run executed exactly once"


# -- django_app/, flask_app.py: a real web server, a real worker process --


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def poll(url: str, done: Any) -> Any:
    """GET ``url`` until ``done(body)``; the body (bounded by TIMEOUT)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        _, body = http("GET", url)
        if done(body):
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.05)


def check_recipe(web: Example, worker: Example, base: str) -> None:
    """Trigger over HTTP; the worker process runs it; SIGTERM mid-run lets it finish."""
    code, body = http("POST", f"{base}/reports", {"days": 2})
    assert code == 400, body
    assert "user" in body["error"]
    code, body = http("POST", f"{base}/reports", {"user": "ada", "days": 12})
    assert code == 202, body
    run_url = f"{base}/reports/{body['id']}"
    poll(run_url, lambda b: b["progress"] is not None)  # the worker is in the middle of it
    worker.proc.send_signal(signal.SIGTERM)  # graceful: the run in flight may finish
    assert worker.finish()[0] == 0, worker.output
    assert "durably worker stopped" in worker.output
    body = poll(run_url, lambda b: b["status"] != "leased")
    assert body["status"] == "completed"
    assert body["output"] == {"user": "ada", "lines": sum(3 * (d + 1) for d in range(12))}
    assert http("GET", f"{base}/reports/nope")[0] == 404
    web.proc.send_signal(signal.SIGINT)
    web.finish()


def test_django_app__runserver_triggers_and_the_command_runs_the_worker(start: Starter) -> None:
    worker = start("django_app/manage.py", "durably_worker", REPORT_STEP_SECONDS="0.1")
    worker.wait_for(r"^durably worker \S+: jobs \['report'\]")
    port = free_port()
    web = start("django_app/manage.py", "runserver", "--noreload", f"127.0.0.1:{port}")
    web.wait_for(r"Quit the server with")
    check_recipe(web, worker, f"http://127.0.0.1:{port}")


def test_flask_app__flask_run_triggers_and_the_cli_command_runs_the_worker(
    start: Starter,
) -> None:
    app = str(EXAMPLES / "flask_app.py")
    worker = start("-m", "flask", "--app", app, "worker", REPORT_STEP_SECONDS="0.1")
    worker.wait_for(r"^durably worker \S+ on sqlite:")
    port = free_port()
    web = start("-m", "flask", "--app", app, "run", "--port", str(port))
    web.wait_for(r"Running on http://127\.0\.0\.1")
    check_recipe(web, worker, f"http://127.0.0.1:{port}")


# -- approval.py, reminder.py --


def test_approval__a_run_waits_across_processes_for_a_human(start: Starter) -> None:
    requested = run(start, "approval.py", "request", "120", "team dinner")
    found = re.search(r"^requested: run (\w+)$", requested, re.M)
    assert found, requested
    run_id = found[1]
    first = run(start, "approval.py", "worker")
    assert f"answer with `approval.py approve {run_id} <name>`" in first
    assert "worker: processed 1 run(s)" in first
    status = run(start, "approval.py", "status", run_id)
    assert status.strip() == "status: waiting; output: None; decision: pending (None)"
    assert run(start, "approval.py", "approve", run_id, "ann").strip() == "answer: accepted"
    assert run(start, "approval.py", "approve", run_id, "ann").strip() == "answer: duplicate"
    second = run(start, "approval.py", "worker")
    assert "paying 120 for 'team dinner'" in second
    assert "asking for approval" not in second, "the notification step was replayed"
    status = run(start, "approval.py", "status", run_id)
    assert status.strip() == (
        "status: completed; output: {'status': 'paid', 'by': 'ann'}; decision: resolved (signal)"
    )
    code, refused = start("approval.py", "reject", run_id, "bob").finish()
    assert code == 1
    assert "answer refused: Wait 'decision'" in refused
    assert "another signal's result" in refused


def test_approval__nobody_answers_in_time(start: Starter) -> None:
    requested = run(start, "approval.py", "request", "9", "coffee", APPROVAL_TIMEOUT="1")
    found = re.search(r"^requested: run (\w+)$", requested, re.M)
    assert found, requested
    done = run(start, "approval.py", "worker", "--until", found[1], APPROVAL_TIMEOUT="1")
    assert "nobody answered in time: escalated" in done
    assert f"worker: run {found[1]} finished: {{'status': 'escalated', 'by': None}}" in done


def test_reminder__sleeping_runs_hold_no_slot_and_wake_on_time(start: Starter) -> None:
    output = run(start, "reminder.py", "demo", REMINDER_SCALE="0.5")
    sent = re.findall(r"^  reminder: '([^']+)' \(([\d.]+) s after its time\)$", output, re.M)
    assert [text for text, _ in sent] == ["stretch", "stand up", "tea"], output
    # on time: the worker (one slot, a 30 s polling interval) woke at each deadline
    assert all(float(late) < 5 for _, late in sent), output
    report = re.search(r"^while they sleep: report for ann done at ([\d.]+) s$", output, re.M)
    assert report, output
    finished = re.search(r"^all sent at ([\d.]+) s; still waiting: 0$", output, re.M)
    assert finished, output
    assert float(report[1]) < float(finished[1])


def test_reminder__no_worker_alive_at_the_deadline(start: Starter) -> None:
    scheduled = run(start, "reminder.py", "remind", "water the plants", "0.3")
    assert re.search(r"^scheduled: run \w+$", scheduled, re.M), scheduled
    first = run(start, "reminder.py", "worker")  # starts it; it sleeps, the worker exits
    assert "reminder:" not in first
    deadline = time.monotonic() + TIMEOUT
    while True:  # later workers: the first to start after the deadline sends it
        later = run(start, "reminder.py", "worker")
        if "reminder: 'water the plants'" in later:
            break
        assert time.monotonic() < deadline, later
