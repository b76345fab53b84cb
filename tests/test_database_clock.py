"""Leases are judged by the database's clock where the backend has one.

Each worker passes its own "now" to every storage operation, so two workers whose
clocks disagree by more than the lease used to steal each other's live runs: the
one ahead sees every lease as expired. A storage whose database is a server
(:class:`durably.SupportsDatabaseTime`: remote libSQL, PostgreSQL) reports the server's time;
the engine measures the offset between that clock and its own at ``migrate()`` and
every minute, and corrects the time it uses when it runs on the system clock.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from engine_support import eventually
from libsql_support import TursoServer

from durably import Schedule, Step, SystemClock, create_durably, define_job
from durably_testing import FaultyStorage, ManualClock, MemoryStorage


class SkewedClock(SystemClock):
    """This machine's clock, ``skew`` seconds off: a worker on a machine whose clock
    is wrong."""

    def __init__(self, skew: float) -> None:
        self.skew = timedelta(seconds=skew)

    def now(self) -> datetime:
        return super().now() + self.skew

    def now_ms(self) -> datetime:
        return super().now_ms() + self.skew


@pytest.fixture(params=["libsql-remote", "postgres"])
def server_url(request: pytest.FixtureRequest) -> str:
    """A database on a server with its own clock: tursodb, or a PostgreSQL schema."""
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    server: TursoServer = request.getfixturevalue("libsql_server")
    return server.url


@pytest.mark.slow  # starts a server (conftest marks it by fixture name; this one is dynamic)
async def test_server__a_worker_an_hour_ahead_does_not_steal_a_live_run(
    server_url: str,
) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow(step: Step, payload: Any) -> str:
        async def wait() -> str:
            started.set()
            await release.wait()
            return "a"

        return await step.run("wait", wait)

    async def quick(step: Step, payload: Any) -> str:
        return "stolen"

    url = server_url
    a = create_durably(url, jobs={"j": define_job("j", run=slow)}, lease_duration=30)
    b = create_durably(url, jobs={"j": define_job("j", run=quick)}, clock=SkewedClock(3600))
    try:
        await a.migrate()
        assert a.clock_offset == timedelta(0)  # same machine: within the round trip
        run_id = (await a.jobs.j.trigger({})).id
        a.start()
        await asyncio.wait_for(started.wait(), 60)
        await b.migrate()  # measures the server's clock: an hour behind B's
        assert abs(b.clock_offset + timedelta(hours=1)) < timedelta(seconds=5)
        # B sees A's 30 s lease as live (an hour-ahead clock saw it long expired)
        assert await b.process_one() is False
        leased = await b.get_run(run_id)
        assert leased is not None
        assert leased.lease_owner == a.worker_id
        # and B's own timestamps are the database's, not an hour ahead
        before = datetime.now(leased.created_at.tzinfo)
        created = (await b.jobs.j.trigger({}, idempotency_key="from-b")).run.created_at
        assert abs(created - before) < timedelta(seconds=30)
        release.set()
        done = await a.wait_for_run(run_id, timeout=60)
        assert done.output == "a"
    finally:
        release.set()
        await a.close()
        await b.close()


@pytest.mark.slow
async def test_server__wait_deadlines_and_signals_are_judged_by_the_database_clock(
    server_url: str,
) -> None:
    """A wait prepared by a worker an hour behind, signalled by a process an hour
    ahead: its deadline is the database's time + 10 min (not an hour early), the
    signal is accepted (an hour-ahead clock saw the deadline long past), and the
    worker an hour behind resumes the run at once (it saw the signal's time as an
    hour away)."""

    async def job(step: Step, payload: Any) -> str:
        wait = await step.prepare_wait("answer", timeout=600)
        return (await step.wait_for(wait)).outcome

    jobs = {"j": define_job("j", run=job)}
    behind = create_durably(server_url, jobs=jobs, clock=SkewedClock(-3600))
    ahead = create_durably(server_url, jobs=jobs, clock=SkewedClock(3600))
    try:
        await behind.migrate()
        await ahead.migrate()
        run_id = (await behind.jobs.j.trigger({})).id
        assert await behind.process_one()
        wait = await behind.get_wait(run_id, "answer")
        assert wait is not None
        assert wait.deadline_at is not None
        expected = SystemClock().now() + timedelta(minutes=10)
        assert abs(wait.deadline_at - expected) < timedelta(seconds=30)
        receipt = await ahead.signal(run_id, "answer", "yes")
        assert receipt.disposition == "accepted"
        assert await behind.process_one()
        run = await behind.get_run(run_id)
        assert run is not None
        assert (run.status, run.output) == ("completed", "signal")
    finally:
        await behind.close()
        await ahead.close()


async def test_manual_clock__never_corrected_and_database_time_never_asked(
    libsql_server: TursoServer, clock: ManualClock
) -> None:
    """Tests own their time: a ManualClock on a server with a clock stays as set."""
    from durably.plugins import BackendRegistry

    storage = FaultyStorage(BackendRegistry().open(libsql_server.url))
    d = create_durably(storage, clock=clock)
    try:
        await d.migrate()
        assert d.clock_offset == timedelta(0)
        assert "database_time" not in storage.calls
    finally:
        await d.stop()
        await storage.close()


@pytest.mark.parametrize("where", ["memory", "sqlite-file"])
async def test_system_clock__backends_without_a_clock_are_asked_once(
    where: str, tmp_path: Path
) -> None:
    """A local database is read on this machine's clock: ``database_time()`` says so
    (``None``) once, and is never asked again."""
    from durably.plugins import BackendRegistry

    inner = (
        MemoryStorage()
        if where == "memory"
        else BackendRegistry().open(f"sqlite:///{tmp_path / 'c.db'}")
    )
    storage = FaultyStorage(inner)
    d = create_durably(storage, clock=SkewedClock(3600))
    try:
        await d.migrate()
        assert d.clock_offset == timedelta(0)
        assert storage.calls.count("database_time") == 1
    finally:
        await storage.close()


class ControlledSystemClock(SystemClock):
    """A system clock (so the engine corrects it) whose time a ManualClock sets."""

    def __init__(self, manual: ManualClock) -> None:
        self.manual = manual

    def now(self) -> datetime:
        return self.manual.now()

    def now_ms(self) -> datetime:
        t = self.manual.now()
        return t.replace(microsecond=t.microsecond // 1000 * 1000)

    async def sleep(self, seconds: float) -> None:
        await self.manual.sleep(seconds)


class ServerClockMemory(MemoryStorage):
    """A memory storage reporting a server clock ``offset`` away from ``clock``."""

    def __init__(self, clock: ManualClock, offset: timedelta) -> None:
        super().__init__()
        self.clock = clock
        self.offset = offset

    async def database_time(self) -> datetime | None:
        t = self.clock.now() + self.offset
        return t.replace(microsecond=t.microsecond // 1000 * 1000)


async def test_worker__re_measures_the_offset_every_minute_and_claims_by_it(
    clock: ManualClock,
) -> None:
    from durably._services import CLOCK_SYNC_EVERY

    storage = ServerClockMemory(clock, timedelta(seconds=100))
    completed: list[Any] = []

    async def job(step: Step, payload: Any) -> None:
        return None

    d = create_durably(
        storage, jobs={"j": define_job("j", run=job)}, clock=ControlledSystemClock(clock)
    )
    d.on("run:complete", completed.append)
    try:
        await d.init()
        assert d.clock_offset == timedelta(seconds=100)
        storage.offset = timedelta(seconds=200)  # the server's clock was stepped
        await clock.advance(CLOCK_SYNC_EVERY / 2)
        await d.jobs.j.trigger({})  # wakes the worker: not a minute yet
        await eventually(lambda: len(completed) == 1)
        assert d.clock_offset == timedelta(seconds=100)
        await clock.advance(CLOCK_SYNC_EVERY / 2)
        run_id = (await d.jobs.j.trigger({})).id
        await eventually(lambda: len(completed) == 2)
        assert d.clock_offset == timedelta(seconds=200)
        run = await d.get_run(run_id)
        assert run is not None
        assert run.started_at == clock.now() + timedelta(seconds=200)
    finally:
        await d.stop()


class CountingServerClockMemory(ServerClockMemory):
    """Counts the scheduler's reads of the upcoming schedules."""

    reads = 0

    async def upcoming_schedules(self, job_names: Any, limit: int) -> Any:
        self.reads += 1
        return await super().upcoming_schedules(job_names, limit)


async def test_scheduler__sleeps_until_the_slot_by_the_database_clock(clock: ManualClock) -> None:
    """This machine's clock an hour ahead of the database's: the next hourly slot (by
    the database's clock) is an hour away, not due, and the scheduler sleeps until it
    instead of waking again and again for an hour."""
    storage = CountingServerClockMemory(clock, timedelta(hours=-1))

    async def nothing(step: Step, payload: Any) -> None:
        return None

    hourly = define_job("h", run=nothing, schedule=Schedule("@hourly"))
    d = create_durably(
        storage, jobs={"h": hourly}, clock=ControlledSystemClock(clock), polling_interval=3600
    )
    try:
        await d.init()
        assert d.clock_offset == timedelta(hours=-1)
        await eventually(lambda: clock.sleepers >= 2, "the worker and the scheduler asleep")
        reads = storage.reads
        await asyncio.sleep(0.05)  # a spinning scheduler would read many more times
        assert storage.reads == reads
        [record] = await d.schedules.list()
        assert record.next_fire_at == clock.now()  # an hour from the database's now
        await clock.advance(3600)
        await eventually(lambda: d.get_runs(), "the slot fired")
        assert len(await d.get_runs()) == 1
    finally:
        await d.stop()
