"""Schedules (docs/semantics.md, "Schedules"): declaring, changing, firing each slot
once, catch-up after downtime, the scheduler's wake-ups, racing schedulers."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from engine_support import HeldOnce, eventually, recorder
from pydantic import BaseModel

from durably import (
    ConflictError,
    Durably,
    NotFoundError,
    RunStatus,
    Schedule,
    ScheduleStatus,
    Step,
    ValidationError,
    create_durably,
    define_job,
)
from durably_testing import FaultPlan, FaultyStorage, ManualClock, MemoryStorage
from durably_testing.faults import FaultKind, SimulatedCrash

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class NightIn(BaseModel):
    region: str
    night: datetime


async def echo(step: Step, payload: Any) -> Any:
    return payload


def job(name: str = "tick", **options: Any) -> Any:
    return define_job(name, run=echo, **options)


def memory(clock: ManualClock, jobs: dict[str, Any] | None = None, **options: Any) -> Durably:
    options.setdefault("polling_interval", 3600)
    return create_durably(MemoryStorage(), jobs=jobs, clock=clock, **options)


async def idle(clock: ManualClock, sleepers: int = 2) -> None:
    """Wait until the worker and the scheduler sleep on the clock (then time may move)."""
    await eventually(lambda: clock.sleepers >= sleepers, "the worker and scheduler asleep")


def slots_of(runs: list[Any]) -> list[str]:
    return sorted(r.labels["durably.slot"] for r in runs)


# -- declaring --


async def test_declared__stored_when_the_worker_starts_and_fired_with_its_slot(
    make_durably: Any, clock: ManualClock
) -> None:
    nightly = define_job(
        "nightly",
        input=NightIn,
        run=echo,
        schedule=Schedule(
            "0 3 * * *", timezone="Europe/Paris", input={"region": "eu"}, slot_field="night"
        ),
    )
    d = make_durably({"nightly": nightly}, polling_interval=3600)
    assert await d.schedules.list() == [], "nothing is stored before the worker starts"
    await d.init()
    await eventually(lambda: d.schedules.get("nightly"), "the declared schedule stored")
    [record] = await d.schedules.list()
    assert (record.name, record.job_name, record.cron, record.timezone) == (
        "nightly",
        "nightly",
        "0 3 * * *",
        "Europe/Paris",
    )
    assert record.input == {"region": "eu"}
    assert record.next_fire_at == datetime(2026, 1, 1, 2, 0, tzinfo=UTC)  # 03:00 in Paris
    assert d.schedules.next_fire_times(record, 3) == [
        datetime(2026, 1, d, 2, 0, tzinfo=UTC) for d in (1, 2, 3)
    ]
    await idle(clock)
    await clock.advance(2 * 3600)
    await eventually(lambda: _one_completed(d), "the 03:00 run completed")
    run = await _one_completed(d)
    assert run.input == {"region": "eu", "night": "2026-01-01T02:00:00.000Z"}
    assert run.labels == {
        "durably.schedule": "nightly",
        "durably.slot": "2026-01-01T02:00:00.000Z",
    }
    assert run.idempotency_key == "schedule:nightly:2026-01-01T02:00:00.000Z"
    assert run.output["night"] == "2026-01-01T02:00:00Z"


async def _one_completed(d: Durably) -> Any:
    runs = await d.get_runs(status="completed")
    return runs[0] if runs else None


def test_declared__checked_when_the_job_is_defined() -> None:
    with pytest.raises(ValidationError, match="Invalid input for the schedule"):
        define_job("n", input=NightIn, run=echo, schedule=Schedule("@daily", input={"x": 1}))
    with pytest.raises(ValidationError, match="two schedules named"):
        job(schedule=[Schedule("@daily"), Schedule("@hourly")])
    with pytest.raises(ValidationError, match="must then be"):
        job(schedule=Schedule("@daily", input=[1], slot_field="at"))
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: Schedule("61 * * * *"), "Bad minute"),
        (lambda: Schedule("* * *"), "expected 5 fields"),
        (lambda: Schedule("@reboot"), "expected 5 fields"),
        (lambda: Schedule("@daily", timezone="Mars/Olympus"), "Unknown timezone"),
        (lambda: Schedule("@daily", catch_up="never"), "Invalid catch_up"),  # type: ignore[arg-type]
        (lambda: Schedule("@daily", max_catch_up=0), "max_catch_up"),
        (lambda: Schedule("@daily", labels={"durably.slot": "x"}), "set by the scheduler"),
        (lambda: Schedule("@daily", labels={"bad key": "x"}), "Invalid label key"),
    ]
    for bad, match in cases:
        with pytest.raises(ValidationError, match=match):
            bad()


async def test_declared__same_name_in_two_jobs_is_a_conflict(clock: ManualClock) -> None:
    d = memory(clock)
    d.register({"a": job("a", schedule=Schedule("@daily", name="shared"))})
    with pytest.raises(ConflictError, match="both declare a schedule named 'shared'"):
        d.register({"b": job("b", schedule=Schedule("@hourly", name="shared"))})


async def test_declared__a_new_declaration_replaces_it_keeping_its_pause(
    clock: ManualClock,
) -> None:
    storage = MemoryStorage()
    first = create_durably(storage, jobs={"t": job(schedule=Schedule("0 * * * *"))}, clock=clock)
    await first.schedules.fire_due()
    await first.schedules.pause("tick")
    second = create_durably(
        storage, jobs={"t": job(schedule=Schedule("30 * * * *", input={"v": 2}))}, clock=clock
    )
    await second.schedules.fire_due()
    record = await second.schedules.get("tick")
    assert record is not None
    assert (record.cron, record.input, record.status) == ("30 * * * *", {"v": 2}, "paused")
    await second.schedules.resume("tick")
    resumed = await second.schedules.get("tick")
    assert resumed is not None
    assert resumed.next_fire_at == T0 + timedelta(minutes=30)


# -- the run-time API --


async def test_create__validates_and_stores_then_conflicts_or_replaces(clock: ManualClock) -> None:
    d = memory(clock, {"n": define_job("nightly", input=NightIn, run=echo)})
    with pytest.raises(ValidationError, match="region"):
        await d.schedules.create("n", d.jobs.n, cron="@daily", slot_field="night")
    record = await d.schedules.create(
        "n", d.jobs.n, cron="@daily", input={"region": "eu"}, slot_field="night"
    )
    assert record.next_fire_at == T0 + timedelta(days=1)
    same = await d.schedules.create(
        "n", "nightly", cron="@daily", input={"region": "eu"}, slot_field="night"
    )
    assert same == record, "creating the same schedule again returns it unchanged"
    with pytest.raises(ConflictError, match="another definition"):
        await d.schedules.create(
            "n", "nightly", cron="@hourly", input={"region": "eu"}, slot_field="night"
        )
    replaced = await d.schedules.create(
        "n", "nightly", cron="@hourly", input={"region": "us"}, slot_field="night", replace=True
    )
    assert (replaced.cron, replaced.input, replaced.revision) == ("@hourly", {"region": "us"}, 2)
    assert replaced.next_fire_at == T0 + timedelta(hours=1), "a new calendar starts after now"
    # a job not registered here: stored as given, validated when a run is claimed
    other = await d.schedules.create("x", "elsewhere", cron="@daily", input={"any": "thing"})
    assert other.job_name == "elsewhere"
    with pytest.raises(ValidationError):
        await d.schedules.create("", "nightly", cron="@daily")
    with pytest.raises(ValidationError):
        await d.schedules.create("y", 42, cron="@daily")  # type: ignore[arg-type]


async def test_pause_resume_delete(clock: ManualClock) -> None:
    d = memory(clock, {"t": job()})
    await d.schedules.create("t", "tick", cron="0 * * * *")
    paused = await d.schedules.pause("t")
    assert (paused.status, paused.next_fire_at) == (ScheduleStatus.PAUSED, None)
    assert await d.schedules.pause("t") == paused, "pausing a paused schedule changes nothing"
    clock.set(T0 + timedelta(hours=5, minutes=10))
    assert await d.schedules.fire_due() == [], "a paused schedule fires nothing"
    resumed = await d.schedules.resume("t")
    assert resumed.next_fire_at == T0 + timedelta(hours=6), "resumed from the next slot"
    assert await d.schedules.fire_due() == [], "the slots while paused are not caught up"
    deleted = await d.schedules.delete("t")
    assert deleted.name == "t"
    for call in (d.schedules.delete, d.schedules.pause, d.schedules.resume):
        with pytest.raises(NotFoundError):
            await call("t")
    assert await d.schedules.get("t") is None


# -- firing: each slot once --


async def test_fire__years_of_slots_each_fired_once(clock: ManualClock) -> None:
    """Three years of a daily schedule in Paris (DST both ways, every year): one run per
    night, at 03:00 local time, in milliseconds per slot."""
    d = memory(clock, {"t": job()})
    await d.schedules.create("nightly", "tick", cron="0 3 * * *", timezone="Europe/Paris")
    started = time.perf_counter()
    fired: list[Any] = []
    end = T0 + timedelta(days=3 * 365)
    record = await d.schedules.get("nightly")
    while record is not None and record.next_fire_at is not None and record.next_fire_at < end:
        clock.set(record.next_fire_at)
        fired += await d.schedules.fire_due()
        record = await d.schedules.get("nightly")
    elapsed = time.perf_counter() - started
    assert len(fired) == 1095
    assert all(r.disposition == "created" for r in fired)
    slots = [r.run.labels["durably.slot"] for r in fired]
    assert len(set(slots)) == len(slots)
    assert slots == sorted(slots)
    from zoneinfo import ZoneInfo

    paris = ZoneInfo("Europe/Paris")
    local = [datetime.fromisoformat(s.replace("Z", "+00:00")).astimezone(paris) for s in slots]
    assert {(t.hour, t.minute) for t in local} == {(3, 0)}
    assert len({t.date() for t in local}) == 1095
    assert elapsed / len(fired) < 0.05, f"{elapsed / len(fired) * 1000:.1f} ms per slot"


async def _paris_day(clock: ManualClock, day: datetime) -> dict[str, list[datetime]]:
    """Fire ``30 2 * * *`` and ``0 * * * *`` in Paris every 10 minutes from the day
    before ``day`` to the day after; the local times fired on ``day``, per schedule."""
    from zoneinfo import ZoneInfo

    paris = ZoneInfo("Europe/Paris")
    clock.set(day - timedelta(days=1))
    d = memory(clock, {"t": job()})
    await d.schedules.create("at-0230", "tick", cron="30 2 * * *", timezone="Europe/Paris")
    await d.schedules.create("hourly", "tick", cron="0 * * * *", timezone="Europe/Paris")
    fired: list[Any] = []
    while clock.now() < day + timedelta(days=2):
        clock.set(clock.now() + timedelta(minutes=10))
        fired += await d.schedules.fire_due()
    keys = [f.run.idempotency_key for f in fired]
    assert len(keys) == len(set(keys)), "no slot fired twice"
    out: dict[str, list[datetime]] = {"at-0230": [], "hourly": []}
    for f in fired:
        slot = datetime.fromisoformat(f.run.labels["durably.slot"].replace("Z", "+00:00"))
        if slot.astimezone(paris).date() == day.date():
            out[f.run.labels["durably.schedule"]].append(slot.astimezone(paris))
    return out


async def test_fire__dst_a_skipped_hour_fires_once(clock: ManualClock) -> None:
    day = await _paris_day(clock, datetime(2026, 3, 29, tzinfo=UTC))
    # 02:30 does not exist that night: it fires when the clocks jump to 03:00
    assert [t.isoformat() for t in day["at-0230"]] == ["2026-03-29T03:00:00+02:00"]
    # one run per wall-clock hour of a 23-hour day (02:00 is 03:00)
    assert len(day["hourly"]) == 23
    assert len({t.hour for t in day["hourly"]}) == 23


async def test_fire__dst_a_repeated_hour_fires_once(clock: ManualClock) -> None:
    day = await _paris_day(clock, datetime(2026, 10, 25, tzinfo=UTC))
    # 02:30 comes twice that night: it fires the first time only
    assert [t.isoformat() for t in day["at-0230"]] == ["2026-10-25T02:30:00+02:00"]
    # one run per wall-clock hour of a 25-hour day: 02:00 once
    assert len(day["hourly"]) == 24
    assert [t.isoformat() for t in day["hourly"] if t.hour == 2] == ["2026-10-25T02:00:00+02:00"]


@pytest.mark.parametrize("catch_up", ["latest", "skip", "all"])
async def test_fire__after_three_days_down(clock: ManualClock, catch_up: str) -> None:
    d = memory(clock, {"t": job()})
    events = recorder(d, "schedule:skip")
    await d.schedules.create(
        "hourly",
        "tick",
        cron="0 * * * *",
        catch_up=catch_up,  # type: ignore[arg-type]
        max_catch_up=24,
    )
    clock.set(T0 + timedelta(days=3, minutes=30))  # 72 slots missed
    fired = await d.schedules.fire_due()
    expected = {"latest": 1, "skip": 0, "all": 24}[catch_up]
    assert len(fired) == expected
    if fired:
        assert slots_of([f.run for f in fired])[-1] == "2026-01-04T00:00:00.000Z"
    [skip] = events
    assert skip.first_slot == T0 + timedelta(hours=1)
    assert skip.last_slot == T0 + timedelta(hours=72 - expected)
    assert skip.catch_up == catch_up
    record = await d.schedules.get("hourly")
    assert record is not None
    assert record.next_fire_at == T0 + timedelta(days=3, hours=1)
    assert await d.schedules.fire_due() == []


async def test_fire__skip_still_fires_a_slot_on_time(clock: ManualClock) -> None:
    d = memory(clock, {"t": job()})
    await d.schedules.create("s", "tick", cron="* * * * *", catch_up="skip")
    clock.set(T0 + timedelta(minutes=1, seconds=30))
    assert len(await d.schedules.fire_due()) == 1, "30 s late is on time"
    clock.set(T0 + timedelta(minutes=4, seconds=1))
    fired = await d.schedules.fire_due()
    assert slots_of([f.run for f in fired]) == ["2026-01-01T00:04:00.000Z"]


async def test_fire__seconds_field(clock: ManualClock) -> None:
    d = memory(clock, {"t": job()})
    await d.schedules.create("fast", "tick", cron="*/5 * * * * *", catch_up="all", max_catch_up=100)
    clock.set(T0 + timedelta(seconds=60))
    fired = await d.schedules.fire_due()
    assert len(fired) == 12
    assert slots_of([f.run for f in fired])[:2] == [
        "2026-01-01T00:00:05.000Z",
        "2026-01-01T00:00:10.000Z",
    ]


async def test_fire__racing_schedulers_fire_each_slot_once(
    make_durably: Any, clock: ManualClock
) -> None:
    first = make_durably({"t": job()}, polling_interval=3600)
    others = [make_durably({"t": job()}, same_db_as=first, polling_interval=3600) for _ in range(3)]
    await first.schedules.create("m", "tick", cron="* * * * *", catch_up="all", max_catch_up=5)
    fired: list[Any] = []
    for minute in range(1, 21):
        clock.set(T0 + timedelta(minutes=minute))
        for got in await asyncio.gather(*(d.schedules.fire_due() for d in (first, *others))):
            fired += got
    keys = [f.run.idempotency_key for f in fired]
    assert len(keys) == 20, "each of 20 slots fired once, in all"
    assert len(set(keys)) == 20
    assert all(f.disposition == "created" for f in fired)
    runs = await first.get_runs(job_name="tick")
    assert len(runs) == 20


async def test_fire__only_by_processes_that_have_the_job(clock: ManualClock) -> None:
    storage = MemoryStorage()
    without = create_durably(storage, jobs={"o": job("other")}, clock=clock)
    with_job = create_durably(storage, jobs={"t": job()}, clock=clock)
    await without.schedules.create("t", "tick", cron="@hourly")
    clock.set(T0 + timedelta(hours=2, minutes=1))
    assert await without.schedules.fire_due() == []
    fired = await with_job.schedules.fire_due()
    assert slots_of([f.run for f in fired]) == ["2026-01-01T02:00:00.000Z"]


async def test_fire__a_slot_whose_run_exists_is_answered_by_it(clock: ManualClock) -> None:
    d = memory(clock, {"t": job()})
    await d.schedules.create("t", "tick", cron="@hourly")
    clock.set(T0 + timedelta(hours=1))
    [first] = await d.schedules.fire_due()
    await d.schedules.delete("t")
    clock.set(T0 + timedelta(minutes=59))  # e.g. a clock set back, or a restore
    await d.schedules.create("t", "tick", cron="@hourly")
    clock.set(T0 + timedelta(hours=1))
    [again] = await d.schedules.fire_due()
    assert (again.disposition, again.id) == ("idempotent", first.id)


async def test_fire__clock_skew_between_schedulers(clock: ManualClock) -> None:
    storage = MemoryStorage()
    ahead = ManualClock(T0 + timedelta(seconds=20))
    behind = ManualClock(T0)
    d_ahead = create_durably(storage, jobs={"t": job()}, clock=ahead)
    d_behind = create_durably(storage, jobs={"t": job()}, clock=behind)
    await d_behind.schedules.create("t", "tick", cron="* * * * *", catch_up="all")
    fired: list[Any] = []
    for second in range(0, 600, 7):
        for c in (ahead, behind):
            c.set(T0 + timedelta(seconds=second + (20 if c is ahead else 0)))
        fired += await d_behind.schedules.fire_due()
        fired += await d_ahead.schedules.fire_due()
    keys = [f.run.idempotency_key for f in fired]
    # the clock 20 s ahead reached 00:10 (its 615 s): slots 00:01 … 00:10, each once
    assert len(keys) == len(set(keys)) == 10


# -- crashes around a fire --


@pytest.mark.parametrize("kind", [FaultKind.CRASH_BEFORE, FaultKind.CRASH_AFTER])
async def test_crash_around_a_fire__the_slot_fires_once(
    clock: ManualClock, kind: FaultKind
) -> None:
    inner = MemoryStorage()
    setup = create_durably(inner, jobs={"t": job()}, clock=clock)
    await setup.schedules.create("t", "tick", cron="@hourly")
    clock.set(T0 + timedelta(hours=1))
    dying = create_durably(
        FaultyStorage(inner, FaultPlan.on_operation("fire_schedule", kind)),
        jobs={"t": job()},
        clock=clock,
    )
    with pytest.raises(SimulatedCrash):
        await dying.schedules.fire_due()
    survivor = create_durably(inner, jobs={"t": job()}, clock=clock)
    fired = await survivor.schedules.fire_due()
    runs = await survivor.get_runs()
    assert len(runs) == 1, "the slot has one run"
    assert len(fired) == (1 if kind is FaultKind.CRASH_BEFORE else 0)


async def test_fire__an_ambiguous_fire_is_not_fired_again(clock: ManualClock) -> None:
    inner = MemoryStorage()
    d = create_durably(
        FaultyStorage(inner, FaultPlan.on_operation("fire_schedule", FaultKind.AMBIGUOUS)),
        jobs={"t": job()},
        clock=clock,
    )
    await d.schedules.create("t", "tick", cron="@hourly")
    clock.set(T0 + timedelta(hours=1))
    with pytest.raises(Exception, match="fire_schedule"):
        await d.schedules.fire_due()
    assert await d.schedules.fire_due() == [], "the fire landed: nothing is due"
    assert len(await d.get_runs()) == 1


# -- the scheduler inside the worker --


async def test_scheduler__wakes_at_each_slot_and_reads_little(clock: ManualClock) -> None:
    storage = FaultyStorage(MemoryStorage())
    d = create_durably(storage, jobs={"t": job()}, clock=clock, polling_interval=3600)
    await d.schedules.create("t", "tick", cron="0 */6 * * *")
    fired = recorder(d, "schedule:fire")
    async with d:
        await idle(clock)
        before = Counter(storage.calls)
        for _ in range(4 * 6):  # one day, an hour at a time
            await clock.advance(3600)
            await idle(clock)
        await eventually(lambda: len(fired) == 4, "four slots fired")
        reads = Counter(storage.calls)["upcoming_schedules"] - before["upcoming_schedules"]
    # each slot: a read that finds it due and one that finds the next; in between, one
    # refresh per polling interval (an hour here) at most: never a faster poll
    assert reads <= 2 * 4 + 24, reads
    assert len(fired) == 4


class HeldUpcomingRead(HeldOnce, MemoryStorage):
    """``upcoming_schedules`` (the scheduler's last read before it plans its sleep)
    waits for ``release`` while armed."""

    async def upcoming_schedules(self, *args: Any, **kwargs: Any) -> Any:
        await self.hold()
        return await super().upcoming_schedules(*args, **kwargs)


@pytest.mark.parametrize("turns", [0, 1, 2, 3])
async def test_scheduler__slot_reached_while_it_plans_its_sleep_still_fires(
    clock: ManualClock, turns: int
) -> None:
    """The clock reaches the next slot in the loop turn between the scheduler
    planning its sleep (after reading the schedules) and that sleep starting: the
    slot still fires then. The scheduler used to compute the delay (600 s, to the
    slot) before its sleep started, so the sleep counted from the slot instead: it
    fired a whole delay late (never, here: nothing moves the clock again). Each
    ``turns`` puts the clock's move at another point of that interleaving."""
    storage = HeldUpcomingRead()
    d = create_durably(
        storage, jobs={"t": job(schedule=Schedule("@hourly"))}, clock=clock, polling_interval=600
    )
    async with d:
        for _ in range(4):  # 00:40, a refresh each 600 s
            await idle(clock)
            await clock.advance(600)
        await idle(clock)
        storage.armed = True
        await clock.advance(600)  # 00:50: the refresh reads the next slot, 01:00
        # it plans a 600 s sleep, and the clock reaches the slot
        await storage.release_then_advance(clock, 600, turns, "the scheduler reading the schedules")
        await eventually(lambda: d.get_runs(), "the 01:00 slot fired")
        assert slots_of(await d.get_runs()) == ["2026-01-01T01:00:00.000Z"]


async def test_scheduler__reads_nothing_without_jobs(clock: ManualClock) -> None:
    storage = FaultyStorage(MemoryStorage())
    d = create_durably(storage, clock=clock, polling_interval=3600)
    async with d:
        for _ in range(24):
            await idle(clock, 1)
            await clock.advance(3600)
        assert Counter(storage.calls)["upcoming_schedules"] == 0
        d.register({"t": job(schedule=Schedule("@hourly"))})
        await eventually(lambda: d.schedules.get("tick"), "the declared schedule stored")
        await idle(clock)
        await clock.advance(3600)
        await eventually(lambda: d.get_runs(), "the hourly run fired")


async def test_scheduler__a_storage_error_is_reported_and_retried(clock: ManualClock) -> None:
    inner = MemoryStorage()
    storage = FaultyStorage(
        inner, FaultPlan.on_operation("upcoming_schedules", FaultKind.ERROR, occurrence=1)
    )
    d = create_durably(storage, jobs={"t": job(schedule=Schedule("@hourly"))}, clock=clock)
    errors = recorder(d, "worker:error")
    async with d:
        await eventually(lambda: errors, "the error reported")
        assert errors[0].context == "schedule"
        await idle(clock)
        await clock.advance(3600)
        await eventually(lambda: d.get_runs(), "fired after the retry")
        await clock.advance(30)


async def test_scheduler__stops_with_the_worker(clock: ManualClock) -> None:
    d = memory(clock, {"t": job(schedule=Schedule("@hourly"))})
    await d.init()
    await eventually(lambda: d.schedules.get("tick"), "stored")
    await idle(clock)
    await d.stop()
    await clock.advance(7200)
    assert await d.get_runs() == []
    assert not any(t.get_name() == "durably-scheduler" for t in asyncio.all_tasks())
    await d.close()


async def test_fired_runs_run_as_triggered_ones(make_durably: Any, clock: ManualClock) -> None:
    d = make_durably({"t": job()}, polling_interval=3600)
    triggered = recorder(d, "run:trigger")
    await d.schedules.create("t", "tick", cron="@hourly", input={"n": 1}, labels={"team": "a"})
    clock.set(T0 + timedelta(hours=1))
    [result] = await d.schedules.fire_due()
    assert [e.run_id for e in triggered] == [result.id]
    assert await d.process_until_idle() == 1
    run = await d.get_run(result.id)
    assert run is not None
    assert run.status is RunStatus.COMPLETED
    assert run.output == {"n": 1}
    assert run.labels["team"] == "a"
    assert [r.id for r in await d.get_runs(labels={"durably.schedule": "t"})] == [result.id]
