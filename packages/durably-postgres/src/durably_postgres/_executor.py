"""``AsyncpgExecutor``: :class:`durably.sql.Executor` over an asyncpg pool.

- ``?`` placeholders become ``$1…$n`` (once per statement text; asyncpg then
  prepares each text once per connection and keeps it, so every storage operation
  after the first is a prepared statement: one round trip with its parameters).
- ``fetch``/``execute`` run one statement in autocommit; ``batch`` runs its
  statements in one READ COMMITTED transaction (each sees what committed before it
  started, which the claim of :class:`durably.sql.PostgresStorage` relies on).
- Errors are durably's: a unique violation → :class:`durably.sql.ConstraintViolation`
  (table and columns named); text PostgreSQL cannot store (U+0000, a lone surrogate)
  → :class:`durably.ValidationError`; a full disk (SQLSTATE 53100) →
  ``StorageFullError``; a refused password → ``StorageAuthError``; a
  server that cannot be reached → ``StorageConnectionError``; a connection lost
  while a write was in flight → ``StorageOutcomeUnknownError`` (``SqlStorage``
  checks whether it landed). Connecting and reads are retried with backoff for a
  few seconds first (a server restart), never a write whose answer was lost.
- Messages name the server by its URL without the password.
- ``listen(channel, callback)``: a dedicated connection ``LISTEN``\\ ing, reconnected
  when it breaks (the callback is called once after each reconnection, since a
  notification may have been missed meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import asyncpg

from durably import (
    StorageAuthError,
    StorageBusyError,
    StorageConnectionError,
    StorageError,
    StorageFullError,
    StorageOutcomeUnknownError,
    StorageReadOnlyError,
    ValidationError,
)
from durably.sql import ConstraintViolation, Params, Row, Statement, unstorable_text
from durably.sql.executor import is_read_only

from ._url import PostgresConfig

__all__ = ["AsyncpgExecutor", "to_dollar_params"]

log = logging.getLogger("durably.postgres")

#: Seconds of retrying to connect (and to repeat a read) before giving up.
RETRY_FOR = 5.0

_UNIQUE = "23505"
_CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
)
# not connected (yet): nothing was sent, trying again is safe
_UNREACHABLE: tuple[type[BaseException], ...] = (*_CONNECT_ERRORS, asyncpg.PostgresConnectionError)
# a connection that broke under a statement: the statement may have been applied
_LOST: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.InterfaceError,
    ConnectionError,
)
_KEY = re.compile(r"Key \(([^)]*)\)=")


def to_dollar_params(sql: str) -> str:
    """``?`` → ``$1``, ``$2``… outside quoted strings and identifiers."""
    out: list[str] = []
    n = 0
    quote: str | None = None
    for ch in sql:
        if quote is not None:
            if ch == quote:
                quote = None
        elif ch in ("'", '"'):
            quote = ch
        elif ch == "?":
            n += 1
            out.append(f"${n}")
            continue
        out.append(ch)
    return "".join(out)


def _constraint(exc: asyncpg.PostgresError) -> ConstraintViolation:
    detail = getattr(exc, "detail", None) or ""
    match = _KEY.search(detail)
    columns = tuple(c.strip().strip('"') for c in match.group(1).split(",")) if match else ()
    kind = "unique" if exc.sqlstate == _UNIQUE else "constraint"
    return ConstraintViolation(
        f"Constraint violated: {exc} ({getattr(exc, 'constraint_name', '')})",
        kind=kind,
        table=getattr(exc, "table_name", None),
        columns=columns,
    )


def map_error(
    exc: BaseException, where: str, *, write: bool = False, connecting: bool = False
) -> StorageError | ValidationError:
    """The durably error for a driver (or socket) exception (``connecting``: raised
    while opening a connection, so nothing was sent)."""
    if isinstance(exc, UnicodeEncodeError):  # a lone surrogate: nothing was sent
        return unstorable_text(exc)
    if isinstance(exc, asyncpg.DataError) and isinstance(exc.__cause__, UnicodeEncodeError):
        return unstorable_text(exc.__cause__)  # asyncpg's wrapping of the same
    if isinstance(exc, asyncpg.IntegrityConstraintViolationError):
        return _constraint(exc)
    if isinstance(
        exc, asyncpg.CharacterNotInRepertoireError | asyncpg.UntranslatableCharacterError
    ):
        return ValidationError(
            "A value cannot be stored: PostgreSQL text cannot hold the character U+0000 "
            "(NUL) or invalid Unicode; remove it or encode the data (e.g. as JSON or "
            f"base64) ({exc})"
        )
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        return StorageAuthError(
            f"PostgreSQL at {where} refused the credentials: {exc}. Check the user and "
            "the password (password=, PGPASSWORD or ~/.pgpass)"
        )
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return StorageError(f"PostgreSQL at {where}: {exc}; create the database first")
    if isinstance(exc, asyncpg.ReadOnlySQLTransactionError):
        return StorageReadOnlyError(f"PostgreSQL at {where} is read-only: {exc}")
    if isinstance(exc, asyncpg.DiskFullError):  # 53100: the statement was rolled back
        return StorageFullError(
            f"PostgreSQL at {where}: the disk is full ({exc}); free some space on the "
            "server: the worker retries every few seconds"
        )
    if isinstance(
        exc,
        asyncpg.DeadlockDetectedError
        | asyncpg.LockNotAvailableError
        | asyncpg.SerializationError
        | asyncpg.QueryCanceledError,
    ):
        return StorageBusyError(f"PostgreSQL at {where}: {exc}")
    if connecting and isinstance(exc, _UNREACHABLE + _LOST):
        return StorageConnectionError(
            f"Cannot reach PostgreSQL at {where}: {type(exc).__name__}: {exc}"
        )
    if isinstance(exc, _LOST):
        if write:
            return StorageOutcomeUnknownError(
                f"The connection to PostgreSQL at {where} broke while a write was in "
                f"flight; it may or may not have been applied ({type(exc).__name__}: {exc})"
            )
        return StorageConnectionError(f"Lost the connection to PostgreSQL at {where}: {exc}")
    if isinstance(exc, _CONNECT_ERRORS):
        return StorageConnectionError(
            f"Cannot reach PostgreSQL at {where}: {type(exc).__name__}: {exc}"
        )
    if isinstance(exc, asyncpg.PostgresError):
        return StorageError(f"PostgreSQL at {where}: {type(exc).__name__}: {exc}")
    return StorageError(f"PostgreSQL at {where}: {type(exc).__name__}: {exc}")


_DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
    asyncio.TimeoutError,
    UnicodeEncodeError,
)


def _count(status: str) -> int:
    """Rows changed, from a command status (``UPDATE 3``, ``INSERT 0 1``)."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


