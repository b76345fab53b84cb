"""The lease-checked step start (SEMANTICS.md, "Claiming and leases"): a worker
whose loop was stalled past its lease never calls a step function again, even
when another worker has checkpointed that step meanwhile.

A stall is modelled deterministically: worker A's job waits on a gate while the
ManualClock jumps (``clock.set``: A's timers do not fire, exactly as when its event
loop is blocked); worker B, on the same database, claims the run and finishes it;
then the gate opens and A's job goes on, as A's loop would after the stall.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, Literal

import pytest
from engine_support import eventually, recorder

from durably import RunStatus, Step, define_job
from durably_testing.clock import ManualClock

LEASE = 40.0
RENEW = 5.0
OPTS = {"lease_duration": LEASE, "lease_renew_interval": RENEW, "preserve_steps": True}

Where = Literal["before-first-step", "between-steps"]


class StallingJob:
    """Steps s0, s1, s2; the first execution (worker A) stops at ``where`` until the
    gate opens. Counts the calls of each step function and who made them."""

    def __init__(self, where: Where = "between-steps", *, sync: bool = False) -> None:
        self.where = where
        self.sync = sync
        self.gate = asyncio.Event()
        self.stalled = asyncio.Event()
        self.executions = 0
        self.calls: Counter[str] = Counter()
        self.callers: list[tuple[int, str]] = []
        self.resumed: list[int] = []

    def _fn(self, execution: int, name: str) -> Any:
        def record() -> str:
            self.calls[name] += 1
            self.callers.append((execution, name))
            return f"{name}-by-{execution}"

        async def call() -> str:
            return record()

        return record if self.sync else call

    async def job(self, step: Step, payload: Any) -> list[str]:
        self.executions += 1
        execution = self.executions
        outputs: list[str] = []
        for i, name in enumerate(("s0", "s1", "s2")):
            stall_here = (self.where == "before-first-step" and i == 0) or (
                self.where == "between-steps" and i == 1
            )
            if execution == 1 and stall_here:
                self.stalled.set()
                await self.gate.wait()
                self.resumed.append(execution)
            outputs.append(await step.run(name, self._fn(execution, name)))
        return outputs


async def stall_a(d: Any, job: StallingJob) -> tuple[str, asyncio.Task[bool]]:
    triggered = await d.jobs.j.trigger({})
    task = asyncio.create_task(d.process_one())
    await asyncio.wait_for(job.stalled.wait(), 10)
    return triggered.id, task


@pytest.mark.parametrize("where", ["before-first-step", "between-steps"])
@pytest.mark.parametrize("first", ["step", "renewal-timer"])
async def test_lease_check__stalled_worker_never_starts_a_step_another_checkpointed(
    make_durably: Any, clock: ManualClock, where: Where, first: str
) -> None:
    job = StallingJob(where)
    jobs = {"j": define_job("j", run=job.job)}
    a = make_durably(jobs, **OPTS)
    b = make_durably(jobs, same_db_as=a, **OPTS)
    a_events = recorder(a)
    run_id, task_a = await stall_a(a, job)
    before = (await a.get_run(run_id)).lease_generation
    # A's loop is blocked past its lease: its clock jumps, its timers do not fire.
    clock.set(clock.now() + timedelta(seconds=LEASE + 1))
    assert await b.process_one()
    done = await b.get_run(run_id)
    assert done.status is RunStatus.COMPLETED
    assert done.lease_generation == before + 1
    a_events.clear()
    # A's loop resumes: its job and its renewal timer are both ready to run.
    if first == "step":
        job.gate.set()
        await clock.advance(0)
    else:
        await clock.advance(0)
        job.gate.set()
    assert await asyncio.wait_for(task_a, 10) is True
    assert job.calls == {"s0": 1, "s1": 1, "s2": 1}  # nothing ran twice
    expected = ["s0-by-2", "s1-by-2", "s2-by-2"]
    if where == "between-steps":
        expected[0] = "s0-by-1"
    assert done.output == expected
    assert await b.get_run(run_id) == done
    types = [e.type for e in a_events]
    assert not any(t in types for t in ("step:start", "step:complete", "run:complete"))
    assert [(e.context, e.run_id) for e in a_events if e.type == "worker:error"] == [
        ("lease-renewal", run_id)
    ]


async def test_lease_check__a_fresh_lease_is_not_renewed_before_a_step(
    make_durably: Any, clock: ManualClock
) -> None:
    job = StallingJob()
    a = make_durably({"j": define_job("j", run=job.job)}, **OPTS)
    renewals = recorder(a, "run:lease-renewed")
    run_id, task_a = await stall_a(a, job)
    clock.set(clock.now() + timedelta(seconds=LEASE * 0.74))  # more than a quarter left
    job.gate.set()
    assert await asyncio.wait_for(task_a, 10) is True
    assert renewals == []
    assert (await a.get_run(run_id)).status is RunStatus.COMPLETED


async def test_lease_check__a_step_near_the_lease_end_renews_first(
    make_durably: Any, clock: ManualClock
) -> None:
    job = StallingJob()
    a = make_durably({"j": define_job("j", run=job.job)}, **OPTS)
    a_events = recorder(a)
    run_id, task_a = await stall_a(a, job)
    claimed = await a.get_run(run_id)
    clock.set(clock.now() + timedelta(seconds=LEASE * 0.8))  # less than a quarter left
    a_events.clear()
    job.gate.set()
    assert await asyncio.wait_for(task_a, 10) is True
    assert [e.type for e in a_events][:2] == ["run:lease-renewed", "step:start"]
    assert a_events[0].lease_expires_at == clock.now() + timedelta(seconds=LEASE)
    assert a_events[1].step_name == "s1"
    assert job.callers == [(1, "s0"), (1, "s1"), (1, "s2")]
    run = await a.get_run(run_id)
    assert run.status is RunStatus.COMPLETED
    assert run.lease_generation == claimed.lease_generation


async def test_lease_check__a_refused_renewal_means_the_step_is_not_called(
    make_durably: Any, clock: ManualClock
) -> None:
    job = StallingJob()
    jobs = {"j": define_job("j", run=job.job)}
    a = make_durably(jobs, **OPTS)
    # B's clock runs ahead: it takes the run while A's clock still shows lease left
    b = make_durably(
        jobs, same_db_as=a, clock=ManualClock(clock.now() + timedelta(hours=1)), **OPTS
    )
    a_events = recorder(a)
    run_id, task_a = await stall_a(a, job)
    assert await b.process_one()
    clock.set(clock.now() + timedelta(seconds=LEASE * 0.8))
    a_events.clear()
    job.gate.set()
    assert await asyncio.wait_for(task_a, 10) is True
    assert job.callers == [(1, "s0"), (2, "s1"), (2, "s2")]
    types = [e.type for e in a_events]
    assert "run:lease-renewed" not in types
    assert "step:start" not in types
    assert [e.context for e in a_events if e.type == "worker:error"] == ["lease-renewal"]
    assert (await b.get_run(run_id)).output == ["s0-by-1", "s1-by-2", "s2-by-2"]


async def test_lease_check__a_sync_step_whose_thread_starts_after_the_lease_is_not_called(
    make_durably: Any, clock: ManualClock
) -> None:
    # The loop checked a fresh lease and handed the step to a thread; the thread
    # starts late (every worker thread busy, or the process stalled) and the lease
    # has expired by then: the function must not run.
    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(1)
    loop.set_default_executor(pool)
    job = StallingJob(sync=True)
    jobs = {"j": define_job("j", run=job.job)}
    a = make_durably(jobs, **OPTS)
    b = make_durably(jobs, same_db_as=a, **OPTS)
    a_events = recorder(a)
    run_id, task_a = await stall_a(a, job)
    busy = threading.Event()
    blocker = loop.run_in_executor(None, busy.wait)
    job.gate.set()
    await eventually(
        lambda: any(e.type == "step:start" and e.step_name == "s1" for e in a_events),
        "A handing step s1 to its thread",
    )
    clock.set(clock.now() + timedelta(seconds=LEASE + 1))
    busy.set()
    await blocker
    assert await asyncio.wait_for(task_a, 10) is True
    assert job.callers == [(1, "s0")]
    types = [e.type for e in a_events]
    assert types[-2:] == ["step:cancel", "worker:error"]
    assert a_events[-1].context == "lease-renewal"
    assert await b.process_one()
    assert job.callers == [(1, "s0"), (2, "s1"), (2, "s2")]
    assert (await b.get_run(run_id)).status is RunStatus.COMPLETED
    pool.shutdown()


async def test_lease_check__progress_and_logs_after_the_lease_expired_are_not_emitted(
    make_durably: Any, clock: ManualClock
) -> None:
    gate = asyncio.Event()
    stalled = asyncio.Event()
    after: list[str] = []

    async def job(step: Step, payload: Any) -> str:
        if not stalled.is_set():
            stalled.set()
            await gate.wait()
            step.progress(9, 10, "from A")
            step.log.info("from A")
            await asyncio.sleep(0)
            after.append("A")
            return "A"
        step.progress(1, 1, "from B")
        return "B"

    jobs = {"j": define_job("j", run=job)}
    a = make_durably(jobs, **OPTS)
    b = make_durably(jobs, same_db_as=a, **OPTS)
    a_events = recorder(a)
    triggered = await a.jobs.j.trigger({})
    task_a = asyncio.create_task(a.process_one())
    await asyncio.wait_for(stalled.wait(), 10)
    clock.set(clock.now() + timedelta(seconds=LEASE + 1))
    assert await b.process_one()
    a_events.clear()
    gate.set()
    assert await asyncio.wait_for(task_a, 10) is True
    assert after == []  # A's job was stopped at its next await
    assert [e.type for e in a_events] == ["worker:error"]
    run = await b.get_run(triggered.id)
    assert run.output == "B"
    assert run.progress.message == "from B"
    assert await b.get_logs(triggered.id) == []


async def test_lease_check__a_stalled_workers_failing_step_reports_no_step_failure(
    make_durably: Any, clock: ManualClock
) -> None:
    release = asyncio.Event()
    entered = asyncio.Event()

    async def flaky() -> str:
        if not entered.is_set():  # A's call: stalls, then fails after B took over
            entered.set()
            await release.wait()
            raise RuntimeError("A's late failure")
        return "B"

    async def job(step: Step, payload: Any) -> str:
        return str(await step.run("flaky", flaky))

    jobs = {"j": define_job("j", run=job)}
    a = make_durably(jobs, **OPTS)
    b = make_durably(jobs, same_db_as=a, **OPTS)
    a_events = recorder(a)
    triggered = await a.jobs.j.trigger({})
    task_a = asyncio.create_task(a.process_one())
    await asyncio.wait_for(entered.wait(), 10)
    clock.set(clock.now() + timedelta(seconds=LEASE + 1))
    assert await b.process_one()
    a_events.clear()
    release.set()
    assert await asyncio.wait_for(task_a, 10) is True
    assert [e.type for e in a_events] == ["worker:error"]  # no step:fail for B's run
    steps = await b.get_steps(triggered.id)
    assert [(s.name, s.status.value, s.output) for s in steps] == [("flaky", "completed", "B")]


async def test_lease_check__step_start_carries_the_instant_of_the_check(
    make_durably: Any, clock: ManualClock
) -> None:
    async def job(step: Step, payload: Any) -> int:
        return int(await step.run("one", lambda: 1))

    d = make_durably({"j": define_job("j", run=job)}, **OPTS)
    starts = recorder(d, "step:start")
    triggered = await d.jobs.j.trigger({})
    assert await d.process_one()
    [step] = await d.get_steps(triggered.id)
    assert [e.timestamp for e in starts] == [step.started_at]


async def test_lease_check__step_lease_generation_is_the_fencing_token_of_this_execution(
    make_durably: Any, clock: ManualClock
) -> None:
    job = StallingJob()
    seen: list[int] = []

    async def spy(step: Step, payload: Any) -> list[str]:
        seen.append(step.lease_generation)
        return await job.job(step, payload)

    jobs = {"j": define_job("j", run=spy)}
    a = make_durably(jobs, **OPTS)
    b = make_durably(jobs, same_db_as=a, **OPTS)
    run_id, task_a = await stall_a(a, job)
    clock.set(clock.now() + timedelta(seconds=LEASE + 1))
    assert await b.process_one()
    job.gate.set()
    await asyncio.wait_for(task_a, 10)
    assert seen == [1, 2]
    assert (await b.get_run(run_id)).lease_generation == 2


async def test_lease_check__the_renewal_timer_and_a_step_share_one_renewal(
    make_durably: Any, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # After a stall both ask at once; two renewals in flight could be applied out of
    # order and leave the stored deadline below the one the worker believes.
    job = StallingJob()
    a = make_durably({"j": define_job("j", run=job.job)}, **OPTS)
    renewals = recorder(a, "run:lease-renewed")
    run_id, task_a = await stall_a(a, job)
    asked: list[Any] = []
    answer = asyncio.Event()
    renew_lease = a.storage.renew_lease

    async def slow_renew_lease(*args: Any) -> bool:
        asked.append(args)
        await answer.wait()
        return bool(await renew_lease(*args))

    monkeypatch.setattr(a.storage, "renew_lease", slow_renew_lease)
    clock.set(clock.now() + timedelta(seconds=LEASE * 0.8))
    job.gate.set()  # the step renews first (less than the margin left) ...
    await eventually(lambda: len(asked) == 1, "the step's renewal asked")
    await clock.advance(0)  # ... and the timer, due long ago, wakes meanwhile
    await eventually(lambda: clock.sleepers == 0, "the timer woken")
    assert len(asked) == 1
    answer.set()
    await eventually(lambda: len(renewals) == 1, "the renewal answered")
    assert len(asked) == 1
    assert await asyncio.wait_for(task_a, 10) is True
    assert job.callers == [(1, "s0"), (1, "s1"), (1, "s2")]
    assert (await a.get_run(run_id)).status is RunStatus.COMPLETED
