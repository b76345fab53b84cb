"""The background worker, waiting for runs and subscribing to them (docs/semantics.md,
"Public API", "Control", "Bad input and faults")."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import pydantic
import pytest
from engine_support import HeldOnce, eventually, recorder, status_is

from durably import (
    LogData,
    NotFoundError,
    Progress,
    Run,
    RunCancelledError,
    RunFailedError,
    RunStatus,
    Step,
    Storage,
    StorageError,
    ValidationError,
    WaitTimeoutError,
    create_durably,
    define_job,
)
from durably_testing.clock import ManualClock, settle
from durably_testing.faults import FaultyStorage
from durably_testing.memory import MemoryStorage


class In(pydantic.BaseModel):
    n: int


class Out(pydantic.BaseModel):
    doubled: int


async def double(step: Step, payload: In) -> Out:
    value = await step.run("double", lambda: payload.n * 2)
    step.progress(1, 1, f"doubled {payload.n}")
    step.log.info("doubled", value=value)
    return Out(doubled=value)


async def bad_job(step: Step, payload: Any) -> Any:
    await step.run("explode", boom)


async def boom() -> None:
    raise RuntimeError("kaboom")


class Gates:
    """A job whose runs block until released; counts entries."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = 0
        self.cancelled = 0

    async def job(self, step: Step, payload: Any) -> Any:
        self.entered += 1
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return payload


async def test_worker__start_and_stop(make_durably: Any) -> None:
    d = make_durably()
    assert d.running is False
    d.start()
    d.start()  # idempotent
    await settle()
    assert d.running is True
    await d.stop()
    assert d.running is False


async def test_worker__async_context_manager_starts_and_stops(make_durably: Any) -> None:
    d = make_durably({"d": define_job("double", input=In, output=Out, run=double)})
    async with d as same:
        assert same is d
        assert d.running
        result = await d.jobs.d.trigger_and_wait({"n": 2})
        assert result.output == Out(doubled=4)
    assert not d.running


async def test_worker__triggered_run_starts_without_clock_moving(
    make_durably: Any, clock: ManualClock
) -> None:
    d = make_durably({"d": define_job("double", input=In, output=Out, run=double)})
    d.start()
    await settle()
    before = clock.now()
    triggered = await d.jobs.d.trigger({"n": 5})
    await status_is(d, triggered.id, RunStatus.COMPLETED)
    run = await d.get_run(triggered.id)
    assert run.output == {"doubled": 10}
    assert clock.now() == before


async def test_worker__runs_pending_runs_on_start(make_durably: Any) -> None:
    d = make_durably({"d": define_job("double", input=In, output=Out, run=double)})
    triggered = await d.jobs.d.trigger({"n": 1})
    d.start()
    await status_is(d, triggered.id, RunStatus.COMPLETED)


async def test_worker__max_concurrent_runs_slots_and_refill(
    make_durably: Any, clock: ManualClock
) -> None:
    gates = Gates()
    d = make_durably({"g": define_job("g", run=gates.job)}, max_concurrent_runs=2)
    ids = [(await d.jobs.g.trigger({"i": i})).id for i in range(4)]
    d.start()
    await eventually(lambda: gates.entered == 2, "two runs started")
    await settle()
    assert gates.entered == 2
    statuses = [(await d.get_run(i)).status for i in ids]
    assert statuses == [RunStatus.LEASED] * 2 + [RunStatus.PENDING] * 2
    before = clock.now()
    await d.cancel(ids[0])
    await eventually(lambda: gates.entered == 3, "the freed slot refilled")
    assert (await d.get_run(ids[2])).status is RunStatus.LEASED
    assert (await d.get_run(ids[3])).status is RunStatus.PENDING
    gates.release.set()
    for run_id in ids[1:]:
        await status_is(d, run_id, RunStatus.COMPLETED)
    assert clock.now() == before


async def test_worker__single_slot_by_default(make_durably: Any) -> None:
    gates = Gates()
    d = make_durably({"g": define_job("g", run=gates.job)})
    for i in range(3):
        await d.jobs.g.trigger({"i": i})
    d.start()
    await eventually(lambda: gates.entered == 1, "one run started")
    await settle()
    assert gates.entered == 1
    assert len(await d.get_runs(status="leased")) == 1


