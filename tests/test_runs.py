"""Run queries and control: get_runs, get_steps, cancel, retry, retrigger, delete,
purge, retention, output validation, unknown jobs (docs/semantics.md, "Runs",
"Run completion", "Control")."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from functools import partial
from typing import Any

import pydantic
import pytest
from engine_support import eventually, recorder, status_is

from durably import (
    ConflictError,
    NotFoundError,
    RunStatus,
    Step,
    StepStatus,
    ValidationError,
    define_job,
)
from durably_testing.clock import ManualClock, settle


async def ok_job(step: Step, payload: Any) -> Any:
    await step.run("one", lambda: 1)
    return {"done": True}


async def bad_job(step: Step, payload: Any) -> Any:
    await step.run("one", lambda: 1)
    raise RuntimeError("bad things")


class Gate:
    """A job that blocks in its step until released."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.entered = 0

    async def wait(self) -> str:
        self.entered += 1
        await self.event.wait()
        return "released"

    async def job(self, step: Step, payload: Any) -> Any:
        return await step.run("blocked", self.wait)


class Statuses(dict[str, str]):
    """``{status: run_id}`` for one run in each status; ``release()`` finishes the
    leased one."""

    gate: Gate
    task: asyncio.Task[bool]

    async def release(self) -> None:
        self.gate.event.set()
        await self.task


async def make_statuses(make_durably: Any, clock: ManualClock) -> tuple[Any, Statuses]:
    """One run in each status; returns (durably, {status: run_id})."""
    gate = Gate()
    d = make_durably(
        {
            "ok": define_job("ok", run=ok_job),
            "bad": define_job("bad", run=bad_job),
            "gate": define_job("gate", run=gate.job),
        }
    )
    ids = Statuses()
    ids["completed"] = (await d.jobs.ok.trigger({}, labels={"team": "a", "env": "prod"})).id
    assert await d.process_one()
    clock.set(clock.now() + timedelta(seconds=1))
    ids["failed"] = (await d.jobs.bad.trigger({}, labels={"team": "a", "env": "dev"})).id
    assert await d.process_one()
    clock.set(clock.now() + timedelta(seconds=1))
    ids["cancelled"] = (await d.jobs.ok.trigger({}, labels={"team": "b"})).id
    await d.cancel(ids["cancelled"])
    clock.set(clock.now() + timedelta(seconds=1))
    ids["leased"] = (await d.jobs.gate.trigger({}, labels={"team": "b", "env": "prod"})).id
    task = asyncio.create_task(d.process_one())
    await eventually(lambda: gate.entered == 1, "the gate job running")
    clock.set(clock.now() + timedelta(seconds=1))
    ids["pending"] = (await d.jobs.ok.trigger({})).id
    ids.gate, ids.task = gate, task
    return d, ids


async def test_get_runs__filters_by_status(make_durably: Any, clock: ManualClock) -> None:
    d, ids = await make_statuses(make_durably, clock)
    for status, run_id in ids.items():
        assert [r.id for r in await d.get_runs(status=status)] == [run_id]
    both = await d.get_runs(status=["failed", "completed"])
    assert [r.id for r in both] == [ids["failed"], ids["completed"]]
    await ids.release()


async def test_get_runs__running_is_alias_of_leased(make_durably: Any, clock: ManualClock) -> None:
    d, ids = await make_statuses(make_durably, clock)
    assert [r.id for r in await d.get_runs(status="running")] == [ids["leased"]]
    assert [r.id for r in await d.get_runs(status=["running", "pending"])] == [
        ids["pending"],
        ids["leased"],
    ]
    await ids.release()


async def test_count_runs__every_status_of_the_filter_is_a_key(
    make_durably: Any, clock: ManualClock
) -> None:
    d, ids = await make_statuses(make_durably, clock)
    assert await d.count_runs() == {s: int(s in ids) for s in RunStatus}
    assert await d.count_runs(status=["running", "failed"], job_name="bad") == {
        RunStatus.LEASED: 0,
        RunStatus.FAILED: 1,
    }
    assert await d.count_runs(labels={"nope": "x"}) == dict.fromkeys(RunStatus, 0)
    with pytest.raises(ValidationError, match="status"):
        await d.count_runs(status="done")
    await ids.release()


async def test_get_runs__unknown_status_is_rejected(make_durably: Any) -> None:
    d = make_durably()
    with pytest.raises(ValidationError, match="status"):
        await d.get_runs(status="done")


