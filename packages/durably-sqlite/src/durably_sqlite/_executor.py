"""An :class:`durably.sql.Executor` for local SQLite files, on the stdlib ``sqlite3``.

How it is fast without blocking the event loop
----------------------------------------------

A short statement on an uncontended WAL database takes tens of microseconds —
less than handing it to a thread and waking the loop again (~200 µs). So every
operation first runs **directly on the event-loop thread** on a connection whose
busy timeout is zero: it either completes at once or SQLite answers
``SQLITE_BUSY``/``SQLITE_LOCKED`` immediately (another process holds the write
lock) and nothing was written. Only then is the operation handed to **one worker
thread** with its own connection, which retries it with jittered sleeps (1 ms
doubling to 10 ms, as SQLite's own busy handler begins, without its later 25–100
ms waits) until the busy timeout; the loop keeps running meanwhile. A batch runs
whole in one call (one hop at most), inside ``BEGIN IMMEDIATE`` … ``COMMIT``.
The two connections are never used by two threads at once: the fast one only on
the loop thread, the slow one only in the worker thread (one at a time, behind an
``asyncio.Lock``). ``:memory:`` has one connection (a second would be another
database) and no slow path.

Durability in WAL mode, by ``synchronous``
------------------------------------------

File databases run in WAL mode. What a committed operation (a trigger, a
checkpointed step, a completion) survives:

- ``OFF``: no fsync ever. An **application crash** (the process dies, the OS
  keeps running) loses nothing that was committed: the data is in the OS page
  cache. A **power loss or OS crash** can lose recent commits and can corrupt the
  database.
- ``NORMAL`` (default): the WAL is synced only when it is checkpointed (by
  default once it holds ~1000 pages). An application crash loses nothing
  committed. A power loss keeps the database consistent (never corrupt, never
  half a transaction) but can roll back the commits made since the last
  checkpoint — in practice what the OS had not yet written back, usually the last
  seconds. So "a trigger that returned a run id is in the database" and "a step
  whose ``step:complete`` was emitted is never re-run" hold across process
  crashes, not across power loss: such a step runs again, such a trigger is gone.
- ``FULL``: the WAL is synced at every commit. Nothing committed is lost on an
  application crash or a power loss (given a disk that honours fsync); each
  commit costs one fsync.
- ``EXTRA``: as ``FULL``; the extra directory syncs it adds matter in rollback-
  journal mode, so in WAL mode it gives the same guarantees as ``FULL``.

``:memory:`` databases survive neither.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from durably import (
    StorageBusyError,
    StorageCorruptError,
    StorageError,
    StorageFullError,
    StorageLostError,
    StorageReadOnlyError,
    ValidationError,
)
from durably.sql import Params, Row, Statement, constraint_violation, unstorable_text
from durably.sql.executor import is_read_only

__all__ = ["SqliteExecutor"]

T = TypeVar("T")

_SQLITE_PERM = 3
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_READONLY = 8
_SQLITE_IOERR = 10
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_CANTOPEN = 14
_SQLITE_CONSTRAINT = 19
_SQLITE_AUTH = 23
_SQLITE_NOTADB = 26

#: Rows changed on the fast connection between two background WAL checkpoints (a
#: checkpointed step changes 2 rows and writes ~5 pages: about SQLite's default
#: of a checkpoint per 1000 WAL pages).
_CHECKPOINT_EVERY = 400
#: The fast connection's own (on-loop) automatic checkpoint: a safety net only.
_AUTOCHECKPOINT_PAGES = 4000

#: The slow path's own retry delays while another process holds the lock (seconds).
#: Not finer: when processes take turns at the lock, a retry within a fraction of a
#: millisecond mostly finds it taken again, and its CPU is taken from the process
#: that holds the lock (W5 in docs/performance.md: 50 µs doubling to 2 ms cost 1.5-1.7x
#: the CPU per step of these with 2 and 4 processes on 2 cores, and ran 0.74-0.79x as
#: many steps per second).
_SPIN_FIRST = 0.001
_SPIN_CAP = 0.01

#: Slow-path attempts after the first fast one, and their backoff (seconds).
_MAX_ATTEMPTS = 5
_BACKOFF_BASE = 0.01
_BACKOFF_CAP = 0.25


def _code(exc: sqlite3.Error) -> int:
    code = getattr(exc, "sqlite_errorcode", None)
    return -1 if code is None else int(code) & 0xFF


def _is_busy(exc: sqlite3.Error) -> bool:
    if _code(exc) in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return True
    text = str(exc)
    return "database is locked" in text or "database table is locked" in text


def _fetch(cur: sqlite3.Cursor, sql: str, params: Params) -> list[Row]:
    return cur.execute(sql, params).fetchall()


def _execute(cur: sqlite3.Cursor, sql: str, params: Params) -> int:
    return cur.execute(sql, params).rowcount


def _batch(cur: sqlite3.Cursor, statements: Sequence[Statement]) -> list[list[Row]]:
    execute = cur.execute
    execute("BEGIN IMMEDIATE")
    try:
        results = [execute(sql, params).fetchall() for sql, params in statements]
        execute("COMMIT")
    except BaseException:
        if cur.connection.in_transaction:
            execute("ROLLBACK")
        raise
    return results


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class SqliteExecutor:
    """Runs SQL on a local SQLite database (a file path or ``":memory:"``).

    ``synchronous`` is one of ``OFF``, ``NORMAL``, ``FULL``, ``EXTRA`` (see the
    module docstring); ``busy_timeout`` is how long (seconds) an operation waits,
    off the event loop, for another process's write lock; ``mode`` is ``"rwc"``
    (create if missing), ``"rw"`` or ``"ro"``.
    """

    def __init__(
        self,
        database: str | os.PathLike[str],
        *,
        synchronous: str = "NORMAL",
        busy_timeout: float = 5.0,
        mode: str = "rwc",
    ) -> None:
        self.database = os.fspath(database)
        if "\x00" in self.database:
            raise ValidationError(
                f"Invalid SQLite database path {self.database!r}: a path cannot hold a NUL "
                "character ('%00' in a URL)"
            )
        self.memory = self.database == ":memory:"
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self.mode = mode
        self._fast: sqlite3.Connection | None = None
        self._cur: sqlite3.Cursor | None = None  # the fast connection's one cursor
        self._slow: sqlite3.Connection | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._open_lock: asyncio.Lock | None = None
        self._slow_lock: asyncio.Lock | None = None
        self._closed_memory = False
        self._wal = not self.memory and mode != "ro"
        #: WAL is switched on before the first write, not at open: a database that is
        #: refused after reading it (e.g. a newer schema) is left byte for byte as it was.
        self._wal_pending = self._wal
        #: After SQLITE_FULL, the WAL is checkpointed and truncated before the next write:
        #: otherwise new frames take the space that came back before a checkpoint can
        #: grow the database into it, and the disk fills again.
        self._full = False
        #: Either of the two is due: the one flag the write path tests.
        self._before_write = self._wal
        #: The database file's (device, inode) once open: a different one at the path,
        #: or none, means the file was replaced or deleted under us.
        self._identity: tuple[int, int] | None = None
        self._path = Path(self.database)  # resolved at open
        #: Why every operation is refused (the file is gone), once check_identity saw it.
        self._lost: str | None = None
        self._checkpoint_mark = 0
        self._checkpointing: asyncio.Future[bool] | None = None

    def __repr__(self) -> str:
        return f"SqliteExecutor({self.database!r}, synchronous={self.synchronous!r})"

    # -- connections --

    def _connect(self, timeout: float, *, probe: bool = False) -> sqlite3.Connection:
        if self.memory:
            target, uri = ":memory:", False
        else:
            path = Path(self.database).resolve()
            target, uri = f"file:{quote(str(path))}?mode={self.mode}", True
        conn = sqlite3.connect(
            target,
            timeout=timeout,
            isolation_level=None,
            check_same_thread=False,
            cached_statements=1024,
            uri=uri,
        )
        try:
            if probe:
                # is it a database? (reads the header; a non-database fails here). On
                # the connection that waits for locks: until the file is in WAL mode a
                # read can meet another connection's write lock.
                conn.execute("PRAGMA schema_version").fetchall()
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _ensure_wal(conn: sqlite3.Connection, timeout: float) -> None:
        """Switch to WAL once per database. The switch needs an exclusive lock and
        SQLite does not always call the busy handler for it, so retry until ``timeout``
        while another process (e.g. one migrating at the same time) holds a lock."""
        deadline = time.monotonic() + timeout
        delay = 0.002
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
                if str(mode).lower() == "wal":
                    return
                conn.execute("PRAGMA journal_mode = WAL").fetchall()
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if time.monotonic() >= deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.1)

    def _check_writable(self) -> None:
        """Refuse at open, not at the first write, a file this process cannot write
        (SQLite would open it read-only without a word)."""
        path = Path(self.database).resolve()
        target = path if path.exists() else path.parent
        if target.is_dir() and target == path:
            return  # a directory path: SQLite's own error says so (see _map)
        if target.exists() and not os.access(target, os.W_OK):
            what = "file" if target == path else "directory"
            raise StorageReadOnlyError(
                f"SQLite database {self.database!r} cannot be written: its {what} "
                f"{str(target)!r} is read-only for this process; check the permissions of "
                "the file and of its directory (SQLite also creates -wal and -shm files "
                'next to it), or open it with mode="ro" to only read'
            )

    def _open_sync(self) -> tuple[sqlite3.Connection, sqlite3.Connection | None]:
        if self.memory:
            return self._connect(0.0), None
        if self.mode != "ro":
            self._check_writable()
        slow = self._connect(self.busy_timeout, probe=True)
        try:
            # set up while waiting for locks (a statement loads the schema, and until the
            # file is in WAL mode that can meet another connection's write lock); from
            # then on it never waits: a busy answer sends the operation to the thread
            fast = self._connect(self.busy_timeout)
            fast.execute("PRAGMA busy_timeout = 0")
            if self._wal:
                # Checkpoints (and their fsyncs) run on the worker thread instead; this
                # one only bounds the WAL when writes never pause long enough for a
                # background checkpoint to catch up (SQLite restarts the WAL only when a
                # write begins with every frame checkpointed).
                fast.execute(f"PRAGMA wal_autocheckpoint = {_AUTOCHECKPOINT_PAGES}")
        except BaseException:
            slow.close()
            raise
        try:
            self._path = Path(self.database).resolve()
            st = os.stat(self._path)
            self._identity = (st.st_dev, st.st_ino)
        except OSError:
            self._identity = None  # no file to watch (cannot happen once opened)
        return fast, slow

    async def _open(self) -> sqlite3.Cursor:
        if self._lost is not None:
            raise StorageLostError(self._lost)
        if self._closed_memory:
            raise StorageError(
                "This in-memory SQLite database was closed; its data is gone and it cannot "
                "be reopened. Open a new storage."
            )
        if self._open_lock is None:
            self._open_lock = asyncio.Lock()
        async with self._open_lock:
            if self._cur is not None:
                return self._cur
            try:
                if self.memory:
                    fast, slow = self._open_sync()
                else:
                    pool = ThreadPoolExecutor(1, thread_name_prefix="durably-sqlite")
                    loop = asyncio.get_running_loop()
                    try:
                        fast, slow = await loop.run_in_executor(pool, self._open_sync)
                    except BaseException:
                        pool.shutdown(wait=False)
                        raise
                    self._pool = pool
            except sqlite3.Error as exc:
                raise self._map(exc) from exc
            except OSError as exc:  # checking the path: e.g. a file name too long
                raise StorageError(
                    f"Cannot open SQLite database {self.database!r}: {exc.strerror or exc}"
                ) from exc
            self._fast, self._slow = fast, slow
            self._checkpoint_mark = fast.total_changes
            self._cur = fast.cursor()
            self._slow_lock = asyncio.Lock()
            return self._cur

    async def close(self) -> None:
        fast, slow, pool = self._fast, self._slow, self._pool
        if fast is None:
            return
        if self._slow_lock is not None:
            async with self._slow_lock:  # let a slow-path operation finish first
                self._fast = self._slow = self._cur = None
                self._pool = None
        else:
            self._fast = self._slow = self._cur = None
            self._pool = None
        if self.memory:
            self._closed_memory = True
        try:
            fast.close()
            if slow is not None and pool is not None:
                await asyncio.get_running_loop().run_in_executor(pool, slow.close)
        except sqlite3.Error as exc:
            raise self._map(exc) from exc
        finally:
            if pool is not None:
                pool.shutdown(wait=False)

    async def _enable_wal(self) -> None:
        """Switch the file to WAL (once; on the worker thread: it may wait for locks)."""
        pool, slow = self._pool, self._slow
        if pool is None or slow is None:
            raise StorageError("The SQLite storage is closed")
        try:
            await asyncio.get_running_loop().run_in_executor(
                pool, self._ensure_wal, slow, self.busy_timeout
            )
            fast = self._cur
            if fast is not None:
                # a read makes this connection see the header's new journal mode now;
                # if it is busy, its next statement sees it anyway
                try:
                    fast.execute("PRAGMA schema_version").fetchall()
                except sqlite3.Error as exc:
                    if not _is_busy(exc):
                        raise
        except sqlite3.Error as exc:
            raise self._map(exc) from exc
        self._wal_pending = False
        self._before_write = self._full

    async def _prepare_write(self) -> None:
        """What is due before the next write: switching to WAL, or (after the disk was
        full) a checkpoint that empties and truncates the WAL."""
        if self._wal_pending:
            await self._enable_wal()
        if self._full:
            await self._truncate_wal()
        self._before_write = self._wal_pending or self._full

    async def _truncate_wal(self) -> None:
        pool = self._pool
        if pool is None:
            return
        loop = asyncio.get_running_loop()
        # The first one after a write that failed full often copies every frame and
        # still answers busy (it cannot reset the WAL yet); the second then truncates.
        for _ in range(2):
            if await loop.run_in_executor(pool, self._checkpoint, "TRUNCATE"):
                self._full = False
                return

    # -- the Executor protocol --

    async def fetch(self, sql: str, params: Params = ()) -> list[Row]:
        cur = self._cur or await self._open()
        if self._before_write and not is_read_only(sql):
            await self._prepare_write()
        try:
            rows = cur.execute(sql, params).fetchall()
        except UnicodeEncodeError as exc:
            raise unstorable_text(exc) from exc
        except sqlite3.Error as exc:
            if not _is_busy(exc) or self.memory:
                raise self._map(exc) from exc
            return await self._slow_path(_fetch, sql, params)
        if self._wal and cur.connection.total_changes - self._checkpoint_mark >= _CHECKPOINT_EVERY:
            self._checkpoint_soon()
        return rows

    async def execute(self, sql: str, params: Params = ()) -> int:
        cur = self._cur or await self._open()
        if self._before_write and not is_read_only(sql):
            await self._prepare_write()
        try:
            count = cur.execute(sql, params).rowcount
        except UnicodeEncodeError as exc:
            raise unstorable_text(exc) from exc
        except sqlite3.Error as exc:
            if not _is_busy(exc) or self.memory:
                raise self._map(exc) from exc
            return await self._slow_path(_execute, sql, params)
        if self._wal and cur.connection.total_changes - self._checkpoint_mark >= _CHECKPOINT_EVERY:
            self._checkpoint_soon()
        return count

    async def batch(self, statements: Sequence[Statement]) -> list[list[Row]]:
        cur = self._cur or await self._open()
        if self._before_write:
            await self._prepare_write()
        try:
            results = _batch(cur, statements)
        except UnicodeEncodeError as exc:  # _batch rolled back
            raise unstorable_text(exc) from exc
        except sqlite3.Error as exc:
            if not _is_busy(exc) or self.memory:
                raise self._map(exc) from exc
            return await self._slow_path(_batch, statements)
        if self._wal and cur.connection.total_changes - self._checkpoint_mark >= _CHECKPOINT_EVERY:
            self._checkpoint_soon()
        return results

    # -- WAL checkpoints, off the loop --

    def _checkpoint_soon(self) -> None:
        """Start a passive checkpoint on the worker thread unless one is running: it
        never waits for locks, and its fsyncs (at NORMAL, the only ones) never block
        the loop. Other connections (the worker's, other processes') still checkpoint
        automatically."""
        fast, pool = self._fast, self._pool
        if fast is None or pool is None:
            return
        running = self._checkpointing
        if running is not None and not running.done():
            return
        self._checkpoint_mark = fast.total_changes
        future = asyncio.get_running_loop().run_in_executor(pool, self._checkpoint)
        future.add_done_callback(_consume)
        self._checkpointing = future

    def _checkpoint(self, mode: str = "PASSIVE") -> bool:
        """A WAL checkpoint on the worker thread; whether it completed."""
        conn = self._slow
        if conn is None:
            return False
        # busy, full or closed: the next one (or another connection) will do it
        try:
            row = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        except sqlite3.Error:
            return False
        return row is not None and row[0] == 0

    # -- is the file still the one we opened? --

    async def check_identity(self) -> None:
        """Raise ``StorageLostError`` (and refuse every operation from then on) when the
        database file was deleted, or replaced by another file, since it was opened: a
        ``stat`` of the path against the device and inode seen at open. The connections
        stay as they are (closing them would unlink the WAL file by name, which may now
        belong to the new file) until :meth:`close`."""
        if self._lost is not None:
            raise StorageLostError(self._lost)
        identity = self._identity
        if identity is None or self._cur is None:
            return  # not open yet, or in memory
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            what = "was deleted"
        except OSError as exc:
            raise StorageError(
                f"Cannot check SQLite database {self.database!r}: {exc.strerror or exc}"
            ) from exc
        else:
            if (st.st_dev, st.st_ino) == identity:
                return
            what = "was replaced by another file"
        self._lost = (
            f"SQLite database {self.database!r} {what} while in use: what this process "
            "writes now would be seen by nobody, so it stops. Restore the file (or fix the "
            "URL) and restart the process."
        )
        self._cur = None  # the next operation reaches _open, which refuses
        raise StorageLostError(self._lost)

    # -- the slow path: another process holds the lock --

    def _in_thread(self, fn: Callable[..., T], args: tuple[Any, ...], timeout: float) -> T:
        """Run ``fn`` on the slow connection, retrying while the database is locked.

        With a zero busy timeout, this thread retries itself, from 1 ms doubling up
        to 10 ms (jittered), until ``timeout``: SQLite's own busy handler would sleep
        1, 2, 5, 10, then 15 up to 100 ms, much longer than a turn at the lock.
        """
        conn = self._slow
        if conn is None:
            raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
        deadline = time.monotonic() + timeout
        delay = _SPIN_FIRST
        cur = conn.cursor()
        try:
            cur.execute("PRAGMA busy_timeout = 0")
            while True:
                try:
                    return fn(cur, *args)
                except sqlite3.Error as exc:
                    left = deadline - time.monotonic()
                    if not _is_busy(exc) or left <= 0:
                        raise
                time.sleep(min(delay * random.uniform(0.5, 1.0), left))
                delay = min(delay * 2, _SPIN_CAP)
        finally:
            cur.close()

    async def _slow_path(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        lock, pool = self._slow_lock, self._pool
        if lock is None or pool is None:
            raise StorageError("The SQLite storage is closed")
        async with lock:
            if self._pool is not pool:
                raise StorageError("The SQLite storage was closed during the operation")
            deadline = loop.time() + self.busy_timeout
            attempt = 0
            while True:
                attempt += 1
                remaining = max(deadline - loop.time(), 0.0)
                try:
                    return await loop.run_in_executor(pool, self._in_thread, fn, args, remaining)
                except sqlite3.Error as exc:
                    if not _is_busy(exc) or attempt >= _MAX_ATTEMPTS or loop.time() >= deadline:
                        raise self._map(exc) from exc
                delay = min(_BACKOFF_CAP, _BACKOFF_BASE * 2**attempt) * random.uniform(0.5, 1.0)
                await asyncio.sleep(delay)

    # -- errors --

    def _map(self, exc: sqlite3.Error) -> StorageError:
        """The durably error for a driver error (the caller chains ``exc``)."""
        code = _code(exc)
        where = "the in-memory database" if self.memory else f"SQLite database {self.database!r}"
        if isinstance(exc, sqlite3.IntegrityError) or code == _SQLITE_CONSTRAINT:
            return constraint_violation(str(exc))
        if _is_busy(exc):
            return StorageBusyError(
                f"{where} stayed locked by another connection for longer than the busy "
                f"timeout ({self.busy_timeout:g}s): {exc}. Another process is holding a "
                "write transaction; raise busy_timeout or keep its transactions short."
            )
        if code in (_SQLITE_NOTADB, _SQLITE_CORRUPT):
            return StorageCorruptError(
                f"{where} is not a SQLite database durably can use ({exc}); check the path "
                "or restore the file from a backup"
            )
        if code in (_SQLITE_READONLY, _SQLITE_PERM, _SQLITE_AUTH):
            return StorageReadOnlyError(
                f"{where} cannot be written ({exc}); check the permissions of the file and "
                "of its directory (SQLite also creates -wal and -shm files next to it)"
            )
        if code == _SQLITE_CANTOPEN and not self.memory:
            path = Path(self.database)
            if path.is_dir():
                return StorageReadOnlyError(
                    f"{where} is a directory, not a database file; give a file path such "
                    f"as {str(path / 'durably.db')!r}"
                )
            if not path.resolve().parent.is_dir():
                return StorageError(
                    f"Cannot open {where}: the directory {str(path.resolve().parent)!r} "
                    "does not exist; create it first"
                )
            if self.mode != "rwc" and not path.exists():
                return StorageError(f"Cannot open {where}: the file does not exist")
            return StorageReadOnlyError(
                f"Cannot open {where} ({exc}); check the permissions of the file and of "
                "its directory"
            )
        if code == _SQLITE_FULL:
            if self._wal:  # checkpoint and truncate the WAL before the next write
                self._full = self._before_write = True
            return StorageFullError(
                f"{where}: the disk is full ({exc}); free some space: the worker retries "
                "every few seconds"
            )
        if code == _SQLITE_IOERR:
            return StorageError(f"{where}: disk I/O error ({exc})")
        if isinstance(exc, sqlite3.ProgrammingError) and "closed" in str(exc):
            return StorageError(f"{where} is closed ({exc})")
        return StorageError(f"{where}: {exc}")
