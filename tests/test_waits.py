"""Durable waits, signals, timers and parallel steps, end to end on every backend
(docs/semantics.md, "Durable waits"). Deterministic: time moves only through the
ManualClock; a worker's deadline wake-up is observed as the clock time at resume."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from functools import partial
from typing import Any

import pydantic
import pytest
from engine_support import HeldOnce, eventually, recorder, status_is

from durably import (
    NotFoundError,
    RunStatus,
    SignalRejectedError,
    Step,
    ValidationError,
    WaitStatus,
    create_durably,
    define_job,
)
from durably_testing.clock import ManualClock, settle
from durably_testing.memory import MemoryStorage


class Decision(pydantic.BaseModel):
    approved: bool
    by: str


class Approval:
    """A job that asks for an approval (1 h to answer) between two steps; counts how
    often each part of it ran."""

    def __init__(self, timeout: float = 3600) -> None:
        self.timeout = timeout
        self.calls = {"before": 0, "after": 0}
        self.executions = 0
        self.results: list[Any] = []

    async def job(self, step: Step, payload: Any) -> Any:
        self.executions += 1

        async def before() -> str:
            self.calls["before"] += 1
            return "prepared"

        await step.run("before", before)
        wait = await step.prepare_wait("approval", timeout=self.timeout, payload=Decision)
        result = await step.wait_for(wait)
        self.results.append(result)

        async def after() -> str:
            self.calls["after"] += 1
            return "done"

        await step.run("after", after)
        if result.timed_out:
            return {"approved": None}
        assert isinstance(result.payload, Decision)
        return {"approved": result.payload.approved, "by": result.payload.by}


def approval_jobs(approval: Approval) -> dict[str, Any]:
    return {"approve": define_job("approve", run=approval.job)}


async def test_wait__suspends_without_a_slot_and_a_signal_resumes_it_at_once(
    make_durably: Any, clock: ManualClock
) -> None:
    approval = Approval()
    d = make_durably(approval_jobs(approval), polling_interval=600)
    waiting = recorder(d, "run:waiting")
    leased = recorder(d, "run:leased")
    await d.init()
    run_id = (await d.jobs.approve.trigger({})).id
    await status_is(d, run_id, RunStatus.WAITING)
    run = await d.get_run(run_id)
    assert (run.lease_owner, run.lease_expires_at) == (None, None)
    [event] = waiting
    wait = await d.get_wait(run_id, "approval")
    assert wait is not None
    assert (event.run_id, event.wait_id, event.wait_name) == (run_id, wait.id, "approval")
    assert event.wake_at == wait.deadline_at == clock.now() + timedelta(hours=1)
    assert wait.status is WaitStatus.PENDING
    assert wait.suspended_at == clock.now()
    # the signal resumes the run at once, in this process: no clock time passes
    receipt = await d.signal(run_id, "approval", {"approved": True, "by": "ann"}, signal_id="s1")
    assert receipt.disposition == "accepted"
    await status_is(d, run_id, RunStatus.COMPLETED)
    done = await d.get_run(run_id)
    assert done.output == {"approved": True, "by": "ann"}
    assert approval.calls == {"before": 1, "after": 1}, "the checkpoint before the wait replayed"
    assert approval.executions == 2
    assert len(leased) == 2
    [final] = await d.get_waits(run_id)
    assert (final.outcome, final.signal_id, final.payload) == (
        "signal",
        "s1",
        {"approved": True, "by": "ann"},
    )
    assert final.first_resumed_at == clock.now()
    # the same signal again: a duplicate; another one: refused
    again = await d.signal(run_id, "approval", {"by": "ann", "approved": True}, signal_id="s1")
    assert again.disposition == "duplicate"
    with pytest.raises(SignalRejectedError) as refused:
        await d.signal(run_id, "approval", {"approved": False, "by": "bob"}, signal_id="s2")
    assert refused.value.reason == "conflict"


async def test_wait__signal_before_the_suspension_is_kept(make_durably: Any) -> None:
    d = make_durably()
    waiting = recorder(d, "run:waiting")

    async def job(step: Step, payload: Any) -> Any:
        wait = await step.prepare_wait("answer")

        async def ask() -> None:  # the external work answers before the job waits
            await d.signal(step.run_id, "answer", {"n": 42})

        await step.run("ask", ask)
        result = await step.wait_for(wait)
        return result.payload

    d.register({"j": define_job("j", run=job)})
    run_id = (await d.jobs.j.trigger({})).id
    assert await d.process_one()
    run = await d.get_run(run_id)
    assert (run.status, run.output) == (RunStatus.COMPLETED, {"n": 42})
    assert waiting == [], "it never suspended"


async def test_wait__timeout_is_a_result_the_job_branches_on(
    make_durably: Any, clock: ManualClock
) -> None:
    approval = Approval(timeout=60)
    d = make_durably(approval_jobs(approval), polling_interval=600)
    await d.init()
    run_id = (await d.jobs.approve.trigger({})).id
    await status_is(d, run_id, RunStatus.WAITING)
    deadline = clock.now() + timedelta(seconds=60)
    # the worker sleeps until the deadline (not until its next poll, 600 s away)
    await clock.advance(60)
    await status_is(d, run_id, RunStatus.COMPLETED)
    assert (await d.get_run(run_id)).output == {"approved": None}
    [result] = approval.results
    assert (result.outcome, result.payload, result.resolved_at) == ("timeout", None, deadline)
    with pytest.raises(SignalRejectedError) as late:
        await d.signal(run_id, "approval", {"approved": True, "by": "late"})
    assert late.value.reason == "expired"
    assert late.value.wait.outcome == "timeout"


async def test_sleep__one_hour_resumes_exactly_once_at_its_deadline(
    make_durably: Any, clock: ManualClock
) -> None:
    resumed_at: list[Any] = []
    executions: list[Any] = []

    async def job(step: Step, payload: Any) -> str:
        executions.append(clock.now())
        await step.sleep("cool-down", 3600)
        resumed_at.append(clock.now())
        return "rested"

    d = make_durably({"j": define_job("j", run=job)}, polling_interval=600)
    leased = recorder(d, "run:leased")
    await d.init()
    start = clock.now()
    run_id = (await d.jobs.j.trigger({})).id
    await status_is(d, run_id, RunStatus.WAITING)
    await clock.advance(3599.999)
    assert resumed_at == []
    assert (await d.get_run(run_id)).status is RunStatus.WAITING
    # the worker sleeps until the deadline (not its next poll, 600 s away); time
    # stops there, so the resumed job reads the deadline as "now"
    await clock.advance(0.001)
    await status_is(d, run_id, RunStatus.COMPLETED)
    await clock.advance(7200)
    assert resumed_at == [start + timedelta(hours=1)], "woken at the deadline, once"
    assert len(executions) == 2
    assert len(leased) == 2
    with pytest.raises(SignalRejectedError) as refused:
        await d.signal(run_id, "cool-down", None)
    assert refused.value.reason in ("timer", "closed")


async def test_sleep__two_workers_woken_at_the_deadline_resume_it_once(
    make_durably: Any, clock: ManualClock
) -> None:
    """Two workers on one database, both idle when the deadline comes (one learned it
    from its own suspension, the other reads it from storage at its maintenance):
    the run resumes exactly once."""
    resumed: list[Any] = []

    async def job(step: Step, payload: Any) -> str:
        await step.sleep("cool-down", 3600)
        resumed.append(clock.now())
        return "rested"

    jobs = {"j": define_job("j", run=job)}
    a = make_durably(jobs, polling_interval=600)
    leased_a = recorder(a, "run:leased")
    await a.init()
    start = clock.now()
    run_id = (await a.jobs.j.trigger({})).id
    await status_is(a, run_id, RunStatus.WAITING)
    b = make_durably(jobs, same_db_as=a, polling_interval=600)
    leased_b = recorder(b, "run:leased")
    await b.init()
    await clock.advance(3600)
    await status_is(a, run_id, RunStatus.COMPLETED)
    await clock.advance(3600)
    await settle()
    assert resumed == [start + timedelta(hours=1)]
    assert len(leased_a) + len(leased_b) == 2, "claimed once to start, once to resume"


class HeldWakeRead(HeldOnce, MemoryStorage):
    """``next_wake_at`` (the last read of the worker's maintenance, before it plans
    its sleep) waits for ``release`` while ``held`` is armed."""

    async def next_wake_at(self, now: Any) -> Any:
        await self.hold()
        return await super().next_wake_at(now)


@pytest.mark.parametrize("turns", [0, 1, 2, 3])
async def test_sleep__deadline_reached_while_the_worker_plans_its_sleep_still_wakes_it(
    clock: ManualClock, turns: int
) -> None:
    """The clock reaches a waiting run's deadline in the loop turn between the worker
    planning its idle sleep (after its maintenance read) and that sleep starting: the
    run still resumes at the deadline. The worker used to compute the delay (300 s,
    to the deadline) before the sleep started, so the sleep was counted from the
    deadline instead: the run resumed a whole delay late (never, here: nothing
    moves the clock again). Seen on PostgreSQL, where a round trip that ended in
    ``advance``'s last settling turn made that interleaving (about 1 run in 100
    under load); each ``turns`` puts the clock's move at another point of it."""
    resumed_at: list[Any] = []

    async def job(step: Step, payload: Any) -> str:
        await step.sleep("cool-down", 900)
        resumed_at.append(clock.now())
        return "rested"

    storage = HeldWakeRead()
    d = create_durably(
        storage, jobs={"j": define_job("j", run=job)}, clock=clock, polling_interval=600
    )
    try:
        await d.init()
        start = clock.now()
        run_id = (await d.jobs.j.trigger({})).id
        await status_is(d, run_id, RunStatus.WAITING)
        await settle()  # the worker sleeps until its next poll (600 s: before the deadline)
        storage.armed = True
        await clock.advance(600)  # that poll: its maintenance reads the next deadline
        # the worker plans a 300 s sleep, and the clock reaches the deadline
        await storage.release_then_advance(
            clock, 300, turns, "the maintenance reading the next wake-up"
        )
        await status_is(d, run_id, RunStatus.COMPLETED)
        assert resumed_at == [start + timedelta(seconds=900)]
    finally:
        await d.stop()


