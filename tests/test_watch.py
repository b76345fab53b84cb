"""RunWatcher (durably._watch): the events of runs executed by *another* instance,
synthesized from what the storage shows — what ``durably events`` prints and the
dashboard's live feed sends."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from durably import Durably, Step, define_job
from durably._watch import RunWatcher
from durably_testing.clock import ManualClock

GATE: dict[str, asyncio.Event] = {}


@define_job("gated")
async def gated(step: Step, payload: Any) -> Any:
    await step.run("first", lambda: 1)
    step.log.info("first done", n=1)
    step.progress(1, 2, "half")
    GATE["reached"].set()
    await GATE["open"].wait()
    await step.run("second", lambda: 2)
    return {"ok": True}


@define_job("broken")
async def broken(step: Step, payload: Any) -> Any:
    await step.run("fine", lambda: 1)
    await step.run("boom", _boom)
    return None


def _boom() -> None:
    raise ValueError("no good")


@pytest.fixture(params=["memory", "sqlite-file"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def poll(watcher: RunWatcher) -> list[Any]:
    """The events of one reading (typed loosely: each type has its own fields)."""
    return list(await watcher.poll())


def types(events: list[Any]) -> list[str]:
    return [e.type for e in events]


async def test_watcher__reports_another_instances_run_from_trigger_to_end(
    make_durably: Any, clock: ManualClock
) -> None:
    GATE.update(reached=asyncio.Event(), open=asyncio.Event())
    # preserve_steps: a completed run's steps are otherwise deleted before a reading
    # can see the last ones (what polling cannot see, durably/_watch.py)
    executor: Durably = make_durably({"gated": gated, "broken": broken}, preserve_steps=True)
    await executor.migrate()
    watching: Durably = make_durably(same_db_as=executor)
    watcher = RunWatcher(watching)
    assert await poll(watcher) == []  # takes stock

    run = (await executor.jobs.gated.trigger({})).run
    assert types(await poll(watcher)) == ["run:trigger"]
    assert await poll(watcher) == []  # nothing new

    task = asyncio.create_task(executor.process_one())
    await GATE["reached"].wait()
    mid = await poll(watcher)
    assert types(mid)[0] == "run:leased"
    assert "step:complete" in types(mid)
    GATE["open"].set()
    assert await task
    end = await poll(watcher)
    assert types(end)[-1] == "run:complete"
    assert end[-1].output == {"ok": True}
    everything = [*mid, *end]
    steps = [e.step_name for e in everything if e.type == "step:complete"]
    assert steps == ["first", "second"]
    logs = [e for e in everything if e.type == "log:write"]
    assert [(log.message, log.data) for log in logs] == [("first done", {"n": 1})]
    progress = [e.progress for e in everything if e.type == "run:progress"]
    assert progress
    assert progress[-1].message == "half"
    assert all(e.run_id == run.id and e.sequence == 0 for e in everything)
    assert await poll(watcher) == []  # a finished run is no longer followed

    await executor.delete_run(run.id)
    assert await poll(watcher) == []  # forgotten once finished: a later delete is not seen


async def test_watcher__failure_retry_cancel_delete(make_durably: Any, clock: ManualClock) -> None:
    executor: Durably = make_durably({"broken": broken})
    await executor.migrate()
    watcher = RunWatcher(make_durably(same_db_as=executor), job_names=["broken"])
    await poll(watcher)
    run = (await executor.jobs.broken.trigger({}, labels={"team": "a"})).run
    await executor.process_one()
    events = await poll(watcher)
    assert types(events) == ["run:trigger", "run:leased", "step:complete", "step:fail", "run:fail"]
    assert events[-1].error == "no good"
    assert events[-1].failed_step_name == "boom"
    assert events[3].error == "no good"
    assert all(e.labels == {"team": "a"} for e in events)

    await executor.retry(run.id)
    assert await poll(watcher) == []  # back to pending: followed again, no event
    await executor.cancel(run.id)
    assert types(await poll(watcher)) == ["run:cancel"]

    other = (await executor.jobs.broken.trigger({})).run
    assert types(await poll(watcher)) == ["run:trigger"]
    await executor.cancel(other.id)
    await executor.delete_run(other.id)
    assert types(await poll(watcher)) == ["run:delete"]


async def test_watcher__filters_by_job_labels_and_run(
    make_durably: Any, clock: ManualClock
) -> None:
    executor: Durably = make_durably({"broken": broken, "gated": gated})
    await executor.migrate()
    by_label = RunWatcher(executor, labels={"team": "a"})
    by_job = RunWatcher(executor, job_names=["gated"])
    a = (await executor.jobs.broken.trigger({}, labels={"team": "a"})).run
    by_run = RunWatcher(executor, run_id=a.id)
    for watcher in (by_label, by_job, by_run):
        await poll(watcher)
    b = (await executor.jobs.broken.trigger({}, labels={"team": "b"})).run
    c = (await executor.jobs.gated.trigger({})).run
    assert [e.run_id for e in await poll(by_label)] == []
    assert [e.run_id for e in await poll(by_job)] == [c.id]
    await executor.cancel(a.id)
    await executor.cancel(b.id)
    assert [(e.type, e.run_id) for e in await poll(by_label)] == [("run:cancel", a.id)]
    assert [(e.type, e.run_id) for e in await poll(by_run)] == [("run:cancel", a.id)]
    assert await poll(by_job) == []


@define_job("approval")
async def approval(step: Step, payload: Any) -> Any:
    wait = await step.prepare_wait("decision", timeout=60)
    await step.run("asked", lambda: 1)
    return (await step.wait_for(wait)).payload


async def test_watcher__a_run_that_suspends_and_resumes(
    make_durably: Any, clock: ManualClock
) -> None:
    executor: Durably = make_durably({"approval": approval}, preserve_steps=True)
    await executor.migrate()
    watcher = RunWatcher(make_durably(same_db_as=executor))
    await poll(watcher)
    run_id = (await executor.jobs.approval.trigger({})).id
    assert await executor.process_one()  # runs it until it suspends
    seen = await poll(watcher)
    assert types(seen) == ["run:trigger", "run:leased", "step:complete", "run:waiting"]
    waiting = seen[-1]
    wait = await executor.get_wait(run_id, "decision")
    assert wait is not None
    assert (waiting.wait_id, waiting.wait_name, waiting.wake_at) == (
        wait.id,
        "decision",
        wait.deadline_at,
    )
    assert await poll(watcher) == []  # still waiting: nothing new
    await executor.signal(run_id, "decision", "yes")
    assert await poll(watcher) == []  # answered, not yet resumed: still the same wait
    assert await executor.process_one()
    assert types(await poll(watcher)) == ["run:leased", "run:complete"]
