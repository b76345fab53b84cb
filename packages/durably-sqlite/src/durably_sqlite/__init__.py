"""Local SQLite storage for durably: ``sqlite:///path/to/file.db`` or ``sqlite:///:memory:``.

Options (keyword arguments or URL query): ``synchronous`` (``"NORMAL"``, ``"FULL"``,
``"OFF"``, ``"EXTRA"``), ``busy_timeout`` (seconds, default 5), ``mode`` (``"rwc"``,
``"rw"``, ``"ro"``). See :mod:`durably_sqlite._executor` for what survives a crash
at each ``synchronous`` level.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._executor import SqliteExecutor
    from ._open import open_sqlite

#: The package version: the one place it is written (its pyproject.toml reads it).
__version__ = "0.1.0"

__all__ = ["SqliteExecutor", "open_sqlite"]


def __getattr__(name: str) -> Any:
    # Lazy, so that importing durably_sqlite.plugin does not import the driver.
    if name == "SqliteExecutor":
        from ._executor import SqliteExecutor

        return SqliteExecutor
    if name == "open_sqlite":
        from ._open import open_sqlite

        return open_sqlite
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
