"""Retries, timeouts and attempt records (docs/semantics.md, "Retries and timeouts"):
a step's attempts and their backoff (in place, or waiting without a slot), what
survives a crash, NonRetryableError and no_retry, retry_on, the job's default
policy, the retry of a whole run, step and run timeouts, attempt records and their
events. Time is a ManualClock: nothing here sleeps for real."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from datetime import timedelta
from typing import Any

import pytest
from engine_support import eventually, recorder

from durably import (
    AttemptStatus,
    Durably,
    NonRetryableError,
    Retry,
    RunStatus,
    Step,
    StepStatus,
    StepTimeoutError,
    ValidationError,
    create_durably,
    define_job,
    no_retry,
)
from durably.lifecycle import next_attempt
from durably_testing.clock import ManualClock
from durably_testing.faults import FaultyStorage
from durably_testing.memory import MemoryStorage

#: Backoffs without jitter: 1 s, 2 s, 4 s… (in place: shorter than lease_renew_interval)
SHORT = Retry(max_attempts=3, initial=1, factor=2, jitter=0)
#: A backoff of 10 s and more: longer than lease_renew_interval (5 s), the run waits
LONG = Retry(max_attempts=3, initial=10, factor=2, jitter=0)


class Flaky:
    """A step function failing its first ``failures`` calls (``error`` each time)."""

    def __init__(
        self, clock: ManualClock, failures: int, error: type[Exception] = ConnectionError
    ) -> None:
        self.clock = clock
        self.failures = failures
        self.error = error
        self.calls: list[Any] = []

    def __call__(self) -> str:
        self.calls.append(self.clock.now())
        if len(self.calls) <= self.failures:
            raise self.error(f"try {len(self.calls)}")
        return f"ok after {len(self.calls)}"


def job_of(fn: Any, **options: Any) -> Any:
    return define_job("j", run=fn, **options)


async def start(d: Durably) -> str:
    await d.migrate()
    return (await d.jobs.j.trigger({})).id


async def sleeping(clock: ManualClock, count: int = 1) -> None:
    """Until ``count`` sleeps wait on the clock besides the lease renewal's."""
    await eventually(lambda: clock.sleepers >= count + 1, f"{count} sleeper(s)")


# -- the policy --


def test_retry__delays_grow_by_factor_up_to_max() -> None:
    policy = Retry(max_attempts=10, initial=0.5, factor=3, max=10, jitter=0)
    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1.5, 4.5, 10.0, 10.0]
    assert Retry(max_attempts=1000, initial=1, factor=1000, jitter=0).delay(999) == 300.0


def test_retry__jitter_takes_up_to_its_share_off() -> None:
    policy = Retry(initial=10, jitter=0.25)
    assert policy.delay(1, lambda: 0.0) == 10.0
    assert policy.delay(1, lambda: 0.999999) == pytest.approx(7.5, abs=1e-4)
    assert all(7.5 <= policy.delay(1) <= 10.0 for _ in range(200))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"max_attempts": 1.5},
        {"max_attempts": True},
        {"max_attempts": 1001},
        {"initial": -1},
        {"initial": float("nan")},
        {"factor": 0.5},
        {"max": float("inf")},
        {"jitter": 1.5},
        {"retry_on": "ValueError"},
        {"retry_on": (ValueError, "x")},
        {"retry_on": ()},
    ],
)
def test_retry__bad_options_are_validation_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match=r"Retry\("):
        Retry(**kwargs)


def test_retry__what_it_retries() -> None:
    default = Retry()
    assert default.retries(ValueError("x"))
    assert not default.retries(NonRetryableError("x"))
    assert not default.retries(no_retry(ValueError("x")))
    assert not default.retries(KeyboardInterrupt())
    only = Retry(retry_on=(ConnectionError, TimeoutError))
    assert only.retries(ConnectionResetError())
    assert not only.retries(ValueError())
    picky = Retry(retry_on=lambda exc: "again" in str(exc))
    assert picky.retries(RuntimeError("try again"))
    assert not picky.retries(RuntimeError("no"))

    def broken(exc: BaseException) -> bool:
        raise RuntimeError("predicate bug")

    assert not Retry(retry_on=broken).retries(ValueError())


def test_no_retry__keeps_the_exception_and_refuses_other_things() -> None:
    exc = ValueError("bad id")
    assert no_retry(exc) is exc
    with pytest.raises(ValidationError):
        no_retry("not an exception")  # type: ignore[arg-type]


