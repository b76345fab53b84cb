"""Worker processes for the multi-process and crash tests (imported as ``process_support``).

Workers are ``tests/workers/durably_worker.py`` run by ``sys.executable``; closing
a worker's stdin stops it gracefully. ``Workers`` always reaps its children:
use it as a context manager, whatever happens they are killed and waited for on
exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar

T = TypeVar("T")

WORKER = Path(__file__).parent / "workers" / "durably_worker.py"


def signal_state(pid: int) -> str:
    """The signal lines of ``/proc/PID/status`` (pending, blocked, ignored, caught), for
    the message of a process that did not exit on a signal: a SIGINT ignored or
    blocked from its start (inherited) and one lost in the process look alike from
    outside."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError as exc:
        return f"(no /proc status: {exc})"
    wanted = ("SigQ", "SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt")
    return " ".join(
        line.replace("\t", "") for line in status.splitlines() if line.startswith(wanted)
    )


def abort_hung(proc: subprocess.Popen[Any]) -> str:
    """For a process that did not exit in time: its signal state (``signal_state``),
    read first, then SIGABRT — with faulthandler on (``PYTHONFAULTHANDLER``) it prints
    every thread's stack into its output — and up to 10 s for it to exit."""
    signals = signal_state(proc.pid)
    proc.send_signal(signal.SIGABRT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    return signals


def run_captured(
    args: list[str | Path], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``args`` run to the end, output captured (a generous bound: only a hang fails)."""
    return subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def wait_for(
    predicate: Callable[[], T],
    what: str,
    timeout: float,
    interval: float = 0.02,
    check: Callable[[], None] | None = None,
) -> T:
    """Poll ``predicate()`` until it returns something truthy (returned) or fail
    after ``timeout`` seconds. ``check()`` runs at every poll (e.g. to fail early
    when a worker died)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if check is not None:
            check()
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s")
        time.sleep(interval)


def read_records(directory: Path) -> list[dict[str, Any]]:
    """Every record of every worker process, in file order per process."""
    records: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.jsonl")):
        for line in path.read_text("utf-8").splitlines():
            if line:
                records.append(json.loads(line))
    return records


def query(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """A read on its own short-lived connection (WAL: never blocks the workers)."""
    conn = sqlite3.connect(db, timeout=10)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


class Worker:
    def __init__(
        self, db: Path, records: Path, log: Path, *args: str, script: Path = WORKER
    ) -> None:
        self.log_path = log
        self._log: IO[bytes] = log.open("wb")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, str(script), str(db), str(records), *args],
                stdin=subprocess.PIPE,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        except BaseException:
            self._log.close()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log_path.read_text("utf-8", errors="replace")

    def check_alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise AssertionError(f"worker {self.pid} exited with {code}:\n{self.output()}")

    def close_stdin(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def reap(self) -> None:
        """Kill if still running, wait, close every pipe and file."""
        with contextlib.suppress(OSError):
            self.close_stdin()
        try:
            self.kill()
        finally:
            self._log.close()


class Workers:
    """Starts workers; on exit kills and reaps whichever are still running."""

    def __init__(self, db: Path, records: Path, logs: Path, script: Path = WORKER) -> None:
        self.db = db
        self.records = records
        self.logs = logs
        self.script = script
        self.started: list[Worker] = []

    def start(self, *args: str) -> Worker:
        log = self.logs / f"worker-{len(self.started)}.log"
        worker = Worker(self.db, self.records, log, *args, script=self.script)
        self.started.append(worker)
        return worker

    def check_alive(self) -> None:
        for worker in self.started:
            if worker.proc.returncode is None:
                worker.check_alive()

    def stop_all(self, timeout: float) -> None:
        """Graceful stop: close every stdin, then each must exit 0 within ``timeout``
        and none may have printed anything (stdout and stderr)."""
        for worker in self.started:
            worker.close_stdin()
        deadline = time.monotonic() + timeout
        for worker in self.started:
            if worker.proc.returncode is not None:
                continue
            code = worker.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            assert code == 0, f"worker {worker.pid} exited with {code}:\n{worker.output()}"
        for worker in self.started:
            # a traceback, a warning or a logged error (e.g. a busy database) is a failure
            assert worker.output() == "", f"worker {worker.pid} printed:\n{worker.output()}"

    def __enter__(self) -> Workers:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for worker in self.started:
            worker.reap()
