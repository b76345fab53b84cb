"""The blocking API (``durably.sync``): the same operations as the async API without
``await``, from plain threads (many at once), on real SQLite files; its loop thread
and its lifecycle (close, ``with``, exit, fork, signals); the refusal inside a running
event loop (docs/guides/blocking.md, docs/semantics.md "The blocking API")."""

from __future__ import annotations

import _thread
import asyncio
import contextlib
import inspect
import logging
import signal
import sys
import textwrap
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any, assert_type

import pydantic
import pytest
from engine_support import at_once
from process_support import run_captured

import durably
from durably import (
    BlockingCallError,
    ConflictError,
    NotFoundError,
    Progress,
    RunCancelledError,
    RunStatus,
    Step,
    ValidationError,
    WaitTimeoutError,
    define_job,
)
from durably._schedules import Schedules
from durably.sync import SyncDurably, SyncJobHandle, SyncSchedules, create_durably
from durably_testing.clock import ManualClock


class AddIn(pydantic.BaseModel):
    n: int


class AddOut(pydantic.BaseModel):
    total: int


@define_job("add", input=AddIn, output=AddOut)
async def add(step: Step, payload: AddIn) -> AddOut:
    total = 0
    for i in range(payload.n):
        total += await step.run(f"s{i}", lambda i=i: i)
        step.progress(i + 1, payload.n)
    step.log.info("added", total=total)
    return AddOut(total=total)


