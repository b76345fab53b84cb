"""Entry point of durably-testing in the ``durably`` group: the ``memory://`` backend."""

from __future__ import annotations

from typing import Any

from durably import Storage
from durably.plugins import StorageBackend, hookimpl


def _open(url: str, **options: Any) -> Storage:
    from .memory import MemoryStorage

    return MemoryStorage.from_url(url, **options)


@hookimpl
def durably_storage_backends() -> list[StorageBackend]:
    return [
        StorageBackend(name="memory", schemes=("memory",), open=_open, package="durably-testing")
    ]
