"""The adapter conformance suite on durably-libsql: a local ``file:`` database and a
real libSQL server (tursodb, Hrana v2 over HTTP), each a fresh database per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from libsql_support import TursoServer

from durably import Storage
from durably.plugins import BackendRegistry
from durably_testing.conformance import Reopen, StorageConformance


class TestLibsqlFileConformance(StorageConformance):
    supports_reopen = True
    entry_point_name = "libsql"

    @pytest.fixture
    def storage_url(self, tmp_path: Path) -> str:
        return f"file:{tmp_path / 'durably.db'}"

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


class TestLibsqlRemoteConformance(StorageConformance):
    supports_reopen = True
    entry_point_name = "libsql"

    @pytest.fixture
    def storage_url(self, libsql_server: TursoServer) -> str:
        return libsql_server.url

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
