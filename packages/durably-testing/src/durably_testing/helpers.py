"""Helpers for testing jobs: run one to completion in the test's own task, and
move a manual clock past the lease."""

from __future__ import annotations

from typing import Any, TypeVar

from durably import (
    Durably,
    JobHandle,
    NotFoundError,
    RunCancelledError,
    RunFailedError,
    RunResult,
    RunStatus,
    ValidationError,
)

from .clock import ManualClock

__all__ = ["advance_past_lease", "run_to_completion"]

I = TypeVar("I")  # noqa: E741 - the conventional names of a job's input/output types
O = TypeVar("O")  # noqa: E741


async def run_to_completion(
    durably: Durably, job: JobHandle[I, O], input: I | Any, **trigger_options: Any
) -> RunResult[O]:
    """Trigger ``job`` and process runs in this task until none is ready, without a
    background worker; return the run's result with its typed output.

    Raises ``RunFailedError`` or ``RunCancelledError`` like ``trigger_and_wait``,
    and ``AssertionError`` if the run is still unfinished when the queue is idle
    (e.g. another run holds its concurrency key: advance the clock or finish that
    one first).
    """
    triggered = await job.trigger(input, **trigger_options)
    await durably.process_until_idle()
    run = await durably.get_run(triggered.id)
    if run is None:
        raise NotFoundError(f"Run not found: {triggered.id} (deleted?)", run_id=triggered.id)
    if run.status is RunStatus.FAILED:
        raise RunFailedError(run.id, run.error)
    if run.status is RunStatus.CANCELLED:
        raise RunCancelledError(run.id)
    if run.status is not RunStatus.COMPLETED:
        raise AssertionError(
            f"Run {run.id} is still {run.status.value} after process_until_idle(); "
            "it could not be claimed now (a live lease on it or on its concurrency key?)"
        )
    return RunResult(
        id=run.id,
        output=job.decode_output(run.output),
        disposition=triggered.disposition,
        run=run,
    )


async def advance_past_lease(
    durably: Durably, clock: ManualClock | None = None, *, extra: float = 0.001
) -> None:
    """Advance the manual clock just past ``durably``'s lease duration, waking due
    timers, so leases taken now (e.g. by a crashed worker) have expired."""
    if clock is None:
        if not isinstance(durably.clock, ManualClock):
            raise ValidationError(
                f"advance_past_lease() needs a ManualClock, but this Durably's clock is "
                f"{type(durably.clock).__name__}: pass clock=ManualClock() to "
                "create_durably(), or pass the manual clock here as clock="
            )
        clock = durably.clock
    await clock.advance(durably.settings.lease_duration + extra)