def test_define_job__bad_retry_options() -> None:
    async def fn(step: Step, payload: Any) -> None: ...

    with pytest.raises(ValidationError, match="retry="):
        define_job("j", run=fn, retry=3)  # type: ignore[call-overload]
    with pytest.raises(ValidationError, match="run_retry="):
        define_job("j", run=fn, run_retry={"max_attempts": 3})  # type: ignore[call-overload]
    with pytest.raises(ValidationError, match="timeout"):
        define_job("j", run=fn, timeout=-1)
    with pytest.raises(ValidationError, match="record_attempts"):
        define_job("j", run=fn, record_attempts="yes")  # type: ignore[call-overload]


async def test_step_run__bad_retry_or_timeout(make_durably: Any) -> None:
    seen: list[str] = []

    async def job(step: Step, payload: Any) -> None:
        for kwargs in ({"retry": 3}, {"timeout": 0}, {"timeout": float("nan")}):
            try:
                await step.run("s", lambda: 1, **kwargs)
            except ValidationError as exc:
                seen.append(str(exc))

    d = make_durably({"j": job_of(job)})
    await start(d)
    assert await d.process_one()
    assert len(seen) == 3
    assert "durably.Retry" in seen[0]


# -- lifecycle.next_attempt --


def test_next_attempt__series_of_a_step(make_durably: Any) -> None:
    from datetime import UTC, datetime

    from durably import Attempt

    t = datetime(2026, 1, 1, tzinfo=UTC)

    def record(name: str, n: int, status: AttemptStatus, next_in: float | None) -> Attempt:
        return Attempt(
            id=f"{name}{n}{status}",
            run_id="r",
            step_name=name,
            step_index=0,
            attempt=n,
            status=status,
            lease_generation=1,
            started_at=t,
            next_attempt_at=None if next_in is None else t + timedelta(seconds=next_in),
        )

    failed, started, done = AttemptStatus.FAILED, AttemptStatus.STARTED, AttemptStatus.COMPLETED
    assert next_attempt([], "a") == (1, None)
    series = [record("a", 1, failed, 5), record("b", 1, failed, 9)]
    assert next_attempt(series, "a") == (2, t + timedelta(seconds=5))
    assert next_attempt(series, "c") == (1, None)
    assert next_attempt([*series, record("a", 2, failed, None)], "a") == (1, None)
    assert next_attempt([*series, record("a", 2, started, None)], "a") == (2, None)
    assert next_attempt([*series, record("a", 2, done, None)], "a") == (1, None)


# -- a step's attempts --


async def test_step_retry__in_place_with_growing_delays(
    make_durably: Any, clock: ManualClock
) -> None:
    flaky = Flaky(clock, failures=2)

    async def job(step: Step, payload: Any) -> str:
        return await step.run("fetch", flaky, retry=SHORT)

    d = make_durably({"j": job_of(job)}, preserve_steps=True)
    events = recorder(d)
    run_id = await start(d)
    task = asyncio.create_task(d.process_one())
    await sleeping(clock)
    await clock.advance(1)
    await sleeping(clock)
    await clock.advance(2)
    assert await task
    run = await d.get_run(run_id)
    assert (run.status, run.output) == (RunStatus.COMPLETED, "ok after 3")
    t0 = flaky.calls[0]
    assert flaky.calls == [t0, t0 + timedelta(seconds=1), t0 + timedelta(seconds=3)]
    retries = [e for e in events if e.type == "step:retry"]
    assert [(e.step_name, e.attempt, e.delay, e.error) for e in retries] == [
        ("fetch", 1, 1.0, "try 1"),
        ("fetch", 2, 2.0, "try 2"),
    ]
    assert [e.next_attempt_at for e in retries] == flaky.calls[1:]
    assert not [e for e in events if e.type == "step:fail"]
    attempts = await d.get_attempts(run_id)
    assert [(a.attempt, a.status, a.error, a.next_attempt_at) for a in attempts] == [
        (1, AttemptStatus.FAILED, "try 1", flaky.calls[1]),
        (2, AttemptStatus.FAILED, "try 2", flaky.calls[2]),
    ]
    assert [(a.step_name, a.step_index, a.lease_generation) for a in attempts] == [
        ("fetch", 0, 1),
        ("fetch", 0, 1),
    ]
    steps = await d.get_steps(run_id)
    assert [(s.name, s.status) for s in steps] == [("fetch", StepStatus.COMPLETED)], (
        "a retried failure leaves no failed step row"
    )