async def test_worker__stop_waits_for_in_flight_runs(make_durably: Any) -> None:
    gates = Gates()
    d = make_durably({"g": define_job("g", run=gates.job)})
    triggered = await d.jobs.g.trigger({"x": 1})
    d.start()
    await eventually(lambda: gates.entered == 1, "the run started")
    stopping = asyncio.create_task(d.stop())
    await settle()
    assert not stopping.done()
    gates.release.set()
    await asyncio.wait_for(stopping, 5)
    run = await d.get_run(triggered.id)
    assert run.status is RunStatus.COMPLETED
    assert run.output == {"x": 1}


async def test_worker__stop_timeout_cancels_stuck_runs_and_hands_the_lease_back(
    make_durably: Any, clock: ManualClock
) -> None:
    gates = Gates()
    job = define_job("g", run=gates.job)
    d = make_durably({"g": job})
    triggered = await d.jobs.g.trigger({})
    d.start()
    await eventually(lambda: gates.entered == 1, "the run started")
    await asyncio.wait_for(d.stop(timeout=0), 5)
    assert gates.cancelled == 1
    run = await d.get_run(triggered.id)
    assert run.status is RunStatus.LEASED
    assert run.lease_owner == d.worker_id
    assert run.error is None
    # handed back: its lease expires now, so another worker claims it without waiting
    assert run.lease_expires_at is not None
    assert run.lease_expires_at <= clock.now()
    other = make_durably({"g": job}, same_db_as=d)
    gates.release.set()
    assert await other.process_one()
    done = await other.get_run(triggered.id)
    assert done.status is RunStatus.COMPLETED
    assert done.lease_generation == run.lease_generation + 1


async def test_worker__stopped_worker_claims_nothing(make_durably: Any) -> None:
    d = make_durably({"d": define_job("double", input=In, output=Out, run=double)})
    d.start()
    await settle()
    await d.stop()
    triggered = await d.jobs.d.trigger({"n": 1})
    await settle()
    assert (await d.get_run(triggered.id)).status is RunStatus.PENDING


async def test_worker__started_without_init_migrates_before_it_claims(
    make_durably: Any, clock: ManualClock
) -> None:
    # no job: the scheduler reads nothing, so only the worker can create the tables
    d = make_durably({})
    errors = recorder(d, "worker:error")
    d.start()
    await eventually(lambda: clock.sleepers >= 1, "the worker idling")
    assert errors == []  # before: "no such table: durably_runs", again every backoff
    other = make_durably(
        {"d": define_job("double", input=In, output=Out, run=double)}, same_db_as=d
    )
    assert await other.get_runs() == []


async def test_worker__polls_for_runs_triggered_elsewhere(
    make_durably: Any, clock: ManualClock, backend: str
) -> None:
    jobs = {"d": define_job("double", input=In, output=Out, run=double)}
    worker = make_durably(jobs, polling_interval=2)
    # PostgreSQL's NOTIFY would wake the worker at once (tests/test_postgres.py):
    # the other process announces on a channel nobody listens to, so only the poll
    # can find the run
    quiet = {"channel": "nobody_listens"} if backend == "postgres" else {}
    other = make_durably(jobs, same_db_as=worker, **quiet)
    worker.start()
    # the worker's idle poll, and its scheduler's wait (it has a job)
    await eventually(lambda: clock.sleepers == 2, "the worker idling")
    triggered = await other.jobs.d.trigger({"n": 3})
    await settle()
    assert (await other.get_run(triggered.id)).status is RunStatus.PENDING
    await clock.advance(2)
    await status_is(other, triggered.id, RunStatus.COMPLETED)


async def test_trigger_and_wait__returns_typed_output(make_durably: Any) -> None:
    d = make_durably({"d": define_job("double", input=In, output=Out, run=double)})
    d.start()
    result = await d.jobs.d.trigger_and_wait({"n": 21})
    assert isinstance(result.output, Out)
    assert result.output.doubled == 42
    assert result.disposition == "created"
    assert result.run.id == result.id
    assert result.run.status is RunStatus.COMPLETED


async def test_trigger_and_wait__untyped_output_is_json_native(make_durably: Any) -> None:
    async def job(step: Step, payload: Any) -> Any:
        return {"echo": payload}

    d = make_durably({"e": define_job("echo", run=job)})
    d.start()
    result = await d.jobs.e.trigger_and_wait([1, 2])
    assert result.output == {"echo": [1, 2]}


