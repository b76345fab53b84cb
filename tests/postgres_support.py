"""A real PostgreSQL server for the tests, on loopback, in a temporary directory.

``scripts/setup-postgres.sh`` finds (or installs) the server programs and the user
to run them as (the server refuses to run as root), and records both in
``.cache/postgres/env``; ``DURABLY_PG_BINDIR`` overrides the programs' directory.
In CI (``CI`` set) a missing server fails the tests that need it; locally they are
skipped with the reason.

- :class:`PostgresServer`: ``initdb`` into a fresh directory, ``postgres`` on a
  free 127.0.0.1 port, stopped by its PID (``stop``: fast shutdown; ``crash``: an
  immediate one, WAL replayed at the next start; ``restart``).
- Fixtures (registered from ``conftest.py``): ``postgres`` is one server for the
  whole session; ``postgres_url`` a fresh schema on it per test (isolation costs a
  ``CREATE SCHEMA``, not a server or a database: the URL names the schema with
  durably-postgres' ``schema`` parameter); ``postgres_server`` a server of the
  test's own (it may kill and restart it).

Connections: the superuser ``durably`` is trusted from 127.0.0.1 (no password);
the role ``durably_secret`` (password :data:`SECRET`) must give its password, for
the tests of password handling.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ci_support import unavailable

ROOT = Path(__file__).resolve().parent.parent
ENV_FILE = ROOT / ".cache" / "postgres" / "env"
TEMPLATE_CACHE = ROOT / ".cache" / "postgres" / "clusters"
SETUP = ROOT / "scripts" / "setup-postgres.sh"
READY_TIMEOUT = 60.0
SUPERUSER = "durably"
SECRET_ROLE = "durably_secret"
#: The password of :data:`SECRET_ROLE` (a test value, only ever on loopback).
SECRET = "s3cret-Pa55word!"

_servers: list[PostgresServer] = []


def _setup_env() -> dict[str, str]:
    values: dict[str, str] = {}
    if ENV_FILE.is_file():
        for line in ENV_FILE.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep:
                values[key.strip()] = value.strip()
    return values


def postgres_bindir() -> Path | None:
    """The directory of ``postgres`` and ``initdb``, or None when not installed."""
    configured = os.environ.get("DURABLY_PG_BINDIR") or _setup_env().get("PG_BINDIR")
    candidates = [Path(configured)] if configured else []
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for directory in candidates:
        if (directory / "postgres").is_file() and (directory / "initdb").is_file():
            return directory
    return None


def server_user() -> str | None:
    """The user the server runs as when we are root (None: as ourselves)."""
    if os.geteuid() != 0:
        return None
    user = _setup_env().get("PG_USER") or "postgres"
    try:
        pwd.getpwnam(user)
    except KeyError:
        return None
    return user


def require_postgres() -> Path:
    """The server programs, or fail (CI) / skip (locally) the calling test."""
    bindir = postgres_bindir()
    if bindir is None or (os.geteuid() == 0 and server_user() is None):
        unavailable(
            "PostgreSQL is not installed (or no non-root user to run it): run "
            "scripts/setup-postgres.sh (or set DURABLY_PG_BINDIR)"
        )
    return bindir


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_HBA = f"""\
local all all trust
host all {SECRET_ROLE} 127.0.0.1/32 scram-sha-256
host all all 127.0.0.1/32 trust
"""


class PostgresServer:
    """One PostgreSQL cluster in ``directory`` (created by :meth:`start` when new)."""

    def __init__(
        self,
        bindir: Path,
        directory: Path | None = None,
        *,
        port: int | None = None,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.bindir = bindir
        self.directory = directory or Path(tempfile.mkdtemp(prefix="durably-pg-"))
        self.data = self.directory / "data"
        self.log = self.directory / "server.log"
        self.port = port or free_port()
        self.user = server_user()
        self.settings = {
            # the tests kill workers, never the machine: the OS keeps what was written
            "fsync": "off",
            "max_connections": "300",
            "shared_buffers": "32MB",
            **(settings or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None
        _servers.append(self)

    @property
    def url(self) -> str:
        """The superuser's URL of the ``postgres`` database (no password: trusted)."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"

    def url_for(self, database: str = "postgres", *, schema: str | None = None) -> str:
        url = f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"
        return url if schema is None else f"{url}?schema={schema}"

    def _chown(self, path: Path) -> None:
        if self.user is not None:
            shutil.chown(path, self.user)

    def _initdb(self) -> None:
        """A new cluster: a copy of the cached one made by ``initdb`` (seconds on a busy
        machine) when there is one for this server version, else ``initdb`` and cache it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._chown(self.directory)
        version = subprocess.run(
            [str(self.bindir / "postgres"), "--version"], capture_output=True, text=True
        ).stdout.split()[2]
        template = TEMPLATE_CACHE / f"{version}-{self.user or os.getuid()}"
        if (template / "PG_VERSION").exists():
            shutil.copytree(template, self.data, symlinks=True)
            if self.user is not None:
                subprocess.run(["chown", "-R", self.user, str(self.data)], check=True)
            return
        self._run_initdb()
        TEMPLATE_CACHE.mkdir(parents=True, exist_ok=True)
        staging = TEMPLATE_CACHE / f".{template.name}.{os.getpid()}"
        shutil.copytree(self.data, staging, symlinks=True)
        try:
            staging.rename(template)
        except OSError:  # another process cached it first
            shutil.rmtree(staging, ignore_errors=True)

    def _run_initdb(self) -> None:
        subprocess.run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            cwd=self.directory,
            user=self.user,
        )
        (self.data / "pg_hba.conf").write_text(_HBA)

    def start(self) -> PostgresServer:
        assert self.process is None, "already running"
        if not (self.data / "PG_VERSION").exists():
            self._initdb()
        pid_file = self.data / "postmaster.pid"
        command = [
            str(self.bindir / "postgres"),
            "-D",
            str(self.data),
            "-p",
            str(self.port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={self.directory}",
        ]
        for key, value in self.settings.items():
            command += ["-c", f"{key}={value}"]
        deadline = time.monotonic() + READY_TIMEOUT
        with self.log.open("ab") as log:
            self._chown(self.log)
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.directory,
                user=self.user,
            )
        # postmaster.pid's 8th line says "ready" once it accepts connections
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process = None
                raise RuntimeError(
                    f"postgres exited at start on port {self.port}:\n{self.log.read_text()[-3000:]}"
                )
            with contextlib.suppress(OSError):
                lines = pid_file.read_text().splitlines()
                if len(lines) >= 8 and lines[7].strip() == "ready":
                    if not self._secret_role_made():
                        self._make_secret_role()
                    return self
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"postgres did not become ready on port {self.port} ({self.log})")

    def _secret_role_made(self) -> bool:
        return (self.directory / ".secret-role").exists()

    def _make_secret_role(self) -> None:
        self.psql(
            f"CREATE ROLE {SECRET_ROLE} LOGIN SUPERUSER PASSWORD '{SECRET}'",
        )
        (self.directory / ".secret-role").touch()

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser through ``psql`` (for setup; tests use the driver)."""
        psql = self.bindir / "psql"
        done = subprocess.run(
            [
                str(psql if psql.exists() else "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                SUPERUSER,
                "-d",
                database,
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr}")
        return done.stdout

    def _signal(self, sig: signal.Signals, timeout: float = 30.0) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def stop(self) -> None:
        """Fast shutdown (SIGINT): open transactions are rolled back, clients cut off."""
        self._signal(signal.SIGINT)

    def crash(self) -> None:
        """Immediate shutdown (SIGQUIT): no checkpoint; the next start replays the WAL,
        as after a power loss of the server process."""
        self._signal(signal.SIGQUIT)

    def restart(self, *, crash: bool = True) -> None:
        self.crash() if crash else self.stop()
        self.start()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def stop_all() -> None:
    for server in _servers:
        with contextlib.suppress(Exception):
            server.remove()
    _servers.clear()


atexit.register(stop_all)

_schemas = itertools.count(1)


def fresh_schema(server: PostgresServer, prefix: str = "t") -> str:
    """A new, empty schema on the server; its name."""
    name = f"{prefix}_{os.getpid()}_{next(_schemas)}"
    server.psql(f"CREATE SCHEMA {name}")
    return name


_shared: list[PostgresServer] = []  # the session's server, started on first use


def shared_server() -> PostgresServer:
    """The server of this test session (started on first use, removed at exit)."""
    if not _shared or _shared[0].process is None or _shared[0].process.poll() is not None:
        _shared[:] = [PostgresServer(require_postgres()).start()]
    return _shared[0]


_test_schemas = itertools.count(1)


def fresh_schema_url() -> str:
    """The URL of a schema nobody used yet on the session's server (``migrate()``
    creates it): a fresh, empty database for one test or one hypothesis example."""
    return shared_server().url_for(schema=f"test_{os.getpid()}_{next(_test_schemas)}")


@pytest.fixture(scope="session")
def postgres() -> PostgresServer:
    """One server for the session (each test takes a schema of its own on it)."""
    return shared_server()


@pytest.fixture
def postgres_url(postgres: PostgresServer) -> str:
    """The URL of a schema of this test's own on the session's server."""
    return fresh_schema_url()


@pytest.fixture
def postgres_server() -> Iterator[PostgresServer]:
    """A server of this test's own (it may crash and restart it)."""
    server = PostgresServer(require_postgres()).start()
    yield server
    server.remove()
    with contextlib.suppress(ValueError):
        _servers.remove(server)