class AsyncpgExecutor:
    """:class:`durably.sql.Executor` over an asyncpg pool (see the module docstring)."""

    def __init__(self, config: PostgresConfig) -> None:
        self.config = config
        self._pool: Any = None
        self._pool_lock = asyncio.Lock()
        self._sql: dict[str, str] = {}
        self._listeners: set[_Listener] = set()

    def __repr__(self) -> str:
        return f"AsyncpgExecutor({self.config.where!r})"

    # -- connections --

    def connect_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``asyncpg.connect`` for this configuration."""
        config = self.config
        kwargs: dict[str, Any] = {
            "dsn": config.dsn,
            "timeout": config.connect_timeout,
            "server_settings": config.server_settings(),
            "statement_cache_size": config.statement_cache_size,
        }
        if config.password is not None:
            kwargs["password"] = config.password
        if config.ssl is not None:
            kwargs["ssl"] = config.ssl
        return kwargs

    async def _get_pool(self) -> Any:
        pool = self._pool
        if pool is not None:
            return pool
        async with self._pool_lock:
            if self._pool is None:
                self._pool = await self._retrying_connect(
                    lambda: asyncpg.create_pool(
                        min_size=self.config.min_pool_size,
                        max_size=self.config.pool_size,
                        **self.connect_kwargs(),
                    )
                )
            return self._pool

    async def _retrying_connect(self, connect: Callable[[], Awaitable[Any]]) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RETRY_FOR
        delay = 0.05
        while True:
            try:
                return await connect()
            except _UNREACHABLE as exc:
                if loop.time() + delay > deadline:
                    raise map_error(exc, self.config.where, connecting=True) from exc
            except _DRIVER_ERRORS as exc:
                raise map_error(exc, self.config.where, connecting=True) from exc
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 1.0)

    def _dollar(self, sql: str) -> str:
        text = self._sql.get(sql)
        if text is None:
            if len(self._sql) > 2000:  # IN lists of many lengths: keep the cache bounded
                self._sql.clear()
            text = self._sql[sql] = to_dollar_params(sql)
        return text

    async def _run(self, write: bool, work: Callable[[Any], Awaitable[Any]]) -> Any:
        """``work(connection)`` on a pooled connection; connecting is retried, and so is
        the whole of a read whose connection broke."""
        pool = await self._get_pool()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RETRY_FOR
        delay = 0.05
        while True:
            try:
                connection = await pool.acquire()
            except _UNREACHABLE as exc:
                if loop.time() + delay > deadline:
                    raise map_error(exc, self.config.where, connecting=True) from exc
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 1.0)
                continue
            except _DRIVER_ERRORS as exc:
                raise map_error(exc, self.config.where, connecting=True) from exc
            try:
                return await work(connection)
            except _LOST as exc:
                if write or loop.time() + delay > deadline:
                    raise map_error(exc, self.config.where, write=write) from exc
            except _DRIVER_ERRORS as exc:
                raise map_error(exc, self.config.where, write=write) from exc
            finally:
                with contextlib.suppress(Exception):
                    await pool.release(connection)
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 1.0)

    # -- the Executor protocol --

    async def fetch(self, sql: str, params: Params = ()) -> list[Row]:
        text = self._dollar(sql)

        async def work(connection: Any) -> list[Row]:
            return cast("list[Row]", await connection.fetch(text, *params))

        return cast("list[Row]", await self._run(not is_read_only(sql), work))

    async def execute(self, sql: str, params: Params = ()) -> int:
        text = self._dollar(sql)

        async def work(connection: Any) -> int:
            return _count(await connection.execute(text, *params))

        return cast(int, await self._run(not is_read_only(sql), work))

    async def batch(self, statements: Sequence[Statement]) -> list[list[Row]]:
        prepared = [(self._dollar(sql), params) for sql, params in statements]

        async def work(connection: Any) -> list[list[Row]]:
            async with connection.transaction():
                return [list(await connection.fetch(sql, *params)) for sql, params in prepared]

        return cast("list[list[Row]]", await self._run(True, work))

    async def close(self) -> None:
        listeners, self._listeners = self._listeners, set()
        for listener in listeners:
            await listener.stop()
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), timeout=5)
            except Exception:  # closing is best effort: a stuck pool is cut off
                pool.terminate()

    # -- notifications --

    async def listen(
        self, channel: str, callback: Callable[[], None]
    ) -> Callable[[], Awaitable[None]]:
        """``LISTEN channel`` on a connection of its own; ``callback()`` on each
        notification. Returns the coroutine function that stops listening."""
        listener = _Listener(self, channel, callback)
        await listener.start()
        self._listeners.add(listener)

        async def stop() -> None:
            self._listeners.discard(listener)
            await listener.stop()

        return stop


class _Listener:
    """One LISTENing connection, reconnected with backoff when it breaks."""

    def __init__(self, executor: AsyncpgExecutor, channel: str, callback: Callable[[], None]):
        self.executor = executor
        self.channel = channel
        self.callback = callback
        self.connection: Any = None
        self._broken = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def _notified(self, *_: Any) -> None:
        self.callback()

    def _terminated(self, *_: Any) -> None:
        self._broken.set()

    async def _connect(self) -> None:
        connection = await self.executor._retrying_connect(
            lambda: asyncpg.connect(**self.executor.connect_kwargs())
        )
        try:
            await connection.add_listener(self.channel, self._notified)
        except _DRIVER_ERRORS as exc:
            with contextlib.suppress(Exception):
                await connection.close()
            raise map_error(exc, self.executor.config.where) from exc
        connection.add_termination_listener(self._terminated)
        self._broken.clear()
        self.connection = connection

    async def start(self) -> None:
        await self._connect()
        self._task = asyncio.get_running_loop().create_task(self._keep())

    async def _keep(self) -> None:
        while True:
            await self._broken.wait()
            old, self.connection = self.connection, None
            if old is not None:
                old.terminate()
            while True:
                try:
                    await self._connect()
                    break
                except StorageError as exc:
                    log.warning("durably: LISTEN %s: %s; retrying", self.channel, exc)
                    await asyncio.sleep(1.0)
            self.callback()  # a notification may have been missed meanwhile

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        connection, self.connection = self.connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), timeout=5)