async def test_waiting_runs_hold_no_slot(make_durably: Any, clock: ManualClock) -> None:
    """max_concurrent_runs=1, 100 waiting runs: one more trigger starts at once."""

    async def wait_job(step: Step, payload: Any) -> Any:
        return (await step.wait_for(await step.prepare_wait("go"))).payload

    async def quick(step: Step, payload: Any) -> str:
        return "quick"

    d = make_durably(
        {"w": define_job("w", run=wait_job), "q": define_job("q", run=quick)},
        max_concurrent_runs=1,
        polling_interval=600,
    )
    await d.init()
    waiting = [(await d.jobs.w.trigger({"i": i})).id for i in range(100)]

    async def all_waiting() -> bool:
        runs = await d.get_runs(status="waiting")
        return len(runs) == 100

    await eventually(all_waiting, "100 runs waiting")
    started = clock.now()
    quick_id = (await d.jobs.q.trigger({})).id
    await status_is(d, quick_id, RunStatus.COMPLETED)
    assert clock.now() == started, "started at once: no poll interval passed"
    # and every waiting run still resumes
    for i, run_id in enumerate(waiting):
        await d.signal(run_id, "go", i)
    for i, run_id in enumerate(waiting):
        await status_is(d, run_id, RunStatus.COMPLETED)
        assert (await d.get_run(run_id)).output == i


