"""The public names of every package and public module but ``durably`` itself
(pinned in tests/test_api.py): ``__all__`` is exactly this, has no duplicates,
and every name in it imports. Adding or removing a public name means changing
this file, on purpose. The modules pinned here are the ones the API reference
must render (``public_modules`` of docs/hooks.py, derived from the source tree)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PUBLIC = {
    "durably_testing": [
        "Fault",
        "FaultInjectionSuite",
        "FaultKind",
        "FaultPlan",
        "FaultyStorage",
        "FiredFault",
        "InjectedStorageError",
        "ManualClock",
        "MemoryStorage",
        "SimulatedCrash",
        "StorageConformance",
        "StorageStateMachine",
        "advance_past_lease",
        "run_to_completion",
    ],
    "durably_testing.clock": ["ManualClock", "settle"],
    "durably_testing.conformance": ["Reopen", "StorageConformance"],
    "durably_testing.crash": [
        "CrashConfig",
        "CrashReport",
        "JOB_NAME",
        "crash_harness",
        "expected_output",
        "main",
        "run_crash_harness",
        "signal_value",
        "step_value",
    ],
    "durably_testing.faults": [
        "CRASH_KINDS",
        "Fault",
        "FaultKind",
        "FaultPlan",
        "FaultyStorage",
        "FiredFault",
        "InjectedStorageError",
        "OPTIONAL_OPERATIONS",
        "STORAGE_OPERATIONS",
        "SimulatedCrash",
        "TRANSIENT_KINDS",
    ],
    "durably_testing.fault_suite": [
        "EXPECTED_OUTPUT",
        "FaultInjectionSuite",
        "OpenStorage",
        "STEPS",
        "uninterrupted_calls",
    ],
    "durably_testing.helpers": ["advance_past_lease", "run_to_completion"],
    "durably_testing.memory": ["MemoryStorage"],
    "durably_testing.pytest_plugin": [
        "durably",
        "durably_advance_past_lease",
        "durably_clock",
        "durably_run",
    ],
    "durably_testing.stateful": [
        "LifecycleModel",
        "ModelConflict",
        "ModelRun",
        "ModelStep",
        "ModelWait",
        "StorageStateMachine",
    ],
    "durably.cli": ["EXIT_CODES", "main"],
    "durably.http": [
        "Auth",
        "RunOperation",
        "RunsFilter",
        "RunsSubscribeFilter",
        "SignalRequest",
        "TriggerRequest",
        "create_handler",
        "scoped_key",
    ],
    "durably.otel": ["Instrumentation", "instrument"],
    "durably.sync": ["SyncDurably", "SyncJobHandle", "SyncJobs", "SyncSchedules", "create_durably"],
    "durably.plugins": [
        "BackendRegistry",
        "ENTRY_POINT_GROUP",
        "KNOWN_PACKAGES",
        "PROJECT",
        "StorageBackend",
        "hookimpl",
        "hookspec",
        "url_scheme",
    ],
    "durably.lifecycle": sorted(
        [
            "ACTIVE_STATUSES",
            "CANCELLABLE_STATUSES",
            "DELETABLE_STATUSES",
            "RETRIGGERABLE_STATUSES",
            "REOPENABLE_WAIT_STATUSES",
            "RETRYABLE_STATUSES",
            "STATUS_ALIASES",
            "TERMINAL_STATUSES",
            "backed_off",
            "can_cancel",
            "can_delete",
            "can_renew",
            "can_retrigger",
            "can_retry",
            "cancelled",
            "claim_order",
            "claimed",
            "completed",
            "concurrency_blocked",
            "execution_slot_wait",
            "failed",
            "has_live_lease",
            "holds_lease",
            "input_wait",
            "is_claimable",
            "is_terminal",
            "next_attempt",
            "pending_conflicts",
            "released",
            "renewed",
            "retried",
            "retry_scheduled",
            "signal_decision",
            "signalled",
            "step_completed",
            "suspended",
            "timed_out",
            "wait_due",
            "wait_ended",
            "wait_reopened",
            "wake_time",
            "with_progress",
            "woken",
        ]
    ),
    "durably.sql": [
        "ConstraintViolation",
        "Executor",
        "Migration",
        "PY_MIGRATIONS",
        "PY_SCHEMA_VERSION",
        "Params",
        "PostgresStorage",
        "Row",
        "SCHEMA_V1",
        "SqlStorage",
        "SqlValue",
        "Statement",
        "constraint_violation",
        "format_timestamp",
        "migrate",
        "parse_timestamp",
        "progress_json",
        "resolve_lost_answer",
        "unstorable_text",
    ],
    "durably_libsql": ["HranaError", "HranaExecutor", "RemoteConfig", "open_libsql"],
    "durably_postgres": ["AsyncpgExecutor", "PostgresConfig", "open_postgres"],
    "durably_sqlite": ["SqliteExecutor", "open_sqlite"],
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_all__is_pinned(module: str) -> None:
    names = importlib.import_module(module).__all__
    assert len(names) == len(set(names)), f"{module}.__all__ lists a name twice"
    assert sorted(names) == PUBLIC[module]


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_all__every_name_imports(module: str) -> None:
    imported = importlib.import_module(module)
    for name in imported.__all__:
        assert getattr(imported, name) is not None, f"{module}.{name}"


def test_pins__are_sorted() -> None:
    for module, names in PUBLIC.items():
        assert names == sorted(names), module


def test_pins__are_the_public_modules_of_the_api_reference() -> None:
    """A new module with a public name is pinned here and rendered in the reference
    (or docs/hooks.py says why it is not API): nobody has to remember a list."""
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    assert spec is not None
    assert spec.loader is not None
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    public, pinned = set(hooks.public_modules()), {*PUBLIC, "durably"}
    assert not public - pinned, f"public modules not pinned here: {sorted(public - pinned)}"
    assert not pinned - public, f"pinned but not public modules: {sorted(pinned - public)}"
