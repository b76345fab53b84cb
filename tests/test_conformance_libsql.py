"""The adapter conformance suite on durably-libsql: a local ``file:`` database and a
real libSQL server (tursodb, Hrana v2 over HTTP), each a fresh database per test."""

from __future__ import annotations

from pathlib import Path

import pytest
from libsql_support import TursoServer

from durably_testing.conformance import StorageConformance

#: the quick tier runs the suite on memory and SQLite only
pytestmark = pytest.mark.slow


class TestLibsqlFileConformance(StorageConformance):
    supports_reopen = True
    entry_point_name = "libsql"

    @pytest.fixture
    def storage_url(self, tmp_path: Path) -> str:
        return f"file:{tmp_path / 'durably.db'}"


class TestLibsqlRemoteConformance(StorageConformance):
    supports_reopen = True
    entry_point_name = "libsql"

    @pytest.fixture
    def storage_url(self, libsql_server: TursoServer) -> str:
        return libsql_server.url
