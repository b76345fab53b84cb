"""Events: the 21 types, their payloads, ordering, listeners (docs/semantics.md, "Events")."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any, get_args

import pytest
from engine_support import eventually, recorder

from durably import (
    EventType,
    Progress,
    Retry,
    RunStatus,
    Step,
    ValidationError,
    define_job,
)
from durably_testing.clock import ManualClock

ALL_TYPES = set(get_args(EventType))


async def good(step: Step, payload: Any) -> Any:
    step.progress(1, 2, "half")
    step.log.info("hello", who="world")
    value = await step.run("add", lambda: payload["a"] + 1)
    return {"value": value}


async def bad(step: Step, payload: Any) -> Any:
    await step.run("explode", explode)


async def explode() -> None:
    raise RuntimeError("exploded")


class FailsOnce:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls == 1:
            raise ConnectionError("once")
        return "ok"


async def whole_fails(step: Step, payload: Any) -> Any:
    raise RuntimeError("the whole run")


class Gate:
    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def job(self, step: Step, payload: Any) -> Any:
        await step.run("wait", self.release.wait)


async def waiter(step: Step, payload: Any) -> Any:
    return (await step.wait_for(await step.prepare_wait("answer"))).payload


def gate_steps_started(events: list[Any]) -> int:
    return sum(1 for e in events if e.type == "step:start" and e.job_name == "gate")


async def produce_every_event(make_durably: Any, clock: ManualClock) -> tuple[Any, list[Any]]:
    gate = Gate()
    once = FailsOnce()

    async def again(step: Step, payload: Any) -> Any:
        return await step.run("flaky", once, retry=Retry(initial=60, jitter=0))

    jobs = {
        "good": define_job("good", run=good),
        "bad": define_job("bad", run=bad),
        "gate": define_job("gate", run=gate.job),
        "tick": define_job("tick", run=good),
        "waiter": define_job("waiter", run=waiter),
        "again": define_job("again", run=again),
        "whole": define_job("whole", run=whole_fails, run_retry=Retry(initial=60)),
    }
    d = make_durably(jobs, lease_duration=30, lease_renew_interval=5)
    events = recorder(d)
    # trigger, leased, progress, log, step start/complete, complete
    ok = await d.jobs.good.trigger({"a": 1}, concurrency_key="k", labels={"l": "1"})
    # coalesced (while ok is pending)
    await d.jobs.good.trigger({"a": 2}, concurrency_key="k", coalesce="skip")
    assert await d.process_one()
    # step:fail, run:fail
    await d.jobs.bad.trigger({})
    assert await d.process_one()
    # step:retry (the run then waits 60 s for the next attempt), run:retry
    await d.jobs.again.trigger({})
    assert await d.process_one()
    await d.jobs.whole.trigger({})
    assert await d.process_one()
    # lease renewed, then step:cancel and run:cancel
    blocked = await d.jobs.gate.trigger({})
    task = asyncio.create_task(d.process_one())
    await eventually(lambda: gate_steps_started(events) == 1, "the gate step running")
    await clock.advance(5)
    await eventually(lambda: any(e.type == "run:lease-renewed" for e in events), "a renewal")
    await d.cancel(blocked.id)
    await task
    # run:waiting, then wait:signal
    waiting = await d.jobs.waiter.trigger({})
    assert await d.process_one()
    await d.signal(waiting.id, "answer", 42)
    assert await d.process_one()
    # run:delete
    await d.delete_run(ok.id)
    # worker:error: a run whose lease expires under a stalled worker
    other = await d.jobs.gate.trigger({})
    task = asyncio.create_task(d.process_one())
    await eventually(lambda: gate_steps_started(events) == 2, "the gate step running")
    clock.set(clock.now() + timedelta(seconds=31))
    await clock.advance(0)
    await task
    assert (await d.get_run(other.id)).status is RunStatus.LEASED
    # schedule:skip and schedule:fire: a schedule that missed two slots, fired late
    await d.schedules.create("tick", jobs["tick"], cron="* * * * *", input={"a": 0})
    clock.set(clock.now() + timedelta(minutes=3))
    assert len(await d.schedules.fire_due()) == 1
    return d, events


async def test_events__all_twenty_one_types_are_emitted(
    make_durably: Any, clock: ManualClock
) -> None:
    _, events = await produce_every_event(make_durably, clock)
    assert len(ALL_TYPES) == 21
    assert {e.type for e in events} == ALL_TYPES


async def test_events__sequence_increases_and_timestamps_from_clock(
    make_durably: Any, clock: ManualClock
) -> None:
    start = clock.now()
    _, events = await produce_every_event(make_durably, clock)
    sequences = [e.sequence for e in events]
    assert sequences == sorted(sequences)
    assert len(set(sequences)) == len(sequences)
    assert all(e.timestamp >= start for e in events)


async def test_events__run_events_carry_run_id_job_name_labels(
    make_durably: Any, clock: ManualClock
) -> None:
    _, events = await produce_every_event(make_durably, clock)
    for e in events:
        if e.type in ("worker:error", "schedule:skip"):
            continue
        assert isinstance(e.run_id, str)
        assert e.run_id
        assert e.job_name in ("good", "bad", "gate", "tick", "waiter", "again", "whole")
        assert isinstance(e.labels, dict)
    good_events = [e for e in events if getattr(e, "job_name", None) == "good"]
    assert all(e.labels == {"l": "1"} for e in good_events)


def first(events: list[Any], event_type: str) -> Any:
    return next(e for e in events if e.type == event_type)


async def test_events__payloads(make_durably: Any, clock: ManualClock) -> None:
    d, events = await produce_every_event(make_durably, clock)
    trigger = first(events, "run:trigger")
    assert trigger.input == {"a": 1}
    coalesced = first(events, "run:coalesced")
    assert coalesced.run_id == trigger.run_id
    assert coalesced.skipped_input == {"a": 2}
    assert coalesced.skipped_labels == {}
    leased = first(events, "run:leased")
    assert leased.input == {"a": 1}
    assert leased.lease_owner == d.worker_id
    assert leased.lease_expires_at == leased.timestamp + timedelta(seconds=30)
    renewed = first(events, "run:lease-renewed")
    assert renewed.lease_owner == d.worker_id
    assert renewed.lease_expires_at == renewed.timestamp + timedelta(seconds=30)
    progress = first(events, "run:progress")
    assert progress.progress == Progress(1, 2, "half")
    log = first(events, "log:write")
    assert (log.step_name, log.level, log.message, log.data) == (
        None,
        "info",
        "hello",
        {"who": "world"},
    )
    start = first(events, "step:start")
    assert (start.step_name, start.step_index) == ("add", 0)
    done = first(events, "step:complete")
    assert (done.step_name, done.step_index, done.output) == ("add", 0, 2)
    assert done.duration >= 0
    complete = first(events, "run:complete")
    assert complete.output == {"value": 2}
    assert complete.duration >= 0
    step_fail = first(events, "step:fail")
    assert (step_fail.step_name, step_fail.step_index, step_fail.error) == (
        "explode",
        0,
        "exploded",
    )
    run_fail = first(events, "run:fail")
    assert (run_fail.error, run_fail.failed_step_name) == ("exploded", "explode")
    step_cancel = first(events, "step:cancel")
    assert (step_cancel.step_name, step_cancel.step_index) == ("wait", 0)
    cancel = first(events, "run:cancel")
    assert cancel.run_id == step_cancel.run_id
    deleted = first(events, "run:delete")
    assert deleted.run_id == trigger.run_id
    error = first(events, "worker:error")
    assert error.context in ("lease-lost", "lease-renewal")
    assert error.run_id is not None
    assert isinstance(error.error, str)
    assert error.error


async def test_events__order_of_a_run(make_durably: Any) -> None:
    d = make_durably({"good": define_job("good", run=good)})
    events = recorder(d)
    await d.jobs.good.trigger({"a": 1})
    assert await d.process_one()
    assert [e.type for e in events] == [
        "run:trigger",
        "run:leased",
        "run:progress",
        "log:write",
        "step:start",
        "step:complete",
        "run:complete",
    ]


async def test_events__sync_and_async_listeners(make_durably: Any) -> None:
    d = make_durably({"good": define_job("good", run=good)})
    sync_seen: list[str] = []
    async_seen: list[str] = []

    async def async_listener(event: Any) -> None:
        await asyncio.sleep(0)
        async_seen.append(event.type)

    d.on("run:complete", lambda e: sync_seen.append(e.type))
    d.on("run:complete", async_listener)
    d.on("run:trigger", lambda e: sync_seen.append(e.type))
    await d.jobs.good.trigger({"a": 1})
    assert await d.process_one()
    await eventually(lambda: async_seen, "the async listener")
    assert sync_seen == ["run:trigger", "run:complete"]
    assert async_seen == ["run:complete"]


async def test_events__raising_listener_does_not_break_run_or_others(
    make_durably: Any,
) -> None:
    errors: list[tuple[BaseException, Any]] = []
    d = make_durably(
        {"good": define_job("good", run=good)},
        on_listener_error=lambda exc, event: errors.append((exc, event)),
    )
    after: list[str] = []

    def broken(event: Any) -> None:
        raise ValueError(f"listener broke on {event.type}")

    d.on("*", broken)
    d.on("*", lambda e: after.append(e.type))
    triggered = await d.jobs.good.trigger({"a": 1})
    assert await d.process_one()
    run = await d.get_run(triggered.id)
    assert run.status is RunStatus.COMPLETED
    assert after[-1] == "run:complete"
    assert len(errors) == len(after)
    assert all(isinstance(exc, ValueError) for exc, _ in errors)
    assert [event.type for _, event in errors] == after


async def test_events__raising_async_listener_goes_to_error_handler(make_durably: Any) -> None:
    errors: list[tuple[BaseException, Any]] = []
    d = make_durably(
        {"good": define_job("good", run=good)},
        on_listener_error=lambda exc, event: errors.append((exc, event)),
    )

    async def broken(event: Any) -> None:
        raise KeyError("async broke")

    d.on("run:complete", broken)
    triggered = await d.jobs.good.trigger({"a": 1})
    assert await d.process_one()
    await eventually(lambda: errors, "the error handler")
    assert (await d.get_run(triggered.id)).status is RunStatus.COMPLETED
    assert len(errors) == 1
    assert isinstance(errors[0][0], KeyError)
    assert errors[0][1].type == "run:complete"


async def test_events__raising_error_handler_is_contained(make_durably: Any) -> None:
    def bad_handler(exc: BaseException, event: Any) -> None:
        raise RuntimeError("handler broke too")

    d = make_durably({"good": define_job("good", run=good)}, on_listener_error=bad_handler)
    d.on("step:complete", lambda e: 1 / 0)
    triggered = await d.jobs.good.trigger({"a": 1})
    assert await d.process_one()
    assert (await d.get_run(triggered.id)).status is RunStatus.COMPLETED


async def test_events__unsubscribe(make_durably: Any) -> None:
    d = make_durably({"good": define_job("good", run=good)})
    seen: list[Any] = []
    unsubscribe = d.on("run:trigger", seen.append)
    await d.jobs.good.trigger({"a": 1})
    unsubscribe()
    unsubscribe()  # a second call is harmless
    await d.jobs.good.trigger({"a": 2})
    assert [e.input for e in seen] == [{"a": 1}]


async def test_events__wildcard_sees_every_type(make_durably: Any) -> None:
    d = make_durably({"good": define_job("good", run=good)})
    star = recorder(d, "*")
    only_steps = recorder(d, "step:complete")
    await d.jobs.good.trigger({"a": 1})
    assert await d.process_one()
    assert len(star) == 7
    assert [e.type for e in only_steps] == ["step:complete"]
    assert only_steps[0] in star


async def test_events__unknown_type_is_rejected(make_durably: Any) -> None:
    d = make_durably()
    with pytest.raises(ValidationError, match="run:explode"):
        d.on("run:explode", print)


async def test_events__listener_must_be_callable(make_durably: Any) -> None:
    d = make_durably()
    with pytest.raises(ValidationError, match="callable"):
        d.on("run:trigger", "not callable")


async def test_events__sequence_counts_across_types(make_durably: Any) -> None:
    d = make_durably({"good": define_job("good", run=good)})
    completes = recorder(d, "run:complete")
    triggers = recorder(d, "run:trigger")
    await d.jobs.good.trigger({"a": 1})
    assert await d.process_one()
    await d.jobs.good.trigger({"a": 1})
    assert await d.process_one()
    assert triggers[0].sequence < completes[0].sequence < triggers[1].sequence
    assert triggers[1].sequence < completes[1].sequence
