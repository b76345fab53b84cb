"""``Step``: what a job function receives to checkpoint work, report progress and log."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar, overload

import pydantic

from ._errors import (
    LeaseLostError,
    RunCancelledError,
    StepOutputError,
    StorageError,
    ValidationError,
)
from ._events import (
    StepCancelEvent,
    StepCompleteEvent,
    StepFailEvent,
    StepStartEvent,
)
from ._records import LogLevel, NewStep, StepStatus
from ._validate import check_text, describe_pydantic_error

if TYPE_CHECKING:
    from ._execution import Execution

T = TypeVar("T")

_UNSET: Any = object()

#: Steps between two forced yields to the event loop. A step whose function never
#: suspends (a trivial coroutine, a replay) completes without giving the loop a turn
#: (the SQLite fast path does not suspend either), so a long loop of them would
#: starve lease renewal, in-process cancel and other slots. A yield costs ~4 µs.
YIELD_EVERY = 16


def error_message(exc: BaseException) -> str:
    """The text stored as a run's or step's error: always storable (a lone surrogate,
    e.g. from an undecodable file name, is written as ``\\udcff``, and U+0000, which
    PostgreSQL text cannot hold, as ``\\x00``, or the failure could never be recorded)."""
    text = str(exc) or type(exc).__name__
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


class _NotStarted(Exception):
    """A sync step's thread started after the lease had expired: fn was not called."""


def _call_while_leased(
    x: Execution, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Call a sync step function in its worker thread, unless the lease expired while
    the call waited for the thread (a loaded machine, a stalled process)."""
    if x.expired():
        raise _NotStarted
    return fn(*args, **kwargs)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or repr(tp)


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
        self._next_index = 0
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
    async def run(
        self, name: str, fn: Callable[..., Any], *args: Any, returns: type[T], **kwargs: Any
    ) -> T: ...

    @overload
    async def run(
        self, name: str, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any
    ) -> T: ...

    @overload
    async def run(self, name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...

    async def run(
        self, name: str, fn: Callable[..., Any], *args: Any, returns: Any = _UNSET, **kwargs: Any
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` once and checkpoint its result under ``name``.

        If the run already has a completed step called ``name``, its stored result
        is returned and ``fn`` is not called. Sync functions run in a worker thread.
        The value returned is always the stored one, decoded — restored to
        ``returns`` (or ``fn``'s return annotation) when one is given.
        """
        x = self._x
        if not isinstance(name, str) or not name:
            raise ValidationError(f"Step name must be a non-empty string, got {name!r}")
        check_text("Step name", name)
        index = self._next_index
        self._next_index += 1
        if index % YIELD_EVERY == YIELD_EVERY - 1:
            await asyncio.sleep(0)
        tp, is_coroutine = x.codec.step_function(fn)
        if returns is not _UNSET:
            tp = returns
        done = x.completed.get(name)
        if done is not None:
            if tp is None:
                return done.output
            try:
                return x.codec.to_typed(tp, done.output)
            except pydantic.ValidationError as exc:
                raise StepOutputError(
                    name,
                    f"Step {name!r}: its stored result {done.output!r} does not fit the step's "
                    f"type {_type_name(tp)} ({describe_pydantic_error(exc)}); the step's type "
                    "changed since it ran, or an older release stored it (NaN as null)",
                ) from None
        if x.cancel_flag.is_set():
            raise asyncio.CancelledError
        if x.flush_needed():
            await x.flush()
        bus = x.bus
        run = x.run
        started = x.now()
        if started >= x.fresh_until:
            # Little or no lease left (the loop was stalled, or renewals are slow):
            # another worker may own the run already. Renew first, or never call fn.
            started = await x.secure_lease(name)
        # From here to fn's call nothing awaits: a stall in between is what the
        # margin covers (a sync fn is checked once more in its thread).
        t0 = time.perf_counter()
        x.current_step = name
        if bus.wants("step:start"):
            # stamped with the clock reading the lease was checked with
            bus.emit_run(StepStartEvent, run, at=started, step_name=name, step_index=index)
        try:
            if is_coroutine:
                result = await fn(*args, **kwargs)
            else:
                result = await asyncio.to_thread(_call_while_leased, x, fn, args, kwargs)
                if inspect.isawaitable(result):
                    result = await result
        except (asyncio.CancelledError, _NotStarted) as exc:
            x.current_step = None
            bus.emit(
                StepCancelEvent,
                run_id=run.id,
                job_name=run.job_name,
                labels=run.labels,
                step_name=name,
                step_index=index,
            )
            if isinstance(exc, _NotStarted):
                x.lost_context = "lease-renewal"
                raise x.lease_lost(f"step {name!r} was not started") from None
            raise
        except Exception as exc:
            x.current_step = None
            await self._record_failure(name, index, started, exc)
            raise
        x.current_step = None
        try:
            # read back before it is written: a value that does not (a serializer that does
            # not round-trip) would fail every replay of the checkpoint
            text, native, typed = x.codec.step_result(tp, result)
        except (TypeError, pydantic.ValidationError) as exc:
            if isinstance(exc, pydantic.ValidationError):
                problem = (
                    f"does not read back as {_type_name(tp)} once stored as JSON "
                    f"({describe_pydantic_error(exc)}); check the type's serializers"
                )
            else:
                problem = (
                    f"cannot be stored as JSON ({exc}). Return JSON-compatible data (dict, list, "
                    "str, finite number, bool, None), a pydantic model or a dataclass, or pass "
                    "returns=<type>"
                )
            err = StepOutputError(
                name,
                f"Step {name!r} returned a value of type {type(result).__name__} that {problem}.",
            )
            x.failed_step_name = name
            bus.emit(
                StepFailEvent,
                run_id=run.id,
                job_name=run.job_name,
                labels=run.labels,
                step_name=name,
                step_index=index,
                error=str(err),
            )
            raise err from None
        completed = x.now()
        record = NewStep(
            id=x.new_id(completed),
            name=name,
            index=index,
            status=StepStatus.COMPLETED,
            output_json=text,
            started_at=started,
            completed_at=completed,
        )
        if not await x.storage.persist_step(run.id, x.generation, record, completed):
            raise x.lease_lost(f"step {name!r} was not saved")
        x.remember(name, index, native, record)
        x.failed_step_name = None
        if bus.wants("step:complete"):
            bus.emit(
                StepCompleteEvent,
                run_id=run.id,
                job_name=run.job_name,
                labels=run.labels,
                step_name=name,
                step_index=index,
                output=native,
                duration=(time.perf_counter() - t0) * 1000.0,
            )
        return native if tp is None else typed

    async def _record_failure(self, name: str, index: int, started: Any, exc: Exception) -> None:
        x = self._x
        run = x.run
        x.failed_step_name = name
        message = error_message(exc)
        if not isinstance(exc, LeaseLostError | StorageError):
            record = NewStep(
                id=x.new_id(),
                name=name,
                index=index,
                status=StepStatus.FAILED,
                error=message,
                started_at=started,
                completed_at=x.now(),
            )
            try:
                saved = await x.storage.persist_step(
                    run.id,
                    x.generation,
                    record,
                    record.completed_at,  # type: ignore[arg-type]
                )
            except StorageError as store_exc:
                x.report_error(store_exc, "step-failure")
            else:
                if not saved:  # fenced out: another worker owns the run; say nothing more
                    raise x.lease_lost(f"the failure of step {name!r} was not saved")
        x.bus.emit(
            StepFailEvent,
            run_id=run.id,
            job_name=run.job_name,
            labels=run.labels,
            step_name=name,
            step_index=index,
            error=message,
        )
