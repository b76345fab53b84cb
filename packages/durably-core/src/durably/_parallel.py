"""``step.all``: named branches run at once, each checkpointed like ``step.run``,
joined when every branch has settled.

Each branch is an ordinary ``step.run`` (replayed from its checkpoint when it has
one, so after a crash only the unfinished branches run again). The join waits for
every branch, as ``asyncio.gather(..., return_exceptions=True)`` does, so the run
never finishes while a sibling is still writing. Then: a lost lease wins over
everything, a cancellation next, and among ordinary failures the branch that
started first (the lowest step index) decides the error, as it names the run's
failed step — also when another branch waits for its next attempt (a branch that
failed for good fails the join whatever a retry of the other would give).

While branches overlap, the one "current step" of the execution cannot say which
branch wrote a ``step.log`` entry: each branch runs in its own task, whose context
(copied into a sync step's thread too) carries its name in ``BRANCH``, so its
entries name it; anything else logged meanwhile names no step. (The reference has
an ``attempt.log`` for this, as it has no async context in browsers.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from ._attempts import RetryLater
from ._errors import LeaseLostError, ValidationError

if TYPE_CHECKING:
    from ._execution import Execution
    from ._step import Step

__all__ = ["BRANCH", "run_all"]

#: The step.all branch the current task runs: (its execution, its name). A context
#: variable is per task, so this holds no state shared between runs; the execution
#: is part of it so that a task started from a branch for another run (its context
#: copied) is not taken for that branch.
BRANCH: ContextVar[tuple[Execution, str] | None] = ContextVar("durably_branch", default=None)


async def run_all(
    step: Step, x: Execution, branches: Mapping[str, Callable[[], Any]]
) -> dict[str, Any]:
    """``step.all(branches)`` on ``step`` (whose execution is ``x``): ``{name: result}``
    once every branch succeeded."""
    if not isinstance(branches, Mapping) or not branches:
        raise ValidationError(
            "step.all() takes a non-empty dict of {step_name: callable}, e.g. "
            '{"review-a": partial(review, a), "review-b": partial(review, b)}'
        )
    for name, fn in branches.items():
        if not callable(fn):
            raise ValidationError(f"step.all(): branch {name!r} is {fn!r}, not a callable")

    async def branch(name: str, fn: Callable[[], Any]) -> Any:
        BRANCH.set((x, name))  # in this branch's own context (its task's copy)
        return await step.run(name, fn)

    # the branches start in the dict's order, so their step indexes follow it
    tasks = [asyncio.ensure_future(branch(name, fn)) for name, fn in branches.items()]
    x.overlapping += 1
    try:
        await asyncio.wait(tasks)
    except asyncio.CancelledError:
        # cancelled while joining (the run was cancelled, or its lease lost): the
        # branches stop too, and the join still waits for them to settle
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
        raise
    finally:
        x.overlapping -= 1
    failures: list[tuple[str, BaseException]] = []
    for name, task in zip(branches, tasks, strict=True):
        if task.cancelled():
            failures.append((name, asyncio.CancelledError()))
        elif (exc := task.exception()) is not None:
            failures.append((name, exc))
    if not failures:
        return {name: task.result() for name, task in zip(branches, tasks, strict=True)}
    errors = [exc for _, exc in failures]
    for kind in (LeaseLostError, asyncio.CancelledError):
        found = next((e for e in errors if isinstance(e, kind)), None)
        if found is not None:
            raise found
    # a process going down (KeyboardInterrupt, a simulated crash) is not a failure
    fatal = next((e for e in errors if not isinstance(e, Exception | RetryLater)), None)
    if fatal is not None:
        raise fatal
    # a branch that failed for good fails the join, also while another one's next
    # attempt is to be waited for: that attempt would not make the join succeed
    failed = [(name, exc) for name, exc in failures if isinstance(exc, Exception)]
    if not failed:
        raise errors[0]  # RetryLater: the run waits for a branch's next attempt
    name, first = failed[0]
    x.failed_step_name = name
    raise first
