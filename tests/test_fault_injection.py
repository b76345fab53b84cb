"""A fault at every storage call, on every backend: the reusable suite of
``durably_testing.fault_suite`` (what an adapter author runs on theirs), here
over each backend of ``conftest.BACKENDS``."""

from __future__ import annotations

import pytest
from conftest import SEPARATE_CONNECTIONS

from durably.plugins import BackendRegistry
from durably_testing.fault_suite import STEPS, FaultInjectionSuite, OpenStorage, uninterrupted_calls


class TestFaultInjection(FaultInjectionSuite):
    @pytest.fixture
    def open_storage(self, backend: str, db_url: str) -> OpenStorage:
        # a new connection per simulated process; a database that lives only in this
        # process (memory, :memory:) is the same storage object for all of them
        if backend in SEPARATE_CONNECTIONS:
            return lambda: BackendRegistry().open(db_url)
        shared = BackendRegistry().open(db_url)
        return lambda: shared


def test_uninterrupted_call_sequence__covers_every_kind_of_write() -> None:
    calls = uninterrupted_calls()
    assert calls[:3] == ("migrate", "enqueue", "claim_next")
    assert calls.count("persist_step") == len(STEPS)
    for op in ("get_completed_steps", "update_progress", "complete_run"):
        assert op in calls
