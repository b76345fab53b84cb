"""The memory backend runs the same conformance suite a third-party adapter would."""

from durably_testing.conformance import StorageConformance


class TestMemoryStorage(StorageConformance):
    url = "memory://"
    entry_point_name = "memory"
