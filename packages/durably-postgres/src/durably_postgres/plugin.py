"""Entry point of durably-postgres in the ``durably`` group.

Imports only ``durably``; asyncpg is imported when a database is opened.
"""

from __future__ import annotations

from typing import Any

from durably import Storage
from durably.plugins import StorageBackend, hookimpl


def _open(url: str, **options: Any) -> Storage:
    from ._open import open_postgres

    return open_postgres(url, **options)


@hookimpl
def durably_storage_backends() -> list[StorageBackend]:
    return [
        StorageBackend(
            name="postgresql",
            schemes=("postgresql", "postgres"),
            open=_open,
            package="durably-postgres",
        )
    ]
