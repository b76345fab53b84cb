"""Open a SQLite storage (imports the driver: reached only from ``plugin._open``)."""

from __future__ import annotations

import sqlite3
from typing import Any

from durably import StorageError
from durably.sql import SqlStorage

from ._executor import SqliteExecutor
from ._url import config_from

MIN_SQLITE = (3, 35, 0)


def check_sqlite_version(version: tuple[int, int, int] = sqlite3.sqlite_version_info) -> None:
    if version < MIN_SQLITE:
        found = ".".join(map(str, version))
        raise StorageError(
            f"durably-sqlite needs SQLite 3.35.0 or newer (for RETURNING and multiple "
            f"ON CONFLICT clauses); this Python is linked against SQLite {found}. Use a "
            "Python build linked against a newer SQLite, or a remote libSQL server "
            "(durably-libsql; its 'file:' URLs use this same SQLite)."
        )


def open_sqlite(url: str, **options: Any) -> SqlStorage:
    """A :class:`durably.sql.SqlStorage` over the SQLite database the URL names.

    Nothing is opened yet: the connection is made by the first operation (usually
    ``migrate()``), so errors about the file surface there.
    """
    config = config_from(url, options)
    check_sqlite_version()
    executor = SqliteExecutor(
        config.database,
        synchronous=config.synchronous,
        busy_timeout=config.busy_timeout,
        mode=config.mode,
    )
    return SqlStorage(executor)
