"""Retry policies: how often a failed step (or run) is tried again, and after how long.

A :class:`Retry` is a value: ``max_attempts``, an exponential backoff (``initial``,
``factor``, ``max``) with ``jitter``, and what is retried (``retry_on``: exception
types or a predicate). :class:`~durably.NonRetryableError`, or any exception
marked by :func:`no_retry`, is never retried. Where the attempts are counted and
waited for is the execution's business (``durably._attempts``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._errors import NonRetryableError, ValidationError

__all__ = ["MAX_ATTEMPTS", "Retry", "RetryOn", "no_retry", "retries"]

MAX_ATTEMPTS = 1000
"""The largest ``max_attempts`` a policy accepts."""

#: The attribute ``no_retry`` sets on an exception.
_NO_RETRY = "__durably_no_retry__"

RetryOn = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]
"""What a policy retries: exception types (``isinstance``), or a predicate that
receives the exception."""


def no_retry(exc: BaseException) -> BaseException:
    """Mark ``exc`` so that no retry policy retries it, and return it: ``raise
    durably.no_retry(ValueError("bad id"))`` fails the step (and the run) at once,
    while the exception keeps its type for the job's own ``except`` clauses."""
    if not isinstance(exc, BaseException):
        raise ValidationError(f"no_retry() takes an exception, got {exc!r}")
    setattr(exc, _NO_RETRY, True)
    return exc


def _is_exception_types(value: Any) -> bool:
    if isinstance(value, type):
        return issubclass(value, BaseException)
    return (
        isinstance(value, tuple)
        and bool(value)
        and all(isinstance(t, type) and issubclass(t, BaseException) for t in value)
    )


def _number(name: str, value: Any, *, minimum: float, maximum: float = math.inf) -> float:
    ok = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and minimum <= value <= maximum
    )
    if not ok:
        bound = f"from {minimum:g} to {maximum:g}" if math.isfinite(maximum) else f"≥ {minimum:g}"
        raise ValidationError(f"Retry({name}={value!r}): expected a finite number {bound}")
    return float(value)


@dataclass(frozen=True)
class Retry:
    """A retry policy: up to ``max_attempts`` attempts in all (the first included);
    before attempt ``n + 1`` the wait is ``min(max, initial * factor ** (n - 1))``
    seconds, less a random share of up to ``jitter`` of it (``0``: exactly that).

    ``retry_on``: the exception types retried (default ``Exception``), or a
    predicate ``fn(exc) -> bool``. :class:`~durably.NonRetryableError`, an exception
    marked with :func:`~durably.no_retry`, a lost lease and a cancellation are never
    retried; a predicate that raises counts as "do not retry".

    ``step.run(name, fn, retry=Retry(...))`` for one step, ``define_job(...,
    retry=Retry(...))`` for every step of a job, ``define_job(...,
    run_retry=Retry(...))`` for the whole run (it resumes after its last completed
    step)."""

    max_attempts: int = 3
    initial: float = 1.0
    factor: float = 2.0
    max: float = 300.0
    jitter: float = 0.1
    retry_on: RetryOn = Exception

    def __post_init__(self) -> None:
        attempts = self.max_attempts
        if (
            not isinstance(attempts, int)
            or isinstance(attempts, bool)
            or not 1 <= attempts <= MAX_ATTEMPTS
        ):
            raise ValidationError(
                f"Retry(max_attempts={attempts!r}): expected an integer from 1 to {MAX_ATTEMPTS} "
                "(the attempts in all, the first included)"
            )
        # a century at most: a later time is out of a datetime's range
        _number("initial", self.initial, minimum=0.0, maximum=100 * 365 * 86400.0)
        _number("factor", self.factor, minimum=1.0, maximum=1000.0)
        _number("max", self.max, minimum=0.0, maximum=100 * 365 * 86400.0)
        _number("jitter", self.jitter, minimum=0.0, maximum=1.0)
        if not _is_exception_types(self.retry_on) and not callable(self.retry_on):
            raise ValidationError(
                f"Retry(retry_on={self.retry_on!r}): expected an exception type, a tuple "
                "of them, or a predicate fn(exc) -> bool"
            )

    def delay(self, attempt: int, draw: Callable[[], float] = random.random) -> float:
        """Seconds to wait after attempt ``attempt`` (1, 2, …) failed, before the next;
        ``draw()`` in [0, 1) picks the jitter."""
        base = self.initial
        for _ in range(attempt - 1):  # grown step by step: factor ** n may overflow
            if base >= self.max:
                break
            base *= self.factor
        base = min(base, self.max)
        return base * (1.0 - self.jitter * draw())

    def retries(self, exc: BaseException) -> bool:
        """Does this policy retry ``exc`` (whatever the attempt count)?"""
        return retries(self, exc)


def retries(policy: Retry, exc: BaseException) -> bool:
    """Whether ``policy`` retries ``exc``: never a ``NonRetryableError``, an exception
    marked by ``no_retry``, or one that is not an ``Exception``; else as ``retry_on``
    says (a predicate that raises: no)."""
    if (
        isinstance(exc, NonRetryableError)
        or getattr(exc, _NO_RETRY, False)
        or not isinstance(exc, Exception)
    ):
        return False
    retry_on = policy.retry_on
    if _is_exception_types(retry_on):
        return isinstance(exc, retry_on)  # type: ignore[arg-type]
    try:
        return bool(retry_on(exc))  # type: ignore[operator]
    except Exception:
        return False