async def test_get_runs__filters_by_job_name(make_durably: Any, clock: ManualClock) -> None:
    d, ids = await make_statuses(make_durably, clock)
    assert [r.id for r in await d.get_runs(job_name="bad")] == [ids["failed"]]
    assert {r.id for r in await d.get_runs(job_name=["bad", "gate"])} == {
        ids["failed"],
        ids["leased"],
    }
    assert await d.get_runs(job_name="nope") == []
    await ids.release()


async def test_get_runs__labels_are_and_filter(make_durably: Any, clock: ManualClock) -> None:
    d, ids = await make_statuses(make_durably, clock)
    team_a = await d.get_runs(labels={"team": "a"})
    assert [r.id for r in team_a] == [ids["failed"], ids["completed"]]
    prod_b = await d.get_runs(labels={"team": "b", "env": "prod"})
    assert [r.id for r in prod_b] == [ids["leased"]]
    assert await d.get_runs(labels={"team": "a", "env": "staging"}) == []
    await ids.release()


async def test_get_runs__combined_filters(make_durably: Any, clock: ManualClock) -> None:
    d, ids = await make_statuses(make_durably, clock)
    found = await d.get_runs(status=["completed", "cancelled"], job_name="ok", labels={"team": "b"})
    assert [r.id for r in found] == [ids["cancelled"]]
    await ids.release()


async def test_get_runs__newest_first_with_limit_and_offset(
    make_durably: Any, clock: ManualClock
) -> None:
    d = make_durably({"ok": define_job("ok", run=ok_job)})
    ids = []
    for i in range(7):
        if i % 2:
            clock.set(clock.now() + timedelta(milliseconds=5))
        ids.append((await d.jobs.ok.trigger({"i": i})).id)
    newest_first = list(reversed(ids))
    assert [r.id for r in await d.get_runs()] == newest_first
    pages: list[list[str]] = []
    for offset in range(0, 7, 3):
        pages.extend(r.id for r in await d.get_runs(limit=3, offset=offset))
    assert pages == newest_first
    assert [r.id for r in await d.get_runs(limit=2, offset=1)] == newest_first[1:3]
    assert await d.get_runs(limit=0) == []


@pytest.mark.parametrize("kwargs", [{"limit": -1}, {"offset": -1}, {"limit": "2"}])
async def test_get_runs__bad_paging_is_rejected(make_durably: Any, kwargs: Any) -> None:
    d = make_durably()
    with pytest.raises(ValidationError):
        await d.get_runs(**kwargs)


async def test_get_steps__in_execution_order(make_durably: Any) -> None:
    async def job(step: Step, payload: Any) -> Any:
        for name in ["c", "a", "b"]:
            await step.run(name, lambda n=name: n.upper())

    d = make_durably({"j": define_job("j", run=job)}, preserve_steps=True)
    triggered = await d.jobs.j.trigger({})
    assert await d.process_one()
    steps = await d.get_steps(triggered.id)
    assert [(s.name, s.index, s.output, s.run_id) for s in steps] == [
        ("c", 0, "C", triggered.id),
        ("a", 1, "A", triggered.id),
        ("b", 2, "B", triggered.id),
    ]
    assert all(s.status is StepStatus.COMPLETED for s in steps)
    assert all(s.completed_at is not None for s in steps)


async def test_complete__deletes_steps_by_default(make_durably: Any) -> None:
    d = make_durably({"ok": define_job("ok", run=ok_job)})
    triggered = await d.jobs.ok.trigger({})
    assert await d.process_one()
    run = await d.get_run(triggered.id)
    assert run.status is RunStatus.COMPLETED
    assert run.output == {"done": True}
    assert run.completed_at is not None
    assert run.lease_owner is None
    assert run.lease_expires_at is None
    assert await d.get_steps(triggered.id) == []


async def test_complete__preserve_steps_keeps_them(make_durably: Any) -> None:
    d = make_durably({"ok": define_job("ok", run=ok_job)}, preserve_steps=True)
    triggered = await d.jobs.ok.trigger({})
    assert await d.process_one()
    assert [s.name for s in await d.get_steps(triggered.id)] == ["one"]


async def test_fail__keeps_steps_without_preserve(make_durably: Any) -> None:
    d = make_durably({"bad": define_job("bad", run=bad_job)})
    triggered = await d.jobs.bad.trigger({})
    assert await d.process_one()
    run = await d.get_run(triggered.id)
    assert run.status is RunStatus.FAILED
    assert run.error == "bad things"
    assert [s.name for s in await d.get_steps(triggered.id)] == ["one"]


