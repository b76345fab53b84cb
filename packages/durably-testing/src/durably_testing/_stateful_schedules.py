"""The schedule rules of :class:`~durably_testing.stateful.StorageStateMachine`.

Schedules are created, changed, paused, deleted and fired by two "workers" that
each plan a fire from their own last read of the schedules, so a fire is often
planned from a revision another worker (or a change) has already moved: the
storage must refuse it. The model (written from the contract of
``durably.Storage``'s schedule operations) predicts every answer; the fired runs
go into the lifecycle model like any enqueued run, so the run invariants (one run
per idempotency key among them: one run per slot) hold across fires too.

Part of :mod:`durably_testing.stateful`; import from there.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import msgspec
from hypothesis import strategies as st
from hypothesis.stateful import initialize, invariant, rule

from durably import (
    EnqueueResult,
    NewRun,
    NewSchedule,
    ScheduleFire,
    ScheduleRecord,
    ScheduleStatus,
)

if TYPE_CHECKING:
    from .stateful import LifecycleModel, StorageStateMachine

SCHEDULE_NAMES = ("s1", "s2")
SCHEDULE_JOBS = ("job-a", "job-b")
WORKERS = ("worker-1", "worker-2")
MINUTE = timedelta(minutes=1)
#: Slot ``n`` of a schedule is ``n`` minutes after this.
ORIGIN = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@dataclass
class ModelSchedule:
    """A schedule as the model keeps it; slots are numbered minutes after the origin."""

    name: str
    job_name: str
    cron: str
    input: Any
    paused: bool
    next_slot: int | None
    last_slot: int | None
    revision: int
    created_at: datetime
    updated_at: datetime

    def observable(self, origin: datetime) -> dict[str, Any]:
        def at(slot: int | None) -> datetime | None:
            return None if slot is None else origin + slot * MINUTE

        return {
            "name": self.name,
            "job_name": self.job_name,
            "cron": self.cron,
            "input": self.input,
            "status": "paused" if self.paused else "active",
            "next_fire_at": at(self.next_slot),
            "last_fired_at": at(self.last_slot),
            "revision": self.revision,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


def observe_schedule(record: ScheduleRecord) -> dict[str, Any]:
    return {
        "name": record.name,
        "job_name": record.job_name,
        "cron": record.cron,
        "input": record.input,
        "status": record.status.value,
        "next_fire_at": record.next_fire_at,
        "last_fired_at": record.last_fired_at,
        "revision": record.revision,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
    }


class ScheduleRules:
    """Rules and an invariant over the schedule operations (mixed into the machine)."""

    # the machine provides these (see StorageStateMachine)
    now: datetime
    model: LifecycleModel
    known: list[str]

    @property
    def _schedules(self) -> dict[str, ModelSchedule]:
        if "_model_schedules" not in self.__dict__:
            self.__dict__["_model_schedules"] = {}
        return self.__dict__["_model_schedules"]  # type: ignore[no-any-return]

    @property
    def _views(self) -> dict[tuple[str, str], ModelSchedule]:
        """What each worker last read of each schedule (its fires are planned from it)."""
        if "_schedule_views" not in self.__dict__:
            self.__dict__["_schedule_views"] = {}
        return self.__dict__["_schedule_views"]  # type: ignore[no-any-return]

    def _machine(self) -> StorageStateMachine:
        return self  # type: ignore[return-value]

    def _slot_at(self, slot: int | None) -> datetime | None:
        return None if slot is None else ORIGIN + slot * MINUTE

    def _new_schedule(
        self, name: str, job: str, cron: str, n: int, paused: bool, next_slot: int | None
    ) -> NewSchedule:
        return NewSchedule(
            name=name,
            job_name=job,
            cron=cron,
            timezone="UTC",
            input_json=msgspec.json.encode({"n": n}).decode(),
            status=ScheduleStatus.PAUSED if paused else ScheduleStatus.ACTIVE,
            next_fire_at=None if paused else self._slot_at(next_slot),
            created_at=self.now,
        )

    # -- rules --

    @initialize(job=st.sampled_from(SCHEDULE_JOBS), next_slot=st.integers(1, 3))
    def start_with_a_schedule(self, job: str, next_slot: int) -> None:
        self.create_schedule("s1", job, "* * * * *", 0, False, next_slot)

    @rule(
        name=st.sampled_from(SCHEDULE_NAMES),
        job=st.sampled_from(SCHEDULE_JOBS),
        cron=st.sampled_from(["* * * * *", "0 * * * *"]),
        n=st.integers(0, 3),
        paused=st.booleans(),
        next_slot=st.integers(1, 4),
    )
    def create_schedule(
        self, name: str, job: str, cron: str, n: int, paused: bool, next_slot: int
    ) -> None:
        m = self._machine()
        new = self._new_schedule(name, job, cron, n, paused, next_slot)
        got = m._agree(
            "create_schedule",
            m._on_all(lambda s: s.create_schedule(new)),
            lambda r: None if r is None else observe_schedule(r),
        )

        def predict() -> Any:
            if name in self._schedules:
                return None
            model = ModelSchedule(
                name=name,
                job_name=job,
                cron=cron,
                input={"n": n},
                paused=paused,
                next_slot=None if paused else next_slot,
                last_slot=None,
                revision=1,
                created_at=self.now,
                updated_at=self.now,
            )
            self._schedules[name] = model
            return model.observable(self._origin())

        m._expect("create_schedule", got, predict)

    @rule(
        name=st.sampled_from(SCHEDULE_NAMES),
        skew=st.sampled_from([0, 0, 0, -1, 1]),
        paused=st.booleans(),
        n=st.integers(0, 3),
        next_slot=st.integers(1, 9),
        elapsed_ms=st.sampled_from([0, 1_000]),
    )
    def update_schedule(
        self, name: str, skew: int, paused: bool, n: int, next_slot: int, elapsed_ms: int
    ) -> None:
        m = self._machine()
        m.now = now = m._at(elapsed_ms)
        current = self._schedules.get(name)
        revision = (1 if current is None else current.revision) + skew
        job = "job-a" if current is None else current.job_name
        new = self._new_schedule(name, job, "* * * * *", n, paused, next_slot)
        got = m._agree(
            "update_schedule",
            m._on_all(lambda s: s.update_schedule(new, revision, now)),
            lambda r: None if r is None else observe_schedule(r),
        )

        def predict() -> Any:
            model = self._schedules.get(name)
            if model is None or model.revision != revision:
                return None
            model.cron, model.input, model.paused = "* * * * *", {"n": n}, paused
            model.next_slot = None if paused else next_slot
            model.revision += 1
            model.updated_at = now
            return model.observable(self._origin())

        m._expect("update_schedule", got, predict)

    @rule(name=st.sampled_from(SCHEDULE_NAMES))
    def delete_schedule(self, name: str) -> None:
        m = self._machine()
        got = m._agree(
            "delete_schedule",
            m._on_all(lambda s: s.delete_schedule(name)),
            lambda r: None if r is None else observe_schedule(r),
        )

        def predict() -> Any:
            model = self._schedules.pop(name, None)
            return None if model is None else model.observable(self._origin())

        m._expect("delete_schedule", got, predict)

    @rule(worker=st.sampled_from(WORKERS), jobs=st.sampled_from([SCHEDULE_JOBS, ("job-a",)]))
    def read_upcoming(self, worker: str, jobs: tuple[str, ...]) -> None:
        """A worker reads the schedules it would fire (and plans from this read)."""
        m = self._machine()
        got = m._agree(
            "upcoming_schedules",
            m._on_all(lambda s: s.upcoming_schedules(jobs, 10)),
            lambda rs: [observe_schedule(r) for r in rs],
        )

        def predict() -> Any:
            found = sorted(
                (
                    s
                    for s in self._schedules.values()
                    if not s.paused and s.next_slot is not None and s.job_name in jobs
                ),
                key=lambda s: (s.next_slot, s.name),
            )
            return [s.observable(self._origin()) for s in found]

        m._expect("upcoming_schedules", got, predict)
        for name, model in self._schedules.items():
            if model.job_name in jobs:
                self._views[(worker, name)] = copy.deepcopy(model)

    def _read_schedule(self, worker: str, name: str) -> None:
        m = self._machine()
        got = m._agree(
            "get_schedule",
            m._on_all(lambda s: s.get_schedule(name)),
            lambda r: None if r is None else observe_schedule(r),
        )
        model = self._schedules.get(name)
        m._expect("get_schedule", got, lambda: None if model is None else model.observable(ORIGIN))
        if model is not None:
            self._views[(worker, name)] = copy.deepcopy(model)

    @rule(
        worker=st.sampled_from(WORKERS),
        name=st.sampled_from(SCHEDULE_NAMES),
        count=st.integers(0, 2),
        elapsed_ms=st.sampled_from([0, 60_000]),
        read_first=st.booleans(),
    )
    def fire_schedule(
        self, worker: str, name: str, count: int, elapsed_ms: int, read_first: bool
    ) -> None:
        """``worker`` fires ``count`` slots of ``name`` as it last read it (read just
        now, or earlier: then often at a revision that has moved since)."""
        m = self._machine()
        if read_first or (worker, name) not in self._views:
            self._read_schedule(worker, name)
        view = self._views.get((worker, name))
        if view is None:
            return
        m.now = now = m._at(elapsed_ms)
        first = view.next_slot or 1  # a paused one: the storage must refuse the fire
        slots = list(range(first, first + count))
        runs: list[NewRun] = []
        for slot in slots:
            runs.append(
                NewRun(
                    id=m._new_id(),
                    job_name=view.job_name,
                    input_json=msgspec.json.encode(view.input).decode(),
                    idempotency_key=f"schedule:{name}:{slot}",
                    labels={"durably.schedule": name},
                    created_at=now,
                )
            )
        fire = ScheduleFire(
            token=m._new_id(),
            name=name,
            revision=view.revision,
            next_fire_at=self._slot_at(first + max(count, 1)),
            last_fired_at=self._slot_at(slots[-1]) if slots else None,
            runs=tuple(runs),
            now=now,
        )

        def view_results(results: list[EnqueueResult] | None) -> Any:
            if results is None:
                return None
            return [(r.disposition, r.run.id) for r in results]

        got = m._agree("fire_schedule", m._on_all(lambda s: s.fire_schedule(fire)), view_results)

        def predict() -> Any:
            model = self._schedules.get(name)
            if model is None or model.paused or model.revision != view.revision:
                return None
            results = self.model.enqueue_many([(run, False) for run in runs])
            model.next_slot = first + max(count, 1)
            if slots:
                model.last_slot = slots[-1]
            model.revision += 1
            model.updated_at = now
            return [(d, i) for d, i in results]

        m._expect("fire_schedule", got, predict)
        if got[0] == "ok" and got[1] is not None:
            for disposition, run_id in got[1]:
                m._dirty.add(run_id)
                if disposition == "created":
                    self.known.append(run_id)

    # -- invariant --

    @invariant()
    def schedules_agree_with_the_model(self) -> None:
        m = self._machine()
        listed = m._agree(
            "get_schedules",
            m._on_all(lambda s: s.get_schedules()),
            lambda rs: [observe_schedule(r) for r in rs],
        )
        if m.check_model:
            expected = [
                self._schedules[n].observable(self._origin()) for n in sorted(self._schedules)
            ]
            assert listed[1] == expected, f"schedules {listed[1]} != model {expected}"

    def _origin(self) -> datetime:
        return ORIGIN