async def test_wait__survives_a_restart_and_resumes_in_the_next_worker(
    make_durably: Any, clock: ManualClock
) -> None:
    approval = Approval()
    a = make_durably(approval_jobs(approval), polling_interval=1)
    await a.init()
    run_id = (await a.jobs.approve.trigger({})).id
    await status_is(a, run_id, RunStatus.WAITING)
    await a.stop()
    # another process signals it while no worker runs; the next worker resumes it
    b = make_durably(approval_jobs(approval), same_db_as=a, polling_interval=1)
    await b.signal(run_id, "approval", {"approved": False, "by": "b"})
    await b.init()
    await clock.advance(1)
    await status_is(b, run_id, RunStatus.COMPLETED)
    assert (await b.get_run(run_id)).output == {"approved": False, "by": "b"}
    assert approval.calls == {"before": 1, "after": 1}


async def test_wait__a_signal_from_another_process_resumes_within_the_polling_interval(
    make_durably: Any, clock: ManualClock, backend: str
) -> None:
    """The signal comes from another instance on the same database (as another
    process's would, over its own connection where the backend has one): the idle
    worker resumes the run at its next poll at the latest; on PostgreSQL at once,
    with no clock time passing (the accepted signal is announced by NOTIFY)."""
    resumed_at: list[Any] = []

    async def job(step: Step, payload: Any) -> Any:
        result = await step.wait_for(await step.prepare_wait("go"))
        resumed_at.append(clock.now())
        return result.payload

    jobs = {"j": define_job("j", run=job)}
    worker = make_durably(jobs, polling_interval=30)
    await worker.init()
    run_id = (await worker.jobs.j.trigger({})).id
    await status_is(worker, run_id, RunStatus.WAITING)
    other = make_durably(jobs, same_db_as=worker)  # its worker is never started
    signalled = clock.now()
    assert (await other.signal(run_id, "go", 7)).disposition == "accepted"
    if backend != "postgres":
        await clock.advance(30)  # one polling interval
    await status_is(worker, run_id, RunStatus.COMPLETED)
    assert (await worker.get_run(run_id)).output == 7
    [resumed] = resumed_at
    assert signalled <= resumed <= signalled + timedelta(seconds=30)
    if backend == "postgres":
        assert resumed == signalled, "woken by the notification, not by a poll"