async def test_step_retry__the_last_attempt_fails_the_step(
    make_durably: Any, clock: ManualClock
) -> None:
    flaky = Flaky(clock, failures=99)

    async def job(step: Step, payload: Any) -> str:
        return await step.run("fetch", flaky, retry=SHORT)

    d = make_durably({"j": job_of(job)})
    events = recorder(d)
    run_id = await start(d)
    task = asyncio.create_task(d.process_one())
    for delay in (1, 2):
        await sleeping(clock)
        await clock.advance(delay)
    assert await task
    run = await d.get_run(run_id)
    assert (run.status, run.error) == (RunStatus.FAILED, "try 3")
    assert len(flaky.calls) == 3
    kinds = [e.type for e in events if e.type.startswith("step:")]
    assert kinds == [
        "step:start",
        "step:retry",
        "step:start",
        "step:retry",
        "step:start",
        "step:fail",
    ]
    fail = next(e for e in events if e.type == "run:fail")
    assert fail.failed_step_name == "fetch"
    attempts = await d.get_attempts(run_id)
    assert [(a.attempt, a.error, a.next_attempt_at is None) for a in attempts] == [
        (1, "try 1", False),
        (2, "try 2", False),
        (3, "try 3", True),
    ]
    steps = await d.get_steps(run_id)
    assert [(s.status, s.error) for s in steps] == [(StepStatus.FAILED, "try 3")]


@pytest.mark.parametrize("how", ["NonRetryableError", "no_retry", "not retry_on", "predicate"])
async def test_step_retry__a_failure_not_retried_fails_at_once(
    make_durably: Any, clock: ManualClock, how: str
) -> None:
    calls: list[int] = []
    caught: list[BaseException] = []

    def fn() -> None:
        calls.append(1)
        if how == "NonRetryableError":
            raise NonRetryableError("card declined")
        if how == "no_retry":
            raise no_retry(KeyError("card declined"))
        raise ValueError("card declined")

    policy = {
        "not retry_on": Retry(initial=1, retry_on=(ConnectionError,)),
        "predicate": Retry(initial=1, retry_on=lambda exc: isinstance(exc, OSError)),
    }.get(how, Retry(initial=1))

    async def job(step: Step, payload: Any) -> None:
        try:
            await step.run("charge", fn, retry=policy)
        except Exception as exc:
            caught.append(exc)
            raise

    d = make_durably({"j": job_of(job)})
    events = recorder(d)
    run_id = await start(d)
    assert await d.process_one()  # no backoff: nothing waits on the clock
    assert len(calls) == 1
    assert not [e for e in events if e.type == "step:retry"]
    assert [e.type for e in events if e.type == "step:fail"] == ["step:fail"]
    run = await d.get_run(run_id)
    assert run.status is RunStatus.FAILED
    assert "card declined" in (run.error or "")
    if how == "no_retry":
        assert isinstance(caught[0], KeyError), "no_retry keeps the exception's type"
    [attempt] = await d.get_attempts(run_id)
    assert (attempt.attempt, attempt.next_attempt_at) == (1, None)


async def test_step_retry__a_failure_without_policy_is_recorded_too(make_durably: Any) -> None:
    async def job(step: Step, payload: Any) -> None:
        await step.run("s", lambda: 1 / 0)

    d = make_durably({"j": job_of(job)})
    run_id = await start(d)
    assert await d.process_one()
    [attempt] = await d.get_attempts(run_id)
    assert (attempt.step_name, attempt.attempt, attempt.status, attempt.error) == (
        "s",
        1,
        AttemptStatus.FAILED,
        "division by zero",
    )


async def test_step_retry__the_jobs_policy_and_a_steps_own(
    make_durably: Any, clock: ManualClock
) -> None:
    first, second = Flaky(clock, failures=1), Flaky(clock, failures=1)

    async def job(step: Step, payload: Any) -> list[str]:
        a = await step.run("a", first)  # the job's policy
        with contextlib.suppress(ConnectionError):
            await step.run("b", second, retry=Retry(max_attempts=1))  # its own: once
        return [a]

    d = make_durably({"j": job_of(job, retry=SHORT)})
    run_id = await start(d)
    task = asyncio.create_task(d.process_one())
    await sleeping(clock)
    await clock.advance(1)
    assert await task
    assert (len(first.calls), len(second.calls)) == (2, 1)
    run = await d.get_run(run_id)
    assert (run.status, run.output) == (RunStatus.COMPLETED, ["ok after 2"])


async def test_step_retry__a_caught_last_failure_then_the_same_name_starts_anew(
    make_durably: Any, clock: ManualClock
) -> None:
    flaky = Flaky(clock, failures=2)

    async def job(step: Step, payload: Any) -> str:
        policy = Retry(max_attempts=2, initial=1, jitter=0)
        try:
            return await step.run("s", flaky, retry=policy)
        except ConnectionError:
            return await step.run("s", flaky, retry=policy)

    d = make_durably({"j": job_of(job)})
    run_id = await start(d)
    task = asyncio.create_task(d.process_one())
    await sleeping(clock)
    await clock.advance(1)
    assert await task
    assert (await d.get_run(run_id)).output == "ok after 3"
    numbers = [a.attempt for a in await d.get_attempts(run_id)]
    assert numbers == [1, 2], "the second call's first attempt succeeded: no record"


