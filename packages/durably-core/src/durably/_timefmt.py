"""The database's timestamp format: ISO-8601 UTC with milliseconds and ``Z``.

Timestamps are compared as strings in SQL, so the format must be exact.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta

#: "00" … "99" and "000" … "999": formatting by lookup is ~2.5x faster than
#: ``isoformat`` (whose C code formats through ``PyUnicode_FromFormat``), and a
#: checkpoint formats two timestamps.
_TWO = tuple(f"{i:02d}" for i in range(100))
_THREE = tuple(f"{i:03d}" for i in range(1000))


def format_ts(t: datetime) -> str:
    """``2026-11-22T03:04:05.123Z`` for an aware datetime."""
    u = t if t.tzinfo is UTC else t.astimezone(UTC)
    year = u.year
    if year < 1000:  # four digits, as isoformat writes them
        return u.isoformat(timespec="milliseconds")[:23] + "Z"
    two = _TWO
    return (
        f"{year}-{two[u.month]}-{two[u.day]}T{two[u.hour]}:{two[u.minute]}:"
        f"{two[u.second]}.{_THREE[u.microsecond // 1000]}Z"
    )


def parse_ts(s: str) -> datetime:
    """Parse the database format (and any ISO-8601 string with an offset)."""
    if s.endswith("Z"):
        s = s[:-1] + "+00:00"
    t = datetime.fromisoformat(s)
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.astimezone(UTC)


def parse_duration(value: str | float | timedelta) -> timedelta:
    """``"7d"``, ``"12h"``, ``"30m"``, ``"45s"``, a number of seconds, or a timedelta;
    never negative."""
    seconds = -1.0
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        units = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
        text = value.strip()
        if len(text) >= 2 and text[-1] in units:
            with contextlib.suppress(ValueError):  # not a number: refused below
                seconds = float(text[:-1]) * units[text[-1]]
    # timedelta's own range is ~2.7 million years; beyond it (or inf, nan) it raises
    if 0 <= seconds < _MAX_TIMEDELTA_SECONDS:
        return value if isinstance(value, timedelta) else timedelta(seconds=seconds)
    from ._errors import ValidationError

    raise ValidationError(
        f"Invalid duration {value!r}: use a number of seconds ≥ 0 or a string like '7d', "
        "'12h', '30m' or '45s'"
    )


_MAX_TIMEDELTA_SECONDS = timedelta.max.total_seconds()
