"""Opening the database, loading the user's app, and turning errors into exit codes."""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from .. import (
    ConflictError,
    Durably,
    DurablyError,
    NotFoundError,
    RunCancelledError,
    RunFailedError,
    StorageError,
    ValidationError,
    WaitTimeoutError,
    create_durably,
)
from .._app import DEFAULT_URL, URL_ENV
from ..sql import SqlStorage
from ..sql.schema import PY_SCHEMA_VERSION, REFERENCE_SCHEMA_VERSION
from ._exit import EXIT_CODES

T = TypeVar("T")

APP_ENV = "DURABLY_APP"


class Exit(click.ClickException):
    """Leave the command with a message (on stderr) and an exit code — also when
    raised outside :func:`run_command` (checking an option), where click shows it."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = EXIT_CODES[code]
        self.exit_code = self.code  # type: ignore[misc]  # click reads it per instance

    def show(self, file: Any = None) -> None:
        click.echo(f"durably: {self.message}", err=True)


def fail(message: str, code: str = "usage") -> NoReturn:
    raise Exit(message, code)


def exit_code_of(exc: DurablyError) -> str:
    if isinstance(exc, NotFoundError):
        return "not-found"
    if isinstance(exc, ConflictError):
        return "conflict"
    if isinstance(exc, ValidationError):
        return "usage"
    if isinstance(exc, StorageError):
        return "database"
    if isinstance(exc, WaitTimeoutError):
        return "timeout"
    if isinstance(exc, RunFailedError | RunCancelledError):
        return "failed"
    return "failed"


def run_command(main: Callable[[], Awaitable[T]]) -> T:
    """Run an async command; a durably error or :class:`Exit` becomes a message on
    stderr and its exit code, Ctrl-C exit code 130."""
    try:
        return asyncio.run(_guarded(main))
    except Exit as exc:
        click.echo(f"durably: {exc}", err=True)
        sys.exit(exc.code)
    except DurablyError as exc:
        click.echo(f"durably: {exc}", err=True)
        sys.exit(EXIT_CODES[exit_code_of(exc)])
    except (KeyboardInterrupt, asyncio.CancelledError):
        # Only asyncio.run's SIGINT handler cancels the command's task; it turns that
        # into KeyboardInterrupt, except for a SIGINT handled right as it installs the
        # handler (before it resets its count of interrupts): then the cancellation
        # itself comes out (CPython 3.11 to 3.13 at least).
        click.echo("durably: interrupted", err=True)
        sys.exit(EXIT_CODES["interrupted"])


async def _guarded(main: Callable[[], Awaitable[T]]) -> T:
    return await main()


def database_url(url: str | None) -> str:
    return url or os.environ.get(URL_ENV) or DEFAULT_URL


@asynccontextmanager
async def opened(url: str | None, *, schema: bool = True) -> AsyncIterator[Durably]:
    """A ``Durably`` on the database (no jobs, no worker). With ``schema``, the
    database must hold durably's current schema, so that nothing here migrates it:
    a read command never changes a database, and an older worker sharing it keeps
    working."""
    durably = create_durably(database_url(url))
    try:
        if schema:
            await check_schema(durably, database_url(url))
        yield durably
    finally:
        await durably.close()


def missing_sqlite_file(durably: Durably) -> str | None:
    """The path of the SQLite file the storage would open, when it does not exist.

    SQLite creates a missing file as it opens it (mode ``rwc``, the default), so a
    command that only reads checks first: a mistyped path is an error, not a new
    empty file left behind. Nothing is opened here (the storage connects at its first
    operation)."""
    storage = durably.storage
    # durably_sqlite is in sys.modules whenever a storage uses its executor
    sqlite = sys.modules.get("durably_sqlite")
    if sqlite is None or not isinstance(storage, SqlStorage):
        return None
    executor = storage.executor
    if not isinstance(executor, sqlite.SqliteExecutor) or executor.memory:
        return None
    path = Path(executor.database)
    return None if path.exists() else repr(str(path))


async def check_schema(durably: Durably, url: str) -> None:
    """Fail unless the database holds durably's current schema (without creating or
    migrating anything)."""
    missing = missing_sqlite_file(durably)
    if missing is not None:
        fail(
            f"{url}: the SQLite file {missing} does not exist; check --url / {URL_ENV}, "
            "or create it with `durably migrate`",
            "database",
        )
    storage = durably.storage
    if not isinstance(storage, SqlStorage):
        return  # a backend of its own: it migrates as it needs
    reference, python = await storage.schema_versions()
    if reference == 0:
        fail(
            f"{url} holds no durably tables; check --url / {URL_ENV}, or create them "
            "with `durably migrate`",
            "database",
        )
    if reference < REFERENCE_SCHEMA_VERSION or (python or 0) < PY_SCHEMA_VERSION:
        fail(
            f"{url} has an older durably schema (reference {reference}, Python "
            f"{python or 0}); upgrade it with `durably migrate` first",
            "database",
        )


def load_app(spec: str | None, url: str | None) -> Durably:
    """The ``Durably`` named by ``module:attribute`` (an instance, or a function
    returning one). ``--url`` is handed to the app as ``DURABLY_DATABASE_URL``, which
    ``create_durably()`` without a URL reads."""
    spec = spec or os.environ.get(APP_ENV)
    if not spec:
        fail(
            f"this command needs your jobs: give --app module:attribute (or {APP_ENV}) "
            "naming your Durably, e.g. --app myapp.jobs:durably"
        )
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        fail(f"invalid app {spec!r}: write module:attribute, e.g. myapp.jobs:durably")
    if url:
        os.environ[URL_ENV] = url
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does: the app is found from here
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            fail(f"cannot import {module_name!r} (from {os.getcwd()}): {exc}")
        raise
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            fail(f"module {module_name!r} has no attribute {attribute!r}")
    if not isinstance(obj, Durably) and callable(obj):
        obj = obj()
    if not isinstance(obj, Durably):
        fail(f"{spec} is a {type(obj).__name__}, not a Durably (or a function returning one)")
    return obj