async def test_step_retry__cancel_during_backoff(make_durably: Any, clock: ManualClock) -> None:
    flaky = Flaky(clock, failures=99)

    async def job(step: Step, payload: Any) -> str:
        return await step.run("fetch", flaky, retry=SHORT)

    d = make_durably({"j": job_of(job)})
    events = recorder(d)
    run_id = await start(d)
    task = asyncio.create_task(d.process_one())
    await sleeping(clock)
    await d.cancel(run_id)
    assert await task
    await clock.advance(10)
    assert len(flaky.calls) == 1
    assert (await d.get_run(run_id)).status is RunStatus.CANCELLED
    assert "step:cancel" not in [e.type for e in events], "no step was running"


# -- long backoffs: the run waits without lease or slot --


async def test_step_retry__long_backoff_releases_the_slot(
    make_durably: Any, clock: ManualClock
) -> None:
    flaky = Flaky(clock, failures=2)
    other_ran: list[int] = []

    async def job(step: Step, payload: Any) -> str:
        await step.run("before", lambda: "once")
        return await step.run("fetch", flaky, retry=LONG)

    async def other(step: Step, payload: Any) -> None:
        other_ran.append(1)

    d = make_durably({"j": job_of(job), "o": define_job("o", run=other)}, max_concurrent_runs=1)
    events = recorder(d)
    run_id = await start(d)
    t0 = clock.now()
    assert await d.process_one()
    run = await d.get_run(run_id)
    assert run.status is RunStatus.WAITING
    assert (run.wake_at, run.lease_owner, run.waiting_on_wait_id) == (
        t0 + timedelta(seconds=10),
        None,
        None,
    )
    [attempt] = await d.get_attempts(run_id)
    assert (attempt.attempt, attempt.next_attempt_at) == (1, t0 + timedelta(seconds=10))
    retry = [e for e in events if e.type == "step:retry"]
    assert [(e.attempt, e.delay) for e in retry] == [(1, 10.0)]
    # the slot is free: another run goes meanwhile
    await d.jobs.o.trigger({})
    assert await d.process_one()
    assert other_ran == [1]
    # not before its time
    await clock.advance(9.999)
    assert not await d.process_one()
    assert len(flaky.calls) == 1
    await clock.advance(0.001)
    assert await d.process_one()  # attempt 2 fails: 20 s more
    assert (await d.get_run(run_id)).wake_at == t0 + timedelta(seconds=30)
    await clock.advance(20)
    assert await d.process_one()
    run = await d.get_run(run_id)
    assert (run.status, run.output) == (RunStatus.COMPLETED, "ok after 3")
    assert flaky.calls == [t0, t0 + timedelta(seconds=10), t0 + timedelta(seconds=30)]
    assert [a.attempt for a in await d.get_attempts(run_id)] == [1, 2]
    assert [e.attempt for e in events if e.type == "step:retry"] == [1, 2]
    assert [e.type for e in events].count("run:leased") == 4


async def test_step_retry__a_worker_handed_back_mid_backoff_neither_resets_nor_hurries(
    make_durably: Any, clock: ManualClock
) -> None:
    """Worker A stops in the middle of an in-place backoff (its lease handed back, as
    a stop with a timeout does); worker B resumes at once: attempt 2, at its time."""
    flaky = Flaky(clock, failures=1)

    async def job(step: Step, payload: Any) -> str:
        return await step.run("fetch", flaky, retry=Retry(initial=4, jitter=0))

    a = make_durably({"j": job_of(job)})
    a_events = recorder(a)
    run_id = await start(a)
    a.start()
    # step:retry follows the failure's record (a stop before that write, like a crash
    # during the call, leaves attempt 1 unrecorded: it is made again, as attempt 1)
    await eventually(lambda: [e for e in a_events if e.type == "step:retry"], "attempt 1")
    await sleeping(clock)
    await a.stop(timeout=0)  # cut off in its backoff
    b = make_durably({"j": job_of(job)}, same_db_as=a)
    b_events = recorder(b)
    task = asyncio.create_task(b.process_one())
    await sleeping(clock)
    assert len(flaky.calls) == 1, "attempt 2 waits for its time"
    await clock.advance(4)
    assert await task
    run = await b.get_run(run_id)
    assert (run.status, run.output, run.lease_generation) == (RunStatus.COMPLETED, "ok after 2", 2)
    assert flaky.calls[1] == flaky.calls[0] + timedelta(seconds=4)
    assert not [e for e in b_events if e.type == "step:retry"]


