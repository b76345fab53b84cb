"""Entry point of durably-sqlite in the ``durably`` group.

Imports only ``durably``; the driver (the stdlib ``sqlite3``) is imported when a
database is opened.
"""

from __future__ import annotations

from typing import Any

from durably import Storage
from durably.plugins import StorageBackend, hookimpl


def _open(url: str, **options: Any) -> Storage:
    from ._open import open_sqlite

    return open_sqlite(url, **options)


@hookimpl
def durably_storage_backends() -> list[StorageBackend]:
    return [
        StorageBackend(name="sqlite", schemes=("sqlite",), open=_open, package="durably-sqlite")
    ]
