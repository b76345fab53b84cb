"""A pytest plugin for testing code that uses durably (entry point ``pytest11``).

Installed with durably-testing and active in every pytest run. Fixtures:

- ``durably_clock``: a :class:`~durably_testing.ManualClock` (time moves only when told).
- ``durably``: a ``Durably`` on ``memory://`` with that clock, migrated, without a
  background worker; closed after the test. Register jobs with
  ``durably.register({"key": job})``.
- ``durably_run``: ``await durably_run(durably.jobs.key, input)`` runs the job to
  completion in the test and returns its result (see
  :func:`~durably_testing.run_to_completion`).
- ``durably_advance_past_lease``: ``await durably_advance_past_lease()`` moves the
  clock past the lease duration of the ``durably`` fixture.

The async fixture ``durably`` is declared with pytest-asyncio when it is installed
(so it works in its strict and auto modes); tests that use it must be async
tests pytest-asyncio runs (``asyncio_mode = "auto"``, or ``@pytest.mark.asyncio``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar, cast

import pytest

from durably import Durably, JobHandle, RunResult, create_durably

from .clock import ManualClock
from .helpers import advance_past_lease, run_to_completion

F = TypeVar("F", bound=Callable[..., Any])


def _async_fixture(fn: F) -> F:
    """``pytest_asyncio.fixture`` when installed (strict and auto mode), else ``pytest.fixture``."""
    try:
        from pytest_asyncio import fixture
    except ImportError:  # pragma: no cover - another asyncio plugin must run async fixtures
        return cast(F, pytest.fixture(fn))
    return cast(F, fixture(fn))


__all__ = [
    "durably",
    "durably_advance_past_lease",
    "durably_clock",
    "durably_run",
]


@pytest.fixture
def durably_clock() -> ManualClock:
    """A manual clock: ``await durably_clock.advance(seconds)`` moves time."""
    return ManualClock()


@_async_fixture
async def durably(durably_clock: ManualClock) -> AsyncIterator[Durably]:
    """A migrated ``Durably`` on ``memory://`` using ``durably_clock``; no worker runs
    unless the test calls ``start()``. Closed after the test."""
    instance = create_durably("memory://", clock=durably_clock)
    await instance.migrate()
    try:
        yield instance
    finally:
        await instance.stop(timeout=0)
        await instance.close()


@pytest.fixture
def durably_run(durably: Durably) -> Callable[..., Awaitable[RunResult[Any]]]:
    """``await durably_run(durably.jobs.key, input, **trigger_options)`` → the result."""

    async def run(job: JobHandle[Any, Any], input: Any, **trigger_options: Any) -> RunResult[Any]:
        return await run_to_completion(durably, job, input, **trigger_options)

    return run


@pytest.fixture
def durably_advance_past_lease(
    durably: Durably, durably_clock: ManualClock
) -> Callable[[], Awaitable[None]]:
    """``await durably_advance_past_lease()``: the clock moves past the lease duration."""

    async def advance() -> None:
        await advance_past_lease(durably, durably_clock)

    return advance