async def test_step_retry__a_crash_mid_backoff_keeps_the_count(
    make_durably: Any, clock: ManualClock
) -> None:
    """A worker dies (its storage gone, nothing more written) in an in-place backoff;
    once its lease has expired another one resumes the series: attempt 2, and the
    last attempt (3) fails the step."""
    flaky = Flaky(clock, failures=99)

    async def job(step: Step, payload: Any) -> str:
        return await step.run("fetch", flaky, retry=SHORT)

    a = make_durably({"j": job_of(job)})
    run_id = await start(a)
    task = asyncio.create_task(a.process_one())
    await sleeping(clock)
    task.cancel()  # the process "dies": its lease stays until it expires
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(flaky.calls) == 1
    await clock.advance(31)
    b = make_durably({"j": job_of(job)}, same_db_as=a)
    task = asyncio.create_task(b.process_one())
    await sleeping(clock)
    await clock.advance(2)
    assert await task
    run = await b.get_run(run_id)
    assert run.status is RunStatus.FAILED
    assert len(flaky.calls) == 3, "attempts 2 and 3 only: the series went on"
    assert [a.attempt for a in await b.get_attempts(run_id)] == [1, 2, 3]


async def test_step_retry__retry_of_a_cancelled_backoff_continues_the_series(
    make_durably: Any, clock: ManualClock
) -> None:
    flaky = Flaky(clock, failures=1)

    async def job(step: Step, payload: Any) -> str:
        return await step.run("fetch", flaky, retry=LONG)

    d = make_durably({"j": job_of(job)})
    run_id = await start(d)
    assert await d.process_one()
    await d.cancel(run_id)
    await clock.advance(3)
    await d.retry(run_id)
    assert await d.process_one()  # claimed, attempt 2 still 7 s away: waits again
    run = await d.get_run(run_id)
    assert (run.status, run.wake_at) == (RunStatus.WAITING, flaky.calls[0] + timedelta(seconds=10))
    await clock.advance(7)
    assert await d.process_one()
    run = await d.get_run(run_id)
    assert (run.status, run.output) == (RunStatus.COMPLETED, "ok after 2")


async def test_step_retry__branches_of_step_all_failing_together_each_keep_their_series(
    make_durably: Any, clock: ManualClock
) -> None:
    """Two branches fail at once, both with long backoffs: neither failure is taken
    for the last (no step:fail), both are recorded, the run wakes for the earlier
    attempt, and each branch's count goes on after the wait instead of from 1."""
    a = Flaky(clock, failures=1)
    b = Flaky(clock, failures=2)

    async def job(step: Step, payload: Any) -> Any:
        return await step.all({"a": a, "b": b})

    d = make_durably({"j": job_of(job, retry=LONG)})
    events = recorder(d)
    run_id = await start(d)
    t0 = clock.now()
    assert await d.process_one()
    run = await d.get_run(run_id)
    assert (run.status, run.wake_at) == (RunStatus.WAITING, t0 + timedelta(seconds=10))
    records = await d.get_attempts(run_id)
    assert sorted((r.step_name, r.attempt, r.next_attempt_at) for r in records) == [
        ("a", 1, t0 + timedelta(seconds=10)),
        ("b", 1, t0 + timedelta(seconds=10)),
    ]
    await clock.advance(10)
    assert await d.process_one()  # a succeeds; b's attempt 2 fails: 20 s more
    assert (await d.get_run(run_id)).wake_at == t0 + timedelta(seconds=30)
    await clock.advance(20)
    assert await d.process_one()
    run = await d.get_run(run_id)
    assert (run.status, run.output) == (RunStatus.COMPLETED, {"a": "ok after 2", "b": "ok after 3"})
    assert b.calls == [t0, t0 + timedelta(seconds=10), t0 + timedelta(seconds=30)]
    assert sorted((r.step_name, r.attempt) for r in await d.get_attempts(run_id)) == [
        ("a", 1),
        ("b", 1),
        ("b", 2),
    ]
    assert not [e for e in events if e.type == "step:fail"]
    assert sorted((e.step_name, e.attempt) for e in events if e.type == "step:retry") == [
        ("a", 1),
        ("b", 1),
        ("b", 2),
    ]


