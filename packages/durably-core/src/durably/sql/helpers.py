"""What the in-tree storage uses that an adapter implementing :class:`durably.Storage`
directly (without :class:`~durably.sql.SqlStorage`) needs too: the database's
timestamp format, and what to do when a write's answer was lost.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

from .._timefmt import format_ts, parse_ts
from ._outcome import resolved

__all__ = ["format_timestamp", "parse_timestamp", "resolve_lost_answer"]

T = TypeVar("T")


def format_timestamp(t: datetime) -> str:
    """The stored form of an aware datetime: ISO-8601 UTC, milliseconds truncated,
    ``Z`` (``2026-11-22T03:04:05.123Z``), as the TypeScript library writes it. Stored
    times are compared as text, so every one must be written exactly so."""
    return format_ts(t)


def parse_timestamp(text: str) -> datetime:
    """An aware UTC datetime from the stored form (or any ISO-8601 text with an offset)."""
    return parse_ts(text)


async def resolve_lost_answer(
    write: Callable[[], Awaitable[T]], landed: Callable[[], Awaitable[T | None]]
) -> T:
    """``await write()``; when it raises :class:`durably.StorageOutcomeUnknownError`
    (the write left, its answer never came back), ask ``landed()`` — a read of what
    the write would have written: its result if it landed, ``None`` if not (yet) — and
    send the write once more only when it did not land. The write must be safe to
    send twice under that check: an insert with an id chosen before the first try, a
    fenced update that sets a state only its lease holder can set."""
    return await resolved(write, landed)