class Out(pydantic.BaseModel):
    count: int


async def test_complete__invalid_output_fails_run(make_durably: Any) -> None:
    async def job(step: Step, payload: Any) -> Any:
        return {"count": "lots"}

    d = make_durably({"j": define_job("j", output=Out, run=job)})
    events = recorder(d, "run:fail")
    triggered = await d.jobs.j.trigger({})
    assert await d.process_one()
    run = await d.get_run(triggered.id)
    assert run.status is RunStatus.FAILED
    assert run.error.startswith("Invalid output: ")
    assert "count" in run.error
    assert run.output is None
    assert events[0].error == run.error


async def test_complete__output_model_is_stored_as_json(make_durably: Any) -> None:
    async def job(step: Step, payload: Any) -> Out:
        return Out(count=3)

    d = make_durably({"j": define_job("j", output=Out, run=job)})
    triggered = await d.jobs.j.trigger({})
    assert await d.process_one()
    run = await d.get_run(triggered.id)
    assert run.output == {"count": 3}


async def test_execute__unknown_job_fails_run(make_durably: Any) -> None:
    a = make_durably({"ok": define_job("only-here", run=ok_job)})
    b = make_durably({}, same_db_as=a)
    events = recorder(b, "run:fail")
    triggered = await a.jobs.ok.trigger({})
    assert await b.process_one()
    run = await b.get_run(triggered.id)
    assert run.status is RunStatus.FAILED
    assert run.error == "Unknown job: only-here"
    assert events[0].error == "Unknown job: only-here"


async def test_process_one__returns_false_when_nothing_ready(make_durably: Any) -> None:
    d = make_durably({"ok": define_job("ok", run=ok_job)})
    assert await d.process_one() is False


async def test_process_until_idle__processes_oldest_first(
    make_durably: Any, clock: ManualClock
) -> None:
    order: list[int] = []

    async def job(step: Step, payload: Any) -> Any:
        order.append(payload["i"])

    d = make_durably({"j": define_job("j", run=job)})
    for i in range(4):
        await d.jobs.j.trigger({"i": i})
        clock.set(clock.now() + timedelta(seconds=1))
    assert await d.process_until_idle(max_runs=3) == 3
    assert order == [0, 1, 2]
    assert await d.process_until_idle() == 1
    assert order == [0, 1, 2, 3]
    assert await d.process_until_idle() == 0


async def test_process_until_idle__bad_max_runs_is_rejected(make_durably: Any) -> None:
    d = make_durably()
    with pytest.raises(ValidationError, match="max_runs"):
        await d.process_until_idle(max_runs=0)


# -- cancel --


async def test_cancel__pending_run(make_durably: Any) -> None:
    d = make_durably({"ok": define_job("ok", run=ok_job)})
    events = recorder(d)
    triggered = await d.jobs.ok.trigger({}, labels={"a": "b"})
    events.clear()
    run = await d.cancel(triggered.id)
    assert run.status is RunStatus.CANCELLED
    assert (await d.get_run(triggered.id)).status is RunStatus.CANCELLED
    assert [e.type for e in events] == ["run:cancel"]
    assert (events[0].run_id, events[0].job_name, events[0].labels) == (
        triggered.id,
        "ok",
        {"a": "b"},
    )
    assert await d.process_one() is False


async def test_cancel__leased_run_in_process_stops_at_once(make_durably: Any) -> None:
    gate = Gate()
    d = make_durably({"g": define_job("g", run=gate.job)}, preserve_steps=True)
    triggered = await d.jobs.g.trigger({})
    task = asyncio.create_task(d.process_one())
    await eventually(lambda: gate.entered == 1, "the gate job running")
    await d.cancel(triggered.id)
    await eventually(task.done, "process_one returning after the cancel")
    run = await d.get_run(triggered.id)
    assert run.status is RunStatus.CANCELLED
    gate.event.set()
    await task
    run = await d.get_run(triggered.id)
    assert run.status is RunStatus.CANCELLED
    assert run.output is None
    assert await d.get_steps(triggered.id) == []


