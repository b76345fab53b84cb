"""A step with a retry policy, a timeout or attempt records: its attempts, on the
execution of one run (``step.run`` goes here instead of the plain checkpoint).

The attempts of a step form a series (``durably.lifecycle.next_attempt`` reads it
from the run's attempt records): attempt 1, and after each failure the policy
retries, the next one once its time has come. Every failed attempt is recorded
before anything else happens, so the count and the next attempt's time survive a
crash: the worker that resumes the run (replaying its checkpoints) continues the
series — the same number, never before its time. A successful attempt writes
nothing more than the plain checkpoint does (with ``record_attempts=True`` its
record is settled in the checkpoint's own transaction, after a record written
before the call).

The wait before the next attempt: shorter than ``lease_renew_interval``, the
execution sleeps in place (the lease is renewed meanwhile); longer, the job unwinds
(:class:`RetryLater`) and the run waits without lease or worker slot until the
attempt's time (``record_attempt(wake_at=…)``: the failure's record and the wait in
one write), when any worker claims and resumes it.

A timeout bounds each attempt: an async function is cancelled; a sync one runs on
in its thread (it cannot be stopped), its result discarded; the attempt fails with
:class:`~durably.StepTimeoutError`.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import msgspec

from ._errors import LeaseLostError, StepTimeoutError, StorageError, ValidationError
from ._events import StepRetryEvent, StepStartEvent
from ._records import Attempt, AttemptStatus, NewAttempt
from ._retry import Retry, retries
from ._validate import positive_number
from .lifecycle import next_attempt

if TYPE_CHECKING:
    from ._execution import Execution

__all__ = [
    "NotStarted",
    "RetryLater",
    "announce_retry",
    "attempt_record",
    "checkpoint_attempts",
    "error_message",
    "retry_time",
]


class NotStarted(Exception):
    """A sync step's thread started after the lease had expired: fn was not called."""


class RetryLater(BaseException):
    """The job must stop here: the run waits, without a slot, for a step's next attempt.

    A ``BaseException``, so a job's ``except Exception`` lets it through."""

    def __init__(self, step_name: str, wake_at: datetime) -> None:
        super().__init__(f"step {step_name!r} is tried again at {wake_at.isoformat()}")
        self.wake_at = wake_at


def attempt_record(x: Execution, new: NewAttempt) -> Attempt:
    """What ``new`` reads back as once this execution wrote it."""
    return Attempt(
        id=new.id,
        run_id=x.run.id,
        step_name=new.step_name,
        step_index=new.step_index,
        attempt=new.attempt,
        status=new.status,
        lease_generation=x.generation,
        error=new.error,
        started_at=new.started_at,
        completed_at=new.completed_at,
        next_attempt_at=new.next_attempt_at,
    )


def retry_time(
    x: Execution, policy: Retry | None, attempt: int, exc: BaseException, now: datetime
) -> datetime | None:
    """When the next attempt after attempt ``attempt`` failed with ``exc`` is due, or
    ``None`` when there is none: no policy, no attempts left, an error the policy does
    not retry, a lost lease or a storage failure, a run that is stopping, or a next
    attempt that would come at or after the run's deadline."""
    if (
        policy is None
        or attempt >= policy.max_attempts
        or isinstance(exc, LeaseLostError | StorageError)
        # stopping, unless only to wait for a sibling branch's next attempt
        or (x.cancel_flag.is_set() and not x.retry_waiting)
        or not retries(policy, exc)
    ):
        return None
    due = now + timedelta(seconds=policy.delay(attempt))
    if x.deadline is not None and due >= x.deadline:
        return None
    return due


async def _invoke(
    x: Execution,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    is_coroutine: bool,
) -> Any:
    """Call the step's function as the plain checkpoint does: a coroutine function
    awaited, a sync one in a worker thread (an awaitable it returns awaited too)."""
    if is_coroutine:
        return await fn(*args, **kwargs)
    result = await asyncio.to_thread(x._call_while_leased, fn, args, kwargs)
    return await result if inspect.isawaitable(result) else result


