"""Entry point of durably-libsql in the ``durably`` group.

Imports only ``durably``; httpx and the SQLite executor are imported when a
database is opened.
"""

from __future__ import annotations

from typing import Any

from durably import Storage
from durably.plugins import StorageBackend, hookimpl


def _open(url: str, **options: Any) -> Storage:
    from ._open import open_libsql

    return open_libsql(url, **options)


@hookimpl
def durably_storage_backends() -> list[StorageBackend]:
    return [
        StorageBackend(
            name="libsql",
            schemes=("file", "libsql", "https", "http"),
            open=_open,
            package="durably-libsql",
        )
    ]
