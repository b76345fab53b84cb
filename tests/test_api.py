"""The public surface: ``__all__``, the documented quick example, the error tree,
``create_durably`` options and backend selection (docs/semantics.md, docs/architecture.md)."""

from __future__ import annotations

import inspect
from datetime import timedelta
from typing import Any

import pydantic
import pytest

import durably
from durably import (
    DurablyError,
    Step,
    StorageError,
    UnknownBackendError,
    ValidationError,
    create_durably,
    define_job,
)

EXPECTED_ALL = [
    "Attempt",
    "AttemptStatus",
    "BlockingCallError",
    "CatchUp",
    "ClaimableSubscription",
    "Clock",
    "ConflictError",
    "Disposition",
    "Durably",
    "DurablyError",
    "EnqueueResult",
    "Event",
    "EventType",
    "JobDefinition",
    "JobHandle",
    "Jobs",
    "LeaseLostError",
    "LogData",
    "LogLevel",
    "LogRecord",
    "LogWriteEvent",
    "NewAttempt",
    "NewLog",
    "NewRun",
    "NewSchedule",
    "NewSignal",
    "NewStep",
    "NewWait",
    "NonRetryableError",
    "NotFoundError",
    "PluginError",
    "Progress",
    "Retry",
    "Run",
    "RunCancelEvent",
    "RunCancelledError",
    "RunCoalescedEvent",
    "RunCompleteEvent",
    "RunDeleteEvent",
    "RunEvent",
    "RunFailEvent",
    "RunFailedError",
    "RunFilter",
    "RunLeaseRenewedEvent",
    "RunLeasedEvent",
    "RunProgressEvent",
    "RunResult",
    "RunRetryEvent",
    "RunStatus",
    "RunTriggerEvent",
    "RunWaitingEvent",
    "Schedule",
    "ScheduleFire",
    "ScheduleFireEvent",
    "ScheduleRecord",
    "ScheduleSkipEvent",
    "ScheduleStatus",
    "Schedules",
    "SchemaVersionError",
    "SignalDisposition",
    "SignalOutcome",
    "SignalReceipt",
    "SignalRejectedError",
    "Step",
    "StepCancelEvent",
    "StepCompleteEvent",
    "StepFailEvent",
    "StepLog",
    "StepOutputError",
    "StepRecord",
    "StepRetryEvent",
    "StepStartEvent",
    "StepStatus",
    "StepTimeoutError",
    "Storage",
    "StorageAuthError",
    "StorageBusyError",
    "StorageConnectionError",
    "StorageCorruptError",
    "StorageError",
    "StorageFullError",
    "StorageLostError",
    "StorageOutcomeUnknownError",
    "StorageReadOnlyError",
    "SupportsDatabaseTime",
    "SupportsIdentityCheck",
    "SystemClock",
    "TriggerResult",
    "UnknownBackendError",
    "ValidationError",
    "Wait",
    "WaitHandle",
    "WaitKind",
    "WaitOutcome",
    "WaitResult",
    "WaitSignalEvent",
    "WaitStatus",
    "WaitTimeoutError",
    "WorkerErrorEvent",
    "create_durably",
    "define_job",
    "no_retry",
]


def test_all__is_pinned_and_sorted() -> None:
    assert durably.__all__ == EXPECTED_ALL
    assert sorted(durably.__all__) == durably.__all__


def test_all__every_name_is_importable() -> None:
    for name in durably.__all__:
        assert getattr(durably, name) is not None


def test_errors__every_public_error_is_a_durably_error() -> None:
    errors = [
        obj
        for name in durably.__all__
        if inspect.isclass(obj := getattr(durably, name)) and issubclass(obj, BaseException)
    ]
    assert len(errors) == 25
    for cls in errors:
        assert issubclass(cls, DurablyError), cls


def test_errors__storage_errors_share_a_base() -> None:
    for name in (
        "StorageBusyError",
        "StorageCorruptError",
        "StorageReadOnlyError",
        "StorageConnectionError",
        "StorageOutcomeUnknownError",
        "StorageAuthError",
        "StorageFullError",
        "StorageLostError",
        "SchemaVersionError",
    ):
        assert issubclass(getattr(durably, name), StorageError)


def test_errors__wait_timeout_is_a_timeout_error() -> None:
    assert issubclass(durably.WaitTimeoutError, TimeoutError)
    assert issubclass(durably.ValidationError, ValueError)


# -- the quick example of docs/semantics.md, as written (with memory://) --


class ImportIn(pydantic.BaseModel):
    filename: str


class ImportOut(pydantic.BaseModel):
    count: int


inserted: list[list[int]] = []


def load_rows(filename: str) -> list[int]:
    return list(range(250))


def insert_rows(rows: list[int]) -> None:
    inserted.append(rows)


