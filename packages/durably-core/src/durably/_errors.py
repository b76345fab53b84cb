"""The errors durably raises.

Every error a user can see derives from :class:`DurablyError`; driver errors are
mapped to :class:`StorageError` subclasses with the original chained as
``__cause__``::

    DurablyError
    ├── ValidationError          bad input, labels or options; nothing was written
    ├── NotFoundError            no run (or job) with that id / name
    ├── ConflictError            the operation does not apply to the run's status
    │   └── SignalRejectedError  a signal the wait cannot take (another signal's, late…)
    ├── LeaseLostError           this worker no longer owns the run; it wrote nothing
    ├── RunFailedError           trigger_and_wait / wait_for_run: the run failed
    ├── RunCancelledError        trigger_and_wait / wait_for_run: the run was cancelled
    ├── WaitTimeoutError         trigger_and_wait / wait_for_run: gave up waiting
    ├── StepOutputError          a step's result cannot be stored as JSON (NaN…),
    │                            or its stored result no longer fits its type
    ├── StepTimeoutError         a step's attempt outlasted step.run(timeout=…)
    ├── NonRetryableError        raised by a step (or a job): fail at once, no retry
    ├── UnknownBackendError      no installed plugin handles the URL's scheme
    ├── PluginError              plugins disagree (e.g. two claim one scheme)
    ├── BlockingCallError        durably.sync called where it must not block (inside
    │                            a running event loop), or after close()
    └── StorageError             the database failed
        ├── StorageBusyError         locked by another writer for too long
        ├── StorageCorruptError      the file is not a database we can use
        ├── StorageReadOnlyError     the database cannot be written
        ├── StorageFullError         the disk (or the database's quota) is full
        ├── StorageLostError         the database file was deleted or replaced
        ├── StorageConnectionError   the database server cannot be reached
        │   └── StorageOutcomeUnknownError  a write was sent; its answer was lost
        ├── StorageAuthError         the server refused our credentials
        └── SchemaVersionError       the database was made by a newer release
"""

from __future__ import annotations

from typing import Any


class DurablyError(Exception):
    """Base class of every error durably raises."""


class BlockingCallError(DurablyError, RuntimeError):
    """A call of the blocking API (``durably.sync``) that cannot be made: from inside a
    running event loop (async code, a Jupyter cell, a durably listener), where it would
    block that loop — use the async API with ``await`` there — or on an instance that
    was closed."""


class ValidationError(DurablyError, ValueError):
    """Input, labels or options were invalid; nothing was written."""


class NotFoundError(DurablyError, LookupError):
    """No run (or job) with that id / name exists."""

    def __init__(self, message: str, *, run_id: str | None = None) -> None:
        super().__init__(message)
        self.run_id = run_id


class ConflictError(DurablyError):
    """The operation does not apply to the run in its current status."""

    def __init__(
        self, message: str, *, run_id: str | None = None, status: str | None = None
    ) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.status = status


class SignalRejectedError(ConflictError):
    """``Durably.signal`` was refused; ``reason`` says why and ``wait`` is the wait as it
    is: ``"conflict"`` (another signal is its result), ``"expired"`` (its deadline
    passed: it timed out), ``"closed"`` (its run finished or was cancelled),
    ``"timer"`` (a ``step.sleep`` timer takes no signal)."""

    def __init__(self, message: str, *, run_id: str, reason: str, wait: Any) -> None:
        super().__init__(message, run_id=run_id)
        self.reason = reason
        self.wait = wait


class LeaseLostError(DurablyError):
    """This worker no longer holds the run's lease (expired and taken, or cancelled).

    Raised inside a job when a fenced write is refused; the write did not happen.
    """

    def __init__(self, message: str, *, run_id: str, generation: int) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.generation = generation


class RunFailedError(DurablyError):
    """A run that was waited on ended as ``failed``; ``error`` is the run's error."""

    def __init__(self, run_id: str, error: str | None, failed_step_name: str | None = None):
        where = f" in step {failed_step_name!r}" if failed_step_name else ""
        super().__init__(f"Run {run_id} failed{where}: {error}")
        self.run_id = run_id
        self.error = error
        self.failed_step_name = failed_step_name


class RunCancelledError(DurablyError):
    """A run that was waited on was cancelled."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"Run {run_id} was cancelled")
        self.run_id = run_id


class WaitTimeoutError(DurablyError, TimeoutError):
    """Waiting for a run took longer than the timeout. The run keeps going."""

    def __init__(self, run_id: str, timeout: float) -> None:
        super().__init__(
            f"Run {run_id} did not finish within {timeout:g}s; it keeps running — "
            "wait again with wait_for_run() or check it with get_run()"
        )
        self.run_id = run_id
        self.timeout = timeout


class StepOutputError(DurablyError):
    """A step returned a value that cannot be stored as JSON (NaN and ±infinity
    included), or its stored result no longer fits the step's type."""

    def __init__(self, step_name: str, message: str) -> None:
        super().__init__(message)
        self.step_name = step_name


class StepTimeoutError(DurablyError, TimeoutError):
    """An attempt of a step outlasted ``step.run(..., timeout=…)``: an async function
    was cancelled; a sync function's thread cannot be stopped, so it may still be
    running — its result is discarded. Retried like any failure of the step."""

    def __init__(self, step_name: str, timeout: float) -> None:
        super().__init__(
            f"Step {step_name!r} did not finish within its timeout of {timeout:g}s "
            "(an async function is cancelled; a sync function's thread runs on, its "
            "result discarded)"
        )
        self.step_name = step_name
        self.timeout = float(timeout)


class NonRetryableError(DurablyError):
    """Raise it (or ``durably.no_retry(exc)``) from a step or a job to fail at once:
    no retry policy retries it, of the step or of the run."""


class UnknownBackendError(DurablyError):
    """No installed storage plugin handles the URL's scheme."""


class PluginError(DurablyError):
    """Installed plugins are inconsistent (e.g. two claim the same URL scheme)."""


class StorageError(DurablyError):
    """The database failed. The driver's exception is chained as ``__cause__``."""


class StorageBusyError(StorageError):
    """The database stayed locked by another writer longer than the busy timeout."""


class StorageCorruptError(StorageError):
    """The file is not a database durably can use (not SQLite, or damaged)."""


class StorageReadOnlyError(StorageError):
    """The database cannot be written (read-only file, directory, or permissions)."""


class StorageFullError(StorageError):
    """The disk holding the database (or the database's quota) is full. Nothing was
    written; the worker retries within seconds of space returning."""


class StorageLostError(StorageError):
    """The database this storage opened is gone: its file was deleted, or replaced by
    another file, while it was in use. What is written now would be seen by nobody,
    so the storage refuses every further operation and the worker stops claiming.
    Restore the file (or point the URL at the right one) and restart the process."""


class StorageConnectionError(StorageError):
    """The database server cannot be reached."""


class StorageOutcomeUnknownError(StorageConnectionError):
    """A write reached (or may have reached) the server, but its answer was lost:
    it may or may not have been applied, so it must not be repeated blindly.

    ``durably.sql.SqlStorage`` resolves it for the operations it can check (by the
    ids it chose, or the fenced state it expects); the others raise it."""


class StorageAuthError(StorageError):
    """The database server refused the credentials."""


class SchemaVersionError(StorageError):
    """The database schema was written by a newer release than this one."""
