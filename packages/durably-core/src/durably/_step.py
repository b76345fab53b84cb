"""``Step``: what a job function receives to checkpoint work, report progress and log:
a thin front over the run's :class:`~durably._execution.Execution`."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar, overload

from ._errors import RunCancelledError
from ._records import LogLevel

if TYPE_CHECKING:
    from ._execution import Execution

#: ``returns=`` not given (``None`` is a type one may pass).
UNSET: Any = object()

T = TypeVar("T")


class StepLog:
    """``step.log.info/warn/error(message, **data)``: a ``log:write`` event, stored."""

    def __init__(self, execution: Execution) -> None:
        self._execution = execution

    def info(self, message: str, **data: Any) -> None:
        """Log at level ``info``; ``data`` is stored as JSON."""
        self._execution.log("info", message, data)

    def warn(self, message: str, **data: Any) -> None:
        """Log at level ``warn``."""
        self._execution.log("warn", message, data)

    def error(self, message: str, **data: Any) -> None:
        """Log at level ``error``."""
        self._execution.log("error", message, data)

    def write(self, level: LogLevel, message: str, **data: Any) -> None:
        """Log at ``level`` (``"info"``, ``"warn"`` or ``"error"``)."""
        self._execution.log(level, message, data)


class Step:
    """The job's handle on its run. Steps run one after another."""

    def __init__(self, execution: Execution) -> None:
        self._x = execution
        self.log = StepLog(execution)

    @property
    def run_id(self) -> str:
        """The id of the run being executed."""
        return self._x.run.id

    @property
    def job_name(self) -> str:
        """The name of its job."""
        return self._x.run.job_name

    @property
    def lease_generation(self) -> int:
        """The generation of the lease this execution holds: it grows with every claim,
        so a system a step changes can refuse writes carrying an older one (a fencing
        token against a worker that stalled past its lease)."""
        return self._x.generation

    @property
    def cancelled(self) -> bool:
        """True once the run was cancelled or its lease lost; sync code can poll it."""
        return self._x.cancel_flag.is_set()

    @property
    def cancel_event(self) -> threading.Event:
        """Set on cancellation; sync step code in a thread may wait on it."""
        return self._x.cancel_flag

    def raise_if_cancelled(self) -> None:
        """Raise ``RunCancelledError`` if the run was cancelled (for long sync loops)."""
        if self._x.cancel_flag.is_set():
            raise RunCancelledError(self._x.run.id)

    def progress(
        self, current: float, total: float | None = None, message: str | None = None
    ) -> None:
        """Record progress (``run:progress``); written in the background, latest wins."""
        self._x.set_progress(current, total, message)

    @overload
    def run(
        self, name: str, fn: Callable[..., Any], *args: Any, returns: type[T], **kwargs: Any
    ) -> Coroutine[Any, Any, T]: ...

    @overload
    def run(
        self, name: str, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any
    ) -> Coroutine[Any, Any, T]: ...

    @overload
    def run(
        self, name: str, fn: Callable[..., T], *args: Any, **kwargs: Any
    ) -> Coroutine[Any, Any, T]: ...

    def run(
        self, name: str, fn: Callable[..., Any], *args: Any, returns: Any = UNSET, **kwargs: Any
    ) -> Coroutine[Any, Any, Any]:
        """``await step.run(name, fn, *args, **kwargs)``: run ``fn(*args, **kwargs)`` once
        and checkpoint its result under ``name``.

        If the run already has a completed step called ``name``, its stored result
        is returned and ``fn`` is not called. Sync functions run in a worker thread.
        The value returned is always the stored one, decoded — restored to
        ``returns`` (or ``fn``'s return annotation) when one is given.
        """
        # not itself a coroutine: the checkpoint's coroutine is handed out as it is
        return self._x.checkpoint(name, fn, args, kwargs, returns)
