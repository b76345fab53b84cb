"""Schedules: the declaration (:class:`Schedule`) and the records that cross the
storage boundary (:class:`ScheduleRecord`, :class:`NewSchedule`, :class:`ScheduleFire`).

A schedule fires a job at each slot of a cron calendar (``durably._cron``). The
rules of firing — which slots are due, which the catch-up policy fires or skips,
how a fire is made once-only — are in ``durably._schedules`` and docs/semantics.md
("Schedules").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

import msgspec

from ._cron import Calendar
from ._errors import ValidationError
from ._records import NewRun
from ._timefmt import format_ts
from ._validate import check_text, validate_labels

CatchUp = Literal["latest", "skip", "all"]
"""What a schedule does with slots it missed (its workers were down, or it was not
seen in time): fire only the most recent (``"latest"``), none (``"skip"``), or each
of them up to ``max_catch_up`` (``"all"``)."""

CATCH_UP_POLICIES: tuple[CatchUp, ...] = ("latest", "skip", "all")
"""The accepted values of ``catch_up``."""

MAX_CATCH_UP_LIMIT = 1000
"""The largest ``max_catch_up``: the runs of one catch-up are written in one transaction."""

SLOT_LABEL = "durably.slot"
"""The label every scheduled run carries: its slot, in the database's timestamp format."""

SCHEDULE_LABEL = "durably.schedule"
"""The label every scheduled run carries: the schedule's name."""


class ScheduleStatus(StrEnum):
    """A schedule fires while ``active``; a ``paused`` one fires nothing."""

    ACTIVE = "active"
    PAUSED = "paused"


def check_name(what: str, value: Any) -> str:
    """A non-empty string that can be stored as text."""
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(f"{what} must be a non-empty string, got {value!r}")
    return check_text(what, value)


def check_catch_up(catch_up: Any, max_catch_up: Any) -> tuple[CatchUp, int]:
    if catch_up not in CATCH_UP_POLICIES:
        raise ValidationError(
            f"Invalid catch_up {catch_up!r}: use 'latest' (fire the most recent missed "
            "slot), 'skip' (fire none) or 'all' (fire each, up to max_catch_up)"
        )
    if (
        not isinstance(max_catch_up, int)
        or isinstance(max_catch_up, bool)
        or not 1 <= max_catch_up <= MAX_CATCH_UP_LIMIT
    ):
        raise ValidationError(
            f"Invalid max_catch_up {max_catch_up!r}: expected an integer from 1 to "
            f"{MAX_CATCH_UP_LIMIT}"
        )
    return catch_up, max_catch_up


@dataclass(frozen=True)
class Schedule:
    """A cron schedule declared with a job::

        @define_job("nightly-report", input=ReportIn,
                    schedule=Schedule("0 3 * * *", timezone="Europe/Paris",
                                      input={"region": "eu"}, slot_field="night"))

    Each slot fires one run of the job, whatever number of workers run: with
    ``input`` (plus the slot time under ``slot_field``, when given), ``labels`` plus
    ``durably.schedule`` (the schedule's name) and ``durably.slot`` (the slot), and
    the idempotency key ``schedule:<name>:<slot>``. ``name`` defaults to the job's
    name. ``catch_up`` says what happens to slots missed while no worker ran (see
    :data:`CatchUp`). Every worker with the job registered stores the declaration
    when it starts; ``durably.schedules`` changes schedules at run time.
    """

    cron: str
    timezone: str = "UTC"
    input: Any = None
    labels: Mapping[str, str] | None = None
    catch_up: CatchUp = "latest"
    max_catch_up: int = 10
    slot_field: str | None = None
    name: str | None = None
    calendar: Calendar = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "calendar", Calendar(self.cron, self.timezone))
        check_catch_up(self.catch_up, self.max_catch_up)
        if self.slot_field is not None:
            check_name("slot_field", self.slot_field)
        if self.name is not None:
            check_name("Schedule name", self.name)
        labels = validate_labels(dict(self.labels) if self.labels else None, None, None)
        for reserved in (SCHEDULE_LABEL, SLOT_LABEL):
            if reserved in labels:
                raise ValidationError(
                    f"Label {reserved!r} is set by the scheduler on every scheduled run; "
                    "use another label key"
                )
        object.__setattr__(self, "labels", labels)


class ScheduleRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A stored schedule. ``next_fire_at`` is the next slot it fires (``None`` while
    paused, or when its calendar has no further slot); ``last_fired_at`` the last slot
    it fired a run for; ``revision`` grows with every change, fires included."""

    name: str
    job_name: str
    cron: str
    timezone: str
    input: Any = None
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    catch_up: CatchUp = "latest"
    max_catch_up: int = 10
    slot_field: str | None = None
    status: ScheduleStatus = ScheduleStatus.ACTIVE
    next_fire_at: datetime | None = None
    last_fired_at: datetime | None = None
    revision: int = 1
    created_at: datetime
    updated_at: datetime

    @property
    def paused(self) -> bool:
        """Is the schedule paused?"""
        return self.status is ScheduleStatus.PAUSED


class NewSchedule(msgspec.Struct, frozen=True, kw_only=True):
    """A schedule to store (``create_schedule``), or the new state of one
    (``update_schedule``: every field but ``name`` and ``created_at`` is written).
    ``input_json`` is the input, already validated and encoded."""

    name: str
    job_name: str
    cron: str
    timezone: str
    input_json: str
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    catch_up: CatchUp = "latest"
    max_catch_up: int = 10
    slot_field: str | None = None
    status: ScheduleStatus = ScheduleStatus.ACTIVE
    next_fire_at: datetime | None = None
    created_at: datetime


class ScheduleFire(msgspec.Struct, frozen=True, kw_only=True):
    """One fire of a schedule (``fire_schedule``): move the schedule from ``revision``
    to ``next_fire_at`` (and ``last_fired_at``), enqueueing ``runs``. ``token`` is new
    for every fire (a ULID): a backend may mark the schedule with it, to write the
    runs only when this fire is the one that moved the schedule."""

    token: str
    name: str
    revision: int
    next_fire_at: datetime | None
    last_fired_at: datetime | None
    runs: tuple[NewRun, ...] = ()
    now: datetime


def idempotency_key(name: str, slot: datetime) -> str:
    """The idempotency key of the run of schedule ``name`` at ``slot``."""
    return f"schedule:{name}:{format_ts(slot)}"
