"""Durable waits inside a job: what ``step.prepare_wait``, ``step.wait_for``,
``step.sleep`` and ``step.sleep_until`` do, on the execution of one run.

A wait is addressed by (run id, name). Its first preparation fixes its deadline
(an absolute time). ``wait_for`` returns the wait's result when it has one (a
signal, or the timeout once the deadline has come); otherwise the job unwinds
(:class:`Suspended`, a ``BaseException`` its ``except Exception`` does not catch),
and the runtime — once the job's code has stopped running — suspends the run:
status ``waiting``, lease and worker slot released. A signal or the deadline makes
it claimable again; the worker that claims it replays the job from its
checkpoints, and this time ``wait_for`` finds the result.

A durable timer is a wait of kind ``timer`` that only its deadline ends:
:func:`wait_until` is the primitive (``step.sleep``/``sleep_until`` are it with a
name), for anything that must resume a run at a time without holding a slot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

import pydantic

from ._errors import ConflictError, ValidationError
from ._records import NewWait, Wait, WaitKind, WaitOutcome, WaitStatus
from ._validate import check_text, describe_pydantic_error
from .codec import Codec

if TYPE_CHECKING:
    from ._execution import Execution

P = TypeVar("P")

__all__ = [
    "SignalReceipt",
    "Suspended",
    "WaitHandle",
    "WaitResult",
    "prepare",
    "wait_for",
    "wait_until",
]


class Suspended(BaseException):
    """The job must stop here: the run suspends on ``wait`` once its code has unwound.

    A ``BaseException``, so a job's ``except Exception`` lets it through."""

    def __init__(self, wait: Wait) -> None:
        super().__init__(f"run {wait.run_id} suspends on wait {wait.name!r}")
        self.wait = wait


@dataclass(frozen=True)
class WaitHandle(Generic[P]):
    """The address of a prepared wait: give ``run_id`` and ``name`` to whoever will
    signal it (``durably.signal(run_id, name, payload)``, or ``POST /signal``)."""

    id: str
    run_id: str
    name: str
    #: When the wait times out (fixed at its first preparation), or ``None``.
    deadline_at: datetime | None
    payload_type: Any = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class WaitResult(Generic[P]):
    """What ended a wait: a signal (``outcome == "signal"``, with its ``payload``,
    validated against the wait's payload type when it has one) or its deadline
    (``outcome == "timeout"``). A timeout is a result the job branches on, not an
    error."""

    outcome: WaitOutcome
    payload: P | None
    signal_id: str | None
    resolved_at: datetime | None

    @property
    def timed_out(self) -> bool:
        """The deadline came before any signal."""
        return self.outcome == "timeout"


def canonical_json(codec: Codec, value: Any, what: str) -> str:
    """``value`` as canonical JSON (keys sorted: equal values have equal text), or a
    ``ValidationError`` saying that ``what`` cannot be stored."""
    try:
        return codec.encode_canonical(value)
    except TypeError as exc:
        raise ValidationError(f"{what} cannot be stored as JSON ({exc})") from None


def seconds_of(what: str, value: float | timedelta, *, allow_zero: bool) -> float:
    """A duration given as seconds or a ``timedelta``, checked."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise ValidationError(f"{what} must be a number of seconds or a timedelta, got {value!r}")
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValidationError(f"{what} must be {bound} seconds, got {value!r}")
    return seconds


def aware(what: str, when: Any) -> datetime:
    if not isinstance(when, datetime) or when.tzinfo is None or when.utcoffset() is None:
        raise ValidationError(
            f"{what} needs a timezone-aware datetime, got {when!r}; "
            "pass e.g. datetime(2026, 1, 1, tzinfo=UTC)"
        )
    return when


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise ValidationError(f"A wait name must be a non-empty string, got {name!r}")
    return check_text("Wait name", name)


async def prepare(
    x: Execution,
    name: str,
    *,
    kind: WaitKind,
    deadline: datetime | None,
    metadata_json: str | None = None,
) -> Wait:
    """The run's wait ``name``, created by its first preparation (whose ``deadline``
    and ``kind`` stay). Fenced: a lost lease raises ``LeaseLostError``."""
    name = _check_name(name)
    now = x.now()
    new = NewWait(
        id=x.new_id(now),
        name=name,
        kind=kind,
        deadline_at=deadline,
        metadata_json=metadata_json,
        created_at=now,
    )
    wait = await x.storage.prepare_wait(x.run.id, x.generation, new, now)
    if wait is None:
        raise x.lease_lost(f"wait {name!r} was not prepared")
    if wait.kind != kind:
        first = "step.sleep" if wait.kind == "timer" else "step.prepare_wait"
        raise ValidationError(
            f"Wait name {name!r} of run {x.run.id} was first used by {first}; a name "
            "addresses one wait per run: give this one another name"
        )
    return wait


async def result_or_suspend(x: Execution, wait_id: str, name: str, what: str) -> Wait:
    """The wait with its result, or — none yet — :class:`Suspended` raised."""
    if x.current_step is not None or x.overlapping:
        raise ValidationError(
            f"{what} cannot be used inside a step.run or step.all callback (a callback "
            "cannot suspend the run): call it from the job function itself"
        )
    got = await x.storage.wait_result(x.run.id, x.generation, wait_id, x.now(), x.claimed_at)
    if got is None:
        raise x.lease_lost(f"wait {name!r} was not read")
    if got.status is WaitStatus.RESOLVED:
        return got
    if got.status is WaitStatus.PENDING:
        x.suspend_on(got)
        raise Suspended(got)
    raise ConflictError(
        f"Wait {name!r} of run {x.run.id} is {got.status.value}: it ended with the run",
        run_id=x.run.id,
    )


async def wait_for(x: Execution, handle: WaitHandle[P]) -> WaitResult[P]:
    """``step.wait_for``: the result of a prepared wait, or the run suspends."""
    if not isinstance(handle, WaitHandle) or handle.run_id != x.run.id:
        raise ValidationError(
            "step.wait_for() takes the handle step.prepare_wait() returned in this run, "
            f"got {handle!r}"
        )
    got = await result_or_suspend(x, handle.id, handle.name, "step.wait_for()")
    payload: Any = got.payload
    if got.outcome == "signal" and handle.payload_type is not None:
        try:
            payload = x.codec.to_typed(handle.payload_type, got.payload)
        except pydantic.ValidationError as exc:
            raise ValidationError(
                f"The signal to wait {handle.name!r} of run {x.run.id} has an invalid "
                f"payload: {describe_pydantic_error(exc)}"
            ) from None
    return WaitResult(
        outcome=got.outcome or "timeout",
        payload=payload,
        signal_id=got.signal_id,
        resolved_at=got.resolved_at,
    )


async def wait_until(x: Execution, name: str, deadline: datetime) -> None:
    """A durable timer: returns once ``deadline`` (fixed by the first call with this
    ``name``) has passed; until then the run waits without a worker slot, and the
    next worker to poll after the deadline resumes it."""
    wait = await prepare(x, name, kind="timer", deadline=deadline)
    await result_or_suspend(x, wait.id, wait.name, "step.sleep()")


@dataclass(frozen=True)
class SignalReceipt:
    """What ``Durably.signal`` did: the signal became the wait's result
    (``"accepted"``), or it had already (``"duplicate"``: same signal id and payload);
    ``wait`` is the wait as it now is."""

    disposition: Literal["accepted", "duplicate"]
    wait: Wait
