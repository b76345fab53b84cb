"""Executing one claimed run: its checkpoints (``step.run``), lease renewal, progress
and log writes, completion."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Literal

import msgspec
import pydantic

from ._attempts import (
    NotStarted,
    RetryLater,
    announce_retry,
    attempt_record,
    checkpoint_attempts,
    error_message,
    retry_time,
)
from ._errors import LeaseLostError, StepOutputError, StorageError, ValidationError
from ._events import (
    LogWriteEvent,
    RunCompleteEvent,
    RunFailEvent,
    RunLeasedEvent,
    RunLeaseRenewedEvent,
    RunProgressEvent,
    RunRetryEvent,
    RunWaitingEvent,
    StepCancelEvent,
    StepCompleteEvent,
    StepFailEvent,
    StepStartEvent,
)
from ._job import JobDefinition
from ._logging import LEVELS, job_logger, step_log_extra
from ._observe import RunObservation, RunOutcome
from ._parallel import BRANCH
from ._records import (
    Attempt,
    AttemptStatus,
    LogLevel,
    NewAttempt,
    NewLog,
    NewStep,
    Progress,
    Run,
    RunStatus,
    StepRecord,
    StepStatus,
    Wait,
)
from ._retry import Retry
from ._services import Services
from ._step import UNSET, Step
from ._validate import (
    check_progress,
    check_text,
    decode_validated,
    describe_pydantic_error,
    encode_validated,
)
from ._waits import Suspended
from .codec import NonFiniteNumberError

StopReason = Literal["cancelled", "lease-lost", "shutdown"]

#: Steps between two forced yields to the event loop. A step whose function never
#: suspends (a trivial coroutine, a replay) completes without giving the loop a turn
#: (the SQLite fast path does not suspend either), so a long loop of them would
#: starve lease renewal, in-process cancel and other slots. A yield costs ~4 µs.
YIELD_EVERY = 16

#: A step function is called only while at least this fraction of ``lease_duration``
#: is left on the lease (by durably's clock); closer to the deadline the lease is
#: renewed first. The margin is what a stall may take between the check and the
#: function's first action without another worker having claimed the run.
LEASE_MARGIN = 0.25


class Execution:
    """One execution of a claimed run by this process. Every write is fenced by
    the lease generation it was claimed with."""

    def __init__(self, services: Services, run: Run) -> None:
        self.services = services
        # bound once, not wrapped: a step reads the clock twice and makes an id
        self.now = services.now
        self.new_id = services.new_id
        self.storage = services.storage
        self.codec = services.codec
        self.bus = services.bus
        self.run = run
        self.generation = run.lease_generation
        self._margin = timedelta(seconds=services.settings.lease_duration * LEASE_MARGIN)
        self.lease_expires_at: datetime = run.lease_expires_at or services.now()
        #: A step may start without renewing before this instant (the deadline less
        #: the margin); kept beside ``lease_expires_at`` so the check is one comparison.
        self.fresh_until: datetime = self.lease_expires_at - self._margin
        #: Checkpoints by step name: loaded at the start, added to as steps complete.
        self.completed: dict[str, StepRecord] = {}
        self._next_index = 0
        self.cancel_flag = threading.Event()
        self.current_step: str | None = None
        #: step.all joins in progress: while branches overlap, a log names the branch
        #: whose task wrote it (``_parallel.BRANCH``), else no step.
        self.overlapping = 0
        #: The wait the job asked to suspend on (step.wait_for / step.sleep found no
        #: result): the run suspends on it once the job's code has stopped.
        self.suspend_wait: Wait | None = None
        self.failed_step_name: str | None = None
        self.stop_reason: StopReason | None = None
        #: The worker:error context of a lost lease: who noticed it.
        self.lost_context = "lease-lost"
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._task: asyncio.Task[Any] | None = None
        self._pending_progress: Progress | None = None
        self._pending_logs: list[NewLog] = []
        self._flush_task: asyncio.Task[bool] | None = None
        self._renewal: asyncio.Future[bool] | None = None
        self._job_logger: logging.Logger | None = None  # on the first step.log
        #: The instrumentation's view of this execution, if instrumented.
        self.observation: RunObservation | None = None
        #: How it ended, once decided (the stop reason otherwise).
        self.outcome: RunOutcome | None = None
        self._error: str | None = None
        #: Steps take the attempt path by default (a job retry policy, or every
        #: attempt recorded): set with the job at the start.
        self.policied = False
        self.record_attempts = False
        self.job_retry: Retry | None = None
        #: The run must finish by then (``define_job(timeout=…)``), or ``None``.
        self.deadline: datetime | None = None
        #: The run's deadline came (the job was cancelled), in this step if one ran.
        self.timed_out = False
        self.timed_out_in: str | None = None
        #: The run's attempt records: loaded by the first step that needs them.
        self.attempts: list[Attempt] | None = None
        #: The failure a step's next attempt waits after, and when: the run waits for it
        #: without a slot once the job has unwound; whether step:retry is still to say.
        self._retry_wait: tuple[NewAttempt, datetime, bool] | None = None

    # -- shared by the parts below --

    def report_error(self, exc: BaseException, context: str) -> None:
        self.services.report_error(exc, context, self.run.id)

    @property
    def claimed_at(self) -> datetime:
        """When this execution's claim was made (the claimed run's ``updated_at``)."""
        return self.run.updated_at

    def suspend_on(self, wait: Wait) -> None:
        """The job found no result for ``wait``: once it has unwound, the run suspends.
        Until then nothing more may run (a step that is started raises at once)."""
        self.suspend_wait = wait
        self.cancel_flag.set()

    def lease_lost(self, detail: str) -> LeaseLostError:
        self.request_stop("lease-lost", cancel_task=False)
        return LeaseLostError(
            f"Run {self.run.id} is no longer leased by this worker ({detail}); "
            "it was cancelled or taken over after the lease expired",
            run_id=self.run.id,
            generation=self.generation,
        )

    def request_stop(self, reason: StopReason, *, cancel_task: bool = True) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self.cancel_flag.set()
        if cancel_task and self._task is not None and not self._task.done():
            self._task.cancel()

    # -- retries --

    async def attempt_records(self) -> list[Attempt]:
        """The run's attempt records (read once, kept up to date by this execution).
        A first claim has none: every record is written under an earlier lease."""
        if self.attempts is None:
            first = self.generation <= 1
            self.attempts = [] if first else await self.storage.get_attempts(self.run.id)
        return self.attempts

    def suspend_for_retry(self, failed: NewAttempt, wake_at: datetime, *, announce: bool) -> None:
        """A step's next attempt is due at ``wake_at``, after ``failed``: once the job
        has unwound, the run waits for it without a slot. Until then nothing more may
        run (a step that is started raises at once). Called again — another branch
        of ``step.all`` failed meanwhile, its record already written — the run wakes
        for the earlier of the two attempts (the other waits on in place or again)."""
        if self._retry_wait is not None:
            first, due, first_announce = self._retry_wait
            self._retry_wait = (first, min(due, wake_at), first_announce)
            return
        self._retry_wait = (failed, wake_at, announce)
        self.cancel_flag.set()

    @property
    def retry_waiting(self) -> bool:
        """The job is unwinding so that the run waits for a step's next attempt."""
        return self._retry_wait is not None

    async def _wait_for_retry(self, failed: NewAttempt, wake_at: datetime, announce: bool) -> None:
        """The failure's record and the run's wait for the next attempt, in one write."""
        await self.flush_quietly()
        ok = await self.storage.record_attempt(
            self.run.id, self.generation, failed, self.now(), wake_at=wake_at
        )
        if not ok:  # cancelled, or the lease was lost, before the wait
            self.stop_reason = "lease-lost"
            await self._after_stop()
            return
        self.outcome = "waiting"
        if announce:
            announce_retry(self, failed)

    async def _drop_retry_wait(self, failed: NewAttempt) -> bool:
        """The failure a step's next attempt was to wait after, recorded as it was, with
        no next attempt (the job failed meanwhile). ``False``: not written, the lease
        was lost (handled)."""
        await self.flush_quietly()
        failed = msgspec.structs.replace(failed, next_attempt_at=None)
        if not await self.storage.record_attempt(self.run.id, self.generation, failed, self.now()):
            self.stop_reason = "lease-lost"
            await self._after_stop()
            return False
        if self.attempts is not None:
            self.attempts.append(attempt_record(self, failed))
        return True

    # -- steps --

    async def checkpoint(
        self,
        name: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        returns: Any = UNSET,
        retry: Retry | None = None,
        timeout: float | None = None,
    ) -> Any:
        """``step.run``: ``name``'s stored result when the run has one (a replay: ``fn``
        is not called); else ``fn(*args, **kwargs)``, its result persisted under
        ``name`` before it is returned. The value returned is always the stored one,
        decoded: restored to ``returns`` (or ``fn``'s return annotation) when given.
        A step with a retry policy, a timeout or attempt records goes through
        :func:`durably._attempts.checkpoint_attempts` instead of the lines below."""
        index = self.open_step(name)
        if index % YIELD_EVERY == YIELD_EVERY - 1:
            await asyncio.sleep(0)
        codec = self.codec
        tp, is_coroutine = codec.step_function(fn)
        if returns is not UNSET:
            tp = returns
        done = self.completed.get(name)
        if done is not None:
            if self.observation is not None:
                self.observation.replayed(name, index, done)
            if tp is None:
                return done.output
            try:
                return codec.to_typed(tp, done.output)
            except pydantic.ValidationError as exc:
                raise _unreadable(name, tp, done.output, exc) from None
        if retry is not None or timeout is not None or self.policied:
            return await checkpoint_attempts(
                self,
                name,
                index,
                fn,
                args,
                kwargs,
                tp,
                is_coroutine,
                self.job_retry if retry is None else retry,
                timeout,
            )
        started = self.now()
        if started >= self.fresh_until or self.cancel_flag.is_set() or self.flush_needed():
            started = await self._ready_to_start(name, index)
        # From here to fn's call nothing awaits: a stall in between is what the lease
        # margin covers (a sync fn is checked once more in its thread).
        t0 = time.perf_counter()
        self.current_step = name
        bus = self.bus
        if bus.wants("step:start"):
            # stamped with the clock reading the lease was checked with
            bus.emit_run(StepStartEvent, self.run, at=started, step_name=name, step_index=index)
        try:
            if is_coroutine:
                result = await fn(*args, **kwargs)
            else:
                result = await asyncio.to_thread(self._call_while_leased, fn, args, kwargs)
                if inspect.isawaitable(result):
                    result = await result
        except (asyncio.CancelledError, NotStarted) as exc:
            self.step_cancelled(name, index, exc)
            raise
        except Exception as exc:
            self.current_step = None
            await self._step_failed(name, index, started, exc)
            raise
        self.current_step = None
        record, completed, native, typed = self.completed_record(name, index, tp, result, started)
        if not await self.storage.persist_step(self.run.id, self.generation, record, completed):
            raise self.lease_lost(f"step {name!r} was not saved")
        self._saved(record, native, t0)
        return native if tp is None else typed

    def step_cancelled(self, name: str, index: int, exc: BaseException) -> None:
        """A step's call was interrupted: cancelled (a cancel, a lost lease, shutdown),
        or never started (``NotStarted``: the lease expired while the call waited for
        its thread, raised as ``LeaseLostError``). ``step:cancel``; nothing written."""
        self.current_step = None
        self.bus.emit_run(StepCancelEvent, self.run, step_name=name, step_index=index)
        if isinstance(exc, NotStarted):
            self.lost_context = "lease-renewal"
            raise self.lease_lost(f"step {name!r} was not started") from None

    def completed_record(
        self, name: str, index: int, tp: Any, result: Any, started: datetime
    ) -> tuple[NewStep, datetime, Any, Any]:
        """The checkpoint of a step that returned ``result``: its row, completed now
        (and when), and the result as stored — JSON-native and restored to ``tp``. The result is
        read back before it is written: a value that does not (a serializer that does
        not round-trip) would fail every replay of the checkpoint."""
        try:
            text, native, typed = self.codec.step_result(tp, result)
        except (TypeError, pydantic.ValidationError) as exc:
            raise self._unstorable(name, index, tp, result, exc) from None
        completed = self.now()
        record = NewStep(
            id=self.new_id(completed),
            name=name,
            index=index,
            status=StepStatus.COMPLETED,
            output_json=text,
            started_at=started,
            completed_at=completed,
        )
        return record, completed, native, typed

    def open_step(self, name: str) -> int:
        """Check a step's name and give the step the run's next index (a replayed
        step takes one too: indexes follow the job's code, not what is stored)."""
        if not isinstance(name, str) or not name:
            raise ValidationError(f"Step name must be a non-empty string, got {name!r}")
        check_text("Step name", name)
        index = self._next_index
        self._next_index = index + 1
        return index

    async def _ready_to_start(self, name: str, index: int) -> datetime:
        """Before a step's function is called, when it cannot start at once: the run
        is stopping, buffered progress and logs go first, or the lease is short (the
        loop was stalled, or renewals are slow: another worker may own the run
        already, so renew first, or never call the function). The start time."""
        if self.cancel_flag.is_set():
            raise asyncio.CancelledError
        if self.flush_needed():
            await self.flush()
        started = self.now()
        if started >= self.fresh_until:
            started = await self.secure_lease(name)
        return started

    def _call_while_leased(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """A sync step function, called in its worker thread unless the lease expired
        while the call waited for the thread (a loaded machine, a stalled process)."""
        if self.expired():
            raise NotStarted
        return fn(*args, **kwargs)

    def _unstorable(
        self, name: str, index: int, tp: Any, result: Any, exc: Exception
    ) -> StepOutputError:
        """A step returned what cannot be stored, or what does not read back as its type
        once stored: the step fails with this error."""
        self.failed_step_name = name
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
            name, f"Step {name!r} returned a value of type {type(result).__name__} that {problem}."
        )
        self.bus.emit_run(StepFailEvent, self.run, step_name=name, step_index=index, error=str(err))
        return err

    def _saved(self, record: NewStep, native: Any, t0: float) -> None:
        """A completed step (``native``: its output, decoded) was persisted: remember it
        (a later step of the same name replays it) and announce it."""
        run = self.run
        self.completed.setdefault(
            record.name,
            StepRecord(
                id=record.id,
                run_id=run.id,
                name=record.name,
                index=record.index,
                status=StepStatus.COMPLETED,
                output=native,
                started_at=record.started_at,
                completed_at=record.completed_at,
            ),
        )
        self.failed_step_name = None
        if self.bus.wants("step:complete"):
            self.bus.emit_run(
                StepCompleteEvent,
                run,
                step_name=record.name,
                step_index=record.index,
                output=native,
                duration=(time.perf_counter() - t0) * 1000.0,
            )

    async def _step_failed(
        self,
        name: str,
        index: int,
        started: datetime,
        exc: Exception,
        attempt: NewAttempt | None = None,
    ) -> None:
        """A step's function raised (its last attempt, when it has a retry policy): the
        failure is stored — with the ``attempt``'s record, in one write — unless the
        lease or the database is what failed, and announced; the run fails with it."""
        self.failed_step_name = name
        message = error_message(exc)
        if not isinstance(exc, LeaseLostError | StorageError):
            completed = self.now()
            record = NewStep(
                id=self.new_id(),
                name=name,
                index=index,
                status=StepStatus.FAILED,
                error=message,
                started_at=started,
                completed_at=completed,
            )
            if attempt is None:
                attempt = NewAttempt(
                    id=self.new_id(started),
                    step_name=name,
                    step_index=index,
                    attempt=1,
                    status=AttemptStatus.FAILED,
                    error=message,
                    started_at=started,
                    completed_at=completed,
                )
            try:
                saved = await self.storage.persist_step(
                    self.run.id, self.generation, record, completed, attempt=attempt
                )
            except StorageError as store_exc:
                self.report_error(store_exc, "step-failure")
            else:
                if not saved:  # fenced out: another worker owns the run; say nothing more
                    raise self.lease_lost(f"the failure of step {name!r} was not saved")
                if self.attempts is not None:
                    self.attempts.append(attempt_record(self, attempt))
        self.bus.emit_run(StepFailEvent, self.run, step_name=name, step_index=index, error=message)

    # -- progress and logs: recorded at once, written in the background --

    def _on_loop(self) -> bool:
        return threading.get_ident() == self._loop_thread

    def set_progress(self, current: float, total: float | None, message: str | None) -> None:
        check_progress(current, total, message)  # in the caller's thread: it sees the error
        if not self._on_loop():
            self._loop.call_soon_threadsafe(self.set_progress, current, total, message)
            return
        if self.stop_if_expired():
            return
        progress = Progress(current=current, total=total, message=message)
        self._pending_progress = progress
        self.bus.emit_run(RunProgressEvent, self.run, progress=progress)
        self._schedule_flush()

    def log(self, level: LogLevel, message: str, data: dict[str, Any]) -> None:
        message = check_text("Log message", str(message))
        # encoded in the caller's thread, so that it sees a refusal
        data_json = self._log_data(data) if data else None
        step_name = self.current_step
        if self.overlapping:  # step.all: not the one "current step" but the branch's task
            branch = BRANCH.get()
            step_name = branch[1] if branch is not None and branch[0] is self else None
        logger = self._job_logger
        if logger is None:
            logger = self._job_logger = job_logger(self.run.job_name)
        # to `logging` from the caller's thread and context (a handler that adds the
        # current trace to records sees the step's), unless the lease has expired
        if logger.isEnabledFor(LEVELS[level]) and not self.expired():
            run = self.run
            extra = step_log_extra(run.id, run.job_name, step_name, self.generation, data)
            logger.log(LEVELS[level], message, extra=extra)
        if not self._on_loop():
            self._loop.call_soon_threadsafe(self._log_on_loop, level, message, data_json, step_name)
            return
        self._log_on_loop(level, message, data_json, step_name)

    def _log_data(self, data: dict[str, Any]) -> str:
        try:
            return self.codec.encode(data)
        except NonFiniteNumberError as exc:
            raise ValidationError(f"Log data: {exc}") from None
        except TypeError:  # not JSON: stored as the values' reprs
            return self.codec.encode({k: repr(v) for k, v in data.items()})

    def _log_on_loop(
        self, level: LogLevel, message: str, data_json: str | None, step_name: str | None
    ) -> None:
        if self.stop_if_expired():
            return
        persist = self.services.settings.persist_logs
        if persist:
            self._pending_logs.append(
                NewLog(
                    id=self.new_id(),
                    step_name=step_name,
                    level=level,
                    message=message,
                    data_json=data_json,
                    created_at=self.now(),
                )
            )
        self.bus.emit_run(
            LogWriteEvent,
            self.run,
            step_name=step_name,
            level=level,
            message=message,
            data=None if data_json is None else self.codec.decode(data_json),
        )
        if persist:
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = self._loop.create_task(self._write_pending())

    async def _write_pending(self) -> bool:
        """Write buffered progress and logs. False when the lease was lost."""
        progress, self._pending_progress = self._pending_progress, None
        logs, self._pending_logs = self._pending_logs, []
        if progress is None and not logs:
            return True
        now = self.now()
        try:
            if progress is not None and not await self.storage.update_progress(
                self.run.id, self.generation, progress, now
            ):
                self.request_stop("lease-lost")
                return False
            if logs and not await self.storage.append_logs(self.run.id, self.generation, logs, now):
                self.request_stop("lease-lost")
                return False
        except StorageError as exc:
            self.report_error(exc, "progress")
        return True

    def flush_needed(self) -> bool:
        """Is there buffered progress or a log, or a background write in flight?"""
        task = self._flush_task
        return (
            (task is not None and not task.done())
            or self._pending_progress is not None
            or bool(self._pending_logs)
        )

    async def flush(self) -> None:
        """Make sure buffered progress and logs are written before the next checkpoint."""
        task = self._flush_task
        if task is not None and not task.done():
            ok = await asyncio.shield(task)
            if not ok:
                raise self.lease_lost("progress was not saved")
        if (self._pending_progress is not None or self._pending_logs) and not (
            await self._write_pending()
        ):
            raise self.lease_lost("progress was not saved")

    # -- the execution --

    async def execute(self) -> None:
        services = self.services
        self.services.active[self.run.id] = self
        t0 = time.perf_counter()
        renewal: asyncio.Task[None] | None = None
        if services.observer is not None:
            # in this task's context, before the job's task copies it
            self.observation = services.observer.run_started(self.run)
        deadline_watch: asyncio.Task[None] | None = None
        try:
            job = services.jobs.get(self.run.job_name)
            if job is None:
                await self._fail(f"Unknown job: {self.run.job_name}")
                return
            self.job_retry = job.retry
            self.record_attempts = job.record_attempts
            self.policied = job.retry is not None or job.record_attempts
            if job.timeout is not None:
                # from the run's start (kept by later claims: retries and waits count)
                start = self.run.started_at or self.now()
                self.deadline = start + timedelta(seconds=job.timeout)
                if self.now() >= self.deadline:
                    await self._fail(self._timed_out(job.timeout))
                    return
                deadline_watch = asyncio.create_task(self._watch_deadline())
            try:
                payload = decode_validated(self.codec, job.input, self.run.input)
            except ValidationError as exc:
                await self._fail(f"Invalid input: {exc}")
                return
            for record in await self.storage.get_completed_steps(self.run.id):
                self.completed.setdefault(record.name, record)
            run = self.run
            self.bus.emit_run(
                RunLeasedEvent,
                run,
                input=run.input,
                lease_owner=run.lease_owner or services.owner,
                lease_expires_at=self.lease_expires_at,
            )
            renewal = asyncio.create_task(self._renew_loop())
            self._task = asyncio.ensure_future(job.run(Step(self), payload))
            try:
                await asyncio.wait({self._task})
            except asyncio.CancelledError:
                self.request_stop("shutdown")
                raise
            await self._settle(job, t0)
        except StorageError as exc:
            self.outcome = "storage-error"
            self.report_error(exc, "run-execution")
        finally:
            if renewal is not None:
                renewal.cancel()
            if deadline_watch is not None:
                deadline_watch.cancel()
            if self._task is not None and not self._task.done():
                self._task.cancel()
            self.cancel_flag.set()
            if services.active.get(self.run.id) is self:
                del services.active[self.run.id]
            if self.observation is not None:
                outcome = self.outcome or self.stop_reason or "unfinished"
                self.observation.finished(outcome, self._error)

    async def _settle(self, job: JobDefinition[Any, Any], t0: float) -> None:
        task = self._task
        assert task is not None
        exc = None if task.cancelled() else task.exception()  # also marks it retrieved
        if self._retry_wait is not None and self.stop_reason is None:
            if exc is not None and not isinstance(exc, Exception | RetryLater):
                raise exc  # the process is going down (see below)
            if not isinstance(exc, Exception) or isinstance(exc, LeaseLostError | StorageError):
                # whatever else the job did once a step's next attempt was to wait
                # (returned, caught and went on), it stopped there: the run waits
                await self._wait_for_retry(*self._retry_wait)
                return
            # the job failed — a branch of step.all failed for good beside the step
            # whose next attempt was to wait: that attempt will not come; the run
            # fails (or retries as a whole) below
            if not await self._drop_retry_wait(self._retry_wait[0]):
                return
        if self.timed_out and self.stop_reason is None:
            assert job.timeout is not None
            await self._fail(self._timed_out(job.timeout), self.timed_out_in)
            return
        if self.suspend_wait is not None and self.stop_reason is None:
            if exc is not None and not isinstance(exc, Exception | Suspended):
                raise exc  # the process is going down (see below)
            # whatever the job did after the wait refused to give a result (returned,
            # raised), it stopped there: suspend
            await self._suspend(self.suspend_wait)
            return
        if self.stop_reason is not None or task.cancelled():
            await self._after_stop()
            return
        if exc is not None and not isinstance(exc, Exception):
            # KeyboardInterrupt, SystemExit, a simulated crash: the process is going
            # down; record nothing and let the lease expire.
            raise exc
        if exc is None:
            await self._complete(job, task.result(), t0)
        elif isinstance(exc, LeaseLostError):
            self.stop_reason = "lease-lost"
            await self._after_stop()
        elif isinstance(exc, StorageError):
            self.outcome = "storage-error"
            self.report_error(exc, "run-execution")
        else:
            await self._job_failed(job, exc)

    async def _after_stop(self) -> None:
        if self.stop_reason == "lease-lost":
            current = await self.storage.get_run(self.run.id)
            if current is None or current.status != RunStatus.CANCELLED:
                self.report_error(
                    LeaseLostError(
                        f"Lost the lease on run {self.run.id}; it stopped without writing more",
                        run_id=self.run.id,
                        generation=self.generation,
                    ),
                    self.lost_context,
                )

    async def _suspend(self, wait: Wait) -> None:
        await self.flush_quietly()
        run = await self.storage.suspend_run(self.run.id, self.generation, wait.id, self.now())
        if run is None:  # cancelled, or the lease was lost, before the suspension
            self.stop_reason = "lease-lost"
            await self._after_stop()
            return
        self.outcome = "waiting"
        self.bus.emit_run(
            RunWaitingEvent, self.run, wait_id=wait.id, wait_name=wait.name, wake_at=run.wake_at
        )
        self.services.wake_at(run.wake_at)

    async def _complete(self, job: JobDefinition[Any, Any], value: Any, t0: float) -> None:
        try:
            text = encode_validated(self.codec, job.output, value)
        except ValidationError as exc:
            await self._fail(f"Invalid output: {exc}")
            return
        await self.flush_quietly()
        now = self.now()
        ok = await self.storage.complete_run(
            self.run.id,
            self.generation,
            text,
            now,
            delete_steps=not self.services.settings.preserve_steps,
        )
        if not ok:
            self.stop_reason = "lease-lost"
            await self._after_stop()
            return
        self.outcome = "completed"
        if self.bus.wants("run:complete"):
            self.bus.emit_run(
                RunCompleteEvent,
                self.run,
                output=self.codec.decode(text),
                duration=(time.perf_counter() - t0) * 1000.0,
            )

    async def _job_failed(self, job: JobDefinition[Any, Any], exc: BaseException) -> None:
        """The job raised: the run fails, or — its ``run_retry`` policy retries ``exc``
        and attempts are left — waits for its next attempt (``schedule_retry``)."""
        error = error_message(exc)
        now = self.now()
        attempt = self.run.attempt
        due = retry_time(self, job.run_retry, attempt, exc, now)
        if due is None:
            await self._fail(error, self.failed_step_name)
            return
        await self.flush_quietly()
        try:
            waiting = await self.storage.schedule_retry(
                self.run.id, self.generation, error, due, now
            )
        except ValidationError:  # as in _fail: text this adapter cannot store
            error = error.encode("ascii", "backslashreplace").decode("ascii")
            waiting = await self.storage.schedule_retry(
                self.run.id, self.generation, error, due, now
            )
        if waiting is None:
            self.stop_reason = "lease-lost"
            await self._after_stop()
            return
        self.outcome, self._error = "waiting", error
        self.bus.emit_run(
            RunRetryEvent,
            self.run,
            attempt=attempt,
            delay=(due - now).total_seconds(),
            error=error,
            next_attempt_at=due,
            failed_step_name=self.failed_step_name,
        )

    def _timed_out(self, timeout: float) -> str:
        return (
            f"Run timed out: job {self.run.job_name!r} did not finish within {timeout:g}s "
            "of its start (define_job(timeout=...))"
        )

    async def _watch_deadline(self) -> None:
        """At the run's deadline, stop the job (the run then fails as timed out)."""
        assert self.deadline is not None
        await self.services.clock.sleep((self.deadline - self.now()).total_seconds())
        self.timed_out, self.timed_out_in = True, self.current_step
        self.cancel_flag.set()
        if self._task is not None:
            self._task.cancel()

    async def _fail(self, error: str, failed_step_name: str | None = None) -> None:
        await self.flush_quietly()
        try:
            ok = await self.storage.fail_run(self.run.id, self.generation, error, self.now())
        except ValidationError:
            # The adapter cannot store this text. Unrecorded, the run would be claimed
            # again after its lease and fail again, forever: record it in ASCII.
            error = error.encode("ascii", "backslashreplace").decode("ascii")
            ok = await self.storage.fail_run(self.run.id, self.generation, error, self.now())
        if not ok:
            self.stop_reason = "lease-lost"
            await self._after_stop()
            return
        self.outcome, self._error = "failed", error
        self.bus.emit_run(RunFailEvent, self.run, error=error, failed_step_name=failed_step_name)

    async def flush_quietly(self) -> None:
        with contextlib.suppress(LeaseLostError):
            await self.flush()

    # -- the lease --

    def expired(self) -> bool:
        """Has the lease's deadline passed by durably's clock? From then on another
        worker may own the run, so this one must do nothing more for it. (Called from
        a sync step's worker thread too: it only reads the clock and one attribute.)"""
        return self.now() >= self.lease_expires_at

    def stop_if_expired(self) -> bool:
        """True (and the execution stopped as lease-lost) when the lease has expired:
        progress and logs of a stalled worker are neither emitted nor written."""
        if not self.expired():
            return False
        self.lost_context = "lease-renewal"
        self.request_stop("lease-lost")
        return True

    async def secure_lease(self, step_name: str) -> datetime:
        """A step is about to start with less than the margin left on the lease (the
        loop was stalled, or renewals are slow): renew it now (fenced) and return the
        time after, or raise ``LeaseLostError`` so that the function is never called."""
        if await self.renew():
            now = self.now()
            if now < self.lease_expires_at:
                return now
        self.lost_context = "lease-renewal"
        raise self.lease_lost(f"step {step_name!r} was not started")

    async def renew(self) -> bool:
        """Renew the lease (fenced). False when it is lost: expired by this worker's
        clock (the database would refuse it too, and another worker may hold it),
        cancelled or claimed elsewhere. Raises ``StorageError`` when the database
        cannot be asked.

        One renewal at a time: after a stall the renewal timer and a step about to
        start ask at once. Two renewals in flight could be applied in the other
        order and move the stored deadline back below the one this worker believes,
        so a second caller waits for the first one's answer. The first runs it in
        its own task (the timer re-arms right after its event, with no turn of the
        loop in between)."""
        while (pending := self._renewal) is not None:
            try:
                return await asyncio.shield(pending)
            except _RenewalAbandoned:  # its caller was cancelled: renew here instead
                continue
        answer: asyncio.Future[bool] = self._loop.create_future()
        self._renewal = answer
        try:
            ok = await self._renew_once()
        except Exception as exc:
            answer.set_exception(exc)
            raise
        except BaseException:
            answer.set_exception(_RenewalAbandoned())
            raise
        else:
            answer.set_result(ok)
            return ok
        finally:
            self._renewal = None
            answer.exception()  # retrieved: a waiter, if any, got it too

    async def _renew_once(self) -> bool:
        services = self.services
        now = services.now()
        if now >= self.lease_expires_at:
            return False
        expires = services.lease_expiry(now)
        if not await self.storage.renew_lease(self.run.id, self.generation, now, expires):
            return False
        if expires > self.lease_expires_at:
            self.lease_expires_at = expires
            self.fresh_until = expires - self._margin
        run = self.run
        if self.bus.wants("run:lease-renewed"):
            self.bus.emit_run(
                RunLeaseRenewedEvent,
                run,
                lease_owner=run.lease_owner or services.owner,
                lease_expires_at=expires,
            )
        return True

    async def _renew_loop(self) -> None:
        services = self.services
        interval = services.settings.lease_renew_interval
        while True:
            remaining = (self.lease_expires_at - services.now()).total_seconds()
            await services.clock.sleep(max(0.0, min(interval, remaining)))
            try:
                ok = await self.renew()
            except StorageError as exc:
                self.report_error(exc, "lease-renewal")
                continue
            if not ok:
                self.lost_context = "lease-renewal"
                self.request_stop("lease-lost")
                return


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or repr(tp)


def _unreadable(name: str, tp: Any, stored: Any, exc: pydantic.ValidationError) -> StepOutputError:
    """A checkpoint's stored result does not fit the step's type any more."""
    return StepOutputError(
        name,
        f"Step {name!r}: its stored result {stored!r} does not fit the step's "
        f"type {_type_name(tp)} ({describe_pydantic_error(exc)}); the step's type "
        "changed since it ran, or an older release stored it (NaN as null)",
    )


class _RenewalAbandoned(Exception):
    """The caller running a renewal others waited for was cancelled before the answer."""
