"""The adapter conformance suite on durably-sqlite: a WAL file and ``:memory:``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from durably import Storage
from durably.plugins import BackendRegistry
from durably_testing.conformance import Reopen, StorageConformance


class TestSqliteFileConformance(StorageConformance):
    supports_reopen = True
    entry_point_name = "sqlite"

    @pytest.fixture
    def storage_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'durably.db'}"

    @pytest.fixture
    async def storage(self, storage_url: str) -> AsyncIterator[Storage]:
        s = BackendRegistry().open(storage_url)
        await s.migrate()
        yield s
        await s.close()

    @pytest.fixture
    def reopen(self, storage_url: str) -> Reopen:
        async def reopen(old: Storage) -> Storage:
            await old.close()
            fresh = BackendRegistry().open(storage_url)
            await fresh.migrate()
            return fresh

        return reopen


class TestSqliteMemoryConformance(StorageConformance):
    url = "sqlite:///:memory:"
    entry_point_name = "sqlite"

    @pytest.fixture
    async def storage(self) -> AsyncIterator[Storage]:
        s = BackendRegistry().open("sqlite:///:memory:")
        await s.migrate()
        yield s
        await s.close()
