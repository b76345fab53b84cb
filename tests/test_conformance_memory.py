"""The memory backend runs the same conformance suite a third-party adapter would."""

from collections.abc import AsyncIterator

import pytest

from durably import Storage
from durably_testing.conformance import StorageConformance
from durably_testing.memory import MemoryStorage


class TestMemoryStorage(StorageConformance):
    url = "memory://"
    entry_point_name = "memory"

    @pytest.fixture
    async def storage(self) -> AsyncIterator[Storage]:
        storage = MemoryStorage()
        await storage.migrate()
        yield storage
        await storage.close()
