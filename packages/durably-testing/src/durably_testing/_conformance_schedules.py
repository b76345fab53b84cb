"""Conformance cases of the schedule operations (``create_schedule`` …
``fire_schedule``): compare-and-set on the revision, and a fire that moves the
schedule and writes its runs together, once, however many callers race.

Part of :mod:`durably_testing.conformance`; import from there.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import msgspec

from durably import (
    NewRun,
    NewSchedule,
    RunStatus,
    ScheduleFire,
    ScheduleRecord,
    ScheduleStatus,
    Storage,
    StorageError,
    ValidationError,
)

from ._conformance_base import ConformanceBase, js

BAD_TEXT = "bad \ud800 text"


class ScheduleCases(ConformanceBase):
    """The schedule operations of the protocol."""

    # -- builders --

    def new_schedule(
        self,
        name: str = "nightly",
        *,
        job_name: str = "job-a",
        cron: str = "0 3 * * *",
        timezone: str = "UTC",
        input: Any = None,
        labels: dict[str, str] | None = None,
        status: ScheduleStatus = ScheduleStatus.ACTIVE,
        next_fire_at: datetime | None = None,
        created_at: float = 0,
        max_catch_up: int = 10,
    ) -> NewSchedule:
        return NewSchedule(
            name=name,
            job_name=job_name,
            cron=cron,
            timezone=timezone,
            input_json=js({"region": "eu"} if input is None else input),
            labels=labels or {},
            catch_up="latest",
            max_catch_up=max_catch_up,
            slot_field="night",
            status=status,
            next_fire_at=next_fire_at if next_fire_at is not None else self.at(3600),
            created_at=self.at(created_at),
        )

    def slot_run(self, schedule: str, slot: datetime, job_name: str = "job-a") -> NewRun:
        """A run of ``schedule`` at ``slot``, keyed as the core keys it."""
        return self.new_run(
            job_name,
            idempotency_key=f"schedule:{schedule}:{slot.isoformat()}",
            labels={"durably.schedule": schedule},
            created_at=self.at(10),
        )

    def fire_of(
        self,
        record: ScheduleRecord,
        runs: tuple[NewRun, ...] = (),
        *,
        next_fire_at: datetime | None = None,
        last_fired_at: datetime | None = None,
        now: float = 10,
    ) -> ScheduleFire:
        return ScheduleFire(
            token=self.new_id(),
            name=record.name,
            revision=record.revision,
            next_fire_at=next_fire_at if next_fire_at is not None else self.at(7200),
            last_fired_at=last_fired_at,
            runs=runs,
            now=self.at(now),
        )

    async def stored(self, storage: Storage, schedule: NewSchedule) -> ScheduleRecord:
        record = await storage.create_schedule(schedule)
        assert record is not None, f"create_schedule({schedule.name!r}) stored nothing"
        return record

    # -- create, read, update, delete --

    async def test_schedule__create_returns_and_stores_the_record(self, storage: Storage) -> None:
        new = self.new_schedule(labels={"team": "a"}, created_at=5)
        record = await self.stored(storage, new)
        assert (record.name, record.job_name, record.cron, record.timezone) == (
            "nightly",
            "job-a",
            "0 3 * * *",
            "UTC",
        )
        assert record.input == {"region": "eu"}
        assert record.labels == {"team": "a"}
        assert (record.catch_up, record.max_catch_up, record.slot_field) == ("latest", 10, "night")
        assert record.status is ScheduleStatus.ACTIVE
        assert (record.next_fire_at, record.last_fired_at) == (self.at(3600), None)
        assert record.revision == 1
        assert record.created_at == record.updated_at == self.at(5)
        assert await storage.get_schedule("nightly") == record
        assert await storage.get_schedules() == [record]
        assert await storage.get_schedule("other") is None

    async def test_schedule__create_of_an_existing_name_writes_nothing(
        self, storage: Storage
    ) -> None:
        first = await self.stored(storage, self.new_schedule())
        again = self.new_schedule(job_name="job-b", cron="* * * * *", created_at=9)
        assert await storage.create_schedule(again) is None
        assert await storage.get_schedule("nightly") == first

    async def test_schedule__listed_by_name_and_filtered_by_job(self, storage: Storage) -> None:
        c = await self.stored(storage, self.new_schedule("c", job_name="job-b"))
        a = await self.stored(storage, self.new_schedule("a"))
        b = await self.stored(storage, self.new_schedule("b"))
        assert await storage.get_schedules() == [a, b, c]
        assert await storage.get_schedules(["job-b"]) == [c]
        assert await storage.get_schedules(["job-a", "job-b"]) == [a, b, c]
        assert await storage.get_schedules([]) == []

    async def test_schedule__update_applies_only_at_its_revision(self, storage: Storage) -> None:
        record = await self.stored(storage, self.new_schedule(created_at=1))
        change = self.new_schedule(
            job_name="job-b",
            cron="*/5 * * * *",
            timezone="Europe/Paris",
            input={"region": "us"},
            labels={"k": "v"},
            status=ScheduleStatus.PAUSED,
            next_fire_at=self.at(60),
            created_at=99,
            max_catch_up=3,
        )
        updated = await storage.update_schedule(change, record.revision, self.at(20))
        assert updated is not None, "an update at the current revision applies"
        assert updated.revision == 2
        assert (updated.job_name, updated.cron, updated.timezone) == (
            "job-b",
            "*/5 * * * *",
            "Europe/Paris",
        )
        assert (updated.input, updated.labels, updated.max_catch_up) == (
            {"region": "us"},
            {"k": "v"},
            3,
        )
        assert updated.status is ScheduleStatus.PAUSED
        assert updated.next_fire_at == self.at(60)
        assert updated.created_at == self.at(1), "created_at is kept"
        assert updated.updated_at == self.at(20)
        assert await storage.get_schedule("nightly") == updated
        assert await storage.update_schedule(change, record.revision, self.at(30)) is None, (
            "an update computed from an older revision must be refused"
        )
        assert await storage.get_schedule("nightly") == updated
        assert await storage.update_schedule(self.new_schedule("absent"), 1, self.at(30)) is None
        assert await storage.get_schedule("absent") is None

    async def test_schedule__delete_returns_it_once_and_keeps_its_runs(
        self, storage: Storage
    ) -> None:
        record = await self.stored(storage, self.new_schedule())
        run = self.slot_run("nightly", self.at(3600))
        assert await storage.fire_schedule(self.fire_of(record, (run,))) is not None
        deleted = await storage.delete_schedule("nightly")
        assert deleted is not None
        assert deleted.name == "nightly"
        assert await storage.get_schedule("nightly") is None
        assert await storage.delete_schedule("nightly") is None
        assert await storage.get_run(run.id) is not None, "deleting a schedule keeps its runs"

    async def test_schedule__upcoming_is_active_soonest_first_of_the_jobs(
        self, storage: Storage
    ) -> None:
        later = await self.stored(storage, self.new_schedule("later", next_fire_at=self.at(900)))
        soon_b = await self.stored(storage, self.new_schedule("soon-b", next_fire_at=self.at(60)))
        soon_a = await self.stored(storage, self.new_schedule("soon-a", next_fire_at=self.at(60)))
        await self.stored(
            storage,
            self.new_schedule("paused", status=ScheduleStatus.PAUSED, next_fire_at=self.at(1)),
        )
        await self.stored(
            storage, self.new_schedule("other-job", job_name="job-b", next_fire_at=self.at(2))
        )
        got = await storage.upcoming_schedules(["job-a"], 10)
        assert [s.name for s in got] == ["soon-a", "soon-b", "later"], (
            "active schedules of the jobs, by next_fire_at then name"
        )
        assert got == [soon_a, soon_b, later]
        assert [s.name for s in await storage.upcoming_schedules(["job-a"], 2)] == [
            "soon-a",
            "soon-b",
        ]
        assert [s.name for s in await storage.upcoming_schedules(["job-a", "job-b"], 1)] == [
            "other-job"
        ]
        assert await storage.upcoming_schedules([], 10) == []
        assert await storage.upcoming_schedules(["job-c"], 10) == []

    # -- fires --

    async def test_fire__moves_the_schedule_and_enqueues_its_runs(self, storage: Storage) -> None:
        record = await self.stored(storage, self.new_schedule())
        slots = (self.at(3600), self.at(7200))
        runs = tuple(self.slot_run("nightly", s) for s in slots)
        results = await storage.fire_schedule(
            self.fire_of(
                record, runs, next_fire_at=self.at(10800), last_fired_at=slots[1], now=7300
            )
        )
        assert results is not None, "a fire at the current revision applies"
        assert [(r.disposition, r.run.id) for r in results] == [
            ("created", runs[0].id),
            ("created", runs[1].id),
        ]
        for run in runs:
            stored = await storage.get_run(run.id)
            assert stored is not None
            assert stored.status is RunStatus.PENDING
            assert stored.idempotency_key == run.idempotency_key
            assert stored.labels == {"durably.schedule": "nightly"}
        moved = await storage.get_schedule("nightly")
        assert moved is not None
        assert moved.revision == record.revision + 1
        assert (moved.next_fire_at, moved.last_fired_at) == (self.at(10800), slots[1])
        assert moved.updated_at == self.at(7300)
        assert (moved.input, moved.status) == (record.input, record.status), (
            "a fire changes only the schedule's slots"
        )

    async def test_fire__without_runs_moves_the_schedule_only(self, storage: Storage) -> None:
        record = await self.stored(storage, self.new_schedule())
        assert await storage.fire_schedule(self.fire_of(record, next_fire_at=self.at(9000))) == []
        moved = await storage.get_schedule("nightly")
        assert moved is not None
        assert (moved.revision, moved.next_fire_at, moved.last_fired_at) == (2, self.at(9000), None)
        assert await self.ids(storage) == []

    async def test_fire__at_a_stale_revision_writes_nothing(self, storage: Storage) -> None:
        record = await self.stored(storage, self.new_schedule())
        first = self.slot_run("nightly", self.at(3600))
        assert await storage.fire_schedule(self.fire_of(record, (first,))) is not None
        after = await storage.get_schedule("nightly")
        late = self.new_run("job-a", idempotency_key="schedule:nightly:late")
        stale = self.fire_of(record, (late,), next_fire_at=self.at(99_999))
        assert await storage.fire_schedule(stale) is None, (
            "a fire planned from an older revision must be refused (another process fired it)"
        )
        assert await storage.get_run(late.id) is None, "a refused fire writes no run"
        assert await storage.get_schedule("nightly") == after

    async def test_fire__of_a_paused_or_deleted_schedule_writes_nothing(
        self, storage: Storage
    ) -> None:
        paused = await self.stored(
            storage, self.new_schedule("p", status=ScheduleStatus.PAUSED, next_fire_at=self.at(1))
        )
        gone = await self.stored(storage, self.new_schedule("gone"))
        assert await storage.delete_schedule("gone") is not None
        for record in (paused, gone):
            run = self.slot_run(record.name, self.at(3600))
            assert await storage.fire_schedule(self.fire_of(record, (run,))) is None
            assert await storage.get_run(run.id) is None
        assert await storage.get_schedule("p") == paused

    async def test_fire__an_existing_key_answers_with_that_run(self, storage: Storage) -> None:
        record = await self.stored(storage, self.new_schedule())
        before = self.slot_run("nightly", self.at(3600))
        existing = await storage.enqueue(before)
        again = self.slot_run("nightly", self.at(3600))
        results = await storage.fire_schedule(self.fire_of(record, (again,)))
        assert results is not None
        assert [(r.disposition, r.run.id) for r in results] == [("idempotent", existing.run.id)]
        assert await storage.get_run(again.id) is None
        moved = await storage.get_schedule("nightly")
        assert moved is not None
        assert moved.revision == 2

    async def test_fire__is_all_or_nothing(self, storage: Storage) -> None:
        record = await self.stored(storage, self.new_schedule())
        good = self.slot_run("nightly", self.at(3600))
        bad = self.new_run("job-a", idempotency_key="schedule:nightly:bad", labels={"k": BAD_TEXT})
        try:
            await storage.fire_schedule(self.fire_of(record, (good, bad)))
        except (ValidationError, StorageError):
            pass
        else:
            raise AssertionError("a fire with a run that cannot be stored must raise")
        assert await storage.get_run(good.id) is None, "a failed fire writes none of its runs"
        assert await storage.get_schedule("nightly") == record, "…and does not move the schedule"

    async def test_schedule__text_that_cannot_be_stored_is_refused(self, storage: Storage) -> None:
        for new in (
            self.new_schedule(BAD_TEXT),
            self.new_schedule(labels={"k": BAD_TEXT}),
            msgspec.structs.replace(self.new_schedule(), input_json=f'{{"v": "{BAD_TEXT}"}}'),
        ):
            try:
                await storage.create_schedule(new)
            except (ValidationError, StorageError):
                continue
            raise AssertionError(f"create_schedule accepted a lone surrogate: {new!r}")
        assert await storage.get_schedules() == []

    # -- races --

    async def test_concurrent__one_of_racing_fires_applies(self, storage: Storage) -> None:
        record = await self.stored(storage, self.new_schedule())
        slot = self.at(3600)
        fires = [self.fire_of(record, (self.slot_run("nightly", slot),)) for _ in range(6)]
        outcomes = await asyncio.gather(*(storage.fire_schedule(f) for f in fires))
        applied = [(f, o) for f, o in zip(fires, outcomes, strict=True) if o is not None]
        assert len(applied) == 1, (
            f"{len(applied)} of 6 fires of one revision applied; fire_schedule must check the "
            "revision and move the schedule in one atomic step"
        )
        winner, results = applied[0]
        assert [r.disposition for r in results] == ["created"]
        stored = [await storage.get_run(f.runs[0].id) for f in fires]
        assert [r.id for r in stored if r is not None] == [winner.runs[0].id], (
            "only the winning fire's run is written"
        )
        moved = await storage.get_schedule("nightly")
        assert moved is not None
        assert moved.revision == 2

    async def test_concurrent__a_pause_and_a_fire_of_one_revision(self, storage: Storage) -> None:
        record = await self.stored(storage, self.new_schedule())
        run = self.slot_run("nightly", self.at(3600))
        pause = msgspec.structs.replace(
            self.new_schedule(status=ScheduleStatus.PAUSED), next_fire_at=None
        )
        fired, paused = await asyncio.gather(
            storage.fire_schedule(self.fire_of(record, (run,))),
            storage.update_schedule(pause, record.revision, self.at(20)),
        )
        assert (fired is None) != (paused is None), (
            "exactly one of a fire and a pause computed from one revision applies"
        )
        assert (await storage.get_run(run.id) is not None) == (fired is not None)
        final = await storage.get_schedule("nightly")
        assert final is not None
        assert final.revision == 2
        assert final.paused == (paused is not None)


__all__ = ["ScheduleCases"]
