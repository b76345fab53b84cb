"""``durably.schedules``: stored cron schedules, and firing their due slots.

Firing is a compare-and-set (``Storage.fire_schedule``): a process reads the
schedules whose next slot is due, plans each fire from what it read (which slots
to run, which to skip, the next slot), and asks storage to apply the plan only if
the schedule is still at the revision it read. The runs and the schedule's move
are one transaction, so however many processes race for a slot, one fire wins and
the others change nothing; a process that dies before the transaction commits
fired nothing, and the next reader fires the slot. The runs also carry an
idempotency key made of the schedule and the slot: a slot whose run exists
already (a schedule deleted and created again) is answered by that run.

Every process fires only the schedules of the jobs registered in it: a schedule
is fired by the workers that can run its job; with none running, its slots wait
and are caught up (``catch_up``) when one starts.
"""

from __future__ import annotations

import builtins
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from ._cron import Calendar
from ._errors import ConflictError, NotFoundError, ValidationError
from ._events import RunTriggerEvent, ScheduleFireEvent, ScheduleSkipEvent
from ._job import JobDefinition
from ._records import NewRun
from ._schedule import (
    SCHEDULE_LABEL,
    SLOT_LABEL,
    CatchUp,
    NewSchedule,
    Schedule,
    ScheduleFire,
    ScheduleRecord,
    ScheduleStatus,
    check_name,
    idempotency_key,
)
from ._services import Services
from ._timefmt import format_ts
from ._trigger import TriggerResult
from ._validate import encode_validated

if TYPE_CHECKING:
    from ._handle import JobHandle
    from .codec import Codec

ON_TIME = timedelta(seconds=60)
"""A slot reached within this long after its time is on time; an older one was
missed (what ``catch_up="skip"`` passes over)."""

REFRESH = 60.0
"""Seconds between two reads of the schedules by a waiting scheduler, at most: a
schedule created, resumed or changed by another process is seen within this long
(at once in the process that changed it)."""

BATCH = 50
"""Schedules read at once by a scheduler."""

_ROUNDS = 20  # reads of due schedules per tick before the scheduler yields
_MICRO = timedelta(microseconds=1)


@dataclass(frozen=True)
class FirePlan:
    """What one fire of a schedule does: the slots it runs (oldest first), the range
    of missed slots it skips, and the schedule's next slot."""

    fire: tuple[datetime, ...]
    skipped: tuple[datetime, datetime] | None
    next_fire_at: datetime | None


def plan_fire(
    calendar: Calendar,
    cursor: datetime | None,
    catch_up: CatchUp,
    max_catch_up: int,
    now: datetime,
) -> FirePlan | None:
    """The fire of a schedule whose next slot is ``cursor``, at ``now``; ``None`` when
    no slot is due. The due slots are those from ``cursor`` to ``now``; the most
    recent one is fired (``"latest"``; ``"skip"`` only when it is on time, see
    :data:`ON_TIME`), or the last ``max_catch_up`` of them (``"all"``); the others
    are skipped."""
    if cursor is None or cursor > now:
        return None
    if catch_up == "all":
        fire = calendar.latest_slots(cursor, now, max_catch_up)
    else:
        latest = calendar.latest(now, cursor)
        fire = [] if latest is None else [latest]
        if catch_up == "skip" and fire and now - fire[0] > ON_TIME:
            fire = []
    last_skipped = calendar.latest(fire[0] - _MICRO if fire else now, cursor)
    skipped = None
    if last_skipped is not None:
        first_skipped = calendar.next_after(cursor - _MICRO) or last_skipped
        skipped = (min(first_skipped, last_skipped), last_skipped)
    return FirePlan(tuple(fire), skipped, calendar.next_after(now))