async def test_trigger_and_wait__idempotent_run_already_done(make_durably: Any) -> None:
    d = make_durably({"d": define_job("double", input=In, output=Out, run=double)})
    d.start()
    first = await d.jobs.d.trigger_and_wait({"n": 1}, idempotency_key="k")
    second = await d.jobs.d.trigger_and_wait({"n": 9}, idempotency_key="k")
    assert second.id == first.id
    assert second.disposition == "idempotent"
    assert second.output == Out(doubled=2)


async def test_trigger_and_wait__timeout_leaves_run_going(
    make_durably: Any, clock: ManualClock
) -> None:
    gates = Gates()
    d = make_durably({"g": define_job("g", run=gates.job)})
    d.start()
    waiting = asyncio.create_task(d.jobs.g.trigger_and_wait({}, timeout=5))
    await eventually(lambda: gates.entered == 1, "the run started")
    await clock.advance(4)
    assert not waiting.done()
    await clock.advance(1)
    await eventually(waiting.done, "the wait timing out")
    with pytest.raises(WaitTimeoutError) as info:
        await waiting
    assert info.value.timeout == 5
    run = await d.get_run(info.value.run_id)
    assert run.status is RunStatus.LEASED
    gates.release.set()
    assert (await d.wait_for_run(run.id)).status is RunStatus.COMPLETED


class HeldRunRead(HeldOnce, MemoryStorage):
    """``get_run`` (what ``wait_for_run`` reads before it plans its sleep) waits for
    ``release`` while armed."""

    async def get_run(self, run_id: str) -> Run | None:
        await self.hold()
        return await super().get_run(run_id)


@pytest.mark.parametrize("turns", [0, 1, 2, 3])
async def test_wait_for_run__timeout_reached_while_it_plans_its_sleep_still_ends_it(
    clock: ManualClock, turns: int
) -> None:
    """The clock reaches the timeout in the loop turn between ``wait_for_run``
    planning its sleep (after reading the run) and that sleep starting: the wait
    still times out then. It used to compute the delay (5 s) before the sleep
    started, so the sleep counted from the timeout instead: it ended a whole delay
    late (never, here: nothing moves the clock again). Each ``turns`` puts the
    clock's move at another point of that interleaving."""
    storage = HeldRunRead()
    d = create_durably(
        storage, jobs={"g": define_job("g", run=Gates().job)}, clock=clock, polling_interval=600
    )
    run_id = (await d.jobs.g.trigger({})).id  # no worker: it stays pending
    storage.armed = True
    waiting = asyncio.create_task(d.wait_for_run(run_id, timeout=5))
    # it plans a 5 s sleep, and the clock reaches the timeout
    await storage.release_then_advance(clock, 5, turns, "the wait reading the run")
    await eventually(waiting.done, "the wait timing out")
    with pytest.raises(WaitTimeoutError):
        await waiting
    await d.close()


async def test_trigger_and_wait__on_progress_and_on_log_for_this_run(make_durably: Any) -> None:
    d = make_durably({"d": define_job("double", input=In, output=Out, run=double)})
    other = await d.jobs.d.trigger({"n": 100})
    progress: list[Any] = []
    logs: list[Any] = []
    d.start()
    result = await d.jobs.d.trigger_and_wait(
        {"n": 1}, on_progress=progress.append, on_log=logs.append
    )
    assert await d.wait_for_run(other.id)
    # the progress data, as the reference's onProgress(event.progress)
    assert progress == [Progress(1, 1, "doubled 1")]  # not the other run's "doubled 100"
    # the log data, as the reference's onLog({level, message, data, stepName}): this
    # run's only (the other run logs "doubled" too, with another value)
    assert logs == [LogData(level="info", message="doubled", data={"value": 2}, step_name=None)]
    assert result.output == Out(doubled=2)


async def logs_in_and_out_of_a_step(step: Step, payload: Any) -> None:
    def load() -> int:
        step.log.warn("slow source", rows=3)
        return 3

    await step.run("load", load)
    step.log.error("nothing to do")