async def test_wait__durations_of_the_input_and_of_the_wait_for_a_worker(
    make_durably: Any, clock: ManualClock
) -> None:
    """``input_wait``: suspended until the signal came (30 s); ``execution_slot_wait``:
    from the signal until a worker resumed the run (5 s: none was running)."""
    approval = Approval()
    d = make_durably(approval_jobs(approval))
    run_id = (await d.jobs.approve.trigger({})).id
    assert await d.process_one()
    [wait] = await d.get_waits(run_id)
    assert (wait.input_wait, wait.execution_slot_wait) == (None, None)
    await clock.advance(30)
    await d.signal(run_id, "approval", {"approved": True, "by": "ann"})
    [wait] = await d.get_waits(run_id)
    assert (wait.input_wait, wait.execution_slot_wait) == (timedelta(seconds=30), None)
    await clock.advance(5)
    assert await d.process_one()
    [wait] = await d.get_waits(run_id)
    assert wait.first_resumed_at == clock.now()
    assert (wait.input_wait, wait.execution_slot_wait) == (
        timedelta(seconds=30),
        timedelta(seconds=5),
    )


async def test_wait__no_durations_to_report_when_the_result_came_first(make_durably: Any) -> None:
    d = make_durably()

    async def job(step: Step, payload: Any) -> Any:
        wait = await step.prepare_wait("answer")
        await d.signal(step.run_id, "answer", 1)
        return (await step.wait_for(wait)).payload

    d.register({"j": define_job("j", run=job)})
    run_id = (await d.jobs.j.trigger({})).id
    assert await d.process_one()
    [wait] = await d.get_waits(run_id)
    assert wait.suspended_at is None
    assert (wait.input_wait, wait.execution_slot_wait) == (timedelta(0), timedelta(0))


