"""The adapter conformance suite on durably-postgres: a real PostgreSQL server (one
for the session), a fresh schema per test."""

from __future__ import annotations

import pytest

from durably_testing.conformance import StorageConformance


class TestPostgresConformance(StorageConformance):
    supports_reopen = True
    entry_point_name = "postgresql"

    @pytest.fixture
    def storage_url(self, postgres_url: str) -> str:
        return postgres_url