async def test_trigger_and_wait__on_log_gets_level_message_data_and_step_name(
    make_durably: Any,
) -> None:
    d = make_durably({"l": define_job("logs", run=logs_in_and_out_of_a_step)})
    logs: list[Any] = []
    d.start()
    await d.jobs.l.trigger_and_wait({}, on_log=logs.append)
    assert logs == [
        LogData(level="warn", message="slow source", data={"rows": 3}, step_name="load"),
        LogData(level="error", message="nothing to do", data=None, step_name=None),
    ]


async def test_trigger_and_wait__callbacks_removed_afterwards(make_durably: Any) -> None:
    d = make_durably({"d": define_job("double", input=In, output=Out, run=double)})
    progress: list[Any] = []
    d.start()
    await d.jobs.d.trigger_and_wait({"n": 1}, on_progress=progress.append)
    await d.jobs.d.trigger_and_wait({"n": 2})
    assert len(progress) == 1


async def test_trigger_and_wait__failed_run_raises(make_durably: Any) -> None:
    d = make_durably({"b": define_job("bad", run=bad_job)})
    d.start()
    with pytest.raises(RunFailedError) as info:
        await d.jobs.b.trigger_and_wait({})
    assert info.value.error == "kaboom"
    assert info.value.failed_step_name == "explode"
    assert "kaboom" in str(info.value)


async def test_wait_for_run__failed_run_raises(make_durably: Any) -> None:
    d = make_durably({"b": define_job("bad", run=bad_job)})
    triggered = await d.jobs.b.trigger({})
    assert await d.process_one()
    with pytest.raises(RunFailedError) as info:
        await d.wait_for_run(triggered.id)
    assert info.value.run_id == triggered.id
    assert info.value.error == "kaboom"


async def test_wait_for_run__cancelled_run_raises(make_durably: Any) -> None:
    gates = Gates()
    d = make_durably({"g": define_job("g", run=gates.job)})
    triggered = await d.jobs.g.trigger({})
    d.start()
    waiting = asyncio.create_task(d.wait_for_run(triggered.id))
    await settle()
    await d.cancel(triggered.id)
    with pytest.raises(RunCancelledError) as info:
        await asyncio.wait_for(waiting, 5)
    assert info.value.run_id == triggered.id


async def test_wait_for_run__unknown_run_not_found(make_durably: Any) -> None:
    d = make_durably()
    with pytest.raises(NotFoundError):
        await d.wait_for_run("nope")


async def test_wait_for_run__deleted_while_waiting_not_found(
    make_durably: Any, clock: ManualClock
) -> None:
    d = make_durably({"g": define_job("g", run=Gates().job)})
    triggered = await d.jobs.g.trigger({})
    waiting = asyncio.create_task(d.wait_for_run(triggered.id))
    await settle()
    await d.cancel(triggered.id)
    with pytest.raises(RunCancelledError):
        await asyncio.wait_for(waiting, 5)
    waiting = asyncio.create_task(d.wait_for_run(triggered.id))
    with pytest.raises(RunCancelledError):
        await asyncio.wait_for(waiting, 5)
    await d.delete_run(triggered.id)
    with pytest.raises(NotFoundError):
        await d.wait_for_run(triggered.id)


async def test_wait_for_run__run_finished_by_other_process(
    make_durably: Any, clock: ManualClock
) -> None:
    jobs = {"d": define_job("double", input=In, output=Out, run=double)}
    a = make_durably(jobs)
    b = make_durably(jobs, same_db_as=a)
    triggered = await a.jobs.d.trigger({"n": 4})
    waiting = asyncio.create_task(a.wait_for_run(triggered.id))
    await eventually(lambda: clock.sleepers == 1, "the waiter polling")
    assert await b.process_one()
    await settle()
    assert not waiting.done()  # no event in a: it finds out by polling
    await clock.advance(a.settings.polling_interval)
    run = await asyncio.wait_for(waiting, 5)
    assert run.output == {"doubled": 8}


async def test_wait_for_run__negative_timeout_is_rejected(make_durably: Any) -> None:
    d = make_durably()
    with pytest.raises(ValidationError, match="timeout"):
        await d.wait_for_run("x", timeout=-1)


