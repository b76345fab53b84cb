"""Leases, renewal, fencing, crash recovery and concurrency keys (docs/semantics.md,
"Claiming and leases"). Deterministic: time only moves through the ManualClock."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from datetime import timedelta
from functools import partial
from typing import Any

import pytest
from engine_support import eventually, recorder, status_is

from durably import RunStatus, Step, StepStatus, define_job
from durably_testing.clock import ManualClock

LEASE = 30.0
RENEW = 5.0


class ThreeSteps:
    """Steps 1-2 return at once; step 3 blocks (first call only) until released."""

    def __init__(self) -> None:
        self.calls = {"s1": 0, "s2": 0, "s3": 0}
        self.release = asyncio.Event()
        self.entered = asyncio.Event()
        self.cancelled: list[str] = []
        self.after_s3: list[str] = []

    def fn(self, name: str) -> Any:
        async def call() -> str:
            self.calls[name] += 1
            if name == "s3" and self.calls["s3"] == 1:
                self.entered.set()
                try:
                    await self.release.wait()
                except asyncio.CancelledError:
                    self.cancelled.append(name)
                    raise
                return "s3-from-A"
            return f"{name}-v{self.calls[name]}"

        return call

    async def job(self, step: Step, payload: Any) -> Any:
        outputs = []
        for name in ("s1", "s2", "s3"):
            outputs.append(await step.run(name, self.fn(name)))
        self.after_s3.append(step.run_id)
        step.progress(3, 3, "done")
        step.log.info("finished")
        return outputs


async def start_blocked(d: Any, job: ThreeSteps) -> tuple[str, asyncio.Task[bool]]:
    triggered = await d.jobs.j.trigger({})
    task = asyncio.create_task(d.process_one())
    await asyncio.wait_for(job.entered.wait(), 5)
    return triggered.id, task


async def test_lease__crashed_worker_run_is_resumed_by_another_without_rerunning_steps(
    make_durably: Any, clock: ManualClock
) -> None:
    job = ThreeSteps()
    jobs = {"j": define_job("j", run=job.job)}
    a = make_durably(jobs, lease_duration=LEASE, lease_renew_interval=RENEW)
    b = make_durably(jobs, same_db_as=a, lease_duration=LEASE, lease_renew_interval=RENEW)
    run_id, task_a = await start_blocked(a, job)
    first = await a.get_run(run_id)
    assert first.status is RunStatus.LEASED
    assert first.lease_owner == a.worker_id
    # A "crashes": its timers never fire again, and time passes beyond its lease.
    clock.set(clock.now() + timedelta(seconds=LEASE + 1))
    assert await b.process_one()
    run = await b.get_run(run_id)
    assert run.status is RunStatus.COMPLETED
    assert run.output == ["s1-v1", "s2-v1", "s3-v2"]
    assert job.calls == {"s1": 1, "s2": 1, "s3": 2}
    assert run.lease_generation == first.lease_generation + 1
    task_a.cancel()
    await asyncio.gather(task_a, return_exceptions=True)


async def test_lease__worker_that_lost_its_lease_writes_nothing_more(
    make_durably: Any, clock: ManualClock
) -> None:
    job = ThreeSteps()
    jobs = {"j": define_job("j", run=job.job)}
    opts = {"lease_duration": LEASE, "lease_renew_interval": RENEW, "preserve_steps": True}
    a = make_durably(jobs, **opts)
    b = make_durably(jobs, same_db_as=a, **opts)
    a_errors = recorder(a, "worker:error")
    a_events = recorder(a)
    run_id, task_a = await start_blocked(a, job)
    clock.set(clock.now() + timedelta(seconds=LEASE + 1))
    assert await b.process_one()
    done = await b.get_run(run_id)
    a_events.clear()
    # A wakes up: its step 3 returns, but the checkpoint is refused (fenced).
    job.release.set()
    assert await asyncio.wait_for(task_a, 5) is True
    run = await b.get_run(run_id)
    assert run == done
    assert run.output == ["s1-v1", "s2-v1", "s3-v2"]
    steps = await b.get_steps(run_id)
    assert [(s.name, s.status, s.output) for s in steps] == [
        ("s1", StepStatus.COMPLETED, "s1-v1"),
        ("s2", StepStatus.COMPLETED, "s2-v1"),
        ("s3", StepStatus.COMPLETED, "s3-v2"),
    ]
    assert job.after_s3 == [run_id]  # only B got past step 3
    assert [log.message for log in await b.get_logs(run_id)] == ["finished"]
    assert not any(e.type in ("step:complete", "run:complete", "run:fail") for e in a_events)
    assert len(a_errors) == 1
    assert a_errors[0].run_id == run_id


async def test_lease__expiry_timer_cancels_job_task_of_stalled_worker(
    make_durably: Any, clock: ManualClock
) -> None:
    job = ThreeSteps()
    jobs = {"j": define_job("j", run=job.job)}
    opts = {"lease_duration": LEASE, "lease_renew_interval": RENEW, "preserve_steps": True}
    a = make_durably(jobs, **opts)
    b = make_durably(jobs, same_db_as=a, **opts)
    a_errors = recorder(a, "worker:error")
    run_id, task_a = await start_blocked(a, job)
    clock.set(clock.now() + timedelta(seconds=LEASE + 1))
    assert await b.process_one()
    # A's renewal timer finally fires: the lease is gone, its job task is cancelled.
    await clock.advance(0)
    assert job.cancelled == ["s3"]
    assert await asyncio.wait_for(task_a, 5) is True
    assert [e.run_id for e in a_errors] == [run_id]
    run = await b.get_run(run_id)
    assert run.status is RunStatus.COMPLETED
    assert run.output == ["s1-v1", "s2-v1", "s3-v2"]
    assert [s.name for s in await b.get_steps(run_id)] == ["s1", "s2", "s3"]


async def test_lease__fenced_progress_write_is_refused_after_takeover(
    make_durably: Any, clock: ManualClock
) -> None:
    gate = asyncio.Event()
    b_done = asyncio.Event()
    reached: list[str] = []

    async def job(step: Step, payload: Any) -> Any:
        if not reached:
            reached.append("A")
            await gate.wait()
            step.progress(99, 100, "from A")
            await step.run("late", lambda: "A")
            reached.append("A-after")
            return "A"
        reached.append("B")
        step.progress(1, 1, "from B")
        b_done.set()
        return "B"

    jobs = {"j": define_job("j", run=job)}
    a = make_durably(jobs, lease_duration=LEASE, lease_renew_interval=RENEW, preserve_steps=True)
    b = make_durably(
        jobs, same_db_as=a, lease_duration=LEASE, lease_renew_interval=RENEW, preserve_steps=True
    )
    triggered = await a.jobs.j.trigger({})
    task_a = asyncio.create_task(a.process_one())
    await eventually(lambda: reached == ["A"], "A's job blocking")
    clock.set(clock.now() + timedelta(seconds=LEASE + 1))
    assert await b.process_one()
    gate.set()
    await asyncio.wait_for(task_a, 5)
    run = await b.get_run(triggered.id)
    assert run.status is RunStatus.COMPLETED
    assert run.output == "B"
    assert run.progress.message == "from B"
    assert "A-after" not in reached
    assert await b.get_steps(triggered.id) == []


async def test_lease__cancel_from_other_instance_stops_run_within_renew_interval(
    make_durably: Any, clock: ManualClock
) -> None:
    job = ThreeSteps()
    jobs = {"j": define_job("j", run=job.job)}
    opts = {"lease_duration": LEASE, "lease_renew_interval": RENEW, "preserve_steps": True}
    a = make_durably(jobs, **opts)
    b = make_durably(jobs, same_db_as=a, **opts)
    a_events = recorder(a)
    run_id, task_a = await start_blocked(a, job)
    await b.cancel(run_id)
    assert job.cancelled == []  # A has not noticed yet
    a_events.clear()
    await clock.advance(RENEW)
    await eventually(lambda: job.cancelled == ["s3"], "A's job task cancelled")
    assert await asyncio.wait_for(task_a, 5) is True
    run = await a.get_run(run_id)
    assert run.status is RunStatus.CANCELLED
    assert run.output is None
    assert [s.name for s in await a.get_steps(run_id)] == ["s1", "s2"]
    assert job.after_s3 == []
    types = [e.type for e in a_events]
    assert "step:cancel" in types
    assert not any(t in types for t in ("run:complete", "run:fail", "step:complete"))
    # a cancel is not a lease-renewal fault
    assert not any(e.type == "worker:error" for e in a_events)


async def test_lease__renewal_keeps_long_run_alive(make_durably: Any, clock: ManualClock) -> None:
    job = ThreeSteps()
    jobs = {"j": define_job("j", run=job.job)}
    a = make_durably(jobs, lease_duration=10, lease_renew_interval=2)
    b = make_durably(jobs, same_db_as=a, lease_duration=10, lease_renew_interval=2)
    renewals = recorder(a, "run:lease-renewed")
    run_id, task_a = await start_blocked(a, job)
    generation = (await a.get_run(run_id)).lease_generation
    start = clock.now()
    for i in range(30):  # 60 s: six lease durations
        await clock.advance(2)
        await eventually(partial(lambda i: len(renewals) == i + 1, i), "a renewal")
        assert await b.process_one() is False
    run = await a.get_run(run_id)
    assert run.status is RunStatus.LEASED
    assert run.lease_generation == generation
    assert run.lease_owner == a.worker_id
    assert run.lease_expires_at > clock.now()
    assert len(renewals) == 30
    assert renewals[-1].lease_expires_at == start + timedelta(seconds=70)
    job.release.set()
    assert await asyncio.wait_for(task_a, 5) is True
    assert (await a.get_run(run_id)).status is RunStatus.COMPLETED
    assert job.calls["s1"] == 1


async def test_lease__renewed_event_payload(make_durably: Any, clock: ManualClock) -> None:
    job = ThreeSteps()
    d = make_durably(
        {"j": define_job("j", run=job.job)}, lease_duration=LEASE, lease_renew_interval=RENEW
    )
    renewals = recorder(d, "run:lease-renewed")
    run_id, task = await start_blocked(d, job)
    assert renewals == []
    await clock.advance(RENEW)
    await eventually(lambda: len(renewals) == 1, "a renewal")
    ev = renewals[0]
    assert ev.run_id == run_id
    assert ev.job_name == "j"
    assert ev.lease_owner == d.worker_id
    assert ev.lease_expires_at == clock.now() + timedelta(seconds=LEASE)
    stored = await d.get_run(run_id)
    assert stored.lease_expires_at == ev.lease_expires_at
    job.release.set()
    await task


async def test_lease__claim_sets_lease_fields(make_durably: Any, clock: ManualClock) -> None:
    job = ThreeSteps()
    d = make_durably(
        {"j": define_job("j", run=job.job)}, lease_duration=LEASE, lease_renew_interval=RENEW
    )
    leased = recorder(d, "run:leased")
    run_id, task = await start_blocked(d, job)
    run = await d.get_run(run_id)
    assert run.status is RunStatus.LEASED
    assert run.lease_owner == d.worker_id
    assert run.lease_expires_at == clock.now() + timedelta(seconds=LEASE)
    assert run.lease_generation == 1
    assert run.started_at == clock.now()
    assert [(e.run_id, e.lease_owner, e.lease_expires_at) for e in leased] == [
        (run_id, d.worker_id, run.lease_expires_at)
    ]
    job.release.set()
    await task


async def test_lease__reclaim_keeps_started_at(make_durably: Any, clock: ManualClock) -> None:
    job = ThreeSteps()
    jobs = {"j": define_job("j", run=job.job)}
    a = make_durably(jobs)
    b = make_durably(jobs, same_db_as=a)
    started = clock.now()
    run_id, task_a = await start_blocked(a, job)
    clock.set(clock.now() + timedelta(seconds=31))
    assert await b.process_one()
    run = await b.get_run(run_id)
    assert run.started_at == started
    assert run.lease_generation == 2
    task_a.cancel()
    await asyncio.gather(task_a, return_exceptions=True)


async def test_lease__live_lease_is_not_claimed_by_another(
    make_durably: Any, clock: ManualClock
) -> None:
    job = ThreeSteps()
    jobs = {"j": define_job("j", run=job.job)}
    a = make_durably(jobs)
    b = make_durably(jobs, same_db_as=a)
    run_id, task_a = await start_blocked(a, job)
    clock.set(clock.now() + timedelta(seconds=29))
    assert await b.process_one() is False
    job.release.set()
    await task_a
    assert (await a.get_run(run_id)).status is RunStatus.COMPLETED


async def test_concurrency_key__never_two_runs_of_a_key_at_once(make_durably: Any) -> None:
    active: dict[str, int] = {}
    max_active: dict[str, int] = {}
    overall = {"now": 0, "max": 0}
    # The first runs of "k" and "k2" wait for each other inside their first step: a
    # worker that ran everything one at a time would hang here (and fail), so runs of
    # different keys provably overlap — whatever the machine's speed (yielding a few
    # loop turns and hoping another run got in was not enough on a loaded machine).
    started = {"k": asyncio.Event(), "k2": asyncio.Event()}

    async def work(key: str) -> None:
        active[key] = active.get(key, 0) + 1
        overall["now"] += 1
        max_active[key] = max(max_active.get(key, 0), active[key])
        overall["max"] = max(overall["max"], overall["now"])
        if key in started and not started[key].is_set():
            started[key].set()
            await asyncio.wait_for(started["k2" if key == "k" else "k"].wait(), 60)
        for _ in range(5):
            await asyncio.sleep(0)
        active[key] -= 1
        overall["now"] -= 1

    async def job(step: Step, payload: Any) -> Any:
        for i in range(3):
            await step.run(f"s{i}", work, payload["key"])

    jobs = {f"j{i}": define_job(f"j{i}", run=job) for i in range(4)}
    d = make_durably(jobs, max_concurrent_runs=4)
    ids = []
    for i in range(4):
        ids.append((await d.jobs[f"j{i}"].trigger({"key": "k"}, concurrency_key="k")).id)
        ids.append((await d.jobs[f"j{i}"].trigger({"key": "k2"}, concurrency_key="k2")).id)
        ids.append((await d.jobs[f"j{i}"].trigger({"key": f"free{i}"})).id)
    d.start()
    for run_id in ids:
        await asyncio.wait_for(d.wait_for_run(run_id), 120)  # raises if a run failed
    assert max_active["k"] == 1
    assert max_active["k2"] == 1
    assert overall["max"] > 1


async def test_concurrency_key__blocks_across_instances(
    make_durably: Any, clock: ManualClock
) -> None:
    gate = asyncio.Event()

    async def job(step: Step, payload: Any) -> Any:
        await step.run("wait", gate.wait)

    a = make_durably({"x": define_job("x", run=job)})
    b = make_durably({"y": define_job("y", run=job)}, same_db_as=a)
    ra = await a.jobs.x.trigger({}, concurrency_key="shared")
    clock.set(clock.now() + timedelta(milliseconds=1))  # ids of two instances: order by time
    rb = await b.jobs.y.trigger({}, concurrency_key="shared")
    task_a = asyncio.create_task(a.process_one())
    await status_is(a, ra.id, RunStatus.LEASED)
    assert await b.process_one() is False
    assert (await b.get_run(rb.id)).status is RunStatus.PENDING
    gate.set()
    await task_a
    assert await b.process_one() is True
    assert (await b.get_run(rb.id)).status is RunStatus.COMPLETED


async def test_lease__failed_renewal_cancels_job_task_at_once(
    make_durably: Any, clock: ManualClock
) -> None:
    job = ThreeSteps()
    jobs = {"j": define_job("j", run=job.job)}
    opts = {"lease_duration": LEASE, "lease_renew_interval": RENEW, "preserve_steps": True}
    a = make_durably(jobs, **opts)
    # B's clock runs ahead: it sees A's lease as expired while A still believes in it
    b_clock = ManualClock(clock.now() + timedelta(seconds=LEASE + 1))
    b = make_durably(jobs, same_db_as=a, clock=b_clock, **opts)
    a_events = recorder(a)
    run_id, task_a = await start_blocked(a, job)
    assert await b.process_one()
    assert job.cancelled == []
    a_events.clear()
    await clock.advance(RENEW)  # A's renewal changes no row
    await eventually(lambda: job.cancelled == ["s3"], "A's job task cancelled")
    assert await asyncio.wait_for(task_a, 5) is True
    types = [e.type for e in a_events]
    assert "run:lease-renewed" not in types
    assert "step:cancel" in types
    assert [e.run_id for e in a_events if e.type == "worker:error"] == [run_id]
    run = await b.get_run(run_id)
    assert run.status is RunStatus.COMPLETED
    assert run.output == ["s1-v1", "s2-v1", "s3-v2"]


async def test_lease__lost_at_renewal_is_reported_with_lease_renewal_context(
    make_durably: Any, clock: ManualClock
) -> None:
    job = ThreeSteps()
    jobs = {"j": define_job("j", run=job.job)}
    a = make_durably(jobs, lease_duration=LEASE, lease_renew_interval=RENEW)
    b_clock = ManualClock(clock.now() + timedelta(seconds=LEASE + 1))
    b = make_durably(jobs, same_db_as=a, clock=b_clock)
    errors = recorder(a, "worker:error")
    run_id, task_a = await start_blocked(a, job)
    assert await b.process_one()
    await clock.advance(RENEW)
    await asyncio.wait_for(task_a, 5)
    assert [(e.context, e.run_id) for e in errors] == [("lease-renewal", run_id)]


async def test_lease__cancel_elsewhere_refuses_next_checkpoint(
    make_durably: Any, clock: ManualClock
) -> None:
    job = ThreeSteps()
    jobs = {"j": define_job("j", run=job.job)}
    opts = {"lease_duration": LEASE, "lease_renew_interval": RENEW, "preserve_steps": True}
    a = make_durably(jobs, **opts)
    b = make_durably(jobs, same_db_as=a, **opts)
    a_events = recorder(a)
    run_id, task_a = await start_blocked(a, job)
    await b.cancel(run_id)
    a_events.clear()
    job.release.set()  # step 3 returns before any renewal: its checkpoint is refused
    assert await asyncio.wait_for(task_a, 5) is True
    run = await a.get_run(run_id)
    assert run.status is RunStatus.CANCELLED
    assert [s.name for s in await a.get_steps(run_id)] == ["s1", "s2"]
    assert job.after_s3 == []
    types = [e.type for e in a_events]
    assert not any(t in types for t in ("step:complete", "run:complete", "run:fail"))
    assert "worker:error" not in types  # a cancel is not a fault


async def test_cancel__job_swallowing_cancellation_cannot_complete(make_durably: Any) -> None:
    gate = asyncio.Event()
    after_called: list[bool] = []

    async def wait() -> None:
        after_called.append(False)
        await gate.wait()

    async def job(step: Step, payload: Any) -> Any:
        with contextlib.suppress(asyncio.CancelledError):
            await step.run("wait", wait)
        with contextlib.suppress(asyncio.CancelledError):
            await step.run("after", lambda: after_called.append(True))
        step.progress(1, 1, "late")
        return "late result"

    d = make_durably({"j": define_job("j", run=job)}, preserve_steps=True)
    events = recorder(d)
    triggered = await d.jobs.j.trigger({})
    task = asyncio.create_task(d.process_one())
    await eventually(lambda: after_called == [False], "the step running")
    await d.cancel(triggered.id)
    await asyncio.wait_for(task, 5)
    run = await d.get_run(triggered.id)
    assert run.status is RunStatus.CANCELLED
    assert run.output is None
    assert run.progress is None
    assert after_called == [False]
    assert await d.get_steps(triggered.id) == []
    assert "run:complete" not in [e.type for e in events]


async def test_lease__refused_checkpoint_leaves_no_unretrieved_task_exception(
    make_durably: Any, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    job = ThreeSteps()
    jobs = {"j": define_job("j", run=job.job)}
    a = make_durably(jobs)
    b = make_durably(jobs, same_db_as=a)
    run_id, task_a = await start_blocked(a, job)
    await b.cancel(run_id)
    job.release.set()
    await asyncio.wait_for(task_a, 5)
    del task_a
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        gc.collect()
    assert [r.getMessage() for r in caplog.records if "never retrieved" in r.getMessage()] == []