@pytest.mark.parametrize("job", [ok_job, bad_job], ids=["completed", "failed"])
async def test_cancel__terminal_run_conflicts(make_durably: Any, job: Any) -> None:
    d = make_durably({"j": define_job("j", run=job)})
    triggered = await d.jobs.j.trigger({})
    assert await d.process_one()
    with pytest.raises(ConflictError) as info:
        await d.cancel(triggered.id)
    assert info.value.run_id == triggered.id


async def test_cancel__cancelled_run_conflicts(make_durably: Any) -> None:
    d = make_durably({"ok": define_job("ok", run=ok_job)})
    triggered = await d.jobs.ok.trigger({})
    await d.cancel(triggered.id)
    with pytest.raises(ConflictError, match="cancelled"):
        await d.cancel(triggered.id)


async def test_cancel__unknown_run_not_found(make_durably: Any) -> None:
    d = make_durably()
    with pytest.raises(NotFoundError):
        await d.cancel("nope")


# -- retry --


async def test_retry__resumes_after_last_completed_step(make_durably: Any) -> None:
    calls = {"s1": 0, "s2": 0, "s3": 0}
    fail = [True]

    def counted(name: str) -> Any:
        async def fn() -> str:
            calls[name] += 1
            if name == "s3" and fail[0]:
                raise RuntimeError("s3 failed")
            return name

        return fn

    async def job(step: Step, payload: Any) -> Any:
        return [await step.run(n, counted(n)) for n in ("s1", "s2", "s3")]

    d = make_durably({"j": define_job("j", run=job)})
    triggered = await d.jobs.j.trigger({"x": 1})
    assert await d.process_one()
    assert (await d.get_run(triggered.id)).status is RunStatus.FAILED
    fail[0] = False
    retried = await d.retry(triggered.id)
    assert retried.id == triggered.id
    assert retried.status is RunStatus.PENDING
    assert retried.error is None
    assert retried.input == {"x": 1}
    assert await d.process_one()
    run = await d.get_run(triggered.id)
    assert run.status is RunStatus.COMPLETED
    assert run.output == ["s1", "s2", "s3"]
    assert calls == {"s1": 1, "s2": 1, "s3": 2}


async def test_retry__cancelled_run_goes_back_to_pending(make_durably: Any) -> None:
    d = make_durably({"ok": define_job("ok", run=ok_job)})
    triggered = await d.jobs.ok.trigger({})
    await d.cancel(triggered.id)
    run = await d.retry(triggered.id)
    assert run.status is RunStatus.PENDING
    assert await d.process_one()
    assert (await d.get_run(triggered.id)).status is RunStatus.COMPLETED


async def test_retry__completed_or_pending_run_conflicts(make_durably: Any) -> None:
    d = make_durably({"ok": define_job("ok", run=ok_job)})
    done = await d.jobs.ok.trigger({})
    assert await d.process_one()
    pending = await d.jobs.ok.trigger({})
    for run_id in (done.id, pending.id):
        with pytest.raises(ConflictError):
            await d.retry(run_id)
    assert (await d.get_run(done.id)).status is RunStatus.COMPLETED


async def test_retry__unknown_run_not_found(make_durably: Any) -> None:
    d = make_durably()
    with pytest.raises(NotFoundError):
        await d.retry("nope")


async def test_retry__conflicts_with_pending_run_of_same_key(make_durably: Any) -> None:
    d = make_durably({"bad": define_job("bad", run=bad_job)})
    failed = await d.jobs.bad.trigger({}, concurrency_key="k")
    assert await d.process_one()
    await d.jobs.bad.trigger({}, concurrency_key="k")
    with pytest.raises(ConflictError):
        await d.retry(failed.id)
    assert (await d.get_run(failed.id)).status is RunStatus.FAILED


# -- retrigger --


async def test_retrigger__creates_new_run_with_same_input(make_durably: Any) -> None:
    d = make_durably({"ok": define_job("ok", run=ok_job)})
    old = await d.jobs.ok.trigger(
        {"a": 1}, labels={"t": "x"}, concurrency_key="ck", idempotency_key="ik"
    )
    assert await d.process_one()
    events = recorder(d, "run:trigger")
    new = await d.retrigger(old.id)
    assert new.id != old.id
    assert new.status is RunStatus.PENDING
    assert new.input == {"a": 1}
    assert new.labels == {"t": "x"}
    assert new.concurrency_key == "ck"
    assert new.idempotency_key is None
    assert [e.run_id for e in events] == [new.id]
    assert (await d.get_run(old.id)).status is RunStatus.COMPLETED