async def test_step_retry__a_branch_failing_for_good_fails_the_join_at_once(
    make_durably: Any, clock: ManualClock
) -> None:
    """Beside a branch whose next attempt is 10 s away, a NonRetryableError fails
    step.all and the run at once: no wait for an attempt that could not help, and
    that branch's failure is recorded without a next attempt."""
    a = Flaky(clock, failures=1)
    b = Flaky(clock, failures=99, error=NonRetryableError)

    async def job(step: Step, payload: Any) -> Any:
        return await step.all({"a": a, "b": b})

    d = make_durably({"j": job_of(job, retry=LONG)})
    events = recorder(d)
    run_id = await start(d)
    assert await d.process_one()
    run = await d.get_run(run_id)
    assert (run.status, run.error, run.wake_at) == (RunStatus.FAILED, "try 1", None)
    assert (len(a.calls), len(b.calls)) == (1, 1)
    records = await d.get_attempts(run_id)
    assert sorted((r.step_name, r.attempt, r.next_attempt_at) for r in records) == [
        ("a", 1, None),
        ("b", 1, None),
    ]
    assert not [e for e in events if e.type == "step:retry"]
    assert [e.step_name for e in events if e.type == "step:fail"] == ["b"]
    assert next(e for e in events if e.type == "run:fail").failed_step_name == "b"


# -- records of every attempt, and the success path --


async def test_record_attempts__every_attempt_before_its_call(
    make_durably: Any, clock: ManualClock
) -> None:
    flaky = Flaky(clock, failures=1)
    seen: list[list[Any]] = []
    holder: dict[str, Any] = {}

    async def observed() -> str:
        seen.append([(a.attempt, a.status) for a in await holder["d"].get_attempts(holder["run"])])
        return flaky()

    async def job(step: Step, payload: Any) -> str:
        return await step.run("fetch", observed, retry=SHORT)

    d = make_durably({"j": job_of(job, record_attempts=True)}, preserve_steps=True)
    holder["d"] = d
    holder["run"] = await start(d)
    task = asyncio.create_task(d.process_one())
    await sleeping(clock)
    await clock.advance(1)
    assert await task
    assert seen == [
        [(1, AttemptStatus.STARTED)],
        [(1, AttemptStatus.FAILED), (2, AttemptStatus.STARTED)],
    ]
    attempts = await d.get_attempts(holder["run"])
    assert [(a.attempt, a.status) for a in attempts] == [
        (1, AttemptStatus.FAILED),
        (2, AttemptStatus.COMPLETED),
    ]
    [step] = await d.get_steps(holder["run"])
    assert attempts[1].completed_at == step.completed_at


async def test_record_attempts__an_interrupted_attempt_runs_again_under_its_number(
    make_durably: Any, clock: ManualClock
) -> None:
    gate = asyncio.Event()
    calls: list[int] = []

    async def slow() -> str:
        calls.append(1)
        if len(calls) == 1:
            await gate.wait()  # the worker dies in here
        return "done"

    async def job(step: Step, payload: Any) -> str:
        return await step.run("slow", slow)

    a = make_durably({"j": job_of(job, record_attempts=True)})
    run_id = await start(a)
    task = asyncio.create_task(a.process_one())
    await eventually(lambda: calls, "attempt 1 started")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await clock.advance(31)
    b = make_durably({"j": job_of(job, record_attempts=True)}, same_db_as=a)
    assert await b.process_one()
    attempts = await b.get_attempts(run_id)
    assert [(x.attempt, x.status, x.lease_generation) for x in attempts] == [
        (1, AttemptStatus.STARTED, 1),
        (1, AttemptStatus.COMPLETED, 2),
    ]


@pytest.mark.parametrize("options", [{}, {"retry": SHORT}, {"retry": SHORT, "timeout": 60}])
async def test_success_path__no_write_more_than_a_plain_checkpoint(
    clock: ManualClock, options: dict[str, Any]
) -> None:
    """The storage calls of a run of three successful steps are the same with a retry
    policy (and a timeout) as without: a policy costs nothing until a step fails."""

    async def calls_of(**step_options: Any) -> list[str]:
        async def job(step: Step, payload: Any) -> int:
            for name in ("a", "b", "c"):
                await step.run(name, lambda: 1, **step_options)
            return 3

        probe = FaultyStorage(MemoryStorage())
        d = create_durably(probe, jobs={"j": job_of(job)}, clock=clock)
        await d.migrate()
        await d.jobs.j.trigger({})
        start = len(probe.calls)
        assert await d.process_one()
        return probe.calls[start:]

    assert await calls_of(**options) == await calls_of()


# -- timeouts --


