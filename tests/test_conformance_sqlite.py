"""The adapter conformance suite on durably-sqlite: a WAL file and ``:memory:``."""

from __future__ import annotations

from pathlib import Path

import pytest

from durably_testing.conformance import StorageConformance


class TestSqliteFileConformance(StorageConformance):
    supports_reopen = True
    entry_point_name = "sqlite"

    @pytest.fixture
    def storage_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'durably.db'}"


class TestSqliteMemoryConformance(StorageConformance):
    url = "sqlite:///:memory:"
    entry_point_name = "sqlite"
