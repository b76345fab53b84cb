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
