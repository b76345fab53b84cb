"""The tiny async interface ``SqlStorage`` runs its SQL through.

An adapter for a SQLite-compatible database implements :class:`Executor` over
its driver; everything else (schema, migrations, queries, the mapping of
results to records) is shared in :mod:`durably.sql`.

Rules an executor keeps, because the same SQL also runs over remote libSQL
(Hrana over HTTP), where every call is one request:

- Parameters are positional ``?`` only, one statement per SQL string.
- ``fetch`` and ``execute`` run one statement in autocommit mode: it commits on
  its own, or fails and changes nothing.
- ``batch`` runs its statements in ONE write transaction (``BEGIN IMMEDIATE`` …
  ``COMMIT``): all of them, or — when any fails — none (rolled back, error raised).
- No transaction is ever held open across an ``await`` by the caller.
- Driver errors are raised as :class:`durably.StorageError` subclasses with the
  driver's exception chained. A violated constraint is raised as
  :class:`ConstraintViolation` (use :func:`constraint_violation` to build it from
  the SQLite message) so ``SqlStorage`` can map it to the operation's meaning; a
  full disk as :class:`durably.StorageFullError` (the worker then retries within
  seconds instead of backing off to half a minute).

Optional, found by name (``SqlStorage`` offers the capability when the executor does):

- ``async def check_identity() -> None`` — for a database file: raise
  :class:`durably.StorageLostError` once the file was deleted or replaced, and
  refuse every operation from then on (:class:`durably.SupportsIdentityCheck`).
- ``remote = True`` — the database is a server, possibly on another machine:
  ``SqlStorage.database_time()`` reads its clock (``strftime('%Y-%m-%dT%H:%M:%fZ',
  'now')``), and the engine judges leases by it (:class:`durably.SupportsDatabaseTime`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from .._errors import StorageError, ValidationError

__all__ = [
    "ConstraintViolation",
    "Executor",
    "Params",
    "Row",
    "SqlValue",
    "Statement",
    "constraint_violation",
    "is_read_only",
    "unstorable_text",
]

SqlValue = str | int | float | bytes | None
"""A value bound to a ``?`` parameter."""

Params = Sequence[SqlValue]
"""The positional parameters of one statement."""

Statement = tuple[str, Params]
"""One statement of a batch: ``(sql, params)``."""

Row = tuple[Any, ...]
"""One result row, columns in the order of the ``SELECT`` / ``RETURNING`` list."""


@runtime_checkable
class Executor(Protocol):
    """Runs SQL for :class:`durably.sql.SqlStorage`. See the module docstring."""

    async def fetch(self, sql: str, params: Params = ()) -> list[Row]:
        """Run one statement (autocommit) and return its rows (``SELECT`` or
        ``… RETURNING``); an empty list for a statement that returns none."""
        ...

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement (autocommit); the number of rows it changed."""
        ...

    async def batch(self, statements: Sequence[Statement]) -> list[list[Row]]:
        """Run the statements in one write transaction; each one's rows, in order.
        All or nothing: on any error the transaction is rolled back and the error raised."""
        ...

    async def close(self) -> None:
        """Release connections. Closing twice is fine."""
        ...


class ConstraintViolation(StorageError):
    """A statement violated a constraint (``kind``: ``"unique"``, ``"notnull"``, …).

    ``table`` and ``columns`` name what was violated when the database says so
    (SQLite: ``UNIQUE constraint failed: durably_runs.job_name, durably_runs.idempotency_key``).
    """

    def __init__(
        self, message: str, *, kind: str, table: str | None = None, columns: tuple[str, ...] = ()
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.table = table
        self.columns = columns


_CONSTRAINT = re.compile(
    r"(UNIQUE|NOT NULL|CHECK|FOREIGN KEY|PRIMARY KEY) constraint failed:?\s*(.*)"
)


_READ_ONLY = re.compile(r"\s*(SELECT|VALUES)\b", re.IGNORECASE)


def is_read_only(sql: str) -> bool:
    """A statement that cannot change the database (so repeating it is harmless, and
    it needs no write lock)."""
    return _READ_ONLY.match(sql) is not None and "RETURNING" not in sql.upper()


def unstorable_text(exc: UnicodeEncodeError) -> ValidationError:
    """The error for a parameter that is not valid Unicode (a lone surrogate): the
    driver cannot encode it, nothing was sent. The caller chains ``exc``."""
    return ValidationError(
        f"A value cannot be stored: it is not valid Unicode text ({exc.reason} at "
        f"position {exc.start}); decode bytes with errors='replace' or pass real text"
    )


def constraint_violation(message: str) -> ConstraintViolation:
    """Build a :class:`ConstraintViolation` from a SQLite/libSQL error message."""
    match = _CONSTRAINT.search(message)
    if match is None:
        return ConstraintViolation(f"Constraint violated: {message}", kind="unknown")
    kind = match.group(1).lower().replace(" ", "")
    table: str | None = None
    columns: list[str] = []
    for part in match.group(2).split(","):
        name = part.strip()
        if "." in name and " " not in name:
            tbl, _, col = name.partition(".")
            table = table or tbl
            columns.append(col)
    return ConstraintViolation(
        f"Constraint violated: {message}", kind=kind, table=table, columns=tuple(columns)
    )
