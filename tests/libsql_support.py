"""A real libSQL-protocol server for the tests: ``tursodb --sync-server`` on loopback.

``scripts/setup-tursodb.sh`` installs the binary into ``.cache/tursodb`` (or set
``DURABLY_TURSODB``); ``uv run nox -s tests`` runs it first. A missing server fails
the tests that need it.

Fixtures (registered from ``conftest.py``):

- ``tursodb``: session-scoped; the binary, or the test fails. Every server started in
  the session is reaped at its end.
- ``libsql_server``: a fresh server on a fresh database file in ``tmp_path``
  (startup takes ~20 ms, so each test gets its own: no state leaks between tests,
  and a test may kill and restart its server).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from ci_support import unavailable

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "@tursodatabase/cli-linux-x64-gnu"
DEFAULT_BINARY = ROOT / ".cache" / "tursodb" / "node_modules" / PACKAGE / "tursodb"
READY_TIMEOUT = 10.0

_servers: list[TursoServer] = []


def tursodb_binary() -> Path | None:
    configured = os.environ.get("DURABLY_TURSODB")
    path = Path(configured) if configured else DEFAULT_BINARY
    return path if path.is_file() and os.access(path, os.X_OK) else None


def require_tursodb() -> Path:
    """The binary, or fail the calling test."""
    binary = tursodb_binary()
    if binary is None:
        where = os.environ.get("DURABLY_TURSODB") or DEFAULT_BINARY
        message = (
            f"tursodb is not installed ({where}); run scripts/setup-tursodb.sh "
            "(or set DURABLY_TURSODB to the binary)"
        )
        unavailable(message)
    return binary


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on (IPv4), from ``/proc``: its socket
    inodes matched against the kernel's table of listening sockets."""
    inodes: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in os.scandir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(fd.path)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    if not inodes:
        return set()
    ports: set[int] = set()
    with open("/proc/net/tcp") as table:
        next(table)  # the header
        for line in table:
            fields = line.split()
            # local address "0100007F:1F90", state 0A = LISTEN, inode in column 10
            if fields[3] == "0A" and fields[9] in inodes:
                ports.add(int(fields[1].rpartition(":")[2], 16))
    return ports


def pipeline_ready(url: str, timeout: float = 0.5) -> bool:
    """Whether the server answers an empty pipeline (a raw socket: cheaper than an
    HTTP client per poll, and the connection is closed at once either way)."""
    host, _, port = url.removeprefix("http://").partition(":")
    body = b'{"requests":[]}'
    request = (
        f"POST /v2/pipeline HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as conn:
            conn.sendall(request)
            status = conn.recv(64)
    except OSError:
        return False
    return status.startswith(b"HTTP/1.1 200")


class TursoServer:
    """One ``tursodb <file> --sync-server 127.0.0.1:<port>`` process; ``kill()`` and
    ``start()`` again keep the file and the port (the same URL)."""

    def __init__(self, binary: Path, database: Path, port: int | None = None) -> None:
        self.binary = binary
        self.database = database
        #: 0 until the first start: the server binds a port of the kernel's choice,
        #: read from its own listening socket (a port picked here and passed on could
        #: be taken by another process in between — e.g. another xdist worker's server).
        self.port = port or 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log = database.with_name(database.name + ".server.log")
        _servers.append(self)

    def start(self, ready_timeout: float = READY_TIMEOUT) -> TursoServer:
        """Start the server; a restart keeps the port. Ready means: THIS process
        listens on the port and answers a pipeline — whoever else answers on it (a
        server that took the port while this one was down) does not count."""
        assert self.process is None, "already running"
        deadline = time.monotonic() + ready_timeout
        while True:
            with self.log.open("ab") as log:
                self.process = subprocess.Popen(
                    [str(self.binary), str(self.database), "--sync-server", self.address],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    break  # e.g. the port is held by another process: try again
                ports = listening_ports(self.process.pid)
                if self.port == 0 and ports:
                    self.port = min(ports)
                if self.port in ports and pipeline_ready(self.url):
                    return self
                time.sleep(0.005)
            else:
                self.stop()
                raise RuntimeError(f"tursodb did not become ready on {self.address} ({self.log})")
            self.process.wait()
            self.process = None
            if time.monotonic() >= deadline:
                raise RuntimeError(f"tursodb exited at start on {self.address} ({self.log})")
            time.sleep(0.05)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        """SIGKILL: the server dies at once, mid-request if it was in one."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
        if process is not None:
            process.wait()

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def restart(self) -> None:
        self.kill()
        self.start()


def stop_all() -> None:
    for server in _servers:
        with contextlib.suppress(Exception):
            server.stop()
    _servers.clear()


atexit.register(stop_all)


@pytest.fixture(scope="session")
def tursodb() -> Iterator[Path]:
    binary = require_tursodb()
    yield binary
    stop_all()


@pytest.fixture
def libsql_server(tursodb: Path, tmp_path: Path) -> Iterator[TursoServer]:
    server = TursoServer(tursodb, tmp_path / "remote.db").start()
    yield server
    server.stop()
    with contextlib.suppress(ValueError):
        _servers.remove(server)


_shared: TursoServer | None = None
_CLEAR = [
    "DELETE FROM durably_steps",
    "DELETE FROM durably_logs",
    "DELETE FROM durably_run_labels",
    "DELETE FROM durably_waits",
    "DELETE FROM durably_step_attempts",
    "DELETE FROM durably_runs",
    "DELETE FROM durably_schedules",
]


def fresh_shared_database() -> str:
    """The URL of a session-wide server whose durably tables were just emptied (for
    callers that need many fresh databases fast, e.g. hypothesis examples)."""
    global _shared
    if _shared is None or _shared.process is None or _shared.process.poll() is not None:
        directory = Path(tempfile.mkdtemp(prefix="durably-tursodb-"))
        atexit.register(shutil.rmtree, directory, True)
        _shared = TursoServer(require_tursodb(), directory / "shared.db").start()
    requests = [{"type": "execute", "stmt": {"sql": sql}} for sql in _CLEAR]
    # the tables may not exist yet: each DELETE is its own request, errors ignored
    httpx.post(f"{_shared.url}/v2/pipeline", json={"requests": requests}, timeout=10)
    return _shared.url