async def test_wait__deadline_with_no_worker_alive_fires_at_the_next_start(
    make_durably: Any, clock: ManualClock
) -> None:
    approval = Approval(timeout=60)
    a = make_durably(approval_jobs(approval))
    await a.init()
    run_id = (await a.jobs.approve.trigger({})).id
    await status_is(a, run_id, RunStatus.WAITING)
    await a.stop()
    await clock.advance(3600)  # no worker alive at the deadline
    b = make_durably(approval_jobs(approval), same_db_as=a)
    assert await b.process_one()
    run = await b.get_run(run_id)
    assert (run.status, run.output) == (RunStatus.COMPLETED, {"approved": None})


async def test_wait__a_cancelled_waiting_run_never_resumes(make_durably: Any) -> None:
    approval = Approval()
    d = make_durably(approval_jobs(approval))
    run_id = (await d.jobs.approve.trigger({})).id
    assert await d.process_one()
    assert (await d.get_run(run_id)).status is RunStatus.WAITING
    cancelled = await d.cancel(run_id)
    assert cancelled.status is RunStatus.CANCELLED
    [wait] = await d.get_waits(run_id)
    assert wait.status is WaitStatus.CANCELLED
    with pytest.raises(SignalRejectedError) as refused:
        await d.signal(run_id, "approval", {"approved": True, "by": "x"})
    assert refused.value.reason == "closed"
    assert not await d.process_one()
    assert approval.executions == 1


async def test_signal__unknown_address_and_bad_arguments(make_durably: Any) -> None:
    approval = Approval()
    d = make_durably(approval_jobs(approval))
    run_id = (await d.jobs.approve.trigger({})).id
    with pytest.raises(NotFoundError, match="has not prepared the wait yet"):
        await d.signal(run_id, "approval", 1)  # not prepared yet
    with pytest.raises(NotFoundError):
        await d.signal("01JNOSUCHRUN0000000000000", "approval", 1)
    with pytest.raises(ValidationError):
        await d.signal(run_id, "", 1)
    with pytest.raises(ValidationError):
        await d.signal(run_id, "approval", object())
    with pytest.raises(ValidationError, match="NaN and infinity cannot be stored"):
        await d.signal(run_id, "approval", {"x": float("nan")})
    with pytest.raises(ValidationError):
        await d.signal(run_id, "approval", 1, signal_id="")


async def test_wait__invalid_payload_fails_the_run_naming_the_wait(make_durably: Any) -> None:
    approval = Approval()
    d = make_durably(approval_jobs(approval))
    run_id = (await d.jobs.approve.trigger({})).id
    assert await d.process_one()
    await d.signal(run_id, "approval", {"approved": "maybe?"})
    assert await d.process_one()
    run = await d.get_run(run_id)
    assert run.status is RunStatus.FAILED
    assert "wait 'approval'" in run.error
    assert "invalid payload" in run.error


async def test_wait__not_inside_a_step_callback(make_durably: Any) -> None:
    async def job(step: Step, payload: Any) -> Any:
        async def inner() -> None:
            await step.sleep("nap", 1)

        await step.run("inner", inner)

    d = make_durably({"j": define_job("j", run=job)})
    run_id = (await d.jobs.j.trigger({})).id
    assert await d.process_one()
    run = await d.get_run(run_id)
    assert run.status is RunStatus.FAILED
    assert "inside a step.run or step.all callback" in run.error