@define_job("import-csv", input=ImportIn, output=ImportOut)
async def import_csv(step: Step, payload: ImportIn) -> ImportOut:
    rows = await step.run("fetch", lambda: load_rows(payload.filename))
    for i in range(0, len(rows), 100):
        await step.run(f"batch-{i}", insert_rows, rows[i : i + 100])
        step.progress(min(i + 100, len(rows)), len(rows), f"imported {i + 100}")
    step.log.info("done", rows=len(rows))
    return ImportOut(count=len(rows))


async def test_quick_example__works_as_documented() -> None:
    inserted.clear()
    async with create_durably("memory://", jobs={"import_csv": import_csv}) as d:
        result = await d.jobs.import_csv.trigger_and_wait({"filename": "data.csv"})
        assert isinstance(result.id, str)
        assert result.output.count == 250
        assert isinstance(result.output, ImportOut)
    assert [len(rows) for rows in inserted] == [100, 100, 50]
    assert not d.running


async def test_quick_example__non_decorator_form_is_equivalent() -> None:
    async def fn(step: Step, payload: ImportIn) -> ImportOut:
        return ImportOut(count=len(payload.filename))

    job = define_job(name="import-csv", input=ImportIn, output=ImportOut, run=fn)
    async with create_durably("memory://", jobs={"import_csv": job}) as d:
        result = await d.jobs.import_csv.trigger_and_wait({"filename": "abc"})
    assert result.output == ImportOut(count=3)


# -- create_durably options --


def test_create_durably__defaults() -> None:
    d = create_durably("memory://")
    s = d.settings
    assert (s.polling_interval, s.lease_duration, s.lease_renew_interval) == (1.0, 30.0, 5.0)
    assert s.max_concurrent_runs == 1
    assert s.preserve_steps is False
    assert s.persist_logs is True
    assert s.retain_runs is None
    assert isinstance(d.clock, durably.SystemClock)


@pytest.mark.parametrize(
    "options",
    [
        {"lease_renew_interval": 30, "lease_duration": 30},
        {"lease_renew_interval": 31, "lease_duration": 30},
    ],
)
def test_create_durably__renew_interval_must_be_below_lease(options: Any) -> None:
    with pytest.raises(ValidationError, match="lease_renew_interval"):
        create_durably("memory://", **options)


@pytest.mark.parametrize("value", [0, -1, 1.5, "2", True, None])
def test_create_durably__bad_max_concurrent_runs(value: Any) -> None:
    with pytest.raises(ValidationError, match="max_concurrent_runs"):
        create_durably("memory://", max_concurrent_runs=value)


@pytest.mark.parametrize("name", ["polling_interval", "lease_duration", "lease_renew_interval"])
@pytest.mark.parametrize("value", [0, -1, float("nan"), float("inf"), "1"])
def test_create_durably__bad_intervals(name: str, value: Any) -> None:
    with pytest.raises(ValidationError, match=name):
        create_durably("memory://", **{name: value})


@pytest.mark.parametrize(
    ("options", "allowed"),
    [
        # 1e12 s used to be accepted, and then every claim failed "date value out of range"
        ({"lease_duration": 1e12}, "≤ 86400 (a day)"),
        ({"lease_duration": 86400.5, "lease_renew_interval": 5}, "≤ 86400 (a day)"),
        ({"lease_duration": 0.0005}, "≥ 0.001"),
        ({"lease_renew_interval": 0.0001}, "≥ 0.001"),
        ({"polling_interval": 1e12}, "≤ 86400 (a day)"),
        ({"polling_interval": 1e-9}, "≥ 0.001"),
        ({"max_concurrent_runs": 10**9}, "from 1 to 10000"),
    ],
)
def test_create_durably__options_out_of_range_say_what_is_allowed(
    options: dict[str, Any], allowed: str
) -> None:
    with pytest.raises(ValidationError, match=next(iter(options))) as info:
        create_durably("memory://", **options)
    assert allowed in str(info.value)


def test_create_durably__options_at_their_bounds_are_accepted() -> None:
    d = create_durably(
        "memory://",
        lease_duration=86400,
        lease_renew_interval=86399,
        polling_interval=0.001,
        max_concurrent_runs=10_000,
        retain_runs="36500d",
    )
    assert d.settings.lease_duration == 86400.0
    assert d.settings.retain_runs == timedelta(days=36500)


@pytest.mark.parametrize(
    "value", [-1, -0.5, float("inf"), float("nan"), "infd", "1e300d", 1e12, "36501d"]
)
def test_create_durably__retain_runs_out_of_range(value: Any) -> None:
    with pytest.raises(ValidationError, match="retain_runs"):
        create_durably("memory://", retain_runs=value)


