"""``Durably``: the application object, and ``create_durably``."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any

from ._clock import Clock, SystemClock, sleep_or_wake
from ._errors import (
    ConflictError,
    NotFoundError,
    RunCancelledError,
    RunFailedError,
    SignalRejectedError,
    StorageError,
    ValidationError,
    WaitTimeoutError,
)
from ._events import (
    ANY,
    TERMINAL_EVENT_TYPES,
    ErrorHandler,
    Event,
    EventBus,
    Listener,
    RunCancelEvent,
    RunDeleteEvent,
    WaitSignalEvent,
)
from ._execution import Execution
from ._handle import JobHandle, Jobs, check_job_key
from ._job import JobDefinition
from ._observe import TRACE_LABELS
from ._records import (
    Attempt,
    LogRecord,
    NewSignal,
    Run,
    RunFilter,
    RunStatus,
    SignalOutcome,
    StepRecord,
    Wait,
)
from ._scheduler import Scheduler
from ._schedules import Schedules
from ._services import Services, Settings
from ._storage import Storage
from ._trigger import Triggers
from ._validate import (
    MAX_CONCURRENT_RUNS,
    MAX_LEASE,
    MAX_POLLING_INTERVAL,
    SQL_INT_MAX,
    check_text,
    duration,
    interval,
    positive_int,
    positive_number,
    validate_labels,
)
from ._waits import SignalReceipt, canonical_json
from ._worker import Worker, claim
from .lifecycle import STATUS_ALIASES, can_retrigger
from .plugins import BackendRegistry

DEFAULT_URL = "sqlite:///durably.db"
URL_ENV = "DURABLY_DATABASE_URL"


class Durably:
    """Jobs, runs and a worker on one storage. Use ``create_durably`` to build one."""

    def __init__(
        self,
        storage: Storage,
        *,
        settings: Settings,
        clock: Clock,
        labels_schema: Any = None,
        on_listener_error: ErrorHandler | None = None,
        owns_storage: bool = False,
    ) -> None:
        self._services = Services(
            storage=storage,
            clock=clock,
            bus=EventBus(clock, on_listener_error),
            settings=settings,
        )
        self._worker = Worker(self._services, ready=self._ready)
        self._triggers = Triggers(
            self._services, labels_schema, ready=self._ready, wake=self._worker.notify
        )
        self._owns_storage = owns_storage
        self._migrated = False
        self._migrate_lock = asyncio.Lock()
        self.jobs = Jobs()
        #: The stored cron schedules (``create``, ``pause``, ``resume``, ``delete``, ``list``).
        self.schedules = Schedules(
            self._services,
            ready=self._ready,
            check_labels=self._triggers.check_labels,
            wake_worker=self._worker.notify,
            wake_scheduler=lambda: self._scheduler.notify(),
        )
        self._scheduler = Scheduler(self._services, self.schedules)

    # -- lifecycle --

    @property
    def storage(self) -> Storage:
        """The storage this instance runs on."""
        return self._services.storage

    @property
    def clock(self) -> Clock:
        """The clock every time read and timed wait goes through."""
        return self._services.clock

    @property
    def settings(self) -> Settings:
        """The options given to ``create_durably`` (intervals, slots, retention, …)."""
        return self._services.settings

    @property
    def clock_offset(self) -> timedelta:
        """The database's clock minus this process's, as last measured (every minute):
        the correction applied to the time this instance uses, so that leases are judged
        by the database's clock. Zero when the backend has no clock of its own (a local
        file), with a manual clock, or within the measurement's uncertainty."""
        return self._services.clock_offset

    @property
    def worker_id(self) -> str:
        """The lease owner this instance writes into the runs it claims."""
        return self._services.owner

    async def migrate(self) -> None:
        """Create or upgrade the database schema (idempotent, multi-process safe)."""
        async with self._migrate_lock:
            services = self._services
            try:  # judge leases (and stamp times) by the database's clock from here on
                await services.sync_clock()
            except StorageError as exc:  # retried by the worker every minute
                services.report_error(exc, "clock")
            storage = services.storage
            if _takes_now(storage.migrate):
                await storage.migrate(services.now())
            else:  # an adapter written before migrate() took the engine's now
                await storage.migrate()
            self._migrated = True

    async def _ready(self) -> None:
        if not self._migrated:
            await self.migrate()

    async def init(self) -> None:
        """``migrate()`` then ``start()``."""
        await self.migrate()
        self.start()

    def start(self, *, max_concurrent_runs: int | None = None) -> None:
        """Start the worker and its scheduler in the background (needs a running
        event loop).

        ``max_concurrent_runs`` replaces the number of slots ``create_durably`` set
        (``durably worker --concurrency`` uses it)."""
        if max_concurrent_runs is not None:
            slots = positive_int("max_concurrent_runs", max_concurrent_runs)
            self._services.settings = dataclasses.replace(
                self._services.settings, max_concurrent_runs=slots
            )
        self._worker.start()
        self._scheduler.start()

    @property
    def running(self) -> bool:
        """Is the background worker running?"""
        return self._worker.running

    async def stop(self, timeout: float | None = None) -> None:
        """Stop claiming and wait for in-flight runs. After ``timeout`` seconds their
        tasks are cancelled and their leases handed back (expiring now), so another
        worker resumes them at once."""
        await self._scheduler.stop()
        await self._worker.stop(timeout)
        await self._services.bus.drain()

    async def close(self) -> None:
        """``stop()``, then release the storage if this instance opened it."""
        await self.stop()
        if self._owns_storage:
            await self._services.storage.close()

    async def __aenter__(self) -> Durably:
        await self.init()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and not isinstance(exc, Exception):
            # Ctrl-C / cancellation: don't wait for runs to finish; their leases
            # expire and another worker resumes them after the last checkpoint.
            await self.stop(timeout=0)
        await self.close()

    # -- jobs --

    def register(
        self, jobs: Mapping[str, JobDefinition[Any, Any]]
    ) -> dict[str, JobHandle[Any, Any]]:
        """Register job definitions under keys; returns their handles (also in ``jobs``)."""
        if not isinstance(jobs, Mapping):
            raise ValidationError(
                f"register() takes a dict of {{'key': job_definition}}, got {type(jobs).__name__}"
            )
        handles: dict[str, JobHandle[Any, Any]] = {}
        registry = self._services.jobs
        for key, definition in jobs.items():
            check_job_key(key)
            if not isinstance(definition, JobDefinition):
                raise ValidationError(
                    f"register(): {key!r} is {definition!r}, not a job made by define_job()"
                )
            existing = registry.get(definition.name)
            if existing is not None and existing is not definition:
                raise ConflictError(
                    f"A different job named {definition.name!r} is already registered; "
                    "job names must be unique per Durably"
                )
            if key in self.jobs and self.jobs[key].definition is not definition:
                raise ConflictError(f"Job key {key!r} is already registered to another job")
            if key in self.jobs:
                handles[key] = self.jobs[key]
                continue
            self.schedules.declare(definition)
            registry[definition.name] = definition
            handle: JobHandle[Any, Any] = JobHandle(self, self._triggers, key, definition)
            self.jobs._add(key, handle)
            handles[key] = handle
        return handles

    # -- queries --

    async def get_run(self, run_id: str) -> Run | None:
        """The run with this id, or ``None``."""
        await self._ready()
        return await self._services.storage.get_run(run_id)

    async def _require_run(self, run_id: str) -> Run:
        run = await self.get_run(run_id)
        if run is None:
            raise NotFoundError(f"Run not found: {run_id}", run_id=run_id)
        return run

    async def get_runs(
        self,
        *,
        status: str | Sequence[str] | None = None,
        job_name: str | Sequence[str] | None = None,
        labels: Mapping[str, str] | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Run]:
        """Runs newest first (``created_at`` then id, descending). ``status`` and
        ``job_name`` take one value or a list; ``labels`` must all match."""
        query = build_filter(status, job_name, labels, limit, offset)
        await self._ready()
        return await self._services.storage.get_runs(query)

    async def count_runs(
        self,
        *,
        status: str | Sequence[str] | None = None,
        job_name: str | Sequence[str] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> dict[RunStatus, int]:
        """How many runs match, by status: every status the filter accepts is a key
        (zero included). The filters are those of ``get_runs``."""
        query = build_filter(status, job_name, labels, None, 0)
        await self._ready()
        found = await self._services.storage.count_runs(query)
        return {s: found.get(s, 0) for s in query.statuses or RunStatus}

    async def get_steps(self, run_id: str) -> list[StepRecord]:
        """The run's step records in execution order (empty once a completed run's
        steps were deleted, see ``preserve_steps``)."""
        await self._ready()
        return await self._services.storage.get_steps(run_id)

    async def get_waits(self, run_id: str) -> list[Wait]:
        """The run's durable waits, oldest first."""
        await self._ready()
        return await self._services.storage.get_waits(run_id)

    async def get_wait(self, run_id: str, name: str) -> Wait | None:
        """The run's wait called ``name``, or ``None``."""
        await self._ready()
        return await self._services.storage.get_wait(run_id, name)

    async def signal(
        self, run_id: str, name: str, payload: Any = None, *, signal_id: str | None = None
    ) -> SignalReceipt:
        """Deliver ``payload`` to the wait ``name`` of run ``run_id``: it becomes the
        wait's result, and a run suspended on it resumes (at once in this process,
        at the next poll elsewhere). A signal that comes before the run suspends is
        kept. Idempotent: the same ``signal_id`` (or none) with the same payload
        again is a ``"duplicate"`` receipt.

        Raises ``NotFoundError`` (no such run or wait — not prepared yet?) and
        ``SignalRejectedError`` (a ``ConflictError``) when the wait cannot take it:
        another signal is its result, its deadline has passed (it timed out), its
        run finished or was cancelled, or it is a ``step.sleep`` timer."""
        for what, value in (("run_id", run_id), ("name", name)):
            if not isinstance(value, str) or not value:
                raise ValidationError(f"signal(): {what} must be a non-empty string, got {value!r}")
            check_text(f"signal() {what}", value)
        if signal_id is not None:
            if not isinstance(signal_id, str) or not signal_id:
                raise ValidationError(
                    f"signal(): signal_id must be a non-empty string or None, got {signal_id!r}"
                )
            check_text("signal() signal_id", signal_id)
        services = self._services
        text = canonical_json(services.codec, payload, f"signal(): the payload for wait {name!r}")
        await self._ready()
        signal = NewSignal(signal_id=signal_id, payload_json=text)
        outcome = await services.storage.signal_wait(run_id, name, signal, services.now())
        return await self._receipt(run_id, name, outcome)

    async def _receipt(self, run_id: str, name: str, outcome: SignalOutcome) -> SignalReceipt:
        wait = outcome.wait
        if wait is None:
            raise NotFoundError(
                f"Run {run_id} has no wait named {name!r}: the run does not exist, or has "
                "not prepared the wait yet (step.prepare_wait) — signal it once it has",
                run_id=run_id,
            )
        disposition = outcome.disposition
        if disposition == "accepted":
            bus = self._services.bus
            if bus.wants("wait:signal"):
                run = await self._services.storage.get_run(run_id)
                if run is not None:
                    bus.emit_run(
                        WaitSignalEvent,
                        run,
                        wait_id=wait.id,
                        wait_name=wait.name,
                        signal_id=wait.signal_id,
                        payload=wait.payload,
                    )
            self._worker.notify()  # a run suspended on it is claimable now
            return SignalReceipt("accepted", wait)
        if disposition == "duplicate":
            return SignalReceipt("duplicate", wait)
        messages = {
            "conflict": f"already has another signal's result (signal id {wait.signal_id!r}); "
            "a wait takes one signal",
            "expired": f"timed out at its deadline ({wait.deadline_at}); the signal came too "
            "late and was not recorded",
            "closed": "belongs to a run that finished or was cancelled; it takes no signal",
            "timer": "is a timer (step.sleep): it ends at its deadline and takes no signal",
        }
        raise SignalRejectedError(
            f"Wait {name!r} of run {run_id} {messages.get(disposition, disposition)}",
            run_id=run_id,
            reason=disposition,
            wait=wait,
        )

    async def get_logs(self, run_id: str) -> list[LogRecord]:
        """The run's stored ``step.log`` entries, oldest first (none with
        ``persist_logs=False``)."""
        await self._ready()
        return await self._services.storage.get_logs(run_id)

    async def get_attempts(self, run_id: str) -> list[Attempt]:
        """The run's attempt records, oldest first: every failed attempt of a step
        (with ``record_attempts=True``, every attempt, from before its call). They stay
        until the run is deleted or purged, whatever ``preserve_steps`` says."""
        await self._ready()
        return await self._services.storage.get_attempts(run_id)

    # -- control --

    async def cancel(self, run_id: str) -> Run:
        """Cancel a pending or leased run. Terminal → ``ConflictError``."""
        await self._ready()
        services = self._services
        run = await services.storage.cancel_run(run_id, services.now())
        if run is None:
            current = await self._require_run(run_id)
            raise ConflictError(
                f"Run {run_id} is {current.status.value} and cannot be cancelled; only "
                "pending or leased runs can",
                run_id=run_id,
                status=current.status.value,
            )
        execution = services.active.get(run_id)
        if execution is not None:
            execution.request_stop("cancelled")
        services.bus.emit_run(RunCancelEvent, run)
        return run

    async def retry(self, run_id: str) -> Run:
        """Put a failed or cancelled run back to pending, keeping its completed steps."""
        await self._ready()
        services = self._services
        run = await services.storage.retry_run(run_id, services.now())
        if run is None:
            current = await self._require_run(run_id)
            raise ConflictError(
                f"Run {run_id} is {current.status.value}; only failed or cancelled runs can be "
                "retried (use retrigger() to run a completed one again)",
                run_id=run_id,
                status=current.status.value,
            )
        self._worker.notify()
        return run

    async def retrigger(self, run_id: str) -> Run:
        """Trigger a finished run again as a new run (same input, key and labels)."""
        old = await self._require_run(run_id)
        if not can_retrigger(old.status):
            raise ConflictError(
                f"Run {run_id} is {old.status.value}; only finished runs can be retriggered "
                "(cancel it first)",
                run_id=run_id,
                status=old.status.value,
            )
        definition = self._services.jobs.get(old.job_name)
        if definition is None:
            raise NotFoundError(
                f"Job {old.job_name!r} is not registered here; register it to retrigger its runs"
            )
        # the old run's trace context stays with it: the new run joins the caller's
        labels = {k: v for k, v in old.labels.items() if k not in TRACE_LABELS}
        options: dict[str, Any] = {"labels": labels}
        if old.concurrency_key is not None:
            options["concurrency_key"] = old.concurrency_key
        result = await self._triggers.trigger(definition, old.input, **options)
        return result.run

    async def delete_run(self, run_id: str) -> Run:
        """Delete a finished run with its steps, logs and labels."""
        await self._ready()
        run = await self._services.storage.delete_run(run_id)
        if run is None:
            current = await self._require_run(run_id)
            raise ConflictError(
                f"Run {run_id} is {current.status.value}; only finished runs can be deleted "
                "(cancel it first)",
                run_id=run_id,
                status=current.status.value,
            )
        self._services.bus.emit_run(RunDeleteEvent, run)
        return run

    async def purge_runs(
        self, older_than: str | float | timedelta | datetime, limit: int = 500
    ) -> int:
        """Delete finished runs completed before ``older_than`` (a duration like
        ``"7d"`` counted back from now, or a datetime), oldest first."""
        positive_int("limit", limit)
        if isinstance(older_than, datetime):
            if older_than.tzinfo is None:
                raise ValidationError("purge_runs(older_than=datetime) needs an aware datetime")
            cutoff = older_than
        else:
            cutoff = self._services.now() - duration("older_than", older_than)
        await self._ready()
        return await self._services.storage.purge_runs(cutoff, limit)

    # -- waiting --

    async def wait_for_run(self, run_id: str, *, timeout: float | None = None) -> Run:
        """Wait until the run finishes. Returns the completed run; raises
        ``RunFailedError``, ``RunCancelledError``, ``NotFoundError`` (deleted) or
        ``WaitTimeoutError`` (the run keeps going)."""
        if timeout is not None:
            positive_number("timeout", timeout, allow_zero=True)
        services = self._services
        settled = asyncio.Event()
        failed_step: list[str | None] = [None]

        def listener(event: Any) -> None:
            if getattr(event, "run_id", None) == run_id and event.type in TERMINAL_EVENT_TYPES:
                if event.type == "run:fail":
                    failed_step[0] = event.failed_step_name
                settled.set()

        # Only the terminal types: a "*" listener would make every step build its
        # events (see EventBus.wants).
        unsubscribes = [services.bus.on(t, listener) for t in sorted(TERMINAL_EVENT_TYPES)]
        deadline = None if timeout is None else services.clock.now() + timedelta(seconds=timeout)

        def next_check() -> float:
            # read when the sleep starts (sleep_or_wake), not before it: the clock may
            # move in between, and the timeout must not fire that much late
            wait = services.settings.polling_interval
            if deadline is None:
                return wait
            return min(wait, max(0.0, (deadline - services.clock.now()).total_seconds()))

        try:
            while True:
                # cleared before the read, so a terminal event during it is not missed
                settled.clear()
                run = await self.get_run(run_id)
                if run is None:
                    raise NotFoundError(f"Run not found: {run_id} (deleted?)", run_id=run_id)
                if run.status == RunStatus.COMPLETED:
                    return run
                if run.status == RunStatus.FAILED:
                    raise RunFailedError(run_id, run.error, failed_step[0])
                if run.status == RunStatus.CANCELLED:
                    raise RunCancelledError(run_id)
                if deadline is not None and deadline <= services.clock.now():
                    raise WaitTimeoutError(run_id, timeout or 0.0)
                await sleep_or_wake(services.clock, settled, next_check)
        finally:
            for unsubscribe in unsubscribes:
                unsubscribe()

    async def subscribe(self, run_id: str) -> AsyncIterator[Event]:
        """This run's events as they happen in this process; ends after its terminal
        event (or at once if the run has already finished or does not exist)."""
        queue: asyncio.Queue[Event] = asyncio.Queue()

        def listener(event: Any) -> None:
            if getattr(event, "run_id", None) == run_id:
                queue.put_nowait(event)

        unsubscribe = self._services.bus.on(ANY, listener)
        try:
            run = await self.get_run(run_id)
            if run is None or run.is_terminal:
                while not queue.empty():
                    event = queue.get_nowait()
                    yield event
                    if event.type in TERMINAL_EVENT_TYPES:
                        return
                return
            while True:
                getter = asyncio.ensure_future(queue.get())
                sleeper = asyncio.ensure_future(
                    self._services.clock.sleep(self._services.settings.polling_interval)
                )
                try:
                    await asyncio.wait({getter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    sleeper.cancel()
                    if not getter.done():
                        getter.cancel()
                if getter.done() and not getter.cancelled():
                    event = getter.result()
                    yield event
                    if event.type in TERMINAL_EVENT_TYPES:
                        return
                    continue
                current = await self.get_run(run_id)
                if current is None or current.is_terminal:
                    return
        finally:
            unsubscribe()

    # -- events --

    def on(self, event_type: str, listener: Listener) -> Callable[[], None]:
        """Listen to an event type (or ``"*"`` for all); returns an unsubscribe function."""
        return self._services.bus.on(event_type, listener)

    # -- running without the background worker --

    async def process_one(self) -> bool:
        """Claim one run and execute it to the end in this task. False if none was ready."""
        await self._ready()
        run = await claim(self._services)
        if run is None:
            return False
        await Execution(self._services, run).execute()
        return True

    async def process_until_idle(self, max_runs: int | None = None) -> int:
        """Process runs one after another until none is ready (or ``max_runs``)."""
        if max_runs is not None:
            positive_int("max_runs", max_runs)
        count = 0
        while max_runs is None or count < max_runs:
            if not await self.process_one():
                break
            count += 1
        return count


def _takes_now(migrate: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(migrate).parameters.values()
    except (TypeError, ValueError):  # no signature to read: call it as the protocol says
        return True
    return any(p.name == "now" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters)


def _row_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= SQL_INT_MAX


def build_filter(
    status: str | Sequence[str] | None,
    job_name: str | Sequence[str] | None,
    labels: Mapping[str, str] | None,
    limit: int | None,
    offset: int,
) -> RunFilter:
    statuses: tuple[RunStatus, ...] | None = None
    if status is not None:
        values = [status] if isinstance(status, str) else list(status)
        resolved = []
        for value in values:
            s = STATUS_ALIASES.get(str(value))
            if s is None:
                raise ValidationError(
                    f"Invalid status {value!r}; use one of {sorted(STATUS_ALIASES)}"
                )
            resolved.append(s)
        statuses = tuple(dict.fromkeys(resolved))
    names: tuple[str, ...] | None = None
    if job_name is not None:
        given: tuple[Any, ...] = (
            tuple(job_name) if isinstance(job_name, list | tuple | set | frozenset) else (job_name,)
        )
        for name in given:
            if not isinstance(name, str):
                raise ValidationError(
                    f"Invalid job_name {name!r}: expected a job name or a list of job names"
                )
            check_text("job_name", name)
        names = given
    if labels is not None:
        labels = validate_labels(dict(labels), None, None)
    if limit is not None and not _row_index(limit):
        raise ValidationError(
            f"Invalid limit {limit!r}: expected an integer from 0 to {SQL_INT_MAX}"
        )
    if not _row_index(offset):
        raise ValidationError(
            f"Invalid offset {offset!r}: expected an integer from 0 to {SQL_INT_MAX}"
        )
    return RunFilter(
        statuses=statuses,
        job_names=names,
        labels=dict(labels) if labels else None,
        limit=limit,
        offset=offset,
    )


def create_durably(
    url_or_storage: str | Storage | None = None,
    *,
    jobs: Mapping[str, JobDefinition[Any, Any]] | None = None,
    polling_interval: float = 1.0,
    lease_duration: float = 30.0,
    lease_renew_interval: float = 5.0,
    max_concurrent_runs: int = 1,
    preserve_steps: bool = False,
    persist_logs: bool = True,
    retain_runs: str | float | timedelta | None = None,
    labels: Any = None,
    plugins: Sequence[object] = (),
    clock: Clock | None = None,
    on_listener_error: ErrorHandler | None = None,
    **backend_options: Any,
) -> Durably:
    """Build a ``Durably`` on a database URL (or a ``Storage`` object).

    Without a URL, ``DURABLY_DATABASE_URL`` is used, else ``sqlite:///durably.db``.
    ``labels`` is an optional pydantic model (or type) that validates run labels.
    ``persist_logs=False`` keeps ``step.log`` to ``log:write`` events (as the
    TypeScript library does without its log-persistence plugin): no writes, and
    ``get_logs()`` stays empty.
    Remaining keyword arguments go to the storage backend (e.g. ``synchronous=``).
    """
    settings = Settings(
        polling_interval=interval("polling_interval", polling_interval, MAX_POLLING_INTERVAL),
        lease_duration=interval("lease_duration", lease_duration, MAX_LEASE),
        lease_renew_interval=interval("lease_renew_interval", lease_renew_interval, MAX_LEASE),
        max_concurrent_runs=positive_int(
            "max_concurrent_runs", max_concurrent_runs, MAX_CONCURRENT_RUNS
        ),
        preserve_steps=bool(preserve_steps),
        persist_logs=bool(persist_logs),
        retain_runs=None if retain_runs is None else duration("retain_runs", retain_runs),
    )
    if settings.lease_renew_interval >= settings.lease_duration:
        raise ValidationError(
            f"lease_renew_interval ({settings.lease_renew_interval:g}s) must be shorter than "
            f"lease_duration ({settings.lease_duration:g}s), or leases expire between renewals"
        )
    if clock is not None and not isinstance(clock, Clock):
        raise ValidationError("clock must have now() and async sleep(seconds)")
    owns = False
    if url_or_storage is None:
        url_or_storage = os.environ.get(URL_ENV) or DEFAULT_URL
    if isinstance(url_or_storage, str):
        storage = BackendRegistry(plugins).open(url_or_storage, **backend_options)
        owns = True
    elif isinstance(url_or_storage, Storage):
        if backend_options:
            raise ValidationError(
                f"Backend options {sorted(backend_options)} only apply when a URL is given"
            )
        storage = url_or_storage
    else:
        raise ValidationError(
            "create_durably() takes a database URL (e.g. 'sqlite:///durably.db') or a "
            f"Storage object, got {type(url_or_storage).__name__}"
        )
    durably = Durably(
        storage,
        settings=settings,
        clock=clock or SystemClock(),
        labels_schema=labels,
        on_listener_error=on_listener_error,
        owns_storage=owns,
    )
    if jobs:
        durably.register(jobs)
    return durably