async def test_wait__a_job_that_swallows_the_suspension_still_suspends(
    make_durably: Any,
) -> None:
    later: list[str] = []

    async def job(step: Step, payload: Any) -> Any:
        # what a careless job does: swallow everything
        with contextlib.suppress(BaseException):
            await step.wait_for(await step.prepare_wait("w"))

        async def more() -> str:
            later.append("ran")
            return "x"

        await step.run("more", more)
        return "finished"

    d = make_durably({"j": define_job("j", run=job)})
    run_id = (await d.jobs.j.trigger({})).id
    assert await d.process_one()
    assert (await d.get_run(run_id)).status is RunStatus.WAITING
    assert later == [], "nothing runs after a wait that has no result"
    assert await d.get_steps(run_id) == []


async def test_sleep__past_deadline_and_name_rules(make_durably: Any, clock: ManualClock) -> None:
    async def job(step: Step, payload: Any) -> Any:
        await step.sleep_until("past", clock.now() - timedelta(days=1))
        await step.sleep("zero", 0)
        if payload.get("clash"):
            await step.prepare_wait("zero")
        return "ok"

    d = make_durably({"j": define_job("j", run=job)})
    ok = (await d.jobs.j.trigger({})).id
    clash = (await d.jobs.j.trigger({"clash": True})).id
    assert await d.process_one()
    assert await d.process_one()
    assert (await d.get_run(ok)).output == "ok", "a due timer returns without suspending"
    failed = await d.get_run(clash)
    assert failed.status is RunStatus.FAILED
    assert "first used by step.sleep" in failed.error


async def test_trigger_and_wait__across_a_suspension(make_durably: Any) -> None:
    approval = Approval()
    d = make_durably(approval_jobs(approval))
    await d.init()
    waiter = asyncio.create_task(d.jobs.approve.trigger_and_wait({}))

    async def prepared() -> bool:
        runs = await d.get_runs(status="waiting")
        return bool(runs)

    await eventually(prepared, "the run waiting")
    [run] = await d.get_runs(status="waiting")
    signals = recorder(d, "wait:signal")
    await d.signal(run.id, "approval", {"approved": True, "by": "z"})
    result = await asyncio.wait_for(waiter, 60)
    assert result.output == {"approved": True, "by": "z"}
    [event] = signals
    assert (event.run_id, event.wait_name, event.payload) == (
        run.id,
        "approval",
        {"approved": True, "by": "z"},
    )


# -- step.all --


async def test_all__branches_run_at_once_and_join(make_durably: Any) -> None:
    both_started = asyncio.Event()
    started: list[str] = []

    async def review(name: str) -> str:
        started.append(name)
        if len(started) == 2:
            both_started.set()
        await both_started.wait()  # only returns if the other branch runs meanwhile
        return f"{name}: ok"

    async def job(step: Step, payload: Any) -> Any:
        return await step.all({"review-a": partial(review, "a"), "review-b": partial(review, "b")})

    d = make_durably({"j": define_job("j", run=job)}, preserve_steps=True)
    run_id = (await d.jobs.j.trigger({})).id
    assert await asyncio.wait_for(d.process_one(), 60)
    run = await d.get_run(run_id)
    assert run.output == {"review-a": "a: ok", "review-b": "b: ok"}
    steps = await d.get_steps(run_id)
    assert [(s.name, s.index) for s in steps] == [("review-a", 0), ("review-b", 1)]


async def test_all__a_branch_s_logs_name_it_while_branches_overlap(make_durably: Any) -> None:
    """Each branch runs in its own task (a sync one in a thread with its context), so
    what it logs names it even while the other branch runs; after the join the job's
    own log names no step."""
    both_started = asyncio.Event()
    started: list[str] = []

    async def job(step: Step, payload: Any) -> Any:
        async def review(name: str) -> str:
            started.append(name)
            if len(started) == 2:
                both_started.set()
            step.log.info(f"{name} before")
            await both_started.wait()
            step.log.info(f"{name} after")
            return name

        def sync_review() -> str:  # runs in a thread
            step.log.info("sync")
            return "sync"

        out = await step.all(
            {
                "review-a": partial(review, "a"),
                "review-b": partial(review, "b"),
                "review-sync": sync_review,
            }
        )
        step.log.info("joined")
        return out

    d = make_durably({"j": define_job("j", run=job)}, preserve_steps=True)
    events = recorder(d, "log:write")
    run_id = (await d.jobs.j.trigger({})).id
    assert await asyncio.wait_for(d.process_one(), 60)
    expected = {
        "a before": "review-a",
        "a after": "review-a",
        "b before": "review-b",
        "b after": "review-b",
        "sync": "review-sync",
        "joined": None,
    }
    assert {e.message: e.step_name for e in events} == expected
    assert {log.message: log.step_name for log in await d.get_logs(run_id)} == expected


