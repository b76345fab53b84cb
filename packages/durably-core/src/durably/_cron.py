"""Cron calendars: which instants are the slots of a schedule.

A slot is a wall-clock time the cron expression matches in the schedule's time
zone. Expressions have 5 fields (minute hour day-of-month month day-of-week) or
6 with the seconds first (``*/5 * * * * *``, as node-cron and cronsim read them);
``@yearly``/``@annually``, ``@monthly``, ``@weekly``, ``@daily``/``@midnight`` and
``@hourly`` stand for their 5-field forms. The fields are evaluated by cronsim
(Debian cron's rules for day-of-month/day-of-week, ``L``, ``W``, ``#``) on naive
wall-clock times; this module turns each wall-clock slot into one instant:

- a wall time that exists once is that instant;
- a wall time the clocks pass twice (the repeated hour when summer time ends)
  is its first occurrence only: ``30 2 * * *`` fires once that night, and so does
  the 02:00 slot of ``0 * * * *``;
- a wall time the clocks skip (the hour lost when summer time starts) is the
  instant the clocks jump past it: ``30 2 * * *`` fires at 03:00 that night, and
  all the skipped slots of ``*/15 * * * *`` fire once, together with 03:00.

Slots are whole seconds; instants are aware UTC datetimes. Instants never go
back as wall-clock slots go forward, so forward and backward iteration agree.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ._errors import ValidationError

if TYPE_CHECKING:
    from cronsim import CronSim

ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
"""The ``@`` shorthands a cron expression may be, and what they stand for."""

_MICRO = timedelta(microseconds=1)


def time_zone(name: str) -> tzinfo:
    """The IANA time zone ``name`` (``"UTC"``, ``"Europe/Paris"``), or a ValidationError."""
    if not isinstance(name, str) or not name:
        raise ValidationError(f"Invalid timezone {name!r}: expected an IANA name like 'UTC'")
    if name == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(
            f"Unknown timezone {name!r}: use an IANA time zone name such as 'UTC', "
            "'Europe/Paris' or 'America/New_York'"
        ) from None


def normalize(cron: str) -> str:
    """The expression as evaluated: an alias expanded, fields separated by one space."""
    if not isinstance(cron, str):
        raise ValidationError(f"Invalid cron expression {cron!r}: expected a string")
    text = " ".join(cron.split())
    return ALIASES.get(text.lower(), text)


class Calendar:
    """The slots of ``cron`` in ``timezone`` (see the module docstring)."""

    def __init__(self, cron: str, timezone: str = "UTC") -> None:
        from cronsim import CronSim, CronSimError

        self.cron = cron
        self.expression = normalize(cron)
        fields = self.expression.split()
        if self.expression.startswith("@") or len(fields) not in (5, 6):
            aliases = ", ".join(ALIASES)
            raise ValidationError(
                f"Invalid cron expression {cron!r}: expected 5 fields (minute hour "
                "day-of-month month day-of-week), 6 with the seconds first, or one of "
                f"{aliases}"
            )
        try:
            CronSim(self.expression, datetime(2000, 1, 1))
        except (CronSimError, ValueError, IndexError, KeyError) as exc:
            raise ValidationError(f"Invalid cron expression {cron!r}: {exc}") from None
        self.tz = time_zone(timezone)
        self._sim: type[CronSim] = CronSim

    def __repr__(self) -> str:
        return f"Calendar({self.cron!r}, {self.tz})"

    # -- wall-clock slots and their instants --

    def _walls(self, start: datetime, *, reverse: bool = False) -> Iterator[datetime]:
        """Naive wall-clock slots after ``start`` (before it, or at it, with ``reverse``
        and a ``start`` that has microseconds)."""
        return iter(self._sim(self.expression, start, reverse=reverse))

    def _wall(self, t: datetime) -> datetime:
        return t.astimezone(self.tz).replace(tzinfo=None, fold=0)

    def instant(self, wall: datetime) -> datetime:
        """The instant of the wall-clock slot ``wall`` (naive, in this time zone)."""
        if self.tz is UTC:
            return wall.replace(tzinfo=UTC)
        first = wall.replace(tzinfo=self.tz, fold=0).astimezone(UTC)
        if first.astimezone(self.tz).replace(tzinfo=None) == wall:
            return first  # exists; when the clocks pass it twice, its first occurrence
        return self._jump_past(wall)

    def _jump_past(self, wall: datetime) -> datetime:
        """The first instant whose wall-clock time is after ``wall``, a time the clocks
        skipped. Between the instants ``wall`` has under the offsets after (``fold=1``)
        and before (``fold=0``) the jump, wall-clock time only grows: bisect it."""
        low = wall.replace(tzinfo=self.tz, fold=1).astimezone(UTC)
        high = wall.replace(tzinfo=self.tz, fold=0).astimezone(UTC)
        if high < low:
            low, high = high, low
        lo, hi = int(low.timestamp()), int(high.timestamp()) + 1
        while lo < hi:
            mid = (lo + hi) // 2
            at = datetime.fromtimestamp(mid, UTC)
            if self._wall(at) > wall:
                hi = mid
            else:
                lo = mid + 1
        return datetime.fromtimestamp(lo, UTC)

    def _latest_wall(self, t: datetime) -> datetime:
        """A wall-clock time no earlier than any wall time reached up to ``t``: ``t``'s
        own, or in the second pass of a repeated hour, that hour's end (the first pass
        went further)."""
        local = t.astimezone(self.tz)
        wall = local.replace(tzinfo=None, fold=0)
        if getattr(local, "fold", 0) == 1:
            first = local.replace(fold=0).utcoffset()
            second = local.utcoffset()
            if first is not None and second is not None and first > second:
                wall += first - second
        return wall

    # -- queries --

    def next_after(self, t: datetime) -> datetime | None:
        """The first slot strictly after ``t``, or ``None`` when there is none (in the
        next 50 years)."""
        for wall in self._walls(self._wall(t)):
            at = self.instant(wall)
            if at > t:
                return at
        return None

    def latest(self, until: datetime, since: datetime) -> datetime | None:
        """The last slot in ``[since, until]``, or ``None``."""
        found = self.latest_slots(since, until, 1)
        return found[0] if found else None

    def latest_slots(self, since: datetime, until: datetime, limit: int) -> list[datetime]:
        """The last ``limit`` slots in ``[since, until]``, oldest first. Costs ``limit``
        steps back from ``until``, whatever the length of the range."""
        if limit <= 0 or until < since:
            return []
        start = self._latest_wall(until)
        if start.microsecond == 0:
            start = start + _MICRO  # cronsim's reverse walk then includes start itself
        found: list[datetime] = []
        for wall in self._walls(start, reverse=True):
            at = self.instant(wall)
            if at > until:  # a wall time whose instant comes later (past a repeat)
                continue
            if at < since:
                break
            if not found or at != found[-1]:  # skipped slots share one instant
                found.append(at)
                if len(found) == limit:
                    break
        found.reverse()
        return found

    def slots(self, after: datetime, count: int) -> list[datetime]:
        """The next ``count`` slots after ``after``, in order."""
        out: list[datetime] = []
        at: datetime | None = after
        while len(out) < count and at is not None:
            at = self.next_after(at)
            if at is not None:
                out.append(at)
        return out
