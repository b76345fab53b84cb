"""Developer tasks. Every session runs inside the workspace environment that
``uv sync --frozen`` builds from ``uv.lock``: ``uv run nox -s <session>``."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "none"
nox.options.sessions = ["lint", "typecheck", "tests"]

SOURCES = ["packages", "tests", "examples", "bench", "noxfile.py"]


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
    """SIGKILL crash harness (durably_testing.crash): 200 kills on a SQLite file.

    Arguments after ``--`` go to the harness and override the defaults, e.g.
    ``uv run nox -s crash -- --url http://127.0.0.1:8080 --kills 300 --seed 2``.
    """
    import shutil
    import tempfile

    _sync(session)
    directory = tempfile.mkdtemp(prefix="durably-crash-db-")
    url = f"sqlite:///{directory}/crash.db"
    harness = ["python", "-m", "durably_testing.crash", "--url", url, "--kills", "200"]
    session.run("uv", "run", "--frozen", *harness, "--seed", "1", *session.posargs, external=True)
    shutil.rmtree(directory, ignore_errors=True)  # kept when the harness fails


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Benchmarks W1–W5 (bench/): JSON lines, then one table. Not a timed test.

    Arguments after ``--`` name the scripts to run, e.g. ``-- w2 w4``.
    """
    _sync(session)
    bench_all = ["python", "bench/run_all.py"]
    session.run("uv", "run", "--frozen", *bench_all, *session.posargs, external=True)
