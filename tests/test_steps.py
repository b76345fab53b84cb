"""Steps: checkpoints, replay, typed results, failures, progress and logs
(docs/semantics.md, "Steps")."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pydantic
import pytest
from engine_support import eventually, recorder

from durably import (
    Progress,
    RunStatus,
    Step,
    StepOutputError,
    StepStatus,
    define_job,
)

JobFn = Callable[[Step, Any], Awaitable[Any]]


class Point(pydantic.BaseModel):
    x: int
    y: int


@dataclasses.dataclass
class Pair:
    left: str
    right: int


WHEN = datetime(2025, 5, 6, 7, 8, 9, 123000, tzinfo=UTC)


async def run_once(make_durably: Any, fn: JobFn, input: Any = None, **options: Any) -> Any:
    """Register ``fn`` as job ``j``, trigger it and process it; returns (durably, run)."""
    d = make_durably({"j": define_job("j", run=fn)}, **options)
    triggered = await d.jobs.j.trigger(input if input is not None else {})
    assert await d.process_one()
    run = await d.get_run(triggered.id)
    return d, run


class Flaky:
    """A step function that fails while ``fail`` is set and counts its calls."""

    def __init__(self, fail: bool = True) -> None:
        self.calls = 0
        self.fail = fail

    async def __call__(self) -> str:
        self.calls += 1
        if self.fail:
            raise RuntimeError("boom")
        return "ok"


async def test_step_run__returns_and_stores_output(make_durably: Any) -> None:
    seen: list[Any] = []

    async def job(step: Step, payload: Any) -> Any:
        seen.append(await step.run("a", lambda: {"n": 1}))
        seen.append(await step.run("b", lambda: [1, "two"]))
        return seen

    d, run = await run_once(make_durably, job, preserve_steps=True)
    assert run.status is RunStatus.COMPLETED
    assert seen == [{"n": 1}, [1, "two"]]
    assert run.output == [{"n": 1}, [1, "two"]]
    steps = await d.get_steps(run.id)
    assert [(s.name, s.index, s.status, s.output) for s in steps] == [
        ("a", 0, StepStatus.COMPLETED, {"n": 1}),
        ("b", 1, StepStatus.COMPLETED, [1, "two"]),
    ]
    assert run.completed_step_count == 2
    assert run.current_step_index == 2


async def test_step_run__passes_args_and_kwargs(make_durably: Any) -> None:
    def add(a: int, b: int, *, scale: int) -> int:
        return (a + b) * scale

    async def job(step: Step, payload: Any) -> Any:
        return await step.run("add", add, 1, 2, scale=10)

    _, run = await run_once(make_durably, job)
    assert run.output == 30


async def test_step_run__sync_fn_runs_in_worker_thread(make_durably: Any) -> None:
    idents: dict[str, int] = {}

    def sync_fn() -> int:
        idents["step"] = threading.get_ident()
        return 1

    async def job(step: Step, payload: Any) -> Any:
        idents["job"] = threading.get_ident()
        return await step.run("s", sync_fn)

    _, run = await run_once(make_durably, job)
    assert run.status is RunStatus.COMPLETED
    assert idents["step"] != idents["job"]


async def test_step_run__async_fn_is_awaited_on_loop(make_durably: Any) -> None:
    idents: dict[str, int] = {}

    async def async_fn() -> str:
        idents["step"] = threading.get_ident()
        await asyncio.sleep(0)
        return "awaited"

    async def job(step: Step, payload: Any) -> Any:
        idents["job"] = threading.get_ident()
        return await step.run("s", async_fn)

    _, run = await run_once(make_durably, job)
    assert run.output == "awaited"
    assert idents["step"] == idents["job"]


async def test_step_run__replay_returns_stored_output_without_calling_fn(
    make_durably: Any,
) -> None:
    calls = {"a": 0}
    flaky = Flaky()
    seen: list[Any] = []

    async def a() -> dict[str, int]:
        calls["a"] += 1
        return {"v": calls["a"]}

    async def job(step: Step, payload: Any) -> Any:
        value = await step.run("a", a)
        seen.append(value)
        await step.run("b", flaky)
        return value

    d, run = await run_once(make_durably, job)
    assert run.status is RunStatus.FAILED
    flaky.fail = False
    await d.retry(run.id)
    assert await d.process_one()
    run = await d.get_run(run.id)
    assert run.status is RunStatus.COMPLETED
    assert calls["a"] == 1
    assert seen == [{"v": 1}, {"v": 1}]
    assert run.output == {"v": 1}


def point_fn() -> Point:
    return Point(x=1, y=2)


def pair_fn() -> Pair:
    return Pair(left="l", right=3)


def when_fn() -> datetime:
    return WHEN


@pytest.mark.parametrize(
    ("fn", "expected"),
    [(point_fn, Point(x=1, y=2)), (pair_fn, Pair(left="l", right=3)), (when_fn, WHEN)],
    ids=["pydantic", "dataclass", "datetime"],
)
async def test_step_run__typed_return_restored_first_time_and_on_replay(
    make_durably: Any, fn: Callable[[], Any], expected: Any
) -> None:
    seen: list[Any] = []
    flaky = Flaky()

    async def job(step: Step, payload: Any) -> Any:
        seen.append(await step.run("typed", fn))
        await step.run("fail-once", flaky)

    d, run = await run_once(make_durably, job)
    flaky.fail = False
    await d.retry(run.id)
    assert await d.process_one()
    assert len(seen) == 2
    for value in seen:
        assert type(value) is type(expected)
        assert value == expected


async def test_step_run__explicit_returns_type(make_durably: Any) -> None:
    seen: list[Any] = []

    async def job(step: Step, payload: Any) -> Any:
        seen.append(await step.run("p", lambda: Point(x=5, y=6), returns=Point))
        seen.append(await step.run("t", lambda: WHEN, returns=datetime))

    _, run = await run_once(make_durably, job)
    assert run.status is RunStatus.COMPLETED
    assert seen == [Point(x=5, y=6), WHEN]
    assert isinstance(seen[0], Point)


async def test_step_run__untyped_returns_json_native(make_durably: Any) -> None:
    seen: list[Any] = []

    async def job(step: Step, payload: Any) -> Any:
        seen.append(await step.run("p", lambda: Point(x=5, y=6)))
        seen.append(await step.run("t", lambda: WHEN))
        seen.append(await step.run("tuple", lambda: (1, 2)))

    _, run = await run_once(make_durably, job)
    assert run.status is RunStatus.COMPLETED
    assert seen[0] == {"x": 5, "y": 6}
    assert isinstance(seen[1], str)
    assert seen[1].startswith("2025-05-06T07:08:09.123")
    assert seen[2] == [1, 2]


class Opaque:
    pass


async def test_step_run__unserializable_result_fails_naming_step_and_type(
    make_durably: Any,
) -> None:
    caught: list[StepOutputError] = []

    async def job(step: Step, payload: Any) -> Any:
        await step.run("fine", lambda: 1)
        try:
            await step.run("weird", Opaque)
        except StepOutputError as exc:
            caught.append(exc)
            raise

    d, run = await run_once(make_durably, job)
    assert len(caught) == 1
    assert caught[0].step_name == "weird"
    assert "weird" in str(caught[0])
    assert "Opaque" in str(caught[0])
    assert run.status is RunStatus.FAILED
    assert "Opaque" in (run.error or "")
    steps = await d.get_steps(run.id)
    assert [s.name for s in steps] == ["fine"]


async def test_step_run__failure_writes_failed_row_and_fails_run(make_durably: Any) -> None:
    flaky = Flaky()
    events: list[Any] = []

    async def job(step: Step, payload: Any) -> Any:
        await step.run("ok", lambda: 1)
        await step.run("bad", flaky)

    d = make_durably({"j": define_job("j", run=job)})
    d.on("step:fail", events.append)
    d.on("run:fail", events.append)
    triggered = await d.jobs.j.trigger({})
    assert await d.process_one()
    run = await d.get_run(triggered.id)
    assert run.status is RunStatus.FAILED
    assert run.error == "boom"
    steps = await d.get_steps(run.id)
    assert [(s.name, s.status) for s in steps] == [
        ("ok", StepStatus.COMPLETED),
        ("bad", StepStatus.FAILED),
    ]
    assert steps[1].error == "boom"
    assert [e.type for e in events] == ["step:fail", "run:fail"]
    assert events[0].step_name == "bad"
    assert events[0].step_index == 1
    assert events[0].error == "boom"
    assert events[1].error == "boom"
    assert events[1].failed_step_name == "bad"


async def test_step_run__error_without_message_uses_type_name(make_durably: Any) -> None:
    async def bad() -> None:
        raise KeyError

    async def job(step: Step, payload: Any) -> Any:
        await step.run("bad", bad)

    _, run = await run_once(make_durably, job)
    assert run.error == "KeyError"


async def test_step_run__failure_outside_step_has_no_step_name(make_durably: Any) -> None:
    events: list[Any] = []

    async def job(step: Step, payload: Any) -> Any:
        await step.run("ok", lambda: 1)
        raise ValueError("after steps")

    d = make_durably({"j": define_job("j", run=job)})
    d.on("run:fail", events.append)
    await d.jobs.j.trigger({})
    assert await d.process_one()
    assert events[0].error == "after steps"
    assert events[0].failed_step_name is None


async def test_step_run__caught_failure_can_be_retried_with_same_name(make_durably: Any) -> None:
    flaky = Flaky()

    async def job(step: Step, payload: Any) -> Any:
        try:
            await step.run("flaky", flaky)
        except RuntimeError:
            flaky.fail = False
        return await step.run("flaky", flaky)

    d, run = await run_once(make_durably, job, preserve_steps=True)
    assert run.status is RunStatus.COMPLETED
    assert run.output == "ok"
    assert flaky.calls == 2
    steps = await d.get_steps(run.id)
    assert [(s.name, s.status) for s in steps] == [
        ("flaky", StepStatus.FAILED),
        ("flaky", StepStatus.COMPLETED),
    ]


async def test_step_run__duplicate_name_returns_first_output(make_durably: Any) -> None:
    second_called: list[bool] = []

    def second() -> str:
        second_called.append(True)
        return "second"

    async def job(step: Step, payload: Any) -> Any:
        a = await step.run("same", lambda: "first")
        b = await step.run("same", second)
        return [a, b]

    d, run = await run_once(make_durably, job, preserve_steps=True)
    assert run.output == ["first", "first"]
    assert second_called == []
    assert [s.name for s in await d.get_steps(run.id)] == ["same"]


async def test_step_run__empty_name_is_rejected(make_durably: Any) -> None:
    async def job(step: Step, payload: Any) -> Any:
        await step.run("", lambda: 1)

    _, run = await run_once(make_durably, job)
    assert run.status is RunStatus.FAILED
    assert "name" in (run.error or "")


async def test_step_run__emits_start_and_complete_events(make_durably: Any) -> None:
    async def job(step: Step, payload: Any) -> Any:
        await step.run("a", lambda: {"k": 1})

    d = make_durably({"j": define_job("j", run=job)})
    events = recorder(d)
    triggered = await d.jobs.j.trigger({})
    assert await d.process_one()
    step_events = [e for e in events if e.type.startswith("step:")]
    assert [e.type for e in step_events] == ["step:start", "step:complete"]
    start, complete = step_events
    assert (start.step_name, start.step_index, start.run_id) == ("a", 0, triggered.id)
    assert (complete.step_name, complete.step_index, complete.output) == ("a", 0, {"k": 1})
    assert complete.duration >= 0


async def test_step_progress__updates_run_and_emits_event(make_durably: Any) -> None:
    async def job(step: Step, payload: Any) -> Any:
        step.progress(1, 4, "one")
        await step.run("a", lambda: 1)
        step.progress(3, 4, "three")
        return None

    d = make_durably({"j": define_job("j", run=job)})
    events = recorder(d, "run:progress")
    triggered = await d.jobs.j.trigger({})
    assert await d.process_one()
    assert [e.progress for e in events] == [Progress(1, 4, "one"), Progress(3, 4, "three")]
    assert all(e.run_id == triggered.id for e in events)
    run = await d.get_run(triggered.id)
    assert run.progress == Progress(3, 4, "three")


async def test_step_progress__total_and_message_optional(make_durably: Any) -> None:
    async def job(step: Step, payload: Any) -> Any:
        step.progress(7)

    _, run = await run_once(make_durably, job)
    assert run.progress == Progress(7, None, None)


async def test_step_progress__visible_while_running(make_durably: Any) -> None:
    gate = asyncio.Event()

    async def job(step: Step, payload: Any) -> Any:
        step.progress(1, 2, "half")
        await step.run("wait", gate.wait)

    d = make_durably({"j": define_job("j", run=job)})
    triggered = await d.jobs.j.trigger({})
    task = asyncio.create_task(d.process_one())

    async def progress_saved() -> bool:
        run = await d.get_run(triggered.id)
        return run is not None and run.progress == Progress(1, 2, "half")

    await eventually(progress_saved, "progress written while the run is going")
    gate.set()
    await task


async def test_step_log__events_carry_step_name_level_and_data(make_durably: Any) -> None:
    async def inside() -> None:
        step_ref[0].log.warn("in step", n=2)

    step_ref: list[Step] = []

    async def job(step: Step, payload: Any) -> Any:
        step_ref.append(step)
        step.log.info("outside", a=1)
        await step.run("s", inside)
        step.log.error("bad")

    d = make_durably({"j": define_job("j", run=job)})
    events = recorder(d, "log:write")
    await d.jobs.j.trigger({})
    assert await d.process_one()
    assert [(e.step_name, e.level, e.message, e.data) for e in events] == [
        (None, "info", "outside", {"a": 1}),
        ("s", "warn", "in step", {"n": 2}),
        (None, "error", "bad", None),
    ]


async def test_step_log__from_sync_step_thread_has_step_name(make_durably: Any) -> None:
    step_ref: list[Step] = []

    def sync_fn() -> int:
        step_ref[0].log.info("from thread")
        return 1

    async def job(step: Step, payload: Any) -> Any:
        step_ref.append(step)
        await step.run("sync", sync_fn)

    d = make_durably({"j": define_job("j", run=job)}, preserve_steps=True)
    events = recorder(d, "log:write")
    triggered = await d.jobs.j.trigger({})
    assert await d.process_one()
    assert [(e.step_name, e.message) for e in events] == [("sync", "from thread")]
    logs = await d.get_logs(triggered.id)
    assert [(log.step_name, log.message) for log in logs] == [("sync", "from thread")]


async def test_get_logs__returns_stored_entries(make_durably: Any) -> None:
    async def job(step: Step, payload: Any) -> Any:
        step.log.info("one", x=1)
        await step.run("s", lambda: None)
        step.log.warn("two")

    d, run = await run_once(make_durably, job, preserve_steps=True)
    logs = await d.get_logs(run.id)
    assert [(log.level, log.message, log.data, log.run_id) for log in logs] == [
        ("info", "one", {"x": 1}, run.id),
        ("warn", "two", None, run.id),
    ]


async def test_get_logs__persist_logs_false_emits_events_and_writes_nothing(
    make_durably: Any,
) -> None:
    async def job(step: Step, payload: Any) -> Any:
        step.log.info("one", x=1)
        await step.run("s", lambda: None)

    events: list[Any] = []
    d, run = await run_once(make_durably, job, preserve_steps=True, persist_logs=False)
    assert await d.get_logs(run.id) == []
    d.on("log:write", events.append)
    again = await d.jobs.j.trigger({})
    assert await d.process_one()
    assert [(e.message, e.data) for e in events] == [("one", {"x": 1})]
    assert await d.get_logs(again.id) == []


async def test_get_logs__kept_for_failed_run(make_durably: Any) -> None:
    async def job(step: Step, payload: Any) -> Any:
        step.log.info("before failing")
        raise RuntimeError("nope")

    d, run = await run_once(make_durably, job)
    assert run.status is RunStatus.FAILED
    assert [log.message for log in await d.get_logs(run.id)] == ["before failing"]


async def test_step__run_id_and_job_name(make_durably: Any) -> None:
    seen: list[tuple[str, str]] = []

    async def job(step: Step, payload: Any) -> Any:
        seen.append((step.run_id, step.job_name))

    d = make_durably({"j": define_job("j", run=job)})
    triggered = await d.jobs.j.trigger({})
    assert await d.process_one()
    assert seen == [(triggered.id, "j")]


async def test_step__cancelled_flag_set_on_cancel(make_durably: Any) -> None:
    gate = asyncio.Event()
    flags: list[bool] = []

    async def blocked() -> None:
        flags.append(False)
        await gate.wait()

    async def job(step: Step, payload: Any) -> Any:
        flags.append(step.cancelled)
        try:
            await step.run("blocked", blocked)
        except asyncio.CancelledError:
            flags.append(step.cancelled)
            raise

    d = make_durably({"j": define_job("j", run=job)})
    triggered = await d.jobs.j.trigger({})
    task = asyncio.create_task(d.process_one())
    await eventually(lambda: len(flags) == 2, "the step running")
    await d.cancel(triggered.id)
    await task
    assert flags == [False, False, True]


async def test_step__cancel_event_seen_by_sync_step(make_durably: Any) -> None:
    loop = asyncio.get_running_loop()
    started: asyncio.Future[None] = loop.create_future()
    finished: asyncio.Future[bool] = loop.create_future()

    def long_sync(step: Step) -> None:
        loop.call_soon_threadsafe(started.set_result, None)
        step.cancel_event.wait(10)
        cancelled = step.cancelled
        try:
            step.raise_if_cancelled()
        except Exception as exc:
            cancelled = cancelled and type(exc).__name__ == "RunCancelledError"
        loop.call_soon_threadsafe(finished.set_result, cancelled)

    async def job(step: Step, payload: Any) -> Any:
        await step.run("long", long_sync, step)

    d = make_durably({"j": define_job("j", run=job)})
    triggered = await d.jobs.j.trigger({})
    task = asyncio.create_task(d.process_one())
    await asyncio.wait_for(started, 10)
    await d.cancel(triggered.id)
    assert await asyncio.wait_for(finished, 10) is True
    await task
    run = await d.get_run(triggered.id)
    assert run.status is RunStatus.CANCELLED
    assert await d.get_steps(triggered.id) == []


def points_fn() -> list[Point]:
    return [Point(x=1, y=1), Point(x=2, y=2)]


async def async_point_fn() -> Point:
    return Point(x=9, y=9)


async def test_step_run__generic_and_async_annotations_restored(make_durably: Any) -> None:
    seen: list[Any] = []
    flaky = Flaky()

    async def job(step: Step, payload: Any) -> Any:
        seen.append(await step.run("list", points_fn))
        seen.append(await step.run("async", async_point_fn))
        seen.append(await step.run("explicit", lambda: WHEN, returns=datetime))
        await step.run("fail-once", flaky)

    d, run = await run_once(make_durably, job)
    flaky.fail = False
    await d.retry(run.id)
    assert await d.process_one()
    first, replay = seen[:3], seen[3:]
    for values in (first, replay):
        assert values == [points_fn(), Point(x=9, y=9), WHEN]
        assert all(isinstance(p, Point) for p in values[0])
        assert isinstance(values[1], Point)
        assert isinstance(values[2], datetime)


async def test_step_progress__from_sync_step_thread(make_durably: Any) -> None:
    step_ref: list[Step] = []

    def sync_fn() -> int:
        step_ref[0].progress(5, 10, "thread")
        return 1

    async def job(step: Step, payload: Any) -> Any:
        step_ref.append(step)
        await step.run("sync", sync_fn)

    d = make_durably({"j": define_job("j", run=job)})
    events = recorder(d, "run:progress")
    triggered = await d.jobs.j.trigger({})
    assert await d.process_one()
    assert [e.progress for e in events] == [Progress(5, 10, "thread")]
    assert (await d.get_run(triggered.id)).progress == Progress(5, 10, "thread")


async def test_get_logs__deleted_with_steps_on_completion(make_durably: Any) -> None:
    async def job(step: Step, payload: Any) -> Any:
        step.log.info("gone soon")
        await step.run("s", lambda: 1)

    d, run = await run_once(make_durably, job)
    assert run.status is RunStatus.COMPLETED
    assert await d.get_logs(run.id) == []
    assert await d.get_steps(run.id) == []


async def test_step_run__indices_and_counts_after_resume(make_durably: Any) -> None:
    flaky = Flaky()

    async def job(step: Step, payload: Any) -> Any:
        await step.run("a", lambda: "a")
        await step.run("b", lambda: "b")
        await step.run("c", flaky)

    d, run = await run_once(make_durably, job, preserve_steps=True)
    assert (run.completed_step_count, run.current_step_index) == (2, 2)
    flaky.fail = False
    await d.retry(run.id)
    assert await d.process_one()
    run = await d.get_run(run.id)
    assert run.status is RunStatus.COMPLETED
    assert (run.completed_step_count, run.current_step_index) == (3, 3)
    steps = await d.get_steps(run.id)
    assert [(s.name, s.index, s.status) for s in steps] == [
        ("a", 0, StepStatus.COMPLETED),
        ("b", 1, StepStatus.COMPLETED),
        ("c", 2, StepStatus.FAILED),
        ("c", 2, StepStatus.COMPLETED),
    ]


async def test_step_run__replay_emits_no_step_events(make_durably: Any) -> None:
    flaky = Flaky()

    async def job(step: Step, payload: Any) -> Any:
        await step.run("a", lambda: "a")
        await step.run("b", flaky)

    d = make_durably({"j": define_job("j", run=job)})
    triggered = await d.jobs.j.trigger({})
    assert await d.process_one()
    flaky.fail = False
    await d.retry(triggered.id)
    events = recorder(d)
    assert await d.process_one()
    step_events = [(e.type, e.step_name) for e in events if e.type.startswith("step:")]
    assert step_events == [("step:start", "b"), ("step:complete", "b")]


async def test_step_run__steps_that_never_suspend_still_let_the_loop_run(
    make_durably: Any,
) -> None:
    # a trivial coroutine step (and the SQLite fast path) completes without giving the
    # event loop a turn: the runtime must yield now and then, or a long loop of such
    # steps would starve lease renewal, in-process cancel and other slots
    from durably._execution import YIELD_EVERY

    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0)

    seen: list[int] = []

    async def trivial(i: int) -> int:
        seen.append(ticks)
        return i

    async def job(step: Step, _: Any) -> int:
        for i in range(10 * YIELD_EVERY):
            await step.run(f"s{i}", trivial, i)
        return len(seen)

    task = asyncio.create_task(ticker())
    try:
        _, run = await run_once(make_durably, job)
    finally:
        stop.set()
        await task
    assert run.status == RunStatus.COMPLETED
    assert seen[-1] - seen[0] >= 9  # at least one loop turn per YIELD_EVERY steps