class Gate:
    """A job whose step blocks (in its worker thread) until released; ``entered`` is
    set once the step runs."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def wait(self) -> str:
        self.entered.set()
        assert self.release.wait(60), "the gate was never released"
        return "released"

    async def job(self, step: Step, payload: Any) -> Any:
        return await step.run("gate", self.wait)


def thread_names() -> set[str]:
    return {t.name for t in threading.enumerate()}


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'durably.db'}"


@pytest.fixture
def make(url: str) -> Any:
    made: list[SyncDurably] = []

    def make(**options: Any) -> SyncDurably:
        options.setdefault("polling_interval", 0.05)
        d = create_durably(url, **options)
        made.append(d)
        return d

    yield make
    for d in made:
        if not d.closed:
            d.stop(timeout=0)
            d.close()


def test_trigger_and_wait__typed_output_without_await(make: Any) -> None:
    with make(jobs={"add": add}) as d:
        handle: SyncJobHandle[AddIn, AddOut] = d.jobs.add
        result = handle.trigger_and_wait(AddIn(n=4))
        assert_type(result.output, AddOut)
        assert result.output == AddOut(total=6)
        assert result.disposition == "created"
        assert result.run.status == RunStatus.COMPLETED
        assert d.get_run(result.id) == result.run
        assert handle.get_run(result.id) == result.run
        assert [r.id for r in handle.get_runs(status="completed")] == [result.id]
        assert d.count_runs(job_name="add")[RunStatus.COMPLETED] == 1
        assert handle.decode_output({"total": 3}) == AddOut(total=3)
        assert handle.name == "add"
        assert handle.key == "add"
        assert handle.definition is add


def test_trigger_and_wait__callbacks_run_in_the_callers_thread(make: Any) -> None:
    seen: list[tuple[str, Any, str]] = []
    with make(jobs={"add": add}) as d:
        d.jobs.add.trigger_and_wait(
            {"n": 3},
            on_progress=lambda p: seen.append(("progress", p, threading.current_thread().name)),
            on_log=lambda e: seen.append(("log", e.message, threading.current_thread().name)),
        )
    me = threading.current_thread().name
    assert seen == [
        ("progress", Progress(current=1, total=3), me),
        ("progress", Progress(current=2, total=3), me),
        ("progress", Progress(current=3, total=3), me),
        ("log", "added", me),
    ]


def test_trigger_and_wait__a_failing_callback_is_logged_and_the_wait_goes_on(
    make: Any, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(progress: Progress) -> None:
        raise RuntimeError("callback broke")

    with make(jobs={"add": add}) as d, caplog.at_level(logging.ERROR, logger="durably"):
        assert d.jobs.add.trigger_and_wait({"n": 2}, on_progress=broken).output.total == 1
    assert [r.exc_info[1] for r in caplog.records if r.exc_info]
    assert all("callback broke" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)


def test_many_threads_trigger_and_wait_at_once(make: Any) -> None:
    """32 threads share one instance (4 slots): each gets its own run's output."""
    with make(jobs={"add": add}, max_concurrent_runs=4) as d:
        outputs = at_once(
            lambda n: d.jobs.add.trigger_and_wait({"n": n}, timeout=120).output.total, range(32)
        )
        assert outputs == [n * (n - 1) // 2 for n in range(32)]
        assert d.count_runs()[RunStatus.COMPLETED] == 32


def test_many_threads_trigger_while_another_process_style_worker_runs_them(url: str) -> None:
    """Triggering instances that never start a worker (a web process) and one that does."""
    web = create_durably(url, jobs={"add": add})
    worker = create_durably(url, jobs={"add": add}, polling_interval=0.05)
    try:
        ids = at_once(lambda n: web.jobs.add.trigger({"n": n}).id, range(16))
        assert not web.running
        assert web.count_runs()[RunStatus.PENDING] == 16
        worker.start()
        for run_id in ids:
            run = web.wait_for_run(run_id, timeout=120)
            assert run.status == RunStatus.COMPLETED
            assert run.lease_owner is None
        assert sorted(r.output["total"] for r in web.get_runs()) == sorted(
            n * (n - 1) // 2 for n in range(16)
        )
    finally:
        web.close()
        worker.close()


def test_control__cancel_retry_retrigger_delete_purge(make: Any) -> None:
    gate = Gate()
    job = define_job("gated", run=gate.job)
    with make(jobs={"gated": job}, preserve_steps=True) as d:
        run_id = d.jobs.gated.trigger(None).id
        assert gate.entered.wait(60)
        cancelled = d.cancel(run_id)
        assert cancelled.status == RunStatus.CANCELLED
        with pytest.raises(RunCancelledError):
            d.wait_for_run(run_id)
        with pytest.raises(ConflictError):
            d.cancel(run_id)
        gate.release.set()
        assert d.retry(run_id).status == RunStatus.PENDING
        assert d.wait_for_run(run_id, timeout=60).output == "released"
        assert [s.name for s in d.get_steps(run_id)] == ["gate"]
        again = d.retrigger(run_id)
        assert again.id != run_id
        assert d.wait_for_run(again.id, timeout=60).status == RunStatus.COMPLETED
        assert d.delete_run(run_id).id == run_id
        assert d.get_run(run_id) is None
        with pytest.raises(NotFoundError):
            d.retry(run_id)
        assert d.purge_runs(timedelta(0)) == 1
        assert d.get_runs() == []


def test_get_logs_and_steps(make: Any) -> None:
    with make(jobs={"add": add}, preserve_steps=True) as d:
        run_id = d.jobs.add.trigger_and_wait({"n": 2}).id
        assert [s.name for s in d.get_steps(run_id)] == ["s0", "s1"]
        assert [(log.message, log.data) for log in d.get_logs(run_id)] == [("added", {"total": 1})]


def test_batch_trigger_and_process_without_a_worker(make: Any) -> None:
    d = make(jobs={"add": add})
    results = d.jobs.add.batch_trigger([{"n": 1}, ({"n": 3}, {"labels": {"k": "v"}})])
    assert [r.status for r in results] == [RunStatus.PENDING, RunStatus.PENDING]
    assert not d.running
    assert d.process_one() is True
    assert d.process_until_idle() == 1
    assert d.process_one() is False
    assert [r.output for r in d.get_runs(labels={"k": "v"})] == [{"total": 3}]


def test_validation_errors_reach_the_caller_as_they_are(make: Any) -> None:
    d = make(jobs={"add": add})
    with pytest.raises(ValidationError, match="Invalid input for job 'add'"):
        d.jobs.add.trigger({"n": "many"})
    with pytest.raises(AttributeError, match="No job registered under 'nope'"):
        d.jobs.nope  # noqa: B018
    with pytest.raises(NotFoundError, match="registered: \\['add'\\]"):
        d.jobs["nope"]
    assert list(d.jobs) == ["add"]
    assert "add" in d.jobs
    assert len(d.jobs) == 1


def test_wait_timeout_leaves_the_run_going(make: Any) -> None:
    gate = Gate()
    with make(jobs={"gated": define_job("gated", run=gate.job)}) as d:
        with pytest.raises(WaitTimeoutError):
            d.jobs.gated.trigger_and_wait(None, timeout=0)
        gate.release.set()
        (run,) = d.get_runs()
        assert d.wait_for_run(run.id, timeout=60).output == "released"


def test_register_on_and_subscribe(make: Any) -> None:
    d = make()
    handles = d.register({"add": add})
    assert handles["add"].name == "add"
    seen: list[tuple[str, str]] = []
    unsubscribe = d.on(
        "run:complete", lambda e: seen.append((e.type, threading.current_thread().name))
    )
    d.start()
    result = d.jobs.add.trigger_and_wait({"n": 1})
    assert seen == [("run:complete", "durably-sync")]  # listeners run on the loop thread
    unsubscribe()
    unsubscribe()  # idempotent
    run_id = d.jobs.add.trigger({"n": 2}).id
    types = [e.type for e in d.subscribe(run_id)]
    assert types[-1] == "run:complete"
    assert "step:complete" in types
    assert seen == [("run:complete", "durably-sync")]
    assert list(d.subscribe(result.id)) == []  # finished: ends at once


def test_schedules__the_run_time_api_without_await(make: Any) -> None:
    clock = ManualClock()
    d = make(jobs={"add": add}, clock=clock)
    created = d.schedules.create("minutely", d.jobs.add, cron="* * * * *", input={"n": 2})
    assert created.job_name == "add"
    assert [s.name for s in d.schedules.list()] == ["minutely"]
    assert len(d.schedules.next_fire_times(created, 3)) == 3
    assert d.schedules.pause("minutely").status == "paused"
    assert d.schedules.resume("minutely").status == "active"
    clock.set(clock.now() + timedelta(minutes=2))
    (fired,) = d.schedules.fire_due()  # catch_up="latest": the last slot only
    assert d.process_one() is True
    assert d.get_run(fired.id).output == {"total": 1}
    assert d.schedules.delete("minutely").name == "minutely"
    assert d.schedules.get("minutely") is None


def test_inside_a_running_loop__every_blocking_call_is_refused(make: Any) -> None:
    d = make(jobs={"add": add})

    async def in_async_code() -> None:
        with pytest.raises(BlockingCallError, match="inside a running event loop") as info:
            d.jobs.add.trigger({"n": 1})
        assert "await" in str(info.value)
        with pytest.raises(BlockingCallError):
            d.get_runs()
        with pytest.raises(BlockingCallError):
            create_durably("memory://")
        with pytest.raises(BlockingCallError):
            d.close()

    asyncio.run(in_async_code())
    assert d.get_runs() == []  # outside the loop, the same instance works


def test_a_blocking_call_from_a_listener_is_refused_not_deadlocked(make: Any) -> None:
    d = make(jobs={"add": add})
    errors: list[BaseException] = []

    def listener(event: Any) -> None:
        try:
            d.get_runs()
        except BaseException as exc:
            errors.append(exc)

    d.on("run:trigger", listener)
    d.jobs.add.trigger({"n": 1})
    assert len(errors) == 1
    assert isinstance(errors[0], BlockingCallError)


def test_a_sync_step_may_trigger_through_the_blocking_api(make: Any) -> None:
    """A sync step function runs in a worker thread, where blocking is fine."""
    holder: list[SyncDurably] = []

    @define_job("parent")
    async def parent(step: Step, payload: Any) -> Any:
        return await step.run("spawn", lambda: holder[0].jobs.add.trigger({"n": 3}).id)

    with make(jobs={"add": add, "parent": parent}) as d:
        holder.append(d)
        child = d.jobs.parent.trigger_and_wait(None).output
        assert d.wait_for_run(child, timeout=60).output == {"total": 3}


def test_close__idempotent_ends_the_thread_and_refuses_later_calls(make: Any) -> None:
    d = make(jobs={"add": add})
    d.start()
    assert d.running
    assert "durably-sync" in thread_names()
    d.close()
    d.close()
    assert not d.running
    assert "durably-sync" not in thread_names()
    with pytest.raises(BlockingCallError, match="after close"):
        d.get_runs()
    assert repr(d).endswith("closed>")


def test_with_block__stops_the_worker_and_closes(url: str) -> None:
    with create_durably(url, jobs={"add": add}) as d:
        assert d.running
    assert not d.running
    assert "durably-sync" not in thread_names()


def test_create__a_bad_option_raises_here_and_leaves_no_thread(url: str) -> None:
    before = thread_names()
    with pytest.raises(ValidationError, match="max_concurrent_runs"):
        create_durably(url, max_concurrent_runs=0)
    with pytest.raises(durably.UnknownBackendError):
        create_durably("nope://x")
    assert thread_names() <= before


def test_stop_with_timeout_hands_the_lease_back(url: str) -> None:
    gate = Gate()
    job = define_job("gated", run=gate.job)
    with create_durably(url, jobs={"gated": job}) as d:
        run_id = d.jobs.gated.trigger(None).id
        assert gate.entered.wait(60)
        d.stop(timeout=0)
        run = d.get_run(run_id)
        assert run is not None
        assert run.status == RunStatus.LEASED
        assert run.lease_expires_at is not None
        assert run.lease_expires_at <= d.clock.now()
        gate.release.set()


def test_ctrl_c_while_waiting_stops_the_wait_not_the_run(make: Any) -> None:
    """A real SIGINT to this (main) thread while it blocks in trigger_and_wait."""
    assert threading.current_thread() is threading.main_thread()
    gate = Gate()
    with make(jobs={"gated": define_job("gated", run=gate.job)}) as d:

        def interrupt() -> None:
            assert gate.entered.wait(60)
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

        threading.Thread(target=interrupt).start()
        with pytest.raises(KeyboardInterrupt):
            d.jobs.gated.trigger_and_wait(None)
        (run,) = d.get_runs()
        assert run.status == RunStatus.LEASED
        gate.release.set()
        assert d.wait_for_run(run.id, timeout=60).output == "released"


def _blocking_waits() -> dict[str, Any]:
    """The ways of blocking until a run ends, as ``wait(durably)``; each triggers the
    gated run itself, so once the gate is entered the call is (about to be) blocked.
    (``subscribe()`` blocks on the same kind of queue as the callbacks; when it has
    seen the run's last event before the gate cannot be known: the worker may have
    emitted it before the subscription began.)"""

    def trigger_and_wait(d: SyncDurably) -> Any:
        return d.jobs.gated.trigger_and_wait(None)

    def with_callbacks(d: SyncDurably) -> Any:  # blocks on the callbacks' queue instead
        return d.jobs.gated.trigger_and_wait(None, on_progress=print, on_log=print)

    def wait_for_run(d: SyncDurably) -> Any:
        return d.wait_for_run(d.jobs.gated.trigger(None).id)

    return {f.__name__: f for f in (trigger_and_wait, with_callbacks, wait_for_run)}


@pytest.mark.parametrize("wait", _blocking_waits().values(), ids=_blocking_waits().keys())
def test_ctrl_c_the_wait_did_not_see_still_stops_it(make: Any, wait: Any) -> None:
    """A SIGINT that arrives just before the main thread blocks (not during the wait)
    does not cut the blocking call short: its handler runs when the call returns.
    _thread.interrupt_main() is exactly that: the handler is made pending and nothing
    interrupts the wait. The wait must still end with the KeyboardInterrupt, at once
    (it waits in slices), not when the run ends: before, the gate's step gave up after
    60 s and the run was failed (test_ctrl_c_while_waiting_... 1 time in ~1000 on a
    loaded machine)."""
    assert threading.current_thread() is threading.main_thread()
    gate = Gate()
    with make(jobs={"gated": define_job("gated", run=gate.job)}) as d:

        def interrupt() -> None:
            assert gate.entered.wait(60)
            _thread.interrupt_main()

        threading.Thread(target=interrupt).start()
        with pytest.raises(KeyboardInterrupt):
            wait(d)
        (run,) = d.get_runs()
        assert run.status == RunStatus.LEASED
        gate.release.set()
        assert d.wait_for_run(run.id, timeout=60).output == "released"
        # the instance still works
        assert d.jobs.gated.trigger_and_wait(None, timeout=60).output == "released"


def test_run_worker__off_the_main_thread_returns_when_stopped(make: Any) -> None:
    d = make(jobs={"add": add})
    finished = threading.Event()

    def serve() -> None:
        d.run_worker(grace=None)
        finished.set()

    thread = threading.Thread(target=serve)
    thread.start()
    assert d.jobs.add.trigger_and_wait({"n": 3}, timeout=60).output.total == 3
    d.stop()
    thread.join(60)
    assert finished.is_set()


# -- the API is the async one --


def _parameters(fn: Any) -> list[tuple[str, Any, Any]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


def test_create_durably__takes_exactly_the_async_arguments() -> None:
    assert _parameters(create_durably) == _parameters(durably.create_durably)


#: Public methods the blocking API leaves out, and why.
NOT_MIRRORED: dict[str, str] = {
    "declare": "Schedules.declare: called by register()",
    "sync": "Schedules.sync: called by the scheduler",
    "tick": "Schedules.tick: the scheduler's round (fire_due is the public one)",
    "storage": "Durably.storage: its methods are coroutines of the engine's loop",
}


@pytest.mark.parametrize(
    ("sync_cls", "async_cls"),
    [
        (SyncDurably, durably.Durably),
        (SyncJobHandle, durably.JobHandle),
        (SyncSchedules, Schedules),
    ],
)
def test_every_public_method_has_its_blocking_twin(sync_cls: type, async_cls: type) -> None:
    """When the async API grows a method (e.g. ``signal``), this fails until the
    blocking API has it too, with the same parameters."""
    for name, member in inspect.getmembers(async_cls):
        if name.startswith("_") or name in NOT_MIRRORED:
            continue
        assert hasattr(sync_cls, name), f"{sync_cls.__name__} lacks {name}"
        if isinstance(member, property):
            continue
        twin = getattr(sync_cls, name)
        assert _parameters(twin) == _parameters(member), name


# -- processes: exit and fork --

SCRIPT_HEAD = """
import os, sys, threading
from durably import Step, define_job
from durably.sync import create_durably

import asyncio

started = threading.Event()

async def block():
    started.set()
    await asyncio.Event().wait()  # never returns: only a hand-back ends this run here

@define_job("stuck")
async def stuck(step: Step, payload: object) -> object:
    return await step.run("block", block)

@define_job("echo")
async def echo(step: Step, payload: object) -> object:
    return await step.run("pid", os.getpid)
"""


@pytest.mark.slow
def test_exit_without_close__hands_the_run_back(tmp_path: Path, url: str) -> None:
    script = tmp_path / "script.py"
    script.write_text(
        SCRIPT_HEAD
        + textwrap.dedent(f"""
            d = create_durably({url!r}, jobs={{"stuck": stuck}})
            d.start()
            run_id = d.jobs.stuck.trigger(None).id
            assert started.wait(60)
            print(run_id, flush=True)
            # no close(): the interpreter exits with the run in flight
        """)
    )
    done = run_captured([sys.executable, script], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.strip()
    gate = Gate()
    gate.release.set()
    # not started yet: its worker would claim the handed-back run before we look
    with contextlib.closing(
        create_durably(url, jobs={"stuck": define_job("stuck", run=gate.job)})
    ) as d:
        run = d.get_run(run_id)
        assert run is not None
        assert run.status == RunStatus.LEASED
        assert run.lease_expires_at is not None
        assert run.lease_expires_at <= d.clock.now()
        # handed back: claimed at once, not after lease_duration (30 s)
        d.start()
        assert d.wait_for_run(run_id, timeout=20).output == "released"
    assert "failed" not in done.stderr, done.stderr  # the close at exit went through


@pytest.mark.slow
def test_fork__the_child_builds_its_own_engine(tmp_path: Path, url: str) -> None:
    script = tmp_path / "script.py"
    script.write_text(
        SCRIPT_HEAD
        + textwrap.dedent(f"""
            from durably import BlockingCallError
            from durably_testing import MemoryStorage

            seen = []
            d = create_durably({url!r}, jobs={{"echo": echo}}, polling_interval=0.05)
            d.on("run:complete", lambda e: seen.append(e.run_id))
            assert d.get_runs() == []  # the parent's engine is built and used
            on_object = create_durably(MemoryStorage())
            pid = os.fork()
            if pid == 0:
                d.start()
                result = d.jobs.echo.trigger_and_wait(None, timeout=60)
                assert result.output == os.getpid(), result
                assert seen == [result.id], seen  # the listener came along
                d.close()
                try:
                    on_object.get_runs()
                except BlockingCallError as exc:
                    assert "Storage object" in str(exc), exc
                else:
                    raise AssertionError("a Storage object followed the fork")
                os._exit(0)
            _, status = os.waitpid(pid, 0)
            assert status == 0, status
            with d:  # the parent's own engine still works
                d.jobs.echo.trigger_and_wait(None, timeout=60)
                runs = d.get_runs(status="completed")
            assert sorted(r.output for r in runs) == sorted([pid, os.getpid()]), runs
            on_object.close()
            print("ok")
        """)
    )
    done = run_captured([sys.executable, script], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
