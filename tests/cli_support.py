"""The ``durably`` command as a person runs it: the installed console script in a
subprocess, on a real SQLite file, with the jobs of ``tests/ops_app.py``.

``Ops`` holds one database and one directory of gate files; ``ops.durably(...)``
runs a command to its end, ``ops.start(...)`` starts one that keeps running
(a worker, ``events``, the dashboard) and is always reaped.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

from ci_support import unavailable
from process_support import abort_hung

T = TypeVar("T")

TESTS = Path(__file__).resolve().parent
DURABLY = Path(sys.executable).with_name("durably")
#: Safety net for waits on conditions (never a sleep to let something happen).
TIMEOUT = 60.0


def eventually(predicate: Callable[[], T | None], what: str, timeout: float = TIMEOUT) -> T:
    deadline = time.monotonic() + timeout
    while True:
        found = predicate()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s")
        time.sleep(0.05)


class Process:
    """A long-running command, its output in a file (read it with ``output()``)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._file: IO[bytes] = log.open("wb")
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=self._file, stderr=subprocess.STDOUT, env=env
        )

    def output(self) -> str:
        return self.log.read_text("utf-8", errors="replace")

    def lines(self) -> list[str]:
        return self.output().splitlines()

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = TIMEOUT) -> int:
        """The exit code; a process still running after ``timeout`` fails the test with
        the stack of each of its threads (faulthandler, on SIGABRT) and its output."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            signals = abort_hung(self.proc)
            raise AssertionError(
                f"{self.proc.args!r} still running after {timeout:g}s; its signals: "
                f"{signals}; its threads and output:\n{self.output()[-6000:]}"
            ) from None

    def reap(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self._file.close()


class Ops:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.db = root / "ops.db"
        self.url = f"sqlite:///{self.db}"
        self.gates = root / "gates"
        self.gates.mkdir(exist_ok=True)
        self.env = {
            **os.environ,
            "DURABLY_DATABASE_URL": self.url,
            "OPS_DIR": str(self.gates),
            "PYTHONPATH": str(TESTS),
            "PYTHONUNBUFFERED": "1",
            "PYTHONFAULTHANDLER": "1",  # SIGABRT dumps every thread (Process.wait)
            "COLUMNS": "200",
            "NO_COLOR": "1",
        }
        self.env.pop("DURABLY_APP", None)
        self._started: list[Process] = []

    def durably(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(DURABLY), *args],
            capture_output=True,
            text=True,
            env=env or self.env,
            timeout=TIMEOUT,
            check=False,
        )

    def ok(self, *args: str) -> str:
        """A command that must succeed: its stdout."""
        done = self.durably(*args)
        assert done.returncode == 0, f"durably {' '.join(args)}: {done.returncode}\n{done.stderr}"
        return done.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))

    def start(self, *args: str) -> Process:
        process = Process(
            [str(DURABLY), *args], self.env, self.root / f"process-{len(self._started)}.log"
        )
        self._started.append(process)
        return process

    def open_gate(self, name: str) -> None:
        (self.gates / name).touch()

    def fix(self) -> None:
        (self.gates / "fixed").touch()

    def trigger(self, **payload: Any) -> str:
        out = self.json(
            "trigger", "import-csv", "--input", json.dumps(payload), "--app", "ops_app:durably"
        )
        run_id: str = out["run"]["id"]
        return run_id

    def run(self, run_id: str) -> dict[str, Any]:
        shown: dict[str, Any] = self.json("runs", "show", run_id)
        return shown

    def status_is(self, run_id: str, status: str) -> dict[str, Any]:
        return eventually(
            lambda: (lambda r: r if r["run"]["status"] == status else None)(self.run(run_id)),
            f"run {run_id} {status}",
        )

    def terminal(self, name: str, *args: str) -> Terminal:
        """``durably *args`` in a tmux session: a real terminal (close it)."""
        keep = ("DURABLY_DATABASE_URL", "OPS_DIR", "PYTHONPATH")
        env = [f"{k}={v}" for k, v in self.env.items() if k in keep]
        command = subprocess.list2cmdline(["env", *env, str(DURABLY), *args])
        return Terminal(f"durably-{name}-{os.getpid()}", f"{command}; echo EXIT=$?; sleep 600")

    def close(self) -> None:
        for process in self._started:
            process.reap()


class Terminal:
    """A command in its own tmux server, 160x40: type into it, read its screen."""

    def __init__(self, session: str, script: str) -> None:
        if shutil.which("tmux") is None:
            unavailable("tmux is missing: run scripts/setup-terminal.sh")
        self._tmux = ["tmux", "-L", session]
        self._session = session
        subprocess.run(
            [*self._tmux, "new-session", "-d", "-s", session, "-x", "160", "-y", "40", script],
            check=True,
        )

    def screen(self) -> str:
        return subprocess.run(
            [*self._tmux, "capture-pane", "-p", "-t", self._session],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    def shows(self, *texts: str) -> str:
        """Wait until the screen shows every text; the screen."""
        return eventually(
            lambda: (lambda s: s if all(t in s for t in texts) else None)(self.screen()),
            f"the terminal showing {texts}",
        )

    def keys(self, *keys: str) -> None:
        subprocess.run([*self._tmux, "send-keys", "-t", self._session, *keys], check=True)

    def close(self) -> None:
        subprocess.run([*self._tmux, "kill-server"], check=False, capture_output=True)


@contextlib.contextmanager
def ops_env(root: Path) -> Iterator[Ops]:
    ops = Ops(root)
    try:
        yield ops
    finally:
        ops.close()
