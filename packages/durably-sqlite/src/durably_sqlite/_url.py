"""``sqlite:`` URLs and options (no driver import here: the plugin module uses it)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

from durably import ValidationError

SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
MODES = ("rwc", "rw", "ro")
OPTIONS = ("synchronous", "busy_timeout", "mode")
#: Longer than anyone waits for a lock on purpose; a lease would expire long before.
MAX_BUSY_TIMEOUT = 3600.0


@dataclass(frozen=True)
class SqliteConfig:
    """Where the database is and how to open it."""

    database: str
    synchronous: str = "NORMAL"
    busy_timeout: float = 5.0
    mode: str = "rwc"


def parse_url(url: str) -> tuple[str, dict[str, str]]:
    """``sqlite:///relative.db`` → ``relative.db``; ``sqlite:////abs/x.db`` → ``/abs/x.db``;
    ``sqlite:///:memory:`` and ``sqlite://`` → ``:memory:``. Query parameters are options."""
    scheme, sep, rest = url.partition(":")
    if not sep or scheme.lower() != "sqlite" or not rest.startswith("//"):
        raise ValidationError(
            f"Invalid SQLite URL {url!r}: use 'sqlite:///relative/path.db', "
            "'sqlite:////absolute/path.db' or 'sqlite:///:memory:'"
        )
    location, _, query = rest[2:].partition("?")
    host, _, path = location.partition("/")
    if host:
        raise ValidationError(
            f"Invalid SQLite URL {url!r}: a SQLite URL has no host; put three slashes "
            "before a relative path and four before an absolute one "
            "('sqlite:///data/durably.db', 'sqlite:////var/lib/durably.db')"
        )
    path = unquote(path)
    params = dict(parse_qsl(query, keep_blank_values=True))
    return (path or ":memory:"), params


def config_from(url: str, options: Mapping[str, Any]) -> SqliteConfig:
    """Parse the URL and validate the options (keyword options override the query)."""
    database, query = parse_url(url)
    merged: dict[str, Any] = {**query, **options}
    unknown = sorted(set(merged) - set(OPTIONS))
    if unknown:
        raise ValidationError(
            f"Unknown option(s) for the sqlite backend: {', '.join(unknown)}. "
            f"Valid options: {', '.join(OPTIONS)}"
        )
    synchronous = merged.get("synchronous", "NORMAL")
    if not isinstance(synchronous, str) or synchronous.upper() not in SYNCHRONOUS:
        raise ValidationError(
            f"Invalid synchronous={synchronous!r}: use one of {', '.join(SYNCHRONOUS)}"
        )
    raw_timeout = merged.get("busy_timeout", 5.0)
    try:
        if isinstance(raw_timeout, bool):
            raise TypeError
        busy_timeout = float(raw_timeout)
    except (TypeError, ValueError):
        busy_timeout = -1.0
    if not math.isfinite(busy_timeout) or not 0 <= busy_timeout <= MAX_BUSY_TIMEOUT:
        raise ValidationError(
            f"Invalid busy_timeout={raw_timeout!r}: give a number of seconds from 0 to "
            f"{MAX_BUSY_TIMEOUT:g} (an hour)"
        )
    mode = merged.get("mode", "rwc")
    if mode not in MODES:
        raise ValidationError(f"Invalid mode={mode!r}: use one of {', '.join(MODES)}")
    if database == ":memory:" and mode != "rwc":
        raise ValidationError("mode applies to database files, not to ':memory:'")
    return SqliteConfig(
        database=database,
        synchronous=synchronous.upper(),
        busy_timeout=busy_timeout,
        mode=mode,
    )