async def test_step_timeout__an_async_function_is_cancelled(
    make_durably: Any, clock: ManualClock
) -> None:
    stopped: list[str] = []

    async def hangs() -> None:
        try:
            await clock.sleep(3600)
        except asyncio.CancelledError:
            stopped.append("cancelled")
            raise

    async def job(step: Step, payload: Any) -> str:
        try:
            await step.run("hangs", hangs, timeout=5)
        except StepTimeoutError as exc:
            return f"{exc.step_name} {exc.timeout}"
        return "no"

    d = make_durably({"j": job_of(job)})
    events = recorder(d)
    run_id = await start(d)
    task = asyncio.create_task(d.process_one())
    await sleeping(clock, 2)
    await clock.advance(5)
    assert await task
    assert (await d.get_run(run_id)).output == "hangs 5.0"
    assert stopped == ["cancelled"]
    fail = next(e for e in events if e.type == "step:fail")
    assert "within its timeout of 5s" in fail.error


async def test_step_timeout__a_sync_function_runs_on_its_result_discarded(
    make_durably: Any, clock: ManualClock
) -> None:
    release = threading.Event()
    finished = threading.Event()
    calls: list[int] = []

    def blocks() -> str:
        calls.append(1)
        if len(calls) == 1:
            release.wait(timeout=60)
            finished.set()
            return "late"
        return "second"

    async def job(step: Step, payload: Any) -> str:
        return await step.run("blocks", blocks, timeout=5, retry=SHORT)

    d = make_durably({"j": job_of(job)}, preserve_steps=True)
    run_id = await start(d)
    task = asyncio.create_task(d.process_one())
    await eventually(lambda: calls, "attempt 1 in its thread")
    await sleeping(clock)  # the attempt's timer
    await clock.advance(5)  # attempt 1 times out; its thread is still blocked
    await sleeping(clock)
    await clock.advance(1)  # attempt 2
    assert await task
    release.set()
    await asyncio.to_thread(finished.wait, 60)
    run = await d.get_run(run_id)
    assert (run.status, run.output) == (RunStatus.COMPLETED, "second")
    [attempt] = await d.get_attempts(run_id)
    assert "did not finish within its timeout of 5s" in (attempt.error or "")
    assert [s.output for s in await d.get_steps(run_id)] == ["second"], "'late' is dropped"


async def test_run_timeout__the_job_is_stopped_at_its_deadline(
    make_durably: Any, clock: ManualClock
) -> None:
    async def slow() -> None:
        await clock.sleep(3600)

    async def job(step: Step, payload: Any) -> None:
        await step.run("quick", lambda: 1)
        await step.run("slow", slow)

    d = make_durably({"j": job_of(job, timeout=60)})
    events = recorder(d)
    run_id = await start(d)
    task = asyncio.create_task(d.process_one())
    await sleeping(clock, 2)
    await clock.advance(60)
    assert await task
    run = await d.get_run(run_id)
    assert run.status is RunStatus.FAILED
    assert run.error == "Run timed out: job 'j' did not finish within 60s of its start " + (
        "(define_job(timeout=...))"
    )
    assert [e.step_name for e in events if e.type == "step:cancel"] == ["slow"]
    assert next(e for e in events if e.type == "run:fail").failed_step_name == "slow"


async def test_run_timeout__a_run_suspended_on_a_wait_fails_when_it_is_next_claimed(
    make_durably: Any, clock: ManualClock
) -> None:
    """The deadline does not wake a run waiting for a signal (docs/semantics.md): the
    signal that resumes it after the deadline finds the run timed out."""

    async def job(step: Step, payload: Any) -> str:
        wait = await step.prepare_wait("approval")
        answer = await step.wait_for(wait)
        return str(answer.payload)

    d = make_durably({"j": job_of(job, timeout=60)})
    run_id = await start(d)
    assert await d.process_one()
    assert (await d.get_run(run_id)).status is RunStatus.WAITING
    await clock.advance(120)
    assert not await d.process_one(), "nothing wakes it at its deadline"
    await d.signal(run_id, "approval", "yes")
    assert await d.process_one()
    run = await d.get_run(run_id)
    assert run.status is RunStatus.FAILED
    assert (run.error or "").startswith("Run timed out: job 'j' did not finish within 60s")


async def test_run_timeout__counts_from_the_first_start_and_bounds_retries(
    make_durably: Any, clock: ManualClock
) -> None:
    flaky = Flaky(clock, failures=99)

    async def job(step: Step, payload: Any) -> None:
        await step.run("fetch", flaky, retry=Retry(max_attempts=10, initial=20, jitter=0))

    d = make_durably({"j": job_of(job, timeout=50)})
    run_id = await start(d)
    assert await d.process_one()  # attempt 1 at 0, the next at 20
    await clock.advance(20)
    assert await d.process_one()  # attempt 2 at 20; the next at 60 is past the deadline
    run = await d.get_run(run_id)
    assert (run.status, run.error) == (RunStatus.FAILED, "try 2")
    assert len(flaky.calls) == 2