async def test_subscribe__yields_run_events_and_ends_after_terminal(make_durably: Any) -> None:
    d = make_durably({"d": define_job("double", input=In, output=Out, run=double)})
    other = await d.jobs.d.trigger({"n": 7})
    triggered = await d.jobs.d.trigger({"n": 1})

    async def collect() -> list[Any]:
        return [event async for event in d.subscribe(triggered.id)]

    task = asyncio.create_task(collect())
    await settle()
    d.start()
    events = await asyncio.wait_for(task, 5)
    assert all(e.run_id == triggered.id for e in events)
    types = [e.type for e in events]
    assert types[0] == "run:leased"
    assert types[-1] == "run:complete"
    assert {"step:start", "step:complete", "run:progress", "log:write"} <= set(types)
    assert (await d.wait_for_run(other.id)).status is RunStatus.COMPLETED


async def test_subscribe__ends_after_cancel(make_durably: Any) -> None:
    d = make_durably({"g": define_job("g", run=Gates().job)})
    triggered = await d.jobs.g.trigger({})

    async def collect() -> list[Any]:
        return [event.type async for event in d.subscribe(triggered.id)]

    task = asyncio.create_task(collect())
    await settle()
    await d.cancel(triggered.id)
    assert await asyncio.wait_for(task, 5) == ["run:cancel"]


async def test_subscribe__finished_or_unknown_run_ends_at_once(make_durably: Any) -> None:
    d = make_durably({"d": define_job("double", input=In, output=Out, run=double)})
    triggered = await d.jobs.d.trigger({"n": 1})
    assert await d.process_one()
    assert [e async for e in d.subscribe(triggered.id)] == []
    assert [e async for e in d.subscribe("nope")] == []


async def test_subscribe__notices_run_finished_elsewhere(
    make_durably: Any, clock: ManualClock
) -> None:
    jobs = {"d": define_job("double", input=In, output=Out, run=double)}
    a = make_durably(jobs)
    b = make_durably(jobs, same_db_as=a)
    triggered = await a.jobs.d.trigger({"n": 1})

    async def collect() -> list[Any]:
        return [event async for event in a.subscribe(triggered.id)]

    task = asyncio.create_task(collect())
    await eventually(lambda: clock.sleepers == 1, "the subscriber polling")
    assert await b.process_one()
    await clock.advance(a.settings.polling_interval)
    assert await asyncio.wait_for(task, 5) == []


class FlakyStorage(FaultyStorage):
    """Delegates to a real storage; ``claim_next`` / ``renew_lease`` raise
    ``StorageError`` the given number of times."""

    def __init__(
        self,
        inner: Storage,
        claims: int = 0,
        renewals: int = 0,
        error: type[Exception] = StorageError,
    ) -> None:
        super().__init__(inner)
        self.error = error
        self.failures = claims
        self.renew_failures = renewals
        self.claim_calls = 0
        self.renew_calls = 0

    async def claim_next(
        self,
        owner: str,
        now: datetime,
        lease_expires_at: datetime,
        job_names: Sequence[str] | None = None,
    ) -> Run | None:
        self.claim_calls += 1
        if self.failures > 0:
            self.failures -= 1
            raise self.error("database is having a bad day")
        return await self.inner.claim_next(owner, now, lease_expires_at, job_names)

    async def renew_lease(
        self, run_id: str, generation: int, now: datetime, lease_expires_at: datetime
    ) -> bool:
        self.renew_calls += 1
        if self.renew_failures > 0:
            self.renew_failures -= 1
            raise StorageError("renewal hiccup")
        return await self.inner.renew_lease(run_id, generation, now, lease_expires_at)


# OSError: an adapter that lets a raw exception escape must not stop the worker either
@pytest.mark.parametrize("error", [StorageError, OSError], ids=["storage-error", "raw-error"])
async def test_worker__storage_error_is_reported_and_retried_with_backoff(
    make_durably: Any, clock: ManualClock, error: type[Exception]
) -> None:
    base = make_durably()
    await base.migrate()
    flaky = FlakyStorage(base.storage, claims=3, error=error)
    assert isinstance(flaky, Storage)
    d = create_durably(
        flaky, clock=clock, jobs={"d": define_job("double", input=In, output=Out, run=double)}
    )
    errors = recorder(d, "worker:error")
    try:
        triggered = await d.jobs.d.trigger({"n": 1})
        d.start()
        await settle()
        assert flaky.claim_calls == 1
        assert [(e.context, e.error) for e in errors] == [("claim", "database is having a bad day")]
        await settle(200)
        assert flaky.claim_calls == 1  # no spinning while backing off
        # backoff doubles from the polling interval (with jitter of 50-100 %)
        await clock.advance(1)
        assert flaky.claim_calls == 2
        await clock.advance(2)
        assert flaky.claim_calls == 3
        assert len(errors) == 3
        await clock.advance(4)
        assert flaky.claim_calls >= 4
        assert d.running
        await status_is(d, triggered.id, RunStatus.COMPLETED)
        assert len(errors) == 3
    finally:
        await d.stop(timeout=0)


