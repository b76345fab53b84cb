"""The blocking API: durably without ``await``, for code that is not async.

Django and Flask views, management commands, scripts, threads::

    from durably.sync import create_durably

    durably = create_durably("sqlite:///app.db", jobs={"import_csv": import_csv})
    result = durably.jobs.import_csv.trigger_and_wait({"filename": "data.csv"})
    print(result.output.count)

Jobs stay ``async def`` (their sync step functions run in threads, as always). The
engine runs on an event loop in a thread this object owns; every method hands its
work to that loop and waits for the answer in the caller's thread, so any number
of threads may call at once. ``close()`` (or leaving ``with``) stops the worker and
the thread; an instance left open is closed at interpreter exit (its runs in flight
handed back, to resume elsewhere). After ``os.fork()`` (gunicorn ``--preload``,
uWSGI) the child builds its own engine from the same arguments on first use.

Called from inside a running event loop (async code, a Jupyter cell), every
blocking method raises :class:`durably.BlockingCallError`: it would block that loop.
Use the async API there (``durably.create_durably`` and ``await``).
"""

from __future__ import annotations

import asyncio
import atexit
import builtins
import concurrent.futures
import functools
import logging
import os
import queue
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Generic, TypeVar

from . import _app
from ._app import Durably
from ._clock import Clock
from ._errors import BlockingCallError
from ._events import ErrorHandler, Event, Listener
from ._handle import JobHandle, RunResult
from ._job import JobDefinition
from ._loop_thread import LoopThread
from ._records import Attempt, LogData, LogRecord, Progress, Run, RunStatus, StepRecord, Wait
from ._schedule import CatchUp, ScheduleRecord
from ._services import Settings
from ._storage import Storage
from ._trigger import TriggerResult
from ._waits import SignalReceipt

__all__ = ["SyncDurably", "SyncJobHandle", "SyncJobs", "SyncSchedules", "create_durably"]

T = TypeVar("T")
I = TypeVar("I")  # noqa: E741 - a job's input and output types, as in durably's handles
O = TypeVar("O")  # noqa: E741

logger = logging.getLogger("durably")

#: The end of a stream handed from the loop to a waiting thread.
_END: Any = object()