async def test_retrigger__failed_and_cancelled_runs(make_durably: Any) -> None:
    d = make_durably({"bad": define_job("bad", run=bad_job)})
    failed = await d.jobs.bad.trigger({})
    assert await d.process_one()
    cancelled = await d.jobs.bad.trigger({})
    await d.cancel(cancelled.id)
    for run_id in (failed.id, cancelled.id):
        assert (await d.retrigger(run_id)).id != run_id


async def test_retrigger__pending_or_leased_conflicts(make_durably: Any) -> None:
    gate = Gate()
    d = make_durably({"g": define_job("g", run=gate.job)})
    leased = await d.jobs.g.trigger({})
    task = asyncio.create_task(d.process_one())
    await eventually(lambda: gate.entered == 1, "the gate job running")
    pending = await d.jobs.g.trigger({})
    for run_id in (leased.id, pending.id):
        with pytest.raises(ConflictError):
            await d.retrigger(run_id)
    gate.event.set()
    await task


async def test_retrigger__unknown_run_not_found(make_durably: Any) -> None:
    d = make_durably()
    with pytest.raises(NotFoundError):
        await d.retrigger("nope")


class V1(pydantic.BaseModel):
    name: str


class V2(pydantic.BaseModel):
    name: str
    size: int


async def test_retrigger__revalidates_input_with_current_schema(make_durably: Any) -> None:
    old_d = make_durably({"j": define_job("j", input=V1, run=ok_job)})
    old = await old_d.jobs.j.trigger({"name": "n"})
    assert await old_d.process_one()
    new_d = make_durably({"j": define_job("j", input=V2, run=ok_job)}, same_db_as=old_d)
    with pytest.raises(ValidationError, match="size"):
        await new_d.retrigger(old.id)
    assert len(await new_d.get_runs()) == 1


# -- delete --


async def test_delete_run__removes_terminal_run_and_children(make_durably: Any) -> None:
    d = make_durably({"bad": define_job("bad", run=bad_job)})
    triggered = await d.jobs.bad.trigger({}, labels={"k": "v"})
    assert await d.process_one()
    assert await d.get_steps(triggered.id) != []
    events = recorder(d)
    deleted = await d.delete_run(triggered.id)
    assert deleted.id == triggered.id
    assert await d.get_run(triggered.id) is None
    assert await d.get_steps(triggered.id) == []
    assert await d.get_logs(triggered.id) == []
    assert await d.get_runs(labels={"k": "v"}) == []
    assert [e.type for e in events] == ["run:delete"]
    assert events[0].run_id == triggered.id


async def test_delete_run__active_run_conflicts(make_durably: Any) -> None:
    d = make_durably({"ok": define_job("ok", run=ok_job)})
    triggered = await d.jobs.ok.trigger({})
    with pytest.raises(ConflictError):
        await d.delete_run(triggered.id)
    assert await d.get_run(triggered.id) is not None


async def test_delete_run__unknown_run_not_found(make_durably: Any) -> None:
    d = make_durably()
    with pytest.raises(NotFoundError):
        await d.delete_run("nope")


async def test_delete_run__frees_idempotency_key(make_durably: Any) -> None:
    d = make_durably({"ok": define_job("ok", run=ok_job)})
    first = await d.jobs.ok.trigger({}, idempotency_key="once")
    assert await d.process_one()
    await d.delete_run(first.id)
    again = await d.jobs.ok.trigger({}, idempotency_key="once")
    assert again.disposition == "created"
    assert again.id != first.id


# -- purge and retention --


async def finish_at(d: Any, clock: ManualClock, hours_ago: float, base: Any) -> str:
    clock.set(base - timedelta(hours=hours_ago))
    triggered = await d.jobs.ok.trigger({})
    assert await d.process_one()
    return str(triggered.id)


async def test_purge_runs__deletes_terminal_runs_older_than_cutoff(
    make_durably: Any, clock: ManualClock
) -> None:
    d = make_durably({"ok": define_job("ok", run=ok_job)})
    base = clock.now() + timedelta(days=10)
    old = await finish_at(d, clock, 48, base)
    recent = await finish_at(d, clock, 1, base)
    clock.set(base)
    pending = (await d.jobs.ok.trigger({})).id
    assert await d.purge_runs("1d") == 1
    assert await d.get_run(old) is None
    assert await d.get_run(recent) is not None
    assert await d.get_run(pending) is not None


