"""A :class:`durably.sql.Executor` on the stdlib ``sqlite3``, called on the event loop.

The four methods of the protocol, each keeping the rules of
:mod:`durably.sql.executor`: one statement per call in autocommit mode, a batch
in one ``BEGIN IMMEDIATE`` … ``COMMIT`` (all or nothing), and every driver error
mapped to a :class:`durably.StorageError` (a violated constraint to
:class:`durably.sql.ConstraintViolation`) with the driver's exception chained. A
parameter the driver cannot encode (text with a lone surrogate: ``sqlite3``
raises ``UnicodeEncodeError`` for it, not a ``sqlite3.Error``) is a
:class:`durably.ValidationError`.

Statements run on the loop's thread (tens of microseconds each on a local file),
but a lock is never waited for there: the connection's own busy timeout is 0, so
a database another process holds locked answers "busy" at once, and the executor
waits with ``asyncio.sleep`` — the loop keeps renewing leases and running other
slots meanwhile — and tries again, until ``busy_timeout``. (Waiting inside SQLite
instead, ``sqlite3.connect(timeout=5)``, would freeze the whole worker for up to
5 s: its leases can expire meanwhile; see "What a stall means" in the semantics.)
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from durably import StorageBusyError, StorageError, ValidationError
from durably.sql import Params, Row, Statement, constraint_violation, unstorable_text

__all__ = ["DRIVER_ERRORS", "SyncSqliteExecutor", "map_error"]

#: What the driver raises: its own errors, and UnicodeEncodeError for unstorable text.
DRIVER_ERRORS = (sqlite3.Error, UnicodeEncodeError)

T = TypeVar("T")


def is_busy(exc: BaseException) -> bool:
    """Is ``exc`` SQLite saying that another connection holds the lock?"""
    return isinstance(exc, sqlite3.OperationalError) and (
        "locked" in str(exc) or "busy" in str(exc)
    )


def map_error(
    exc: sqlite3.Error | UnicodeEncodeError, where: str
) -> StorageError | ValidationError:
    """The durably error for a driver error (the caller writes ``raise … from exc``)."""
    if isinstance(exc, UnicodeEncodeError):
        return unstorable_text(exc)
    if isinstance(exc, sqlite3.IntegrityError):
        return constraint_violation(str(exc))
    if is_busy(exc):
        return StorageBusyError(f"{where} stayed locked by another connection: {exc}")
    return StorageError(f"{where}: {exc}")


class SyncSqliteExecutor:
    """Runs SQL on one ``sqlite3`` connection, on the caller's (event-loop) thread;
    waits for another connection's lock off the loop (``asyncio.sleep``)."""

    def __init__(self, database: str, *, busy_timeout: float = 5.0) -> None:
        self.database = database
        self.busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None
        self._where = f"SQLite database {database!r}"

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            # timeout=0: a locked database answers "busy" at once (see _run)
            conn = sqlite3.connect(self.database, timeout=0)
            # autocommit: each statement commits on its own; batch() opens its own
            # transaction explicitly
            conn.isolation_level = None
            try:
                if self.database != ":memory:":
                    conn.execute("PRAGMA journal_mode = WAL")
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work(connection)``, again after a pause while the database is locked."""
        deadline = time.monotonic() + self.busy_timeout
        pause = 0.001
        while True:
            try:
                return work(self._connection())
            except DRIVER_ERRORS as exc:
                if not is_busy(exc) or time.monotonic() >= deadline:
                    raise map_error(exc, self._where) from exc
            await asyncio.sleep(pause)  # the loop runs on while another process writes
            pause = min(pause * 2, 0.05)

    async def fetch(self, sql: str, params: Params = ()) -> list[Row]:
        return await self._run(lambda conn: conn.execute(sql, params).fetchall())

    async def execute(self, sql: str, params: Params = ()) -> int:
        return await self._run(lambda conn: conn.execute(sql, params).rowcount)

    async def batch(self, statements: Sequence[Statement]) -> list[list[Row]]:
        def transaction(conn: sqlite3.Connection) -> list[list[Row]]:
            conn.execute("BEGIN IMMEDIATE")  # "busy" here: nothing done, tried again
            try:
                results = [conn.execute(sql, params).fetchall() for sql, params in statements]
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return results

        return await self._run(transaction)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