async def test_worker__claimed_after_backoff_is_reset(
    make_durably: Any, clock: ManualClock
) -> None:
    base = make_durably()
    await base.migrate()
    flaky = FlakyStorage(base.storage, claims=1)
    d = create_durably(
        flaky, clock=clock, jobs={"d": define_job("double", input=In, output=Out, run=double)}
    )
    try:
        d.start()
        await settle()
        await clock.advance(1)
        calls = flaky.claim_calls
        result = await asyncio.wait_for(d.jobs.d.trigger_and_wait({"n": 2}), 5)
        assert result.output.doubled == 4
        assert flaky.claim_calls > calls
    finally:
        await d.stop(timeout=0)


async def test_worker__expired_lease_of_crashed_worker_is_taken_over(
    make_durably: Any, clock: ManualClock
) -> None:
    gates = Gates()
    a = make_durably({"g": define_job("g", run=gates.job)})
    b = make_durably({"g": define_job("g", run=gates.job)}, same_db_as=a)
    triggered = await a.jobs.g.trigger({"v": 1})
    task_a = asyncio.create_task(a.process_one())
    await eventually(lambda: gates.entered == 1, "A running the job")
    clock.set(clock.now() + timedelta(seconds=31))
    b.start()
    await eventually(lambda: gates.entered == 2, "B running the job")
    run = await b.get_run(triggered.id)
    assert run.lease_owner == b.worker_id
    gates.release.set()
    await status_is(b, triggered.id, RunStatus.COMPLETED)
    task_a.cancel()
    await asyncio.gather(task_a, return_exceptions=True)


async def test_worker__renewal_storage_error_is_reported_and_run_goes_on(
    make_durably: Any, clock: ManualClock
) -> None:
    gates = Gates()
    base = make_durably()
    await base.migrate()
    flaky = FlakyStorage(base.storage, renewals=1)
    d = create_durably(
        flaky,
        clock=clock,
        lease_duration=30,
        lease_renew_interval=5,
        jobs={"g": define_job("g", run=gates.job)},
    )
    errors = recorder(d, "worker:error")
    renewed = recorder(d, "run:lease-renewed")
    triggered = await d.jobs.g.trigger({"v": 1})
    task = asyncio.create_task(d.process_one())
    await eventually(lambda: gates.entered == 1, "the run started")
    await clock.advance(5)
    assert flaky.renew_calls == 1
    assert [(e.context, e.run_id) for e in errors] == [("lease-renewal", triggered.id)]
    assert gates.cancelled == 0
    assert renewed == []
    await clock.advance(5)
    assert flaky.renew_calls == 2
    await eventually(lambda: len(renewed) == 1, "a renewal")
    run = await d.get_run(triggered.id)
    assert run is not None
    assert run.status is RunStatus.LEASED
    assert run.lease_expires_at == clock.now() + timedelta(seconds=30)
    gates.release.set()
    await asyncio.wait_for(task, 5)
    done = await d.get_run(triggered.id)
    assert done is not None
    assert done.status is RunStatus.COMPLETED


async def test_worker__retry_wakes_worker_in_process(make_durably: Any, clock: ManualClock) -> None:
    fail = [True]

    async def job(step: Step, payload: Any) -> Any:
        if fail[0]:
            raise RuntimeError("first time")
        return "second time"

    d = make_durably({"j": define_job("j", run=job)})
    d.start()
    with pytest.raises(RunFailedError):
        await d.jobs.j.trigger_and_wait({})
    failed = (await d.get_runs(status="failed"))[0]
    fail[0] = False
    before = clock.now()
    await d.retry(failed.id)
    await status_is(d, failed.id, RunStatus.COMPLETED)
    run = await d.get_run(failed.id)
    assert run.output == "second time"
    assert clock.now() == before