async def test_run_timeout__a_run_claimed_after_its_deadline_fails_at_once(
    make_durably: Any, clock: ManualClock
) -> None:
    calls: list[int] = []

    async def slow() -> None:
        await clock.sleep(3600)

    async def job(step: Step, payload: Any) -> None:
        calls.append(1)
        await step.run("s", slow)

    a = make_durably({"j": job_of(job, timeout=10)})
    run_id = await start(a)
    task = asyncio.create_task(a.process_one())
    await eventually(lambda: calls, "started")
    task.cancel()  # dies without a word
    with pytest.raises(asyncio.CancelledError):
        await task
    await clock.advance(31)
    b = make_durably({"j": job_of(job, timeout=10)}, same_db_as=a)
    assert await b.process_one()
    run = await b.get_run(run_id)
    assert run.status is RunStatus.FAILED
    assert "timed out" in (run.error or "")
    assert calls == [1]


# -- the whole run --


async def test_run_retry__resumes_after_the_last_completed_step(
    make_durably: Any, clock: ManualClock
) -> None:
    counts = {"a": 0, "b": 0}

    def a() -> str:
        counts["a"] += 1
        return "a"

    def b() -> str:
        counts["b"] += 1
        if counts["b"] < 3:
            raise ConnectionError(f"b failed {counts['b']}")
        return "b"

    async def job(step: Step, payload: Any) -> list[str]:
        return [await step.run("a", a), await step.run("b", b)]

    policy = Retry(max_attempts=3, initial=60, factor=2, jitter=0)
    d = make_durably({"j": job_of(job, run_retry=policy)})
    events = recorder(d)
    run_id = await start(d)
    assert await d.process_one()
    run = await d.get_run(run_id)
    assert (run.status, run.attempt, run.error) == (RunStatus.WAITING, 2, "b failed 1")
    assert run.wake_at == clock.now() + timedelta(seconds=60)
    await clock.advance(59)
    assert not await d.process_one()
    await clock.advance(1)
    assert await d.process_one()
    assert (await d.get_run(run_id)).attempt == 3
    await clock.advance(120)
    assert await d.process_one()
    run = await d.get_run(run_id)
    assert (run.status, run.output, run.attempt) == (RunStatus.COMPLETED, ["a", "b"], 3)
    assert counts == {"a": 1, "b": 3}
    retries = [e for e in events if e.type == "run:retry"]
    assert [(e.attempt, e.delay, e.error, e.failed_step_name) for e in retries] == [
        (1, 60.0, "b failed 1", "b"),
        (2, 120.0, "b failed 2", "b"),
    ]
    assert not [e for e in events if e.type == "run:fail"]
    assert [e.type for e in events].count("step:fail") == 2


async def test_run_retry__the_last_attempt_fails_and_retry_starts_over(
    make_durably: Any, clock: ManualClock
) -> None:
    async def job(step: Step, payload: Any) -> None:
        raise RuntimeError("always")

    d = make_durably({"j": job_of(job, run_retry=Retry(max_attempts=2, initial=60, jitter=0))})
    events = recorder(d)
    run_id = await start(d)
    assert await d.process_one()
    await clock.advance(60)
    assert await d.process_one()
    run = await d.get_run(run_id)
    assert (run.status, run.attempt, run.error) == (RunStatus.FAILED, 2, "always")
    assert [e.type for e in events if e.type in ("run:retry", "run:fail")] == [
        "run:retry",
        "run:fail",
    ]
    retried = await d.retry(run_id)
    assert (retried.attempt, retried.started_at) == (1, None)
    assert await d.process_one()
    assert (await d.get_run(run_id)).status is RunStatus.WAITING, "a full policy again"


async def test_run_retry__not_for_what_the_policy_does_not_retry(make_durably: Any) -> None:
    async def job(step: Step, payload: Any) -> None:
        raise NonRetryableError("bad input")

    d = make_durably({"j": job_of(job, run_retry=Retry(initial=60))})
    run_id = await start(d)
    assert await d.process_one()
    run = await d.get_run(run_id)
    assert (run.status, run.attempt) == (RunStatus.FAILED, 1)


async def test_run_retry__a_waiting_run_can_be_cancelled(
    make_durably: Any, clock: ManualClock
) -> None:
    async def job(step: Step, payload: Any) -> None:
        raise RuntimeError("x")

    d = make_durably({"j": job_of(job, run_retry=Retry(initial=60))})
    run_id = await start(d)
    assert await d.process_one()
    await d.cancel(run_id)
    await clock.advance(120)
    assert not await d.process_one()
    assert (await d.get_run(run_id)).status is RunStatus.CANCELLED