async def test_durations_and_counts_out_of_range_are_validation_errors() -> None:
    d = create_durably("sqlite:///:memory:")
    async with d:
        for older_than in (1e12, float("inf"), -1, "1e300d"):
            with pytest.raises(ValidationError, match="older_than"):
                await d.purge_runs(older_than=older_than)
        with pytest.raises(ValidationError, match="limit"):
            await d.purge_runs(older_than="1d", limit=2**70)
        # used to be a raw OverflowError from the driver
        for limit, offset in ((2**63, 0), (None, 2**70), (-1, 0)):
            with pytest.raises(ValidationError, match=r"from 0 to 9223372036854775807"):
                await d.get_runs(limit=limit, offset=offset)
        assert await d.get_runs(limit=2**63 - 1, offset=2**63 - 1) == []
        for timeout in (1e12, float("inf")):
            with pytest.raises(ValidationError, match="timeout"):
                await d.wait_for_run("01J00000000000000000000000", timeout=timeout)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite:///%00x.db", "NUL"),  # used to be a raw ValueError at the first operation
        ("file:%00x.db", "NUL"),
        ("http://host:99999", "Invalid libSQL URL"),  # a raw ValueError from the port
        ("sqlite:///x.db?busy_timeout=1e12", "busy_timeout"),
        ("http://h?timeout=1e12", "timeout"),
        ("http://h?retries=1000000", "retries"),
        ("http://h?max_in_flight=1000000", "max_in_flight"),
    ],
)
def test_create_durably__malformed_urls_are_validation_errors(url: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        create_durably(url)


async def test_create_durably__file_name_too_long_is_a_storage_error(tmp_path: Any) -> None:
    d = create_durably(f"sqlite:///{tmp_path / ('a' * 5000)}.db")
    with pytest.raises(StorageError, match="Cannot open SQLite database"):
        await d.migrate()
    await d.close()


@pytest.mark.parametrize("value", ["7", "7w", "days", "-1d", [1]])
def test_create_durably__bad_retain_runs(value: Any) -> None:
    with pytest.raises(ValidationError, match="duration"):
        create_durably("memory://", retain_runs=value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("7d", timedelta(days=7)),
        ("12h", timedelta(hours=12)),
        ("30m", timedelta(minutes=30)),
        (90, timedelta(seconds=90)),
    ],
)
def test_create_durably__retain_runs_durations(value: Any, expected: timedelta) -> None:
    assert create_durably("memory://", retain_runs=value).settings.retain_runs == expected


def test_create_durably__unknown_scheme_lists_installed_schemes() -> None:
    with pytest.raises(UnknownBackendError) as info:
        create_durably("mysql://localhost/db")
    message = str(info.value)
    assert "mysql" in message
    assert "memory" in message
    assert "postgresql" in message


def test_create_durably__known_but_missing_scheme_says_what_to_install() -> None:
    from durably.plugins import BackendRegistry

    registry = BackendRegistry(load_entry_points=False)
    with pytest.raises(UnknownBackendError, match="durably-sqlite"):
        registry.open("sqlite:///x.db")


def test_create_durably__invalid_url_is_rejected() -> None:
    with pytest.raises(ValidationError, match="URL"):
        create_durably("no scheme here")


def test_create_durably__not_a_url_or_storage() -> None:
    with pytest.raises(ValidationError, match="Storage"):
        create_durably(42)  # type: ignore[arg-type]


def test_create_durably__backend_options_need_a_url() -> None:
    from durably_testing.memory import MemoryStorage

    with pytest.raises(ValidationError, match="synchronous"):
        create_durably(MemoryStorage(), synchronous="FULL")


def test_create_durably__env_var_used_without_url(monkeypatch: pytest.MonkeyPatch) -> None:
    from durably_testing.memory import MemoryStorage

    monkeypatch.setenv("DURABLY_DATABASE_URL", "memory://")
    d = create_durably()
    assert isinstance(d.storage, MemoryStorage)


async def test_create_durably__default_is_durably_db_in_the_working_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    from durably.sql import SqlStorage

    monkeypatch.delenv("DURABLY_DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    async with create_durably() as d:
        assert isinstance(d.storage, SqlStorage)
    assert (tmp_path / "durably.db").is_file()


def test_create_durably__env_var_unknown_scheme_is_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DURABLY_DATABASE_URL", "nosuch://x")
    with pytest.raises(UnknownBackendError, match="nosuch"):
        create_durably()


def test_create_durably__explicit_url_beats_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    from durably_testing.memory import MemoryStorage

    monkeypatch.setenv("DURABLY_DATABASE_URL", "nosuch://x")
    assert isinstance(create_durably("memory://").storage, MemoryStorage)


def test_create_durably__bad_clock_is_rejected() -> None:
    with pytest.raises(ValidationError, match="clock"):
        create_durably("memory://", clock=object())  # type: ignore[arg-type]


def test_create_durably__worker_id_is_stable_and_distinct() -> None:
    a = create_durably("memory://")
    b = create_durably("memory://")
    assert a.worker_id == a.worker_id
    assert a.worker_id != b.worker_id
