"""The schedule operations of :class:`~durably.sql.SqlStorage` (table
``durably_schedules``, docs/schema.md).

Every write is a compare-and-set on the schedule's ``revision``. A fire is one
batch: the ``UPDATE`` that moves the schedule from the revision it was planned at
also writes the fire's ``token``; each run is an ``INSERT … SELECT … WHERE EXISTS``
the schedule row carrying that token, so the runs are written exactly when this
fire is the one that moved the schedule — two processes firing the same slot
write one set of runs, and a crash leaves both or neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

import msgspec

from .._errors import StorageCorruptError, StorageOutcomeUnknownError
from .._records import EnqueueResult, NewRun, Run
from .._schedule import NewSchedule, ScheduleFire, ScheduleRecord, ScheduleStatus
from .._timefmt import format_ts, parse_ts
from . import storage as _storage
from ._rows import RUN_COLUMNS, to_run

if TYPE_CHECKING:
    from .executor import Executor, Params, Row, SqlValue, Statement

SCHEDULE_COLUMNS = (
    "name, job_name, cron, timezone, input, labels, catch_up, max_catch_up, slot_field, "
    "status, next_fire_at, last_fired_at, revision, created_at, updated_at"
)
_CREATE = (
    "INSERT INTO durably_schedules (name, job_name, cron, timezone, input, labels, catch_up, "
    "max_catch_up, slot_field, status, next_fire_at, revision, created_at, updated_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?) ON CONFLICT (name) DO NOTHING "
    f"RETURNING {SCHEDULE_COLUMNS}"
)
_UPDATE = (
    "UPDATE durably_schedules SET job_name = ?, cron = ?, timezone = ?, input = ?, labels = ?, "
    "catch_up = ?, max_catch_up = ?, slot_field = ?, status = ?, next_fire_at = ?, "
    "revision = revision + 1, updated_at = ? WHERE name = ? AND revision = ? "
    f"RETURNING {SCHEDULE_COLUMNS}"
)
_DELETE = f"DELETE FROM durably_schedules WHERE name = ? RETURNING {SCHEDULE_COLUMNS}"
_GET = f"SELECT {SCHEDULE_COLUMNS} FROM durably_schedules WHERE name = ?"
_ALL = f"SELECT {SCHEDULE_COLUMNS} FROM durably_schedules"
_UPCOMING = (
    f"SELECT {SCHEDULE_COLUMNS} FROM durably_schedules WHERE status = 'active' "
    "AND next_fire_at IS NOT NULL AND job_name IN {jobs} ORDER BY next_fire_at, name LIMIT ?"
)
_FIRE = (
    "UPDATE durably_schedules SET next_fire_at = ?, last_fired_at = COALESCE(?, last_fired_at), "
    "fire_token = ?, revision = revision + 1, updated_at = ? "
    "WHERE name = ? AND revision = ? AND status = 'active' RETURNING revision"
)
# A run of the fire: written only when the schedule row carries this fire's token.
_INSERT_FIRED_RUN = (
    "INSERT INTO durably_runs (id, job_name, input, status, idempotency_key, concurrency_key, "
    "labels, current_step_index, completed_step_count, lease_generation, created_at, updated_at) "
    "SELECT CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS TEXT), 'pending', CAST(? AS TEXT), "
    "CAST(? AS TEXT), CAST(? AS TEXT), 0, 0, 0, CAST(? AS TEXT), CAST(? AS TEXT) "
    "WHERE EXISTS (SELECT 1 FROM durably_schedules WHERE name = ? AND fire_token = ?) "
    f"ON CONFLICT (job_name, idempotency_key) DO NOTHING RETURNING {RUN_COLUMNS}"
)
_FIRED = "SELECT fire_token = ?, revision FROM durably_schedules WHERE name = ?"

_decode = msgspec.json.Decoder().decode
_STATUS = {s.value: s for s in ScheduleStatus}


def _ts(value: str | None) -> datetime | None:
    return None if value is None else parse_ts(value)


def schedule_row(row: Row) -> ScheduleRecord:
    """A row of ``SCHEDULE_COLUMNS`` as a record."""
    try:
        status = _STATUS[row[9]]
    except KeyError:
        raise StorageCorruptError(
            f"Schedule {row[0]!r} has status {row[9]!r}, which this release of durably does "
            "not know; upgrade durably"
        ) from None
    return ScheduleRecord(
        name=row[0],
        job_name=row[1],
        cron=row[2],
        timezone=row[3],
        input=_decode(row[4]) if row[4] else None,
        labels=_decode(row[5]) if row[5] else {},
        catch_up=row[6],
        max_catch_up=int(row[7]),
        slot_field=row[8],
        status=status,
        next_fire_at=_ts(row[10]),
        last_fired_at=_ts(row[11]),
        revision=int(row[12]),
        created_at=parse_ts(row[13]),
        updated_at=parse_ts(row[14]),
    )


def _fields(schedule: NewSchedule) -> list[SqlValue]:
    """The definition columns, in ``_CREATE``/``_UPDATE`` order (job_name … next_fire_at)."""
    return [
        schedule.job_name,
        schedule.cron,
        schedule.timezone,
        schedule.input_json,
        _storage._json_text(schedule.labels),
        schedule.catch_up,
        schedule.max_catch_up,
        schedule.slot_field,
        schedule.status.value,
        None if schedule.next_fire_at is None else format_ts(schedule.next_fire_at),
    ]


def _fired_run(fire: ScheduleFire, run: NewRun) -> Statement:
    created = format_ts(run.created_at)
    params: Params = (
        run.id,
        run.job_name,
        run.input_json,
        run.idempotency_key,
        run.concurrency_key,
        _storage._json_text(run.labels),
        created,
        created,
        fire.name,
        fire.token,
    )
    return (_INSERT_FIRED_RUN, params)


class ScheduleSql:
    """The schedule operations of the :class:`durably.Storage` protocol, for
    :class:`~durably.sql.SqlStorage` (which provides ``executor``)."""

    executor: Executor

    async def create_schedule(self, schedule: NewSchedule) -> ScheduleRecord | None:
        created = format_ts(schedule.created_at)
        params = [schedule.name, *_fields(schedule), created, created]
        rows = await self.executor.fetch(_CREATE, params)
        return schedule_row(rows[0]) if rows else None

    async def update_schedule(
        self, schedule: NewSchedule, revision: int, now: datetime
    ) -> ScheduleRecord | None:
        params = [*_fields(schedule), format_ts(now), schedule.name, revision]
        rows = await self.executor.fetch(_UPDATE, params)
        return schedule_row(rows[0]) if rows else None

    async def delete_schedule(self, name: str) -> ScheduleRecord | None:
        rows = await self.executor.fetch(_DELETE, (name,))
        return schedule_row(rows[0]) if rows else None

    async def get_schedule(self, name: str) -> ScheduleRecord | None:
        rows = await self.executor.fetch(_GET, (name,))
        return schedule_row(rows[0]) if rows else None

    async def get_schedules(self, job_names: Sequence[str] | None = None) -> list[ScheduleRecord]:
        if job_names is None:
            rows = await self.executor.fetch(_ALL + " ORDER BY name")
        elif not job_names:
            return []
        else:
            where = f" WHERE job_name IN {_storage._in_list(len(job_names))} ORDER BY name"
            rows = await self.executor.fetch(_ALL + where, list(job_names))
        return [schedule_row(row) for row in rows]

    async def upcoming_schedules(
        self, job_names: Sequence[str], limit: int
    ) -> list[ScheduleRecord]:
        if not job_names or limit <= 0:
            return []
        sql = _UPCOMING.format(jobs=_storage._in_list(len(job_names)))
        rows = await self.executor.fetch(sql, [*job_names, limit])
        return [schedule_row(row) for row in rows]

    async def fire_schedule(self, fire: ScheduleFire) -> list[EnqueueResult] | None:
        try:
            return await self._fire(fire)
        except StorageOutcomeUnknownError:
            pass
        # The answer was lost: the token says whether this fire moved the schedule.
        landed = await self._fire_landed(fire)
        if landed is None:
            result = await self._fire(fire)  # not applied, and the schedule did not move
            if result is not None or not await self._fire_landed(fire):
                return result
        elif not landed:
            return None
        return await self._fire_results(fire)

    async def _fire(self, fire: ScheduleFire) -> list[EnqueueResult] | None:
        move: Statement = (
            _FIRE,
            (
                None if fire.next_fire_at is None else format_ts(fire.next_fire_at),
                None if fire.last_fired_at is None else format_ts(fire.last_fired_at),
                fire.token,
                format_ts(fire.now),
                fire.name,
                fire.revision,
            ),
        )
        statements: list[Statement] = [move]
        groups: list[int] = []
        for run in fire.runs:
            group = _storage.SqlStorage._enqueue_statements(run, False)
            group[0] = _fired_run(fire, run)
            statements += group
            groups.append(len(group))
        if len(statements) == 1:
            results = [await self.executor.fetch(*move)]
        else:
            results = await self.executor.batch(statements)
        if not results[0]:
            return None
        out: list[EnqueueResult] = []
        pos = 1
        for run, size in zip(fire.runs, groups, strict=True):
            out.append(_storage.SqlStorage._enqueue_result(run, False, results[pos : pos + size]))
            pos += size
        return out

    async def _fire_landed(self, fire: ScheduleFire) -> bool | None:
        """After a lost answer: ``True`` if this fire applied, ``None`` if the schedule
        is still at the fire's revision (not applied: send again), else ``False``."""
        rows = await self.executor.fetch(_FIRED, (fire.token, fire.name))
        if not rows:
            return False
        if rows[0][0]:
            return True
        return None if int(rows[0][1]) == fire.revision else False

    async def _fire_results(self, fire: ScheduleFire) -> list[EnqueueResult]:
        """The results of a fire that applied: each run by its id (created by it), or by
        its idempotency key (it existed already)."""
        found = await self._runs_by_id([run.id for run in fire.runs])
        out: list[EnqueueResult] = []
        for run in fire.runs:
            if run.id in found:
                out.append(EnqueueResult(found[run.id], "created"))
                continue
            rows = await self.executor.fetch(
                _storage._SELECT_IDEMPOTENT, (run.job_name, run.idempotency_key)
            )
            if not rows:  # pragma: no cover - the fire's transaction wrote one or the other
                raise StorageCorruptError(
                    f"Schedule {fire.name!r} fired run {run.id}, which is not stored"
                )
            out.append(EnqueueResult(to_run(rows[0]), "idempotent"))
        return out

    async def _runs_by_id(self, ids: Sequence[str]) -> dict[str, Run]:
        raise NotImplementedError  # SqlStorage's


__all__ = ["SCHEDULE_COLUMNS", "ScheduleSql", "schedule_row"]