async def test_purge_runs__limit_takes_oldest_first(make_durably: Any, clock: ManualClock) -> None:
    d = make_durably({"ok": define_job("ok", run=ok_job)})
    base = clock.now() + timedelta(days=10)
    oldest = await finish_at(d, clock, 30, base)
    middle = await finish_at(d, clock, 20, base)
    newest = await finish_at(d, clock, 10, base)
    clock.set(base)
    assert await d.purge_runs("1h", limit=2) == 2
    assert await d.get_run(oldest) is None
    assert await d.get_run(middle) is None
    assert await d.get_run(newest) is not None


async def test_purge_runs__accepts_datetime_cutoff(make_durably: Any, clock: ManualClock) -> None:
    d = make_durably({"ok": define_job("ok", run=ok_job)})
    base = clock.now() + timedelta(days=10)
    old = await finish_at(d, clock, 5, base)
    clock.set(base)
    assert await d.purge_runs(base - timedelta(hours=6)) == 0
    assert await d.purge_runs(base - timedelta(hours=4)) == 1
    assert await d.get_run(old) is None


@pytest.mark.parametrize("older_than", ["soon", "-1d", "7x"])
async def test_purge_runs__bad_duration_is_rejected(make_durably: Any, older_than: str) -> None:
    d = make_durably()
    with pytest.raises(ValidationError, match="duration"):
        await d.purge_runs(older_than)


async def test_purge_runs__naive_datetime_is_rejected(make_durably: Any) -> None:
    from datetime import datetime

    d = make_durably()
    with pytest.raises(ValidationError):
        await d.purge_runs(datetime(2020, 1, 1))


async def test_retain_runs__worker_purges_old_runs_when_idle(
    make_durably: Any, clock: ManualClock
) -> None:
    d = make_durably({"ok": define_job("ok", run=ok_job)}, retain_runs="1h")
    triggered = await d.jobs.ok.trigger({})
    assert await d.process_one()
    clock.set(clock.now() + timedelta(minutes=30))
    d.start()
    # the worker's idle poll, and its scheduler's wait (it has a job)
    await eventually(lambda: clock.sleepers >= 2, "the worker idling")
    await settle()
    assert await d.get_run(triggered.id) is not None
    clock.set(clock.now() + timedelta(hours=1))
    await clock.advance(d.settings.polling_interval)

    async def purged() -> bool:
        return await d.get_run(triggered.id) is None

    await eventually(purged, "the old run purged")


async def test_get_run__unknown_is_none(make_durably: Any) -> None:
    d = make_durably()
    assert await d.get_run("nope") is None


async def test_get_runs__bad_label_filter_is_rejected(make_durably: Any) -> None:
    d = make_durably()
    with pytest.raises(ValidationError, match="label"):
        await d.get_runs(labels={"bad key": "v"})


async def test_purge_runs__frees_idempotency_key(make_durably: Any, clock: ManualClock) -> None:
    d = make_durably({"ok": define_job("ok", run=ok_job)})
    first = await d.jobs.ok.trigger({}, idempotency_key="once")
    assert await d.process_one()
    clock.set(clock.now() + timedelta(days=2))
    assert await d.purge_runs("1d") == 1
    again = await d.jobs.ok.trigger({}, idempotency_key="once")
    assert again.disposition == "created"
    assert again.id != first.id


async def test_batch_trigger__duplicate_idempotency_key_within_batch(make_durably: Any) -> None:
    d = make_durably({"ok": define_job("ok", run=ok_job)})
    results = await d.jobs.ok.batch_trigger(
        [({"n": 1}, {"idempotency_key": "dup"}), ({"n": 2}, {"idempotency_key": "dup"})]
    )
    assert [r.disposition for r in results] == ["created", "idempotent"]
    assert results[0].id == results[1].id
    assert len(await d.get_runs()) == 1


async def test_cancel__pending_run_of_key_frees_slot_for_new_trigger(make_durably: Any) -> None:
    d = make_durably({"ok": define_job("ok", run=ok_job)})
    first = await d.jobs.ok.trigger({}, concurrency_key="k")
    await d.cancel(first.id)
    second = await d.jobs.ok.trigger({}, concurrency_key="k")
    assert second.disposition == "created"


