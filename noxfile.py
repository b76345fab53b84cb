"""Developer tasks. Every session runs inside the workspace environment that
``uv sync --frozen`` builds from ``uv.lock``: ``uv run nox -s <session>``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nox

nox.options.default_venv_backend = "none"
nox.options.sessions = ["lint", "typecheck", "tests"]

SOURCES = ["packages", "tests", "examples", "bench", "docs", "noxfile.py"]
ROOT = Path(__file__).resolve().parent


def _sync(session: nox.Session) -> None:
    session.run("uv", "sync", "--frozen", "--all-packages", external=True)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting."""
    _sync(session)
    session.run("uv", "run", "--frozen", "ruff", "check", *SOURCES, external=True)
    session.run("uv", "run", "--frozen", "ruff", "format", "--check", *SOURCES, external=True)


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on packages/*/src (configured in pyproject.toml)."""
    _sync(session)
    session.run("uv", "run", "--frozen", "mypy", external=True)


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite, every backend, in one pytest invocation."""
    _sync(session)
    session.run("uv", "run", "--frozen", "pytest", *session.posargs, external=True)


@nox.session
def crash(session: nox.Session) -> None:
    """SIGKILL crash harness (durably_testing.crash): 200 kills on a SQLite file, then
    200 on a libSQL server (tursodb on a free loopback port) when it is installed.

    Without tursodb (scripts/setup-tursodb.sh, or $DURABLY_TURSODB) the libSQL run is
    left out with a warning; in CI (``CI`` set) that is an error. Arguments after
    ``--`` go to the harness; with a ``--url`` of your own only that database is
    tested, e.g. ``uv run nox -s crash -- --url http://127.0.0.1:8080 --kills 300``.
    """
    import shutil
    import tempfile

    _sync(session)
    harness = ["uv", "run", "--frozen", "python", "-m", "durably_testing.crash"]
    defaults = ["--kills", "200", "--seed", "1"]
    if "--url" in session.posargs or any(a.startswith("--url=") for a in session.posargs):
        session.run(*harness, *defaults, *session.posargs, external=True)
        return
    directory = Path(tempfile.mkdtemp(prefix="durably-crash-db-"))
    sqlite_url = f"sqlite:///{directory / 'crash.db'}"
    options = [*defaults, *session.posargs]
    session.run(*harness, "--url", sqlite_url, *options, external=True)
    _crash_on_libsql(session, directory, harness, options)
    shutil.rmtree(directory, ignore_errors=True)  # kept when a harness run fails


def _crash_on_libsql(
    session: nox.Session, directory: Path, harness: list[str], options: list[str]
) -> None:
    """The harness against a tursodb server started on a free port for this run."""
    sys.path.insert(0, str(ROOT / "tests"))  # the tests' own server helper and CI rule
    from ci_support import in_ci
    from libsql_support import DEFAULT_BINARY, TursoServer, tursodb_binary

    binary = tursodb_binary()
    if binary is None:
        where = os.environ.get("DURABLY_TURSODB") or DEFAULT_BINARY
        message = (
            f"tursodb is not installed ({where}): run scripts/setup-tursodb.sh "
            "(or set DURABLY_TURSODB to the binary)"
        )
        if in_ci():
            session.error(f"{message}; in CI the crash harness runs on libSQL too")
        session.warn(f"{message}; the crash harness ran on SQLite only")
        return
    server = TursoServer(binary, directory / "libsql.db").start()
    session.log(f"tursodb serving {directory / 'libsql.db'} on {server.url} (log {server.log})")
    try:
        session.run(*harness, "--url", server.url, *options, external=True)
    finally:
        server.stop()


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Benchmarks W1–W5 (bench/): JSON lines, then one table. Not a timed test.

    Arguments after ``--`` name the scripts to run, e.g. ``-- w2 w4``.
    """
    _sync(session)
    bench_all = ["python", "bench/run_all.py"]
    session.run("uv", "run", "--frozen", *bench_all, *session.posargs, external=True)