async def test_all__first_failure_decides_after_all_settle_and_retry_replays(
    make_durably: Any,
) -> None:
    calls: dict[str, int] = {"a": 0, "b": 0, "c": 0}
    fail = {"a": True, "c": True}
    c_may_finish = asyncio.Event()

    async def branch(name: str) -> str:
        calls[name] += 1
        if name == "c":
            await c_may_finish.wait()
        if fail.get(name):
            raise RuntimeError(f"{name} broke")
        if name == "b":
            c_may_finish.set()  # c fails after a has: the join still waits for c
        return name

    async def job(step: Step, payload: Any) -> Any:
        return await step.all({n: partial(branch, n) for n in ("a", "b", "c")})

    d = make_durably({"j": define_job("j", run=job)})
    fails = recorder(d, "run:fail")
    run_id = (await d.jobs.j.trigger({})).id
    assert await asyncio.wait_for(d.process_one(), 60)
    run = await d.get_run(run_id)
    assert (run.status, run.error) == (RunStatus.FAILED, "a broke")
    assert [e.failed_step_name for e in fails] == ["a"]
    steps = {s.name: s.status.value for s in await d.get_steps(run_id)}
    assert steps == {"a": "failed", "b": "completed", "c": "failed"}
    # retried: the completed branch is replayed, the failed ones run again
    fail.clear()
    c_may_finish.set()
    await d.retry(run_id)
    assert await d.process_one()
    run = await d.get_run(run_id)
    assert (run.status, run.output) == (RunStatus.COMPLETED, {"a": "a", "b": "b", "c": "c"})
    assert calls == {"a": 2, "b": 1, "c": 2}


async def test_all__bad_arguments(make_durably: Any) -> None:
    async def job(step: Step, payload: Any) -> Any:
        return await step.all(payload["branches"])

    d = make_durably({"j": define_job("j", run=job)})
    run_id = (await d.jobs.j.trigger({"branches": {}})).id
    assert await d.process_one()
    assert "non-empty dict" in (await d.get_run(run_id)).error
    await settle()


async def test_sleep__each_deadline_wakes_the_worker(make_durably: Any, clock: ManualClock) -> None:
    """One worker, a 600 s polling interval, three sleeps: each run resumes at its own
    deadline (the worker re-reads the next deadline each time it reaches one)."""
    resumed: dict[int, Any] = {}

    async def job(step: Step, payload: Any) -> None:
        await step.sleep("nap", payload["s"])
        resumed[payload["s"]] = clock.now()

    d = make_durably({"j": define_job("j", run=job)}, polling_interval=600)
    await d.init()
    start = clock.now()
    runs = [(await d.jobs.j.trigger({"s": s})).id for s in (30, 10, 20)]

    async def all_waiting() -> bool:
        return len(await d.get_runs(status="waiting")) == 3

    await eventually(all_waiting, "three sleeping runs")
    for seconds in (10, 20, 30):
        await clock.advance((start + timedelta(seconds=seconds) - clock.now()).total_seconds())
        await eventually(partial(dict.__contains__, resumed, seconds), f"{seconds} s resumed")
        assert resumed[seconds] == start + timedelta(seconds=seconds)
    for run_id in runs:
        await status_is(d, run_id, RunStatus.COMPLETED)