def schedule_input(
    codec: Codec, definition: JobDefinition[Any, Any] | None, schedule: Schedule, sample: datetime
) -> str:
    """The schedule's input as stored: validated with the job's input type (with the
    slot field set to ``sample``), without the slot field, encoded."""
    value = schedule.input
    field = schedule.slot_field
    probe = value
    if field is not None:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ValidationError(
                f"slot_field={field!r} adds the slot time to the input, which must then be "
                f"a dict (a JSON object), not {type(value).__name__}"
            )
        if field in value:
            raise ValidationError(
                f"The input already has {field!r}, the slot_field: the scheduler sets it"
            )
        probe = {**value, field: format_ts(sample)}
    where = "Invalid input for " + (
        f"schedule {schedule.name!r}"
        if schedule.name
        else f"the schedule of job {definition and definition.name!r}"
    )
    if definition is not None and definition.input is not None:
        try:
            encoded = encode_validated(codec, definition.input, probe)
        except ValidationError as exc:
            raise ValidationError(f"{where}: {exc}") from None
        stored = codec.decode(encoded)
        if field is not None and isinstance(stored, dict):
            stored.pop(field, None)
        return codec.encode(stored)
    try:
        return codec.encode(value)
    except TypeError as exc:
        raise ValidationError(f"{where}: not JSON-serializable ({exc})") from None


def declared_schedules(definition: JobDefinition[Any, Any]) -> tuple[Schedule, ...]:
    """The schedules ``define_job(schedule=…)`` gave the job, checked against its input
    type (a ``ValidationError`` when the job is defined, not when it first fires)."""
    from .codec import Codec

    codec = Codec()
    names: set[str] = set()
    for schedule in definition.schedules:
        if not isinstance(schedule, Schedule):
            raise ValidationError(
                f"Job {definition.name!r}: schedule= takes durably.Schedule(...) objects, "
                f"got {schedule!r}"
            )
        name = schedule.name or definition.name
        if name in names:
            raise ValidationError(
                f"Job {definition.name!r} declares two schedules named {name!r}; give each "
                "one its own Schedule(name=...)"
            )
        names.add(name)
        schedule_input(codec, definition, schedule, datetime(2000, 1, 1, tzinfo=UTC))
    return definition.schedules


def _same(record: ScheduleRecord, new: NewSchedule, codec: Codec) -> bool:
    """Does the stored schedule already have this definition (status aside)?"""
    return (
        record.job_name == new.job_name
        and record.cron == new.cron
        and record.timezone == new.timezone
        and record.input == codec.decode(new.input_json)
        and record.labels == new.labels
        and record.catch_up == new.catch_up
        and record.max_catch_up == new.max_catch_up
        and record.slot_field == new.slot_field
    )


