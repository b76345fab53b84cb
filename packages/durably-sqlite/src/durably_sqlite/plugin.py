"""Entry point of durably-sqlite in the ``durably`` group (filled in by the SQLite backend)."""

from __future__ import annotations

from durably.plugins import StorageBackend, hookimpl


@hookimpl
def durably_storage_backends() -> list[StorageBackend]:
    return []
