"""The schedule operations of :class:`~durably_testing.memory.MemoryStorage`.

Part of the memory backend: each operation runs without suspending, so it is
atomic; a fire checks the schedule's revision, then writes its runs and the
schedule together (or raises having written nothing).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import msgspec

from durably import EnqueueResult, NewRun, ValidationError
from durably._schedule import NewSchedule, ScheduleFire, ScheduleRecord, ScheduleStatus
from durably._timefmt import format_ts, parse_ts
from durably._validate import check_text


def _ts(t: datetime | None) -> datetime | None:
    return None if t is None else parse_ts(format_ts(t))


def _check(schedule: NewSchedule) -> None:
    for what, text in (
        ("The schedule name", schedule.name),
        ("The job name", schedule.job_name),
        ("The cron expression", schedule.cron),
        ("The timezone", schedule.timezone),
        ("The schedule's input", schedule.input_json),
        ("The slot field", schedule.slot_field),
    ):
        if text is not None:
            check_text(what, text)
    for key, value in schedule.labels.items():
        check_text("A label key", key)
        check_text(f"The value of label {key!r}", value)
    try:
        msgspec.json.decode(schedule.input_json)
    except msgspec.DecodeError as exc:
        raise ValidationError(
            f"The input of schedule {schedule.name!r} is not JSON: {exc}"
        ) from exc


def _record(
    schedule: NewSchedule,
    *,
    revision: int,
    created_at: datetime,
    updated_at: datetime,
    last_fired_at: datetime | None,
) -> ScheduleRecord:
    return ScheduleRecord(
        name=schedule.name,
        job_name=schedule.job_name,
        cron=schedule.cron,
        timezone=schedule.timezone,
        input=msgspec.json.decode(schedule.input_json),
        labels=dict(schedule.labels),
        catch_up=schedule.catch_up,
        max_catch_up=schedule.max_catch_up,
        slot_field=schedule.slot_field,
        status=schedule.status,
        next_fire_at=_ts(schedule.next_fire_at),
        last_fired_at=last_fired_at,
        revision=revision,
        created_at=created_at,
        updated_at=updated_at,
    )


def _fresh(record: ScheduleRecord) -> ScheduleRecord:
    """A copy the caller may change without touching the store."""
    return msgspec.json.decode(msgspec.json.encode(record), type=ScheduleRecord)


class MemorySchedules:
    """Schedules kept in a dict by name (mixed into ``MemoryStorage``)."""

    def __init__(self) -> None:
        self._schedules: dict[str, ScheduleRecord] = {}

    def _enqueue_now(self, runs: Sequence[tuple[NewRun, bool]]) -> list[EnqueueResult]:
        """``enqueue_many`` without suspending (``MemoryStorage``'s)."""
        raise NotImplementedError

    async def create_schedule(self, schedule: NewSchedule) -> ScheduleRecord | None:
        _check(schedule)
        if schedule.name in self._schedules:
            return None
        created = _ts(schedule.created_at)
        assert created is not None
        record = _record(
            schedule, revision=1, created_at=created, updated_at=created, last_fired_at=None
        )
        self._schedules[schedule.name] = record
        return _fresh(record)

    async def update_schedule(
        self, schedule: NewSchedule, revision: int, now: datetime
    ) -> ScheduleRecord | None:
        _check(schedule)
        current = self._schedules.get(schedule.name)
        if current is None or current.revision != revision:
            return None
        updated = _ts(now)
        assert updated is not None
        record = _record(
            schedule,
            revision=revision + 1,
            created_at=current.created_at,
            updated_at=updated,
            last_fired_at=current.last_fired_at,
        )
        self._schedules[schedule.name] = record
        return _fresh(record)

    async def delete_schedule(self, name: str) -> ScheduleRecord | None:
        record = self._schedules.pop(name, None)
        return None if record is None else _fresh(record)

    async def get_schedule(self, name: str) -> ScheduleRecord | None:
        record = self._schedules.get(name)
        return None if record is None else _fresh(record)

    async def get_schedules(self, job_names: Sequence[str] | None = None) -> list[ScheduleRecord]:
        return [
            _fresh(s)
            for _, s in sorted(self._schedules.items())
            if job_names is None or s.job_name in job_names
        ]

    async def upcoming_schedules(
        self, job_names: Sequence[str], limit: int
    ) -> list[ScheduleRecord]:
        found = sorted(
            (
                s
                for s in self._schedules.values()
                if s.status is ScheduleStatus.ACTIVE
                and s.next_fire_at is not None
                and s.job_name in job_names
            ),
            key=lambda s: (s.next_fire_at, s.name),
        )
        return [_fresh(s) for s in found[: max(limit, 0)]]

    async def fire_schedule(self, fire: ScheduleFire) -> list[EnqueueResult] | None:
        current = self._schedules.get(fire.name)
        if (
            current is None
            or current.status is not ScheduleStatus.ACTIVE
            or current.revision != fire.revision
        ):
            return None
        results = self._enqueue_now([(run, False) for run in fire.runs])  # may raise: no change
        self._schedules[fire.name] = msgspec.structs.replace(
            current,
            next_fire_at=_ts(fire.next_fire_at),
            last_fired_at=current.last_fired_at
            if fire.last_fired_at is None
            else _ts(fire.last_fired_at),
            revision=current.revision + 1,
            updated_at=_ts(fire.now) or current.updated_at,
        )
        return results