class Schedules:
    """The schedules of a database (``durably.schedules``): created at run time or
    declared with ``define_job(schedule=…)``, fired by the workers of their jobs.

    Any process may change them; every change is atomic and seen by every worker
    (at once by this process's own worker, within :data:`REFRESH` by the others).
    """

    def __init__(
        self,
        services: Services,
        *,
        ready: Callable[[], Awaitable[None]],
        check_labels: Callable[[Any], dict[str, str]],
        wake_worker: Callable[[], None],
        wake_scheduler: Callable[[], None],
    ) -> None:
        self._services = services
        self._ready = ready
        self._check_labels = check_labels
        self._wake_worker = wake_worker
        self._wake_scheduler = wake_scheduler
        self._calendars: dict[tuple[str, str], Calendar] = {}
        #: name -> job name of the schedules declared by the registered jobs
        self._declared: dict[str, str] = {}
        self._synced: set[str] = set()  # declared schedules stored since they were registered
        self._broken: set[tuple[str, int]] = set()  # (name, revision) this process cannot fire

    # -- declared schedules --

    def declare(self, definition: JobDefinition[Any, Any]) -> None:
        """Check the schedules of a job being registered (names unique across jobs)."""
        for schedule in definition.schedules:
            name = schedule.name or definition.name
            other = self._declared.get(name)
            if other is not None and other != definition.name:
                raise ConflictError(
                    f"Jobs {other!r} and {definition.name!r} both declare a schedule named "
                    f"{name!r}; give one of them Schedule(name=...)"
                )
        for schedule in definition.schedules:
            self._declared[schedule.name or definition.name] = definition.name
        if definition.schedules:
            self._wake_scheduler()

    async def sync(self) -> None:
        """Store the declared schedules of the registered jobs that are not yet: each is
        created, or its stored definition replaced (its pause and, when the calendar
        is the same, its next slot are kept)."""
        for definition in list(self._services.jobs.values()):
            for schedule in definition.schedules:
                name = schedule.name or definition.name
                if name in self._synced:
                    continue
                new = self._new(name, definition, definition.name, schedule, paused=False)
                await self._put(new, replace=True)
                self._synced.add(name)

    # -- the run-time API --

    async def create(
        self,
        name: str,
        job: JobDefinition[Any, Any] | JobHandle[Any, Any] | str,
        *,
        cron: str,
        timezone: str = "UTC",
        input: Any = None,
        labels: Mapping[str, str] | None = None,
        catch_up: CatchUp = "latest",
        max_catch_up: int = 10,
        slot_field: str | None = None,
        paused: bool = False,
        replace: bool = False,
    ) -> ScheduleRecord:
        """Store a schedule named ``name`` that fires ``job`` (a job definition, a handle,
        or a job name) at every slot of ``cron`` in ``timezone``. Arguments as for
        :class:`Schedule`; ``paused=True`` stores it paused.

        Creating a schedule that exists with the same definition returns it unchanged;
        with another definition it is a ``ConflictError``, unless ``replace=True``: then
        its definition is replaced (keeping its pause and, with the same calendar, its
        next slot). When the job is registered here, the input is validated with its
        input type; otherwise it is stored as given and validated when a run is claimed.
        """
        check_name("Schedule name", name)
        job_name, definition = self._job(job)
        schedule = Schedule(
            cron,
            timezone=timezone,
            input=input,
            labels=labels,
            catch_up=catch_up,
            max_catch_up=max_catch_up,
            slot_field=slot_field,
            name=name,
        )
        if not isinstance(paused, bool) or not isinstance(replace, bool):
            raise ValidationError("paused= and replace= take True or False")
        await self._ready()
        new = self._new(name, definition, job_name, schedule, paused=paused)
        record = await self._put(new, replace=replace)
        self._wake_scheduler()
        return record

    async def pause(self, name: str) -> ScheduleRecord:
        """Stop firing ``name`` (its slots until ``resume`` are not caught up)."""
        return await self._set_status(name, ScheduleStatus.PAUSED)

    async def resume(self, name: str) -> ScheduleRecord:
        """Fire ``name`` again, from its first slot after now."""
        return await self._set_status(name, ScheduleStatus.ACTIVE)

    async def delete(self, name: str) -> ScheduleRecord:
        """Delete ``name`` (its runs stay); returns the deleted schedule. A schedule
        declared with ``define_job`` is stored again by the next worker that starts
        with the declaration: remove it from the code too."""
        await self._ready()
        record = await self._services.storage.delete_schedule(check_name("Schedule name", name))
        if record is None:
            raise NotFoundError(f"Schedule not found: {name}")
        self._synced.discard(name)
        return record

    async def get(self, name: str) -> ScheduleRecord | None:
        """The schedule ``name``, or ``None``."""
        await self._ready()
        return await self._services.storage.get_schedule(name)

    async def list(
        self, *, job_name: str | Sequence[str] | None = None
    ) -> builtins.list[ScheduleRecord]:
        """Every schedule (of ``job_name``, one name or several), by name, with its next
        fire time (``next_fire_at``)."""
        names: tuple[str, ...] | None = None
        if job_name is not None:
            names = (job_name,) if isinstance(job_name, str) else tuple(job_name)
            for each in names:
                check_name("job_name", each)
        await self._ready()
        return await self._services.storage.get_schedules(names)

    def next_fire_times(self, schedule: ScheduleRecord, count: int = 5) -> builtins.list[datetime]:
        """The next ``count`` slots of a schedule after its ``next_fire_at`` (included),
        from its calendar (none while it is paused)."""
        if schedule.next_fire_at is None or count <= 0:
            return []
        first = schedule.next_fire_at
        return [first, *self._calendar(schedule.cron, schedule.timezone).slots(first, count - 1)]

    async def fire_due(self) -> builtins.list[TriggerResult]:
        """Fire now every due slot of the schedules of the jobs registered here (what
        the worker's scheduler does at each slot): for ``process_until_idle``-style
        use without a worker, and tests. Returns the runs it fired."""
        fired: builtins.list[TriggerResult] = []
        await self.tick(fired)
        return fired

    # -- firing --

    async def tick(self, fired: builtins.list[TriggerResult] | None = None) -> datetime | None:
        """Store the declared schedules not stored yet, fire every due slot; the time of
        the next slot of this process's schedules (``None``: none)."""
        services = self._services
        names = sorted(services.jobs)
        if not names:
            return None
        await self._ready()
        await self.sync()
        for _ in range(_ROUNDS):
            upcoming = await services.storage.upcoming_schedules(names, BATCH)
            upcoming = [s for s in upcoming if (s.name, s.revision) not in self._broken]
            now = services.now()
            due = [s for s in upcoming if s.next_fire_at is not None and s.next_fire_at <= now]
            if not due:
                return upcoming[0].next_fire_at if upcoming else None
            for record in due:
                await self._fire(record, now, fired)
        return services.now()  # still firing: come back at once

    async def _fire(
        self,
        record: ScheduleRecord,
        now: datetime,
        fired: builtins.list[TriggerResult] | None,
    ) -> None:
        services = self._services
        try:
            calendar = self._calendar(record.cron, record.timezone)
        except ValidationError as exc:  # e.g. a time zone this machine does not know
            self._broken.add((record.name, record.revision))
            services.report_error(
                ValidationError(f"Schedule {record.name!r} cannot be fired here: {exc}"),
                "schedule",
            )
            return
        plan = plan_fire(calendar, record.next_fire_at, record.catch_up, record.max_catch_up, now)
        if plan is None:
            return
        runs = tuple(self._run(record, slot, now) for slot in plan.fire)
        fire = ScheduleFire(
            token=services.new_id(now),
            name=record.name,
            revision=record.revision,
            next_fire_at=plan.next_fire_at,
            last_fired_at=plan.fire[-1] if plan.fire else None,
            runs=runs,
            now=now,
        )
        results = await services.storage.fire_schedule(fire)
        if results is None:  # fired by another process, or changed since it was read
            return
        bus = services.bus
        if plan.skipped is not None:
            bus.emit(
                ScheduleSkipEvent,
                schedule_name=record.name,
                job_name=record.job_name,
                first_slot=plan.skipped[0],
                last_slot=plan.skipped[1],
                catch_up=record.catch_up,
            )
        created = False
        for slot, result in zip(plan.fire, results, strict=True):
            run = result.run
            if result.disposition == "created":
                created = True
                bus.emit_run(RunTriggerEvent, run, input=run.input)
            bus.emit_run(
                ScheduleFireEvent,
                run,
                schedule_name=record.name,
                slot=slot,
                disposition=result.disposition,
            )
            if fired is not None:
                fired.append(TriggerResult(run, result.disposition))
        if created:
            self._wake_worker()

    def _run(self, record: ScheduleRecord, slot: datetime, now: datetime) -> NewRun:
        services = self._services
        stamp = format_ts(slot)
        value = record.input
        if record.slot_field is not None and (value is None or isinstance(value, dict)):
            value = {**(value or {}), record.slot_field: stamp}
        return NewRun(
            id=services.new_id(now),
            job_name=record.job_name,
            input_json=services.codec.encode(value),
            idempotency_key=idempotency_key(record.name, slot),
            labels={**record.labels, SCHEDULE_LABEL: record.name, SLOT_LABEL: stamp},
            created_at=now,
        )

    # -- helpers --

    def _calendar(self, cron: str, timezone: str) -> Calendar:
        key = (cron, timezone)
        calendar = self._calendars.get(key)
        if calendar is None:
            calendar = self._calendars[key] = Calendar(cron, timezone)
        return calendar

    def _job(
        self, job: JobDefinition[Any, Any] | JobHandle[Any, Any] | str
    ) -> tuple[str, JobDefinition[Any, Any] | None]:
        from ._handle import JobHandle

        if isinstance(job, JobHandle):
            job = job.definition
        if isinstance(job, JobDefinition):
            return job.name, job
        if isinstance(job, str):
            check_name("Job name", job)
            return job, self._services.jobs.get(job)
        raise ValidationError(
            f"schedules.create() takes the job as a job definition, a handle or a job name, "
            f"got {type(job).__name__}"
        )

    def _new(
        self,
        name: str,
        definition: JobDefinition[Any, Any] | None,
        job_name: str,
        schedule: Schedule,
        *,
        paused: bool,
    ) -> NewSchedule:
        services = self._services
        now = services.now()
        calendar = self._calendar(schedule.cron, schedule.timezone)
        first = calendar.next_after(now)
        named = Schedule(
            schedule.cron,
            timezone=schedule.timezone,
            input=schedule.input,
            labels=schedule.labels,
            catch_up=schedule.catch_up,
            max_catch_up=schedule.max_catch_up,
            slot_field=schedule.slot_field,
            name=name,
        )
        return NewSchedule(
            name=name,
            job_name=job_name,
            cron=schedule.cron,
            timezone=schedule.timezone,
            input_json=schedule_input(services.codec, definition, named, first or now),
            labels=self._check_labels(dict(schedule.labels or {})),
            catch_up=schedule.catch_up,
            max_catch_up=schedule.max_catch_up,
            slot_field=schedule.slot_field,
            status=ScheduleStatus.PAUSED if paused else ScheduleStatus.ACTIVE,
            next_fire_at=None if paused else first,
            created_at=now,
        )

    async def _put(self, new: NewSchedule, *, replace: bool) -> ScheduleRecord:
        """Create ``new``, or bring the stored schedule of its name to its definition."""
        storage = self._services.storage
        codec = self._services.codec
        for _ in range(_ROUNDS):
            created = await storage.create_schedule(new)
            if created is not None:
                return created
            current = await storage.get_schedule(new.name)
            if current is None:
                continue  # deleted in between: create it
            if _same(current, new, codec):
                return current
            if not replace:
                raise ConflictError(
                    f"A schedule named {new.name!r} exists with another definition (job "
                    f"{current.job_name!r}, cron {current.cron!r}, timezone "
                    f"{current.timezone!r}); delete it first, or pass replace=True"
                )
            next_fire_at = current.next_fire_at
            if current.paused:
                next_fire_at = None
            elif (current.cron, current.timezone) != (new.cron, new.timezone):
                next_fire_at = new.next_fire_at  # a new calendar starts after now
            changed = self._with(new, status=current.status, next_fire_at=next_fire_at)
            updated = await storage.update_schedule(changed, current.revision, self._services.now())
            if updated is not None:
                return updated
        raise ConflictError(f"Schedule {new.name!r} kept changing while it was being stored")

    async def _set_status(self, name: str, status: ScheduleStatus) -> ScheduleRecord:
        check_name("Schedule name", name)
        await self._ready()
        storage = self._services.storage
        for _ in range(_ROUNDS):
            current = await storage.get_schedule(name)
            if current is None:
                raise NotFoundError(f"Schedule not found: {name}")
            if current.status is status:
                return current
            now = self._services.now()
            next_fire_at = None
            if status is ScheduleStatus.ACTIVE:
                next_fire_at = self._calendar(current.cron, current.timezone).next_after(now)
            new = self._with(self._as_new(current), status=status, next_fire_at=next_fire_at)
            updated = await storage.update_schedule(new, current.revision, now)
            if updated is not None:
                if status is ScheduleStatus.ACTIVE:
                    self._wake_scheduler()
                return updated
        raise ConflictError(f"Schedule {name!r} kept changing while it was being updated")

    def _as_new(self, record: ScheduleRecord) -> NewSchedule:
        return NewSchedule(
            name=record.name,
            job_name=record.job_name,
            cron=record.cron,
            timezone=record.timezone,
            input_json=self._services.codec.encode(record.input),
            labels=record.labels,
            catch_up=record.catch_up,
            max_catch_up=record.max_catch_up,
            slot_field=record.slot_field,
            status=record.status,
            next_fire_at=record.next_fire_at,
            created_at=record.created_at,
        )

    @staticmethod
    def _with(
        new: NewSchedule, *, status: ScheduleStatus, next_fire_at: datetime | None
    ) -> NewSchedule:
        import msgspec

        return msgspec.structs.replace(new, status=status, next_fire_at=next_fire_at)
