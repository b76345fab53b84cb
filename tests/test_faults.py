"""``FaultyStorage`` and ``FaultPlan`` themselves (durably_testing.faults)."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

import durably_testing
from durably import NewRun, RunFilter, RunStatus, Storage, StorageError, ValidationError
from durably_testing import (
    Fault,
    FaultKind,
    FaultPlan,
    FaultyStorage,
    InjectedStorageError,
    MemoryStorage,
    SimulatedCrash,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def new_run(n: int) -> NewRun:
    return NewRun(id=f"01J{n:023d}", job_name="job", input_json="{}", created_at=T0)


def test_faulty_storage__satisfies_the_storage_protocol() -> None:
    assert isinstance(FaultyStorage(MemoryStorage()), Storage)


async def test_no_plan__delegates_and_counts_calls() -> None:
    inner = MemoryStorage()
    faulty = FaultyStorage(inner)
    await faulty.migrate()
    await faulty.enqueue(new_run(1))
    assert [r.id for r in await faulty.get_runs(RunFilter())] == [new_run(1).id]
    assert faulty.calls == ["migrate", "enqueue", "get_runs"]
    assert faulty.fired == []
    assert await inner.get_run(new_run(1).id) is not None


async def test_error__call_not_made_and_storage_error_raised() -> None:
    inner = MemoryStorage()
    faulty = FaultyStorage(inner, FaultPlan.at_call(0, "error"))
    with pytest.raises(StorageError) as info:
        await faulty.enqueue(new_run(1))
    assert isinstance(info.value, InjectedStorageError)
    assert not info.value.committed
    assert await inner.get_run(new_run(1).id) is None
    await faulty.enqueue(new_run(1))  # transient: the next call goes through
    assert await inner.get_run(new_run(1).id) is not None


async def test_ambiguous__call_made_but_storage_error_raised() -> None:
    inner = MemoryStorage()
    faulty = FaultyStorage(inner, FaultPlan.on_operation("enqueue", FaultKind.AMBIGUOUS))
    with pytest.raises(InjectedStorageError) as info:
        await faulty.enqueue(new_run(1))
    assert info.value.committed
    assert await inner.get_run(new_run(1).id) is not None


@pytest.mark.parametrize(("kind", "written"), [("crash-before", False), ("crash-after", True)])
async def test_crash__kills_the_storage_for_good(kind: str, written: bool) -> None:
    inner = MemoryStorage()
    faulty = FaultyStorage(inner, FaultPlan.at_call(1, kind))
    await faulty.migrate()
    with pytest.raises(SimulatedCrash) as info:
        await faulty.enqueue(new_run(1))
    assert (info.value.index, info.value.operation, info.value.kind) == (1, "enqueue", kind)
    assert (await inner.get_run(new_run(1).id) is not None) == written
    assert faulty.crashed
    with pytest.raises(SimulatedCrash):
        await faulty.enqueue(new_run(2))
    assert await inner.get_run(new_run(2).id) is None
    assert faulty.calls == ["migrate", "enqueue"]
    assert faulty.calls_after_crash == 1


async def test_simulated_crash__not_swallowed_by_except_exception() -> None:
    faulty = FaultyStorage(MemoryStorage(), FaultPlan.at_call(0, FaultKind.CRASH_BEFORE))

    async def careless_user_code() -> str:
        try:
            await faulty.get_run("x")
        except Exception:
            return "swallowed"
        return "not reached"

    with pytest.raises(SimulatedCrash):
        await careless_user_code()


async def test_on_operation__occurrence_and_times() -> None:
    inner = MemoryStorage()
    await inner.enqueue(new_run(1))
    now = T0
    faulty = FaultyStorage(
        inner, FaultPlan.on_operation("claim_next", "error", occurrence=2, times=2)
    )
    outcomes = []
    for _ in range(4):
        try:
            await faulty.claim_next("w", now, now + timedelta(seconds=1))
            outcomes.append("ok")
        except InjectedStorageError:
            outcomes.append("error")
    assert outcomes == ["ok", "error", "error", "ok"]
    assert [(f.index, f.operation) for f in faulty.fired] == [(1, "claim_next"), (2, "claim_next")]
    run = await inner.get_run(new_run(1).id)
    assert run is not None
    assert run.status is RunStatus.LEASED


async def test_plans__combine_with_or() -> None:
    plan = FaultPlan.at_call(0, "error") | FaultPlan.on_operation("get_run", "ambiguous")
    faulty = FaultyStorage(MemoryStorage(), plan)
    with pytest.raises(InjectedStorageError):
        await faulty.migrate()
    with pytest.raises(InjectedStorageError):
        await faulty.get_run("x")
    assert [f.kind for f in faulty.fired] == [FaultKind.ERROR, FaultKind.AMBIGUOUS]


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda: Fault(FaultKind.ERROR), "exactly one of at_call="),
        (lambda: Fault(FaultKind.ERROR, at_call=1, operation="migrate"), "exactly one of at_call="),
        (lambda: Fault(FaultKind.ERROR, at_call=-1), "pass an index ≥ 0"),
        (lambda: FaultPlan.on_operation("persist_steps", "error"), "use one of: migrate, close"),
        (lambda: FaultPlan.on_operation("migrate", "error", occurrence=0), "occurrence=1 or more"),
        (lambda: FaultPlan.on_operation("migrate", "error", times=0), "times=1 or more"),
        (lambda: FaultPlan.at_call(0, "explode"), "use one of: 'error', 'crash-before'"),
        (lambda: Fault("explode", at_call=0), "Unknown fault kind 'explode'"),  # type: ignore[arg-type]
    ],
    ids=["no-target", "two-targets", "negative", "typo", "occurrence-0", "times-0", "kind", "raw"],
)
def test_plan__invalid_faults_are_refused(make: Callable[[], object], says: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(says)):
        make()


def test_public_names__sorted_and_importable() -> None:
    assert durably_testing.__all__ == sorted(durably_testing.__all__)
    for name in durably_testing.__all__:
        assert getattr(durably_testing, name) is not None
