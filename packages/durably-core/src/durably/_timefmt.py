"""The database's timestamp format: ISO-8601 UTC with milliseconds and ``Z``.

Timestamps are compared as strings in SQL, so the format must be exact.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def format_ts(t: datetime) -> str:
    """``2026-11-22T03:04:05.123Z`` for an aware datetime."""
    u = t if t.tzinfo is UTC else t.astimezone(UTC)
    # isoformat is C code (formatted several times per checkpoint); [:23] drops "+00:00"
    return u.isoformat(timespec="milliseconds")[:23] + "Z"


def parse_ts(s: str) -> datetime:
    """Parse the database format (and any ISO-8601 string with an offset)."""
    if s.endswith("Z"):
        s = s[:-1] + "+00:00"
    t = datetime.fromisoformat(s)
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.astimezone(UTC)


def parse_duration(value: str | float | timedelta) -> timedelta:
    """``"7d"``, ``"12h"``, ``"30m"``, ``"45s"``, a number of seconds, or a timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=float(value))
    if isinstance(value, str):
        units = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
        text = value.strip()
        if len(text) >= 2 and text[-1] in units:
            try:
                amount = float(text[:-1])
            except ValueError:
                amount = -1.0
            if amount >= 0:
                return timedelta(seconds=amount * units[text[-1]])
    from ._errors import ValidationError

    raise ValidationError(
        f"Invalid duration {value!r}: use a number of seconds or a string like '7d', "
        "'12h', '30m' or '45s'"
    )