def _refuse_inside_a_loop(what: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # no loop running in this thread: blocking is fine
        return
    raise BlockingCallError(
        f"durably.sync: {what} was called inside a running event loop (async code, a "
        "Jupyter cell, or a durably listener), where it would block the loop. Use the "
        "async API there: durably.create_durably(...) and 'await', e.g. "
        "'await durably.jobs.<key>.trigger(...)' (Jupyter runs top-level await)."
    )


#: How long the main thread blocks at a time while it waits (see _slice).
_WAIT_SLICE = 0.25


def _slice() -> float | None:
    """How long a wait in this thread blocks at a time: ``None`` (until done) except
    in the main thread, which waits in slices of ``_WAIT_SLICE`` seconds.

    CPython runs signal handlers — Ctrl-C's ``KeyboardInterrupt`` — in the main
    thread, between two bytecodes, and a blocking lock or queue wait is cut short by a
    signal only if the signal arrives *during* the wait. One that arrives just before
    (the thread preempted between its last check and the wait: a loaded machine, or
    Ctrl-C pressed as the call starts) is left pending until the wait ends by itself:
    for ``trigger_and_wait``, when the run finishes. A slice ends, the pending
    handler runs, and the ``KeyboardInterrupt`` comes at most one slice late."""
    return _WAIT_SLICE if threading.current_thread() is threading.main_thread() else None


def _until_done(future: concurrent.futures.Future[Any], timeout: float) -> None:
    """Block until ``future`` is done, ``timeout`` seconds at a time (see ``_slice``)."""
    # A plain lock the done callback releases: each slice is one C call. A slice of
    # future.result(timeout) would enter the future's condition (a Python `with`)
    # each time, and a KeyboardInterrupt raised inside its __enter__, after the lock
    # was taken, would leave it held: the loop thread could never complete the future.
    done = threading.Lock()
    done.acquire()
    future.add_done_callback(lambda _: done.release())
    while not done.acquire(timeout=timeout):
        pass  # the slice ended: a pending signal's handler runs here


def _get(items: queue.SimpleQueue[Any]) -> Any:
    """The next item, waited for in slices in the main thread (see ``_slice``)."""
    timeout = _slice()
    while True:
        try:
            return items.get(timeout=timeout)
        except queue.Empty:
            continue  # the slice ended: a pending signal's handler runs here


def _wait(future: concurrent.futures.Future[T]) -> T:
    """The result of work on the loop, waited for in this thread. Interrupted (Ctrl-C),
    the work is cancelled on the loop: a run being waited for keeps going."""
    try:
        timeout = _slice()
        if timeout is not None:
            _until_done(future, timeout)
        return future.result()  # done, or (another thread) blocks until it is
    except BaseException:
        future.cancel()
        raise


async def _call(fn: Callable[[], T]) -> T:
    return fn()


async def _applied(setup: _Setup, durably: Durably) -> Callable[[], None] | None:
    return setup.apply(durably)


async def _closed(durably: Durably, timeout: float | None) -> None:
    await durably.stop(timeout)
    await durably.close()


class _Runtime:
    """One loop thread and the engine built on it."""

    def __init__(self, build: Callable[[], Durably]) -> None:
        self.thread = LoopThread("durably-sync")
        try:
            self.durably: Durably = _wait(self.thread.submit(_call(build)))
        except BaseException:
            self.thread.stop()
            raise

    def close(self, timeout: float | None) -> None:
        if not self.thread.alive:
            return
        try:
            _wait(self.thread.submit(_closed(self.durably, timeout)))
        finally:
            self.thread.stop()


def _on_exit(callback: Callable[[], None]) -> None:
    """Call ``callback`` when the interpreter exits, while thread pools still work.

    ``atexit`` callbacks run too late: by then concurrent.futures has told every pool's
    threads to quit (from threading's own exit hooks), and the pools refuse work —
    SQLite's busy-wait and closing thread, ``asyncio.to_thread``. So the callback goes
    with those hooks (``threading._register_atexit``, what concurrent.futures uses),
    registered after concurrent.futures' own so that it runs before it (they run in
    reverse order)."""
    import concurrent.futures.thread  # noqa: F401 - its exit hook first (see above)

    register = getattr(threading, "_register_atexit", None)
    try:
        if register is None:
            raise RuntimeError
        register(callback)
    except RuntimeError:  # no such hook here, or the interpreter is exiting already
        atexit.register(callback)


def _close_when_exiting(ref: weakref.ref[SyncDurably]) -> None:
    durably = ref()
    if durably is not None:
        durably._finalizer()


def _close_at_exit(runtime: _Runtime) -> None:
    """Close an instance nobody closed, at interpreter exit or when it is collected:
    runs in flight are cut off and handed back (``stop(timeout=0)``), to resume
    after their last checkpoint in the next worker."""
    thread = runtime.thread
    if not thread.alive:  # closed already, or a forked child's copy of the parent's
        return
    if thread.in_thread():  # collected by code on the loop: it cannot wait for itself
        task = thread.loop.create_task(_closed(runtime.durably, 0))
        task.add_done_callback(lambda _: thread.loop.stop())
        return
    try:
        runtime.close(timeout=0)
    except Exception:
        logger.exception("durably.sync: closing an instance left open at exit failed")


@dataclass(eq=False)
class _Setup:
    """Something applied to the engine — a listener, a job, instrumentation — kept to
    be applied again to the engine a forked child builds; ``undo`` reverts it on the
    current engine."""

    apply: Callable[[Durably], Callable[[], None] | None]
    undo: Callable[[], None] | None = None


class SyncDurably:
    """``Durably`` without ``await``: the same operations, blocking. Build one with
    :func:`durably.sync.create_durably`; use it from any thread but one running an
    event loop."""

    def __init__(self, build: Callable[[], Durably], *, reopenable: bool) -> None:
        self._build = build
        self._reopenable = reopenable
        self._lock = threading.Lock()
        self._closed = False
        self._setups: list[_Setup] = []
        self._runtime = _Runtime(build)
        self._finalizer = weakref.finalize(self, _close_at_exit, self._runtime)
        _on_exit(functools.partial(_close_when_exiting, weakref.ref(self)))
        #: The registered jobs' handles: ``durably.jobs.<key>`` and ``durably.jobs["key"]``.
        self.jobs = SyncJobs(self)
        #: The stored cron schedules (``create``, ``pause``, ``resume``, ``delete``, ``list``).
        self.schedules = SyncSchedules(self)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running" if self.running else "idle"
        return f"<SyncDurably {self.worker_id} {state}>"

    # -- the loop --

    def _live(self, what: str) -> _Runtime:
        _refuse_inside_a_loop(what)
        if self._closed:
            raise BlockingCallError(
                f"durably.sync: {what} was called after close(); create a new instance "
                "with durably.sync.create_durably()"
            )
        runtime = self._runtime
        if runtime.thread.pid != os.getpid():
            runtime = self._after_fork()
        return runtime

    def _after_fork(self) -> _Runtime:
        """This process is a fork of the one that built the engine: the loop thread did
        not come along, and the parent's connections are not ours to use. Build a
        new engine from the same arguments, with the same jobs and listeners."""
        with self._lock:
            if self._runtime.thread.pid == os.getpid():
                return self._runtime
            if not self._reopenable:
                raise BlockingCallError(
                    "durably.sync: this instance was created on a Storage object before the "
                    "process was forked, and a Storage object cannot be reopened in the "
                    "child; create the instance after the fork, or from a URL"
                )
            self._finalizer.detach()
            runtime = _Runtime(self._build)
            self._finalizer = weakref.finalize(self, _close_at_exit, runtime)
            self._runtime = runtime
            for setup in self._setups:
                setup.undo = _wait(runtime.thread.submit(_applied(setup, runtime.durably)))
            return runtime

    def _run(self, what: str, work: Callable[[Durably], Awaitable[T]]) -> T:
        """Run ``work(engine)`` on the loop and wait for its result here."""
        runtime = self._live(what)

        async def call() -> T:
            return await work(runtime.durably)

        return _wait(runtime.thread.submit(call()))

    def _run_sync(self, what: str, work: Callable[[Durably], T]) -> T:
        """Run plain ``work(engine)`` on the loop thread (it touches loop state)."""
        runtime = self._live(what)
        return _wait(runtime.thread.submit(_call(lambda: work(runtime.durably))))

    def _attach(self, apply: Callable[[Durably], Callable[[], None] | None]) -> Callable[[], None]:
        """Apply ``apply(engine)`` now (on the loop) and to every engine built after a
        fork; returns a function that reverts it (``apply`` returns its own undo)."""
        setup = _Setup(apply)
        setup.undo = self._run_sync("setup", apply)
        self._setups.append(setup)

        def detach() -> None:
            if setup in self._setups:
                self._setups.remove(setup)
                if setup.undo is not None and not self._closed:
                    self._run_sync("unsubscribe", lambda _: setup.undo() if setup.undo else None)

        return detach

    # -- lifecycle --

    @property
    def settings(self) -> Settings:
        """The options given to ``create_durably`` (intervals, slots, retention, …)."""
        return self._runtime.durably.settings

    @property
    def clock(self) -> Clock:
        """The clock every time read and timed wait goes through."""
        return self._runtime.durably.clock

    @property
    def clock_offset(self) -> timedelta:
        """The database's clock minus this process's, as last measured: see
        :attr:`durably.Durably.clock_offset`."""
        return self._runtime.durably.clock_offset

    @property
    def worker_id(self) -> str:
        """The lease owner this instance writes into the runs it claims."""
        return self._runtime.durably.worker_id

    @property
    def closed(self) -> bool:
        """Was ``close()`` called?"""
        return self._closed

    @property
    def running(self) -> bool:
        """Is the background worker running?"""
        runtime = self._runtime
        return not self._closed and runtime.thread.alive and runtime.durably.running

    def migrate(self) -> None:
        """Create or upgrade the database schema (idempotent, multi-process safe)."""
        self._run("migrate()", lambda d: d.migrate())

    def init(self) -> None:
        """``migrate()`` then ``start()``."""
        self._run("init()", lambda d: d.init())

    def start(self, *, max_concurrent_runs: int | None = None) -> None:
        """Start the worker on the background loop (returns at once); it claims and
        executes runs until ``stop()`` or ``close()``."""
        self._run_sync("start()", lambda d: d.start(max_concurrent_runs=max_concurrent_runs))

    def stop(self, timeout: float | None = None) -> None:
        """Stop claiming and wait for in-flight runs. After ``timeout`` seconds their
        tasks are cancelled and their leases handed back (another worker resumes them
        at once)."""
        self._run("stop()", lambda d: d.stop(timeout))

    def close(self) -> None:
        """``stop()`` (waiting for runs in flight: call ``stop(timeout)`` first to cut
        them off), release the storage if this instance opened it, and end the loop
        thread. Idempotent; later calls of other methods raise
        :class:`durably.BlockingCallError`."""
        self._close(None)

    def _close(self, timeout: float | None) -> None:
        _refuse_inside_a_loop("close()")
        with self._lock:
            if self._closed:
                return
            self._closed = True
            runtime = self._runtime
            self._finalizer.detach()
        if runtime.thread.pid == os.getpid():
            runtime.close(timeout)

    def __enter__(self) -> SyncDurably:
        self.init()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Ctrl-C: do not wait for runs; they are handed back and resume elsewhere
        interrupted = exc is not None and not isinstance(exc, Exception)
        self._close(0 if interrupted else None)

    def run_worker(
        self, *, max_concurrent_runs: int | None = None, grace: float | None = 30.0
    ) -> None:
        """Run the worker until SIGINT or SIGTERM (``manage.py`` commands, ``flask``
        commands, plain scripts): migrate, start, block; on the first signal stop
        claiming and give the runs in flight ``grace`` seconds (``None``: as long as
        they take) to finish, on a second signal (or after ``grace``) cut them off
        and hand their leases back. Returns once stopped; ``close()`` is still up to
        the caller. Signals are caught only when called from the main thread;
        elsewhere it returns when another thread calls ``stop()`` or ``close()``."""
        signals = _SignalCatcher()
        with signals:
            self.migrate()
            self.start(max_concurrent_runs=max_concurrent_runs)
            logger.info("durably worker %s started", self.worker_id)
            while not signals.wait(0.25):
                if not self.running:
                    return
            runtime = self._live("run_worker()")
            stopping = runtime.thread.submit(_awaited(lambda: runtime.durably.stop(grace)))
            seen = signals.count
            while not _done_within(stopping, 0.25):
                if signals.count > seen:  # again: stop now
                    self._run("run_worker()", lambda d: d.stop(timeout=0))
                    break
            _wait(stopping)
            logger.info("durably worker %s stopped", self.worker_id)

    # -- jobs --

    def register(
        self, jobs: Mapping[str, JobDefinition[Any, Any]]
    ) -> dict[str, SyncJobHandle[Any, Any]]:
        """Register job definitions under keys; returns their handles (also in ``jobs``)."""
        jobs = dict(jobs) if isinstance(jobs, Mapping) else jobs
        self._attach(lambda d: _registered(d, jobs))
        return {key: SyncJobHandle(self, key) for key in jobs}

    # -- queries --

    def get_run(self, run_id: str) -> Run | None:
        """The run with this id, or ``None``."""
        return self._run("get_run()", lambda d: d.get_run(run_id))

    def get_runs(
        self,
        *,
        status: str | Sequence[str] | None = None,
        job_name: str | Sequence[str] | None = None,
        labels: Mapping[str, str] | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Run]:
        """Runs newest first, filtered as ``Durably.get_runs``."""
        return self._run(
            "get_runs()",
            lambda d: d.get_runs(
                status=status, job_name=job_name, labels=labels, limit=limit, offset=offset
            ),
        )

    def count_runs(
        self,
        *,
        status: str | Sequence[str] | None = None,
        job_name: str | Sequence[str] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> dict[RunStatus, int]:
        """How many runs match, by status (``Durably.count_runs``)."""
        return self._run(
            "count_runs()", lambda d: d.count_runs(status=status, job_name=job_name, labels=labels)
        )

    def get_steps(self, run_id: str) -> list[StepRecord]:
        """The run's step records in execution order."""
        return self._run("get_steps()", lambda d: d.get_steps(run_id))

    def get_logs(self, run_id: str) -> list[LogRecord]:
        """The run's stored ``step.log`` entries, oldest first."""
        return self._run("get_logs()", lambda d: d.get_logs(run_id))

    def get_attempts(self, run_id: str) -> list[Attempt]:
        """The run's attempt records, oldest first."""
        return self._run("get_attempts()", lambda d: d.get_attempts(run_id))

    def get_waits(self, run_id: str) -> list[Wait]:
        """The run's durable waits, oldest first."""
        return self._run("get_waits()", lambda d: d.get_waits(run_id))

    def get_wait(self, run_id: str, name: str) -> Wait | None:
        """The run's wait called ``name``, or ``None``."""
        return self._run("get_wait()", lambda d: d.get_wait(run_id, name))

    def signal(
        self, run_id: str, name: str, payload: Any = None, *, signal_id: str | None = None
    ) -> SignalReceipt:
        """Deliver a signal to a run's durable wait (``Durably.signal``)."""
        return self._run("signal()", lambda d: d.signal(run_id, name, payload, signal_id=signal_id))

    # -- control --

    def cancel(self, run_id: str) -> Run:
        """Cancel a pending, leased or waiting run. Terminal → ``ConflictError``."""
        return self._run("cancel()", lambda d: d.cancel(run_id))

    def retry(self, run_id: str) -> Run:
        """Put a failed or cancelled run back to pending, keeping its completed steps."""
        return self._run("retry()", lambda d: d.retry(run_id))

    def retrigger(self, run_id: str) -> Run:
        """Trigger a finished run again as a new run (same input, key and labels)."""
        return self._run("retrigger()", lambda d: d.retrigger(run_id))

    def delete_run(self, run_id: str) -> Run:
        """Delete a finished run with its steps, logs and labels."""
        return self._run("delete_run()", lambda d: d.delete_run(run_id))

    def purge_runs(self, older_than: str | float | timedelta | datetime, limit: int = 500) -> int:
        """Delete finished runs completed before ``older_than``; returns how many."""
        return self._run("purge_runs()", lambda d: d.purge_runs(older_than, limit))

    # -- waiting and events --

    def wait_for_run(self, run_id: str, *, timeout: float | None = None) -> Run:
        """Wait until the run finishes (``Durably.wait_for_run``); Ctrl-C stops waiting,
        not the run."""
        return self._run("wait_for_run()", lambda d: d.wait_for_run(run_id, timeout=timeout))

    def subscribe(self, run_id: str) -> Iterator[Event]:
        """This run's events as this process emits them, in the caller's thread; ends
        after its terminal event (or at once if it has finished or does not exist)."""
        runtime = self._live("subscribe()")
        events: queue.SimpleQueue[Any] = queue.SimpleQueue()

        async def pump() -> None:
            try:
                async for event in runtime.durably.subscribe(run_id):
                    events.put(event)
            finally:
                events.put(_END)

        future = runtime.thread.submit(pump())
        try:
            while (event := _get(events)) is not _END:
                yield event
            future.result()  # its error, if it ended with one
        finally:
            future.cancel()

    def on(self, event_type: str, listener: Listener) -> Callable[[], None]:
        """Listen to an event type (or ``"*"``); returns an unsubscribe function.

        Listeners are called on durably's loop thread: keep them quick (hand slow work
        to a queue), and make no blocking call of this API there."""
        return self._attach(lambda d: d.on(event_type, listener))

    # -- running without the background worker --

    def process_one(self) -> bool:
        """Claim one run and execute it to the end. False if none was ready."""
        return self._run("process_one()", lambda d: d.process_one())

    def process_until_idle(self, max_runs: int | None = None) -> int:
        """Process runs one after another until none is ready (or ``max_runs``)."""
        return self._run("process_until_idle()", lambda d: d.process_until_idle(max_runs))


def _registered(durably: Durably, jobs: Any) -> None:
    durably.register(jobs)


def _done_within(future: concurrent.futures.Future[Any], seconds: float) -> bool:
    done, _ = concurrent.futures.wait([future], timeout=seconds)
    return bool(done)


class _SignalCatcher:
    """SIGINT and SIGTERM counted instead of raising, while in its ``with`` block
    (in the main thread only: Python delivers signals there)."""

    def __init__(self) -> None:
        self.count = 0
        self._event = threading.Event()
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        self.count += 1
        self._event.set()

    def wait(self, seconds: float) -> bool:
        return self._event.wait(seconds)

    def __enter__(self) -> _SignalCatcher:
        import signal

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        import signal

        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


class SyncJobHandle(Generic[I, O]):
    """A registered job of a :class:`SyncDurably`: ``durably.jobs.<key>``."""

    def __init__(self, durably: SyncDurably, key: str) -> None:
        self._durably = durably
        self.key = key

    def _handle(self, engine: Durably) -> JobHandle[I, O]:
        return engine.jobs[self.key]

    @property
    def definition(self) -> JobDefinition[I, O]:
        """The job's definition (``define_job``)."""
        return self._handle(self._durably._runtime.durably).definition

    @property
    def name(self) -> str:
        """The job's name, as stored in its runs."""
        return self.definition.name

    def __repr__(self) -> str:
        return f"SyncJobHandle({self.key!r}, name={self.name!r})"

    def trigger(
        self,
        input: I | Any,
        *,
        idempotency_key: str | None = None,
        concurrency_key: str | None = None,
        labels: Mapping[str, str] | Any = None,
        coalesce: str | None = None,
    ) -> TriggerResult:
        """Enqueue a run (``JobHandle.trigger``); returns once it is stored."""
        return self._durably._run(
            "trigger()",
            lambda d: self._handle(d).trigger(
                input,
                idempotency_key=idempotency_key,
                concurrency_key=concurrency_key,
                labels=labels,
                coalesce=coalesce,
            ),
        )

    def batch_trigger(
        self, items: Sequence[I | Any | tuple[I | Any, Mapping[str, Any]]]
    ) -> list[TriggerResult]:
        """Trigger many runs in one transaction, all or nothing (``JobHandle.batch_trigger``)."""
        return self._durably._run("batch_trigger()", lambda d: self._handle(d).batch_trigger(items))

    def trigger_and_wait(
        self,
        input: I | Any,
        *,
        timeout: float | None = None,
        on_progress: Callable[[Progress], Any] | None = None,
        on_log: Callable[[LogData], Any] | None = None,
        idempotency_key: str | None = None,
        concurrency_key: str | None = None,
        labels: Mapping[str, str] | Any = None,
        coalesce: str | None = None,
    ) -> RunResult[O]:
        """Trigger and wait for the run to finish; returns the typed output
        (``JobHandle.trigger_and_wait``). ``on_progress`` and ``on_log`` are called in
        the caller's thread while it waits. Ctrl-C stops the waiting, not the run."""
        # the callbacks' calls are queued here by the loop and made in this thread
        calls: queue.SimpleQueue[Any] = queue.SimpleQueue()

        def relay(callback: Callable[[Any], Any] | None) -> Callable[[Any], None] | None:
            return None if callback is None else lambda value: calls.put((callback, value))

        runtime = self._durably._live("trigger_and_wait()")
        future = runtime.thread.submit(
            _awaited(
                lambda: self._handle(runtime.durably).trigger_and_wait(
                    input,
                    timeout=timeout,
                    on_progress=relay(on_progress),
                    on_log=relay(on_log),
                    idempotency_key=idempotency_key,
                    concurrency_key=concurrency_key,
                    labels=labels,
                    coalesce=coalesce,
                )
            )
        )
        if on_progress is not None or on_log is not None:
            future.add_done_callback(lambda _: calls.put(_END))
            try:
                while (call := _get(calls)) is not _END:
                    callback, value = call
                    try:
                        callback(value)
                    except Exception:  # as a failing listener: reported, the wait goes on
                        logger.exception("durably: a trigger_and_wait callback raised")
            except BaseException:
                future.cancel()
                raise
        return _wait(future)

    def get_run(self, run_id: str) -> Run | None:
        """The run, if it exists and belongs to this job."""
        return self._durably._run("get_run()", lambda d: self._handle(d).get_run(run_id))

    def get_runs(
        self,
        *,
        status: str | Sequence[str] | None = None,
        labels: Mapping[str, str] | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Run]:
        """This job's runs, newest first."""
        return self._durably._run(
            "get_runs()",
            lambda d: self._handle(d).get_runs(
                status=status, labels=labels, limit=limit, offset=offset
            ),
        )

    def decode_output(self, output: Any) -> O:
        """A stored output restored to the job's output type (``JobHandle.decode_output``)."""
        return self._handle(self._durably._runtime.durably).decode_output(output)


class SyncSchedules:
    """``durably.schedules`` of a :class:`SyncDurably`: the run-time schedule API
    (``Durably.schedules``) without ``await``."""

    def __init__(self, durably: SyncDurably) -> None:
        self._durably = durably

    def create(
        self,
        name: str,
        job: JobDefinition[Any, Any] | JobHandle[Any, Any] | SyncJobHandle[Any, Any] | str,
        *,
        cron: str,
        timezone: str = "UTC",
        input: Any = None,
        labels: Mapping[str, str] | None = None,
        catch_up: CatchUp = "latest",
        max_catch_up: int = 10,
        slot_field: str | None = None,
        paused: bool = False,
        replace: bool = False,
    ) -> ScheduleRecord:
        """Store a schedule that fires ``job`` at every slot of ``cron``
        (``Schedules.create``)."""
        target = job.definition if isinstance(job, SyncJobHandle) else job
        return self._durably._run(
            "schedules.create()",
            lambda d: d.schedules.create(
                name,
                target,
                cron=cron,
                timezone=timezone,
                input=input,
                labels=labels,
                catch_up=catch_up,
                max_catch_up=max_catch_up,
                slot_field=slot_field,
                paused=paused,
                replace=replace,
            ),
        )

    def pause(self, name: str) -> ScheduleRecord:
        """Stop firing ``name``."""
        return self._durably._run("schedules.pause()", lambda d: d.schedules.pause(name))

    def resume(self, name: str) -> ScheduleRecord:
        """Fire ``name`` again, from its first slot after now."""
        return self._durably._run("schedules.resume()", lambda d: d.schedules.resume(name))

    def delete(self, name: str) -> ScheduleRecord:
        """Delete ``name`` (its runs stay); returns the deleted schedule."""
        return self._durably._run("schedules.delete()", lambda d: d.schedules.delete(name))

    def get(self, name: str) -> ScheduleRecord | None:
        """The schedule ``name``, or ``None``."""
        return self._durably._run("schedules.get()", lambda d: d.schedules.get(name))

    def list(self, *, job_name: str | Sequence[str] | None = None) -> builtins.list[ScheduleRecord]:
        """Every schedule (of ``job_name``), by name, with its next fire time."""
        return self._durably._run("schedules.list()", lambda d: d.schedules.list(job_name=job_name))

    def next_fire_times(self, schedule: ScheduleRecord, count: int = 5) -> builtins.list[datetime]:
        """The next ``count`` slots of a schedule (computed here, no database)."""
        return self._durably._runtime.durably.schedules.next_fire_times(schedule, count)

    def fire_due(self) -> builtins.list[TriggerResult]:
        """Fire now every due slot of the registered jobs' schedules."""
        return self._durably._run("schedules.fire_due()", lambda d: d.schedules.fire_due())


async def _awaited(make: Callable[[], Awaitable[T]]) -> T:
    return await make()


class SyncJobs(Mapping[str, SyncJobHandle[Any, Any]]):
    """``durably.jobs.<key>`` and ``durably.jobs["key"]`` of a :class:`SyncDurably`."""

    def __init__(self, durably: SyncDurably) -> None:
        self._durably = durably

    def _keys(self) -> Any:
        return self._durably._runtime.durably.jobs

    def __getitem__(self, key: str) -> SyncJobHandle[Any, Any]:
        self._keys()[key]  # NotFoundError listing the registered keys
        return SyncJobHandle(self._durably, key)

    def __getattr__(self, key: str) -> SyncJobHandle[Any, Any]:
        if key.startswith("_"):
            raise AttributeError(key)
        getattr(self._keys(), key)  # AttributeError listing the registered keys
        return SyncJobHandle(self._durably, key)

    def __contains__(self, key: object) -> bool:
        return key in self._keys()

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._keys()))

    def __len__(self) -> int:
        return len(self._keys())

    def __repr__(self) -> str:
        return f"SyncJobs({sorted(self)})"


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
) -> SyncDurably:
    """Build a :class:`SyncDurably`: the arguments of :func:`durably.create_durably`,
    the same operations without ``await``.

    The engine is built on a loop thread of its own, started here (so a bad option
    raises here). The worker is not started: ``with create_durably(...) as durably``
    migrates and starts it (as ``async with``), ``start()`` starts it, ``run_worker()``
    runs it until a signal. A web process that only triggers needs neither: the
    first operation migrates the database.
    """
    options: dict[str, Any] = {
        "jobs": jobs,
        "polling_interval": polling_interval,
        "lease_duration": lease_duration,
        "lease_renew_interval": lease_renew_interval,
        "max_concurrent_runs": max_concurrent_runs,
        "preserve_steps": preserve_steps,
        "persist_logs": persist_logs,
        "retain_runs": retain_runs,
        "labels": labels,
        "plugins": plugins,
        "clock": clock,
        "on_listener_error": on_listener_error,
        **backend_options,
    }
    _refuse_inside_a_loop("create_durably()")
    return SyncDurably(
        lambda: _app.create_durably(url_or_storage, **options),
        reopenable=not isinstance(url_or_storage, Storage),
    )
