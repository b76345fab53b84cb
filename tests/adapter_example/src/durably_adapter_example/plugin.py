"""Entry point of the example adapter (group ``durably``).

Imports only ``durably``: the driver module is imported when a database is opened.
"""

from __future__ import annotations

from typing import Any

from durably import Storage, ValidationError
from durably.plugins import StorageBackend, hookimpl

SCHEME = "sqlite3sync"
OPTIONS = ("busy_timeout",)


def parse_url(url: str) -> str:
    """``sqlite3sync:///rel.db`` → ``rel.db``; ``sqlite3sync:////abs.db`` → ``/abs.db``;
    ``sqlite3sync:///:memory:`` → ``:memory:``."""
    prefix = f"{SCHEME}:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise ValidationError(
            f"Invalid URL {url!r}: use '{SCHEME}:///relative.db', '{SCHEME}:////absolute.db' "
            f"or '{SCHEME}:///:memory:'"
        )
    return url[len(prefix) :]


def open_storage(url: str, **options: Any) -> Storage:
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValidationError(
            f"Unknown option(s) for the {SCHEME} backend: {', '.join(unknown)}. "
            f"Valid options: {', '.join(OPTIONS)}"
        )
    path = parse_url(url)
    busy_timeout = float(options.get("busy_timeout", 5.0))
    from durably.sql import SqlStorage

    from .executor import SyncSqliteExecutor  # the driver is imported here, lazily

    return SqlStorage(SyncSqliteExecutor(path, busy_timeout=busy_timeout))


@hookimpl
def durably_storage_backends() -> list[StorageBackend]:
    return [
        StorageBackend(
            name=SCHEME,
            schemes=(SCHEME,),
            open=open_storage,
            package="durably-adapter-example",
        )
    ]
