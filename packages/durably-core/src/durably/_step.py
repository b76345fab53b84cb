"""``Step``: what a job function receives to checkpoint work, report progress and log:
a thin front over the run's :class:`~durably._execution.Execution`."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar, overload

from ._errors import RunCancelledError
from ._parallel import run_all
from ._records import LogLevel
from ._validate import adapter_for
from ._waits import (
    WaitHandle,
    WaitResult,
    aware,
    canonical_json,
    prepare,
    seconds_of,
    wait_for,
    wait_until,
)

if TYPE_CHECKING:
    from ._execution import Execution
    from ._retry import Retry

#: ``returns=`` not given (``None`` is a type one may pass).
UNSET: Any = object()

T = TypeVar("T")
P = TypeVar("P")


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

    # -- durable waits and timers --

    @overload
    async def prepare_wait(
        self,
        name: str,
        *,
        timeout: float | timedelta | None = None,
        payload: type[P],
        metadata: Any = None,
    ) -> WaitHandle[P]: ...

    @overload
    async def prepare_wait(
        self,
        name: str,
        *,
        timeout: float | timedelta | None = None,
        payload: None = None,
        metadata: Any = None,
    ) -> WaitHandle[Any]: ...

    async def prepare_wait(
        self,
        name: str,
        *,
        timeout: float | timedelta | None = None,
        payload: type[P] | None = None,
        metadata: Any = None,
    ) -> WaitHandle[Any]:
        """Prepare the run's wait ``name`` — before starting the external work that will
        signal it, so that a fast answer finds its address. Returns its handle: give
        ``handle.run_id`` and ``handle.name`` to the signaller, then ``await
        step.wait_for(handle)``.

        ``timeout`` (seconds or a ``timedelta``) fixes an absolute deadline at the
        first preparation; replays keep it. ``payload``: a type (a pydantic model…)
        the signal's payload is validated against in ``wait_for``. ``metadata``: JSON
        stored with the wait (what a UI shows about it), also from the first
        preparation only."""
        x = self._x
        deadline = None
        if timeout is not None:
            seconds = seconds_of(f"prepare_wait({name!r}) timeout", timeout, allow_zero=False)
            deadline = x.now() + timedelta(seconds=seconds)
        if payload is not None:
            adapter_for(payload, f"prepare_wait({name!r}) payload={payload!r}")
        metadata_json = None
        if metadata is not None:
            metadata_json = canonical_json(x.codec, metadata, f"The metadata of wait {name!r}")
        wait = await prepare(x, name, kind="signal", deadline=deadline, metadata_json=metadata_json)
        return WaitHandle(wait.id, wait.run_id, wait.name, wait.deadline_at, payload)

    async def wait_for(self, wait: WaitHandle[P]) -> WaitResult[P]:
        """The result of a prepared wait: a signal (with its payload) or, once the
        deadline has passed, a timeout. With no result yet, the run suspends here:
        status ``waiting``, its lease and worker slot released; a signal or the
        deadline resumes it (any worker, any process), replaying the job from its
        checkpoints. Not inside a ``step.run`` or ``step.all`` callback."""
        return await wait_for(self._x, wait)

    async def sleep(self, name: str, seconds: float | timedelta) -> None:
        """A durable timer: the run waits ``seconds`` (from the first call with this
        ``name``; replays keep the deadline) without holding a worker slot; the
        first worker to poll after the deadline resumes it."""
        x = self._x
        delay = seconds_of(f"sleep({name!r})", seconds, allow_zero=True)
        await wait_until(x, name, x.now() + timedelta(seconds=delay))

    async def sleep_until(self, name: str, when: datetime) -> None:
        """``sleep`` until ``when`` (a timezone-aware datetime; at once if past)."""
        await wait_until(self._x, name, aware(f"sleep_until({name!r})", when))

    async def all(self, branches: Mapping[str, Callable[[], Any]]) -> dict[str, Any]:
        """Run named branches at once, each checkpointed like ``step.run`` (a replay
        skips those that completed); returns ``{name: result}`` when all succeeded.
        The join waits for every branch to settle; then a lost lease, else a
        cancellation, else the failure of the first branch (in the dict's order)
        is raised."""
        return await run_all(self, self._x, branches)

    def progress(
        self, current: float, total: float | None = None, message: str | None = None
    ) -> None:
        """Record progress (``run:progress``); written in the background, latest wins."""
        self._x.set_progress(current, total, message)

    @overload
    def run(
        self,
        name: str,
        fn: Callable[..., Any],
        *args: Any,
        returns: type[T],
        retry: Retry | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Coroutine[Any, Any, T]: ...

    @overload
    def run(
        self,
        name: str,
        fn: Callable[..., Awaitable[T]],
        *args: Any,
        retry: Retry | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Coroutine[Any, Any, T]: ...

    @overload
    def run(
        self,
        name: str,
        fn: Callable[..., T],
        *args: Any,
        retry: Retry | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Coroutine[Any, Any, T]: ...

    def run(
        self,
        name: str,
        fn: Callable[..., Any],
        *args: Any,
        returns: Any = UNSET,
        retry: Retry | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Coroutine[Any, Any, Any]:
        """``await step.run(name, fn, *args, **kwargs)``: run ``fn(*args, **kwargs)`` once
        and checkpoint its result under ``name``.

        If the run already has a completed step called ``name``, its stored result
        is returned and ``fn`` is not called. Sync functions run in a worker thread.
        The value returned is always the stored one, decoded — restored to
        ``returns`` (or ``fn``'s return annotation) when one is given.

        ``retry=Retry(...)``: a failure is tried again as the policy says (else the
        job's ``define_job(retry=...)``, if any); only the last attempt's failure
        reaches the job. ``timeout=seconds``: each attempt fails with
        ``StepTimeoutError`` after that long (an async function is cancelled; a sync
        function's thread cannot be stopped: it runs on, its result discarded).
        ``returns``, ``retry`` and ``timeout`` are step.run's own: to pass arguments
        of these names to ``fn``, wrap it (``functools.partial``, a lambda).
        """
        # not itself a coroutine: the checkpoint's coroutine is handed out as it is
        return self._x.checkpoint(name, fn, args, kwargs, returns, retry, timeout)