async def test_worker__stop_timeout_stops_renewing(make_durably: Any, clock: ManualClock) -> None:
    gates = Gates()
    d = make_durably({"g": define_job("g", run=gates.job)})
    renewed = recorder(d, "run:lease-renewed")
    triggered = await d.jobs.g.trigger({})
    d.start()
    await eventually(lambda: gates.entered == 1, "the run started")
    await d.stop(timeout=0)
    expires = (await d.get_run(triggered.id)).lease_expires_at
    await clock.advance(20)
    assert renewed == []
    assert (await d.get_run(triggered.id)).lease_expires_at == expires


async def test_wait_for_run__zero_timeout_on_pending_run(make_durably: Any) -> None:
    d = make_durably({"g": define_job("g", run=Gates().job)})
    triggered = await d.jobs.g.trigger({})
    with pytest.raises(WaitTimeoutError):
        await d.wait_for_run(triggered.id, timeout=0)
    assert (await d.get_run(triggered.id)).status is RunStatus.PENDING


async def test_trigger_and_wait__coalesced_waits_for_pending_run(make_durably: Any) -> None:
    d = make_durably({"d": define_job("double", input=In, output=Out, run=double)})
    first = await d.jobs.d.trigger({"n": 1}, concurrency_key="k")
    coalesced = recorder(d, "run:coalesced")
    waiting = asyncio.create_task(
        d.jobs.d.trigger_and_wait({"n": 50}, concurrency_key="k", coalesce="skip")
    )
    await eventually(lambda: coalesced, "the coalesced trigger")
    d.start()
    result = await asyncio.wait_for(waiting, 5)
    assert result.disposition == "coalesced"
    assert result.id == first.id
    assert result.output == Out(doubled=2)
    assert len(await d.get_runs()) == 1


async def test_worker__init_migrates_and_starts(make_durably: Any) -> None:
    d = make_durably({"d": define_job("double", input=In, output=Out, run=double)})
    await d.init()
    assert d.running
    result = await d.jobs.d.trigger_and_wait({"n": 3})
    assert result.output.doubled == 6


async def test_worker__can_restart_after_stop(make_durably: Any) -> None:
    d = make_durably({"d": define_job("double", input=In, output=Out, run=double)})
    d.start()
    await settle()
    await d.stop()
    d.start()
    result = await asyncio.wait_for(d.jobs.d.trigger_and_wait({"n": 4}), 5)
    assert result.output.doubled == 8


async def test_worker__many_slots_share_one_idle_poll(
    make_durably: Any, clock: ManualClock
) -> None:
    d = make_durably({"d": define_job("double", input=In, output=Out, run=double)})
    d2 = make_durably(max_concurrent_runs=8, same_db_as=d)
    d2.start()
    await eventually(lambda: clock.sleepers == 1, "the worker idling")
    await settle(50)
    assert clock.sleepers == 1  # one timer for all 8 slots, not one per slot


async def test_context_manager__interrupt_hands_the_runs_back(
    make_durably: Any, clock: ManualClock, backend: str
) -> None:
    # Ctrl-C inside `async with`: leave at once, do not wait for the run in flight
    # (its lease is handed back: another worker resumes it after the last checkpoint)
    gate = asyncio.Event()

    async def stuck(step: Step, payload: Any) -> None:
        await step.run("first", lambda: 1)
        await gate.wait()

    d = make_durably({"s": define_job("stuck", run=stuck)})
    triggered: Any = None

    async def interrupted_session() -> None:
        nonlocal triggered
        async with d:
            triggered = await d.jobs.s.trigger({})
            await status_is(d, triggered.id, RunStatus.LEASED)
            await eventually(lambda: clock.sleepers >= 2, "the run renewing its lease")

            async def first_saved() -> bool:  # on a server, the checkpoint is a round trip
                return [s.name for s in await d.get_steps(triggered.id)] == ["first"]

            await eventually(first_saved, "the first step checkpointed")
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        await interrupted_session()
    assert not d.running
    if backend == "sqlite-memory":
        return  # its database closed with it: nothing left to look at
    other = make_durably({"s": define_job("stuck", run=stuck)}, same_db_as=d)
    run = await other.get_run(triggered.id)
    assert run is not None
    assert run.status is RunStatus.LEASED  # not released, not failed: handed back
    assert run.lease_expires_at is not None
    assert run.lease_expires_at <= clock.now()
    assert [s.name for s in await other.get_steps(triggered.id)] == ["first"]
