"""An :class:`durably.sql.Executor` for remote libSQL: Hrana v2 over HTTP, on httpx.

One storage operation is ONE HTTP request
-----------------------------------------

Every call is one ``POST /v2/pipeline``:

- ``fetch``: one ``execute`` request.
- ``execute``: ``execute`` then ``SELECT changes()`` in the same pipeline. The
  number of changed rows comes from ``changes()`` because some servers (tursodb)
  always report ``affected_row_count`` as 0; requests of one pipeline run one after
  another on the same connection, so nothing runs in between.
- ``batch``: one ``batch`` request: ``BEGIN IMMEDIATE``, the statements (each only
  if the previous one succeeded), ``COMMIT``, and a ``ROLLBACK`` step that runs
  whenever the ``COMMIT`` did not succeed. A transaction never spans requests —
  on tursodb all clients share one server connection, so a transaction left open
  would swallow other clients' statements.

Round trips are what cost (tursodb answers at most one request per ~10 ms), so
nothing is ever sent on its own: the WAL checkpoint (tursodb never checkpoints by
itself) rides along in the pipeline of every ``checkpoint_every``-th write (and
ahead of the first write after one failed for a full disk, so that the space that
comes back goes to the database before new WAL frames take it), and
stream ``close`` requests are added only for servers that return a ``baton``
(sqld / Turso Cloud; tursodb rejects them).

What is retried, and why that is safe
-------------------------------------

Only transport errors are retried (never an error the server answered with), with
jittered exponential backoff, at most ``retries`` times:

- **Any request, when it provably never reached the server**: the connection
  could not be made (refused, DNS, connect timeout) or no pooled connection was
  free. Nothing was executed, so sending it again cannot apply it twice.
- **Read-only requests after any transport error** (every statement a ``SELECT``):
  repeating a read changes nothing.
- **Never here: a request with a write whose response was lost** (the connection
  broke or timed out after the request was sent). The server may or may not have
  applied it, and blindly repeating e.g. a step checkpoint or a completion would
  turn a success into a conflict. It is raised as ``StorageOutcomeUnknownError``,
  and ``SqlStorage`` checks what the write wrote (by the ids it chose, or the
  fenced state it set) before sending it once more (``durably/sql/_outcome.py``),
  so a lost answer costs a read, not a lease. What it cannot check (a claim) is
  reported: the worker backs off, and whoever claims the run next resumes from the
  checkpoints that *are* in the database — the writes are fenced by
  ``lease_generation``, so a late duplicate can never land.

Requests in flight are capped (``max_in_flight``); every request has a timeout.
The auth token is sent as a ``Bearer`` header and appears in no repr, log or
error message.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import msgspec

from durably import (
    StorageAuthError,
    StorageBusyError,
    StorageConnectionError,
    StorageError,
    StorageFullError,
    StorageOutcomeUnknownError,
    StorageReadOnlyError,
)
from durably.sql import Params, Row, Statement, constraint_violation, unstorable_text

from ._hrana import (
    HranaError,
    batch_error,
    batch_request,
    batch_rows,
    decode_rows,
    execute_request,
    is_read_only,
)
from ._url import TOKEN_ENV, RemoteConfig, remote_config

__all__ = ["HranaExecutor"]

_BACKOFF_BASE = 0.05
_BACKOFF_CAP = 2.0
_CHANGES = execute_request("SELECT changes()")
_CHECKPOINT = execute_request("PRAGMA wal_checkpoint(TRUNCATE)", want_rows=False)
_CLOSE: dict[str, Any] = {"type": "close"}
#: Transport errors raised before anything was sent.
_NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_SQLITE_CODE = re.compile(r"\s*\(\d+\)\s*$")
#: tursodb names the columns of a multi-column index as ``table.(a, b)``.
_GROUPED_COLUMNS = re.compile(r"(\w+)\.\(([^)]*)\)")


def _is_full(message: str) -> bool:
    """A full disk, in SQLite's words (sqld, Turso) or tursodb's ("I/O error
    (pwritev): no storage space"); ``message`` in lower case."""
    return "disk is full" in message or "no storage space" in message


def _sqlite_message(message: str) -> str:
    """A server message in SQLite's words: ``… constraint failed: t.a, t.b``."""
    message = _SQLITE_CODE.sub("", message)
    return _GROUPED_COLUMNS.sub(
        lambda m: ", ".join(f"{m.group(1)}.{c.strip()}" for c in m.group(2).split(",")),
        message,
    )


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


def _attempt_done(
    pending: set[asyncio.Future[httpx.Response]], slots: asyncio.Semaphore
) -> Callable[[asyncio.Future[httpx.Response]], None]:
    def done(task: asyncio.Future[httpx.Response]) -> None:
        pending.discard(task)
        slots.release()
        if not task.cancelled():
            task.exception()  # retrieved: a caller that left does not want it

    return done


class HranaExecutor:
    """Runs SQL on a remote libSQL server (Turso, sqld, tursodb) over Hrana v2 HTTP.

    See the module docstring for the request shapes and the retry rules.
    ``requests`` counts the HTTP requests sent (retries included).
    """

    #: The database is a server with a clock of its own: ``SqlStorage`` offers
    #: ``database_time()``, and workers judge lease expiry by the server's clock.
    remote = True

    def __init__(self, config: RemoteConfig) -> None:
        self.config = config
        self.url = config.base_url
        self.requests = 0
        self._endpoint = f"{config.base_url}/v2/pipeline"
        self._headers = {"content-type": "application/json"}
        if config.auth_token:
            self._headers["authorization"] = f"Bearer {config.auth_token}"
        self._client: httpx.AsyncClient | None = None
        self._slots: asyncio.Semaphore | None = None
        self._writes = 0
        self._checkpoint_every = config.checkpoint_every
        #: A write failed for lack of space: the next one checkpoints the WAL first.
        self._full = False
        self._send_close = False
        self._attempts: set[asyncio.Future[httpx.Response]] = set()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> HranaExecutor:
        """``HranaExecutor.from_url("libsql://…", auth_token=…)`` (options as for the
        backend: see :mod:`durably_libsql._url`)."""
        return cls(remote_config(url, options))

    def __repr__(self) -> str:
        return f"HranaExecutor({self.url!r})"

    # -- connection --

    def _open(self) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
        client, slots = self._client, self._slots
        if client is None or slots is None:
            limit = self.config.max_in_flight
            client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.config.timeout),
                limits=httpx.Limits(
                    max_connections=limit, max_keepalive_connections=limit, keepalive_expiry=5.0
                ),
                transport=self.config.transport,
                follow_redirects=False,
                trust_env=False,
            )
            slots = asyncio.Semaphore(limit)
            self._client, self._slots = client, slots
        return client, slots

    async def close(self) -> None:
        """Wait (at most ``timeout``) for requests whose callers left, then close the
        HTTP client — and with it a ``transport`` that was passed in."""
        client = self._client
        self._client = self._slots = None
        if self._attempts:  # requests whose callers were cancelled: let them end
            await asyncio.wait(set(self._attempts), timeout=self.config.timeout)
        if client is not None:
            await client.aclose()

    # -- the Executor protocol --

    async def fetch(self, sql: str, params: Params = ()) -> list[Row]:
        [result] = await self._pipeline([execute_request(sql, params)], is_read_only(sql))
        return decode_rows(result["result"])

    async def execute(self, sql: str, params: Params = ()) -> int:
        _, changes = await self._pipeline(
            [execute_request(sql, params, want_rows=False), _CHANGES], is_read_only(sql)
        )
        rows = decode_rows(changes["result"])
        return int(rows[0][0]) if rows else 0

    async def batch(self, statements: Sequence[Statement]) -> list[list[Row]]:
        if not statements:
            return []
        [result] = await self._pipeline([batch_request(statements)], False)
        outcome = result["result"]
        error = batch_error(outcome, len(statements))
        if error is not None:
            raise self._server_error(error) from error
        return batch_rows(outcome, len(statements))

    # -- one HTTP request --

    async def _pipeline(
        self, requests: list[dict[str, Any]], read_only: bool
    ) -> list[dict[str, Any]]:
        """Send the requests as one pipeline; the responses of the requests given
        (an error result of the first one is raised)."""
        wanted = len(requests)
        first = 0  # where the results of the requests given begin
        checkpoint = -1  # where a checkpoint's result is, when one rides along
        if not read_only and self._checkpoint_every:
            self._writes += 1
            if self._full:
                # after a full disk the WAL is emptied first, so that the space that
                # came back goes to the database before new frames take it
                self._full = False
                self._writes = 0
                requests = [_CHECKPOINT, *requests]
                first, checkpoint = 1, 0
            elif self._writes >= self._checkpoint_every:
                self._writes = 0
                requests = [*requests, _CHECKPOINT]
                checkpoint = wanted
        if self._send_close:
            requests = [*requests, _CLOSE]
        try:
            body = _encode({"baton": None, "requests": requests})
        except UnicodeEncodeError as exc:
            raise unstorable_text(exc) from exc
        data = await self._post(body, read_only)
        if data.get("baton") is not None and not self._send_close:
            self._send_close = True  # the server keeps streams: close them from now on
        results: list[dict[str, Any]] = data.get("results") or []
        if len(results) < first + wanted:
            raise StorageError(
                f"The libSQL server at {self.url} answered {len(results)} results to a "
                f"pipeline of {len(requests)} requests"
            )
        if (
            checkpoint >= 0
            and len(results) > checkpoint
            and results[checkpoint].get("type") != "ok"
        ):
            message = str((results[checkpoint].get("error") or {}).get("message", "")).lower()
            if _is_full(message):
                self._full = True  # still full: empty the WAL before the next write
            elif "busy" not in message and "locked" not in message:
                self._checkpoint_every = 0  # not allowed here (e.g. Turso Cloud): stop trying
        mine = results[first : first + wanted]
        for result in mine:
            if result.get("type") != "ok":
                error = result.get("error") or {}
                cause = HranaError(str(error.get("message", "unknown error")), error.get("code"))
                raise self._server_error(cause) from cause
        return [result["response"] for result in mine]

    async def _send(self, client: httpx.AsyncClient, body: bytes) -> httpx.Response:
        return await client.post(self._endpoint, content=body, headers=self._headers)

    async def _post(self, body: bytes, read_only: bool) -> dict[str, Any]:
        client, slots = self._open()
        attempt = 0
        while True:
            attempt += 1
            await slots.acquire()  # the cap on requests in flight
            self.requests += 1
            # A cancelled caller must not cut a request off half-way: a connection left
            # open and unsent stalls a server that serves one connection at a time
            # (tursodb) for every client. So the attempt is a task of its own that
            # finishes in the background (outcome ignored) while the caller leaves at
            # once; its slot is freed when it ends.
            task = asyncio.ensure_future(self._send(client, body))
            self._attempts.add(task)
            task.add_done_callback(_attempt_done(self._attempts, slots))
            try:
                response = await asyncio.shield(task)
                content = response.content
            except httpx.TransportError as exc:
                never_sent = isinstance(exc, _NEVER_SENT)
                if (never_sent or read_only) and attempt <= self.config.retries:
                    delay = min(_BACKOFF_CAP, _BACKOFF_BASE * 2 ** (attempt - 1))
                    await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                    continue
                raise self._transport_error(exc, never_sent or read_only, attempt) from exc
            break
        if response.status_code != 200:
            raise self._http_error(response.status_code, content)
        try:
            data = _decode(content)
        except msgspec.DecodeError as exc:
            raise StorageError(
                f"The server at {self.url} did not answer with Hrana JSON "
                f"({content[:120]!r}…); is this the URL of a libSQL server?"
            ) from exc
        if not isinstance(data, dict):
            raise StorageError(f"Unexpected answer from the libSQL server at {self.url}")
        return data

    # -- errors --

    def _transport_error(
        self, exc: httpx.TransportError, safe: bool, attempts: int
    ) -> StorageConnectionError:
        what = type(exc).__name__
        detail = str(exc) or what
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        if isinstance(exc, httpx.TimeoutException):
            reason = f"timed out ({self.config.timeout:g}s, {what}){tries}"
        else:
            reason = f"failed{tries}: {detail}"
        if isinstance(exc, _NEVER_SENT):
            message = (
                f"Cannot reach the libSQL server at {self.url}: connection {reason}. "
                "Check the URL and that the server is running."
            )
        elif safe:
            message = f"The libSQL server at {self.url} did not answer: {reason}"
        else:
            return StorageOutcomeUnknownError(
                f"The connection to the libSQL server at {self.url} broke while a write was "
                f"in flight ({reason}); its outcome is unknown, so it was not repeated"
            )
        return StorageConnectionError(message)

    def _http_error(self, status: int, content: bytes) -> StorageError:
        text = content[:300].decode("utf-8", "replace").strip()
        cause = HranaError(f"HTTP {status}: {text}" if text else f"HTTP {status}")
        error: StorageError
        if status in (401, 403):
            if self.config.auth_token:
                hint = "the auth token was refused: check auth_token= / " + TOKEN_ENV
            else:
                hint = f"no auth token was given: pass auth_token= or set {TOKEN_ENV}"
            error = StorageAuthError(
                f"The libSQL server at {self.url} answered HTTP {status}: {hint}"
            )
        elif status == 404:
            error = StorageConnectionError(
                f"No Hrana v2 endpoint at {self._endpoint} (HTTP 404): check the database "
                "URL (e.g. libsql://<db>-<org>.turso.io, or http://host:port of a server)"
            )
        elif status == 429:
            error = StorageBusyError(
                f"The libSQL server at {self.url} is rate limiting requests (HTTP 429)"
            )
        elif status in (502, 503, 504):
            error = StorageConnectionError(
                f"The libSQL server at {self.url} is unavailable (HTTP {status})"
            )
        else:
            error = StorageError(
                f"The libSQL server at {self.url} refused the request (HTTP {status}): {text[:200]}"
            )
        error.__cause__ = cause
        return error

    def _server_error(self, error: HranaError) -> StorageError:
        """The durably error for an error the server reported (the caller chains it)."""
        message = _sqlite_message(error.message)
        code = (error.code or "").upper()
        lower = message.lower()
        if "constraint failed" in lower or code.startswith("SQLITE_CONSTRAINT"):
            return constraint_violation(message)
        if "database is locked" in lower or code in ("SQLITE_BUSY", "SQLITE_LOCKED"):
            return StorageBusyError(f"The libSQL database at {self.url} is busy: {message}")
        if _is_full(lower) or code.startswith("SQLITE_FULL"):
            self._full = True  # the next write empties the WAL first
            return StorageFullError(
                f"The libSQL database at {self.url} is full (its disk, or its quota): {message}"
            )
        if "readonly" in lower or "read-only" in lower or code == "SQLITE_READONLY":
            return StorageReadOnlyError(
                f"The libSQL database at {self.url} cannot be written: {message}"
            )
        if code in ("UNAUTHORIZED", "AUTH_HEADER_MISSING") or "unauthorized" in lower:
            return StorageAuthError(f"The libSQL server at {self.url} refused: {message}")
        return StorageError(f"libSQL server at {self.url}: {error}")
