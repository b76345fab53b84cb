"""A synchronous :class:`durably.sql.Executor` on the stdlib ``sqlite3``.

The four methods of the protocol, each keeping the rules of
:mod:`durably.sql.executor`: one statement per call in autocommit mode, a batch
in one ``BEGIN IMMEDIATE`` … ``COMMIT`` (all or nothing), and every driver error
mapped to a :class:`durably.StorageError` (a violated constraint to
:class:`durably.sql.ConstraintViolation`) with the driver's exception chained. A
parameter the driver cannot encode (text with a lone surrogate: ``sqlite3``
raises ``UnicodeEncodeError`` for it, not a ``sqlite3.Error``) is a
:class:`durably.ValidationError`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from durably import StorageBusyError, StorageError, ValidationError
from durably.sql import Params, Row, Statement, constraint_violation, unstorable_text

__all__ = ["DRIVER_ERRORS", "SyncSqliteExecutor", "map_error"]

#: What the driver raises: its own errors, and UnicodeEncodeError for unstorable text.
DRIVER_ERRORS = (sqlite3.Error, UnicodeEncodeError)


def map_error(
    exc: sqlite3.Error | UnicodeEncodeError, where: str
) -> StorageError | ValidationError:
    """The durably error for a driver error (the caller writes ``raise … from exc``)."""
    if isinstance(exc, UnicodeEncodeError):
        return unstorable_text(exc)
    if isinstance(exc, sqlite3.IntegrityError):
        return constraint_violation(str(exc))
    if "locked" in str(exc) or "busy" in str(exc):
        return StorageBusyError(f"{where} stayed locked by another connection: {exc}")
    return StorageError(f"{where}: {exc}")


class SyncSqliteExecutor:
    """Runs SQL on one ``sqlite3`` connection, on the caller's (event-loop) thread."""

    def __init__(self, database: str, *, busy_timeout: float = 5.0) -> None:
        self.database = database
        self.busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None
        self._where = f"SQLite database {database!r}"

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            try:
                conn = sqlite3.connect(self.database, timeout=self.busy_timeout)
                # autocommit: each statement commits on its own; batch() opens its own
                # transaction explicitly
                conn.isolation_level = None
                if self.database != ":memory:":
                    conn.execute("PRAGMA journal_mode = WAL")
            except sqlite3.Error as exc:
                raise map_error(exc, self._where) from exc
            self._conn = conn
        return self._conn

    async def fetch(self, sql: str, params: Params = ()) -> list[Row]:
        conn = self._connection()
        try:
            return conn.execute(sql, params).fetchall()
        except DRIVER_ERRORS as exc:
            raise map_error(exc, self._where) from exc

    async def execute(self, sql: str, params: Params = ()) -> int:
        conn = self._connection()
        try:
            return conn.execute(sql, params).rowcount
        except DRIVER_ERRORS as exc:
            raise map_error(exc, self._where) from exc

    async def batch(self, statements: Sequence[Statement]) -> list[list[Row]]:
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                results = [conn.execute(sql, params).fetchall() for sql, params in statements]
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except DRIVER_ERRORS as exc:
            raise map_error(exc, self._where) from exc
        return results

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
