"""Job definitions: a name, an async function, optional input/output types, and how
its failures are retried and its time bounded."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from ._errors import ValidationError
from ._retry import Retry
from ._validate import adapter_for, check_text, positive_number

if TYPE_CHECKING:
    from ._schedule import Schedule
    from ._step import Step

I = TypeVar("I")  # noqa: E741 - the conventional names of a job's input/output types
O = TypeVar("O")  # noqa: E741

JobFn = Callable[["Step", Any], Awaitable[Any]]


@dataclass(frozen=True, eq=False)
class JobDefinition(Generic[I, O]):
    """What ``define_job`` returns. Register it on a ``Durably`` to get a handle.

    ``input``/``output`` are pydantic models or any type a pydantic
    ``TypeAdapter`` accepts; ``None`` means "any JSON value, unvalidated".
    ``schedules`` are the cron schedules declared with ``define_job(schedule=…)``.
    ``retry``: the retry policy of every step that has none of its own;
    ``run_retry``: that of the whole run; ``timeout``: seconds from the run's start
    within which it must finish; ``record_attempts``: a record of every attempt of
    every step, written before its call.
    """

    name: str
    run: Callable[[Step, I], Awaitable[O]]
    input: Any = None
    output: Any = None
    schedules: tuple[Schedule, ...] = ()
    retry: Retry | None = None
    run_retry: Retry | None = None
    timeout: float | None = None
    record_attempts: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValidationError(f"Job name must be a non-empty string, got {self.name!r}")
        if not inspect.iscoroutinefunction(self.run) and not inspect.iscoroutinefunction(
            getattr(self.run, "__call__", None)  # noqa: B004 - async callable objects count too
        ):
            raise ValidationError(
                f"Job {self.name!r}: the job function must be 'async def fn(step, input)', "
                f"got {self.run!r}"
            )
        check_text(f"Job name {self.name!r}", self.name)
        for role, tp in (("input", self.input), ("output", self.output)):
            if tp is not None:
                _check_schema(self.name, role, tp)
        for option in ("retry", "run_retry"):
            policy = getattr(self, option)
            if policy is not None and not isinstance(policy, Retry):
                raise ValidationError(
                    f"Job {self.name!r}: {option}= takes a durably.Retry(...), got {policy!r}"
                )
        if self.timeout is not None:
            positive_number(f"timeout of job {self.name!r}", self.timeout)
        if not isinstance(self.record_attempts, bool):
            raise ValidationError(
                f"Job {self.name!r}: record_attempts= takes True or False, "
                f"got {self.record_attempts!r}"
            )
        if self.schedules:
            from ._schedules import declared_schedules

            declared_schedules(self)

    def __repr__(self) -> str:
        return f"JobDefinition(name={self.name!r})"


def _check_schema(job: str, role: str, tp: Any) -> None:
    """Refuse, when the job is defined, a type pydantic cannot validate: found later,
    it would fail every trigger or every completion."""
    try:
        adapter_for(tp, f"Job {job!r}: its {role} type {tp!r}")
    except ValidationError as exc:
        raise ValidationError(
            f"{exc}. Use a pydantic model, a dataclass, a typing_extensions.TypedDict "
            "or another type pydantic.TypeAdapter accepts."
        ) from None


@overload
def define_job(
    name: str,
    *,
    input: type[I],
    output: type[O],
    schedule: Schedule | Sequence[Schedule] | None = None,
    retry: Retry | None = None,
    run_retry: Retry | None = None,
    timeout: float | None = None,
    record_attempts: bool = False,
) -> Callable[[Callable[[Step, I], Awaitable[O]]], JobDefinition[I, O]]: ...


@overload
def define_job(
    name: str,
    *,
    input: Any = None,
    output: Any = None,
    schedule: Schedule | Sequence[Schedule] | None = None,
    retry: Retry | None = None,
    run_retry: Retry | None = None,
    timeout: float | None = None,
    record_attempts: bool = False,
) -> Callable[[Callable[[Step, Any], Awaitable[Any]]], JobDefinition[Any, Any]]: ...


@overload
def define_job(
    name: str | None = None,
    *,
    input: type[I],
    output: type[O],
    run: Callable[[Step, I], Awaitable[O]],
    schedule: Schedule | Sequence[Schedule] | None = None,
    retry: Retry | None = None,
    run_retry: Retry | None = None,
    timeout: float | None = None,
    record_attempts: bool = False,
) -> JobDefinition[I, O]: ...


@overload
def define_job(
    name: str | None = None,
    *,
    input: Any = None,
    output: Any = None,
    run: Callable[[Step, Any], Awaitable[Any]],
    schedule: Schedule | Sequence[Schedule] | None = None,
    retry: Retry | None = None,
    run_retry: Retry | None = None,
    timeout: float | None = None,
    record_attempts: bool = False,
) -> JobDefinition[Any, Any]: ...


def define_job(
    name: str | None = None,
    *,
    input: Any = None,
    output: Any = None,
    run: Callable[[Step, Any], Awaitable[Any]] | None = None,
    schedule: Schedule | Sequence[Schedule] | None = None,
    retry: Retry | None = None,
    run_retry: Retry | None = None,
    timeout: float | None = None,
    record_attempts: bool = False,
) -> Any:
    """Define a job, as a decorator or with ``run=``::

    @define_job("import-csv", input=ImportIn, output=ImportOut)
    async def import_csv(step: Step, payload: ImportIn) -> ImportOut: ...

    import_csv = define_job(name="import-csv", input=ImportIn, output=ImportOut, run=fn)

    ``schedule=Schedule("0 3 * * *", ...)`` (or a list of them) fires the job on a cron
    calendar once it is registered on a started ``Durably`` (see ``durably.Schedule``).

    ``retry=Retry(...)``: the retry policy of each step that has none of its own
    (``step.run(..., retry=...)``). ``run_retry=Retry(...)``: a failed run is tried
    again, resuming after its last completed step. ``timeout=seconds``: the run fails
    when it has not finished that long after its start (retries and waits included).
    ``record_attempts=True``: every attempt of a step is recorded before its function
    is called (a write per step; by default only failed attempts are).
    """
    schedules = _schedules(schedule)
    options: dict[str, Any] = {
        "schedules": schedules,
        "retry": retry,
        "run_retry": run_retry,
        "timeout": timeout,
        "record_attempts": record_attempts,
    }
    if run is not None:
        if name is None:
            raise ValidationError("define_job(run=...) needs name='job-name'")
        return JobDefinition(name=name, run=run, input=input, output=output, **options)
    if name is None:
        raise ValidationError("define_job needs a job name: @define_job('my-job', input=..., ...)")
    if callable(name) and not isinstance(name, str):
        raise ValidationError(
            "define_job must be called with the job name: use @define_job('my-job'), "
            "not a bare @define_job"
        )

    def decorate(fn: Callable[[Step, Any], Awaitable[Any]]) -> JobDefinition[Any, Any]:
        return JobDefinition(name=name, run=fn, input=input, output=output, **options)

    return decorate


def _schedules(schedule: Schedule | Sequence[Schedule] | None) -> tuple[Schedule, ...]:
    if schedule is None:
        return ()
    if isinstance(schedule, Sequence) and not isinstance(schedule, str):
        return tuple(schedule)
    return (schedule,)