async def test_retry__cancelled_mid_run_resumes_after_completed_steps(
    make_durably: Any,
) -> None:
    calls = {"a": 0, "b": 0, "c": 0}
    gate = asyncio.Event()

    def counted(name: str) -> Any:
        async def fn() -> str:
            calls[name] += 1
            if name == "c" and calls["c"] == 1:
                await gate.wait()
            return name

        return fn

    async def job(step: Step, payload: Any) -> Any:
        return [await step.run(n, counted(n)) for n in ("a", "b", "c")]

    d = make_durably({"j": define_job("j", run=job)})
    triggered = await d.jobs.j.trigger({})
    task = asyncio.create_task(d.process_one())
    await eventually(lambda: calls["c"] == 1, "step c running")
    await d.cancel(triggered.id)
    await task
    assert [s.name for s in await d.get_steps(triggered.id)] == ["a", "b"]
    await d.retry(triggered.id)
    assert await d.process_one()
    run = await d.get_run(triggered.id)
    assert run.status is RunStatus.COMPLETED
    assert run.output == ["a", "b", "c"]
    assert calls == {"a": 1, "b": 1, "c": 2}


async def test_cancel__database_updated_before_event(make_durably: Any) -> None:
    d = make_durably({"ok": define_job("ok", run=ok_job)})
    seen: list[RunStatus] = []

    async def listener(event: Any) -> None:
        run = await d.get_run(event.run_id)
        seen.append(run.status)

    d.on("run:cancel", listener)
    triggered = await d.jobs.ok.trigger({})
    await d.cancel(triggered.id)
    await eventually(lambda: seen, "the async listener")
    assert seen == [RunStatus.CANCELLED]


class TypedIn(pydantic.BaseModel):
    name: str
    size: int = 1


async def test_execute__job_receives_typed_input(make_durably: Any) -> None:
    received: list[Any] = []

    async def job(step: Step, payload: TypedIn) -> Any:
        received.append(payload)

    d = make_durably({"j": define_job("j", input=TypedIn, run=job)})
    await d.jobs.j.trigger({"name": "n"})
    assert await d.process_one()
    assert received == [TypedIn(name="n", size=1)]
    assert isinstance(received[0], TypedIn)


async def test_execute__untyped_job_receives_json_input(make_durably: Any) -> None:
    received: list[Any] = []

    async def job(step: Step, payload: Any) -> Any:
        received.append(payload)

    d = make_durably({"j": define_job("j", run=job)})
    await d.jobs.j.trigger({"a": [1, 2], "b": None})
    assert await d.process_one()
    assert received == [{"a": [1, 2], "b": None}]


async def test_maintenance__runs_while_every_slot_is_busy(
    make_durably: Any, clock: ManualClock
) -> None:
    # a worker that always has a run in flight still purges old runs and releases
    # the expired leases of crashed workers (at most once per polling interval)
    release = asyncio.Event()
    started = asyncio.Event()

    async def long_job(step: Step, payload: Any) -> str:
        started.set()  # its lease renewal is armed by now
        await release.wait()
        return "done"

    jobs = {"ok": define_job("ok", run=ok_job), "long": define_job("long", run=long_job)}
    d = make_durably(jobs, retain_runs="20s")
    old = await d.jobs.ok.trigger({})
    assert await d.process_one()
    orphan = await d.jobs.ok.trigger({})
    crashed = await d.storage.claim_next(
        "crashed-worker", clock.now(), clock.now() + timedelta(seconds=30)
    )
    assert crashed is not None
    assert crashed.id == orphan.id
    busy = await d.jobs.long.trigger({})
    renewed = recorder(d, "run:lease-renewed")
    d.start()
    await eventually(started.is_set, "the long run executing")

    async def maintained() -> bool:
        orphaned = await d.get_run(orphan.id)
        return await d.get_run(old.id) is None and orphaned.status == RunStatus.PENDING

    # 5 s at a time, a renewal at a time (the long run must keep its lease): from 40 s on
    # the old run may be purged and the orphan released. The worker maintains on the
    # ticks that find it waiting; one that comes while it is still busy with the last
    # (a round trip to a server on a loaded machine) passes it by, so tick on until it
    # has maintained (it is never busy for long).
    for i in range(40):
        if i >= 8 and await maintained():
            break
        await clock.advance(5)
        await eventually(partial(lambda i: len(renewed) > i, i), "the lease renewed")
    else:
        raise AssertionError("the old run was not purged or the orphan not released")
    assert (await d.get_run(busy.id)).status == RunStatus.LEASED
    release.set()
    await status_is(d, busy.id, RunStatus.COMPLETED)
