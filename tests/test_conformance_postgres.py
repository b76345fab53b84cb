"""The adapter conformance suite on durably-postgres: a real PostgreSQL server (one
for the session), a fresh schema per test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from durably import Storage
from durably.plugins import BackendRegistry
from durably_testing.conformance import Reopen, StorageConformance


class TestPostgresConformance(StorageConformance):
    supports_reopen = True
    entry_point_name = "postgresql"

    @pytest.fixture
    def storage_url(self, postgres_url: str) -> str:
        return postgres_url

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