async def _call(
    x: Execution,
    name: str,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    is_coroutine: bool,
    timeout: float,
) -> Any:
    """:func:`_invoke` within ``timeout``."""
    call = asyncio.ensure_future(_invoke(x, fn, args, kwargs, is_coroutine))
    # the clock's sleep (a manual clock in tests), raced against the call
    timer = asyncio.ensure_future(x.services.clock.sleep(timeout))
    try:
        await asyncio.wait({call, timer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        timer.cancel()
        if not call.done():
            # an async function gets CancelledError at its await; a thread runs on and
            # its result is dropped (retrieved here, so it is never reported)
            call.cancel()
            call.add_done_callback(_retrieve)
    if not call.done():
        raise StepTimeoutError(name, timeout)
    return call.result()


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


async def _wait_for_attempt(x: Execution, due: datetime, last: NewAttempt) -> None:
    """Until ``due``: in place when the wait is short, else the run waits without a
    slot (``last``, the failure that scheduled it, is written again with the wait)."""
    remaining = (due - x.now()).total_seconds()
    if remaining <= 0:
        return
    if remaining >= x.services.settings.lease_renew_interval:
        x.suspend_for_retry(last, due, announce=False)
        raise RetryLater(last.step_name, due)
    await x.services.clock.sleep(remaining)


def _as_new(record: Attempt) -> NewAttempt:
    return NewAttempt(
        id=record.id,
        step_name=record.step_name,
        step_index=record.step_index,
        attempt=record.attempt,
        status=record.status,
        error=record.error,
        started_at=record.started_at,
        completed_at=record.completed_at,
        next_attempt_at=record.next_attempt_at,
    )


async def checkpoint_attempts(
    x: Execution,
    name: str,
    index: int,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    tp: Any,
    is_coroutine: bool,
    policy: Retry | None,
    timeout: float | None,
) -> Any:
    """``step.run`` of a step that is not replayed, with its retry ``policy``
    (``None``: one attempt), ``timeout`` and the job's ``record_attempts``."""
    if policy is not None and not isinstance(policy, Retry):
        raise ValidationError(
            f"step.run({name!r}, retry=...) takes a durably.Retry, got {policy!r}"
        )
    if timeout is not None:
        positive_number(f"timeout of step {name!r}", timeout)
    record_all = x.record_attempts
    attempts = x.attempts
    if attempts is None:
        attempts = await x.attempt_records()
    number, due = next_attempt(attempts, name) if attempts else (1, None)
    last: NewAttempt | None = None
    if due is not None:  # the failure that scheduled it
        last = next(_as_new(a) for a in reversed(attempts) if a.step_name == name)
    run, bus, storage = x.run, x.bus, x.storage
    while True:
        if last is not None:
            assert due is not None
            await _wait_for_attempt(x, due, last)
        opened: NewAttempt | None = None
        if record_all:
            if x.cancel_flag.is_set():
                raise asyncio.CancelledError
            now = x.now()
            opened = NewAttempt(
                id=x.new_id(now),
                step_name=name,
                step_index=index,
                attempt=number,
                status=AttemptStatus.STARTED,
                started_at=now,
            )
            if not await storage.record_attempt(run.id, x.generation, opened, now):
                raise x.lease_lost(f"attempt {number} of step {name!r} was not recorded")
            attempts.append(attempt_record(x, opened))
        started = x.now()
        if started >= x.fresh_until or x.cancel_flag.is_set() or x.flush_needed():
            started = await x._ready_to_start(name, index)
        # From here to fn's call nothing awaits but the call (see Execution.checkpoint).
        t0 = time.perf_counter()
        x.current_step = name
        if bus.wants("step:start"):
            bus.emit_run(StepStartEvent, run, at=started, step_name=name, step_index=index)
        try:
            if timeout is None:
                result = await _invoke(x, fn, args, kwargs, is_coroutine)
            else:
                result = await _call(x, name, fn, args, kwargs, is_coroutine, timeout)
        except (asyncio.CancelledError, NotStarted) as exc:
            x.step_cancelled(name, index, exc)
            raise
        except Exception as exc:
            x.current_step = None
            ended = x.now()
            failed = NewAttempt(
                id=x.new_id(started) if opened is None else opened.id,
                step_name=name,
                step_index=index,
                attempt=number,
                status=AttemptStatus.FAILED,
                error=error_message(exc),
                started_at=started if opened is None else opened.started_at,
                completed_at=ended,
            )
            next_at = retry_time(x, policy, number, exc, ended)
            if next_at is None:  # the last attempt: the step fails
                await x._step_failed(name, index, started, exc, failed)
                raise
            failed = msgspec.structs.replace(failed, next_attempt_at=next_at)
            if x.retry_waiting:
                # a sibling branch of step.all already stops the run to wait for its
                # next attempt: this failure is recorded now (its series goes on after
                # the wait, not from 1) and the run wakes for the earlier attempt
                if not await storage.record_attempt(run.id, x.generation, failed, ended):
                    raise x.lease_lost(f"the failure of step {name!r} was not recorded") from exc
                attempts.append(attempt_record(x, failed))
                announce_retry(x, failed)
                x.suspend_for_retry(failed, next_at, announce=False)
                raise RetryLater(name, next_at) from exc
            if (next_at - ended).total_seconds() >= x.services.settings.lease_renew_interval:
                # a long wait: the run waits without a slot; the failure is recorded
                # with the wait once the job has unwound
                x.suspend_for_retry(failed, next_at, announce=True)
                raise RetryLater(name, next_at) from exc
            if not await storage.record_attempt(run.id, x.generation, failed, ended):
                raise x.lease_lost(f"the failure of step {name!r} was not recorded") from exc
            attempts.append(attempt_record(x, failed))
            announce_retry(x, failed)
            number, due, last = number + 1, next_at, failed
            continue
        x.current_step = None
        step, completed, native, typed = x.completed_record(name, index, tp, result, started)
        if opened is None:
            saved = await storage.persist_step(run.id, x.generation, step, completed)
        else:
            settled = msgspec.structs.replace(
                opened, status=AttemptStatus.COMPLETED, completed_at=completed
            )
            saved = await storage.persist_step(
                run.id, x.generation, step, completed, attempt=settled
            )
            attempts.append(attempt_record(x, settled))
        if not saved:
            raise x.lease_lost(f"step {name!r} was not saved")
        x._saved(step, native, t0)
        return native if tp is None else typed


def announce_retry(x: Execution, failed: NewAttempt) -> None:
    """``step:retry`` for a failure whose record (with its next attempt) is written."""
    due = failed.next_attempt_at
    assert due is not None
    assert failed.completed_at is not None
    x.bus.emit_run(
        StepRetryEvent,
        x.run,
        step_name=failed.step_name,
        step_index=failed.step_index,
        attempt=failed.attempt,
        delay=(due - failed.completed_at).total_seconds(),
        error=failed.error or "",
        next_attempt_at=due,
    )


def error_message(exc: BaseException) -> str:
    """The text stored as a run's or step's error: always storable (a lone surrogate,
    e.g. from an undecodable file name, is written as ``\\udcff``, and U+0000, which
    PostgreSQL text cannot hold, as ``\\x00``, or the failure could never be recorded)."""
    text = str(exc) or type(exc).__name__
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
