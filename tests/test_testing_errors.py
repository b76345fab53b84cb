"""durably_testing's own misuse errors are ``durably.ValidationError`` (a
``DurablyError`` and a ``ValueError``) whose message says what to do instead."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

import pytest

from durably import DurablyError, Storage, SystemClock, ValidationError, create_durably
from durably_testing import ManualClock, advance_past_lease
from durably_testing.stateful import StorageStateMachine


def test_validation_error__is_a_durably_error_and_a_value_error() -> None:
    assert issubclass(ValidationError, DurablyError)
    assert issubclass(ValidationError, ValueError)


def test_manual_clock__naive_start_refused() -> None:
    with pytest.raises(ValidationError, match=r"timezone-aware .* tzinfo=UTC"):
        ManualClock(datetime(2026, 1, 1))


def test_manual_clock__naive_set_refused_and_time_kept() -> None:
    clock = ManualClock(datetime(2026, 1, 1, tzinfo=UTC))
    with pytest.raises(ValidationError, match=r"set\(\) needs a timezone-aware"):
        clock.set(datetime(2027, 1, 1))
    assert clock.now() == datetime(2026, 1, 1, tzinfo=UTC)
    clock.set(datetime(2027, 1, 1, tzinfo=UTC))
    assert clock.now() == datetime(2027, 1, 1, tzinfo=UTC)


async def test_advance_past_lease__needs_a_manual_clock() -> None:
    durably = create_durably("memory://", clock=SystemClock())
    try:
        with pytest.raises(ValidationError, match=r"SystemClock: pass clock=ManualClock\(\)"):
            await advance_past_lease(durably)
    finally:
        await durably.close()


async def test_advance_past_lease__moves_the_given_clock() -> None:
    clock = ManualClock()
    durably = create_durably("memory://", clock=clock, lease_duration=10)
    start = clock.now()
    try:
        await advance_past_lease(durably)
    finally:
        await durably.close()
    assert (clock.now() - start).total_seconds() == pytest.approx(10.001)


def test_state_machine__no_storage_refused() -> None:
    class Empty(StorageStateMachine):
        async def open_storages(self) -> Mapping[str, Storage]:
            return {}

    with pytest.raises(ValidationError, match=r"Empty.open_storages\(\) returned no storage"):
        Empty()
