"""Job handles (``durably.jobs.<key>``) and what ``trigger_and_wait`` returns."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._errors import NotFoundError, ValidationError
from ._job import JobDefinition
from ._records import Disposition, LogData, Progress, Run
from ._trigger import TriggerResult, Triggers
from ._validate import decode_validated

if TYPE_CHECKING:
    from ._app import Durably
    from ._events import LogWriteEvent

I = TypeVar("I")  # noqa: E741
O = TypeVar("O")  # noqa: E741


@dataclass(frozen=True)
class RunResult(Generic[O]):
    """A completed run with its output restored to the job's output type."""

    id: str
    output: O
    disposition: Disposition
    run: Run


class JobHandle(Generic[I, O]):
    """A registered job bound to one ``Durably``."""

    def __init__(
        self, durably: Durably, triggers: Triggers, key: str, definition: JobDefinition[I, O]
    ) -> None:
        self._durably = durably
        self._triggers = triggers
        self.key = key
        self.definition = definition

    @property
    def name(self) -> str:
        """The job's name (``define_job("name")``), as stored in its runs."""
        return self.definition.name

    def __repr__(self) -> str:
        return f"JobHandle({self.key!r}, name={self.name!r})"

    async def trigger(
        self,
        input: I | Any,
        *,
        idempotency_key: str | None = None,
        concurrency_key: str | None = None,
        labels: Mapping[str, str] | Any = None,
        coalesce: str | None = None,
    ) -> TriggerResult:
        """Enqueue a run. Invalid input raises ``ValidationError`` and writes nothing."""
        return await self._triggers.trigger(
            self.definition,
            input,
            idempotency_key=idempotency_key,
            concurrency_key=concurrency_key,
            labels=labels,
            coalesce=coalesce,
        )

    async def batch_trigger(
        self, items: Sequence[I | Any | tuple[I | Any, Mapping[str, Any]]]
    ) -> list[TriggerResult]:
        """Trigger many runs at once: every item is validated first (errors name the
        index), then all are inserted in one transaction — all or nothing.

        An item is an input, or ``(input, {"idempotency_key": ..., "labels": ...})``.
        """
        return await self._triggers.batch(self.definition, items)

    async def trigger_and_wait(
        self,
        input: I | Any,
        *,
        timeout: float | None = None,
        on_progress: Callable[[Progress], Any] | None = None,
        on_log: Callable[[LogData], Any] | None = None,
        idempotency_key: str | None = None,
        concurrency_key: str | None = None,
        labels: Mapping[str, str] | Any = None,
        coalesce: str | None = None,
    ) -> RunResult[O]:
        """Trigger and wait for the run to finish; returns the typed output.

        ``on_progress`` is called with each ``step.progress()`` of this run as a
        :class:`Progress` (``current``, ``total``, ``message``), as the TypeScript
        library's ``onProgress``; the whole ``run:progress`` event is
        ``durably.on("run:progress", ...)``. ``on_log`` is called with each
        ``step.log`` call of this run as a :class:`LogData` (``level``, ``message``,
        ``data``, ``step_name``), as the TypeScript library's ``onLog``; the whole
        ``log:write`` event is ``durably.on("log:write", ...)``.

        Raises ``RunFailedError``, ``RunCancelledError``, ``NotFoundError`` (deleted)
        or ``WaitTimeoutError`` (the run keeps going).
        """
        d = self._durably
        unsubscribes: list[Callable[[], None]] = []
        run_id: list[str] = []

        def only_this_run(callback: Callable[[Any], Any]) -> Callable[[Any], Any]:
            def listener(event: Any) -> Any:
                if run_id and event.run_id == run_id[0]:
                    return callback(event)
                return None

            return listener

        try:
            if on_progress is not None:
                report = on_progress  # the progress data, as the reference's onProgress
                progress_of = only_this_run(lambda event: report(event.progress))
                unsubscribes.append(d.on("run:progress", progress_of))
            if on_log is not None:
                log = on_log  # the log data, as the reference's onLog
                log_of = only_this_run(lambda event: log(_log_data(event)))
                unsubscribes.append(d.on("log:write", log_of))
            result = await self.trigger(
                input,
                idempotency_key=idempotency_key,
                concurrency_key=concurrency_key,
                labels=labels,
                coalesce=coalesce,
            )
            run_id.append(result.id)
            run = await d.wait_for_run(result.id, timeout=timeout)
        finally:
            for unsubscribe in unsubscribes:
                unsubscribe()
        return RunResult(
            id=run.id,
            output=self.decode_output(run.output),
            disposition=result.disposition,
            run=run,
        )

    def decode_output(self, output: Any) -> O:
        """A stored output restored to the job's output type. ``ValidationError`` when
        it does not fit (the type changed, or an older release stored NaN as null)."""
        tp = self.definition.output
        try:
            return decode_validated(self._triggers.codec, tp, output)  # type: ignore[no-any-return]
        except ValidationError as exc:
            raise ValidationError(
                f"The stored output of job {self.name!r} does not fit its output type "
                f"{getattr(tp, '__name__', tp)} ({exc}); the type changed since the run "
                "completed, or an older release stored it (NaN as null). get_run(id).output "
                "holds the stored value."
            ) from exc.__cause__

    async def get_run(self, run_id: str) -> Run | None:
        """The run, if it exists and belongs to this job."""
        run = await self._durably.get_run(run_id)
        return run if run is not None and run.job_name == self.name else None

    async def get_runs(
        self,
        *,
        status: str | Sequence[str] | None = None,
        labels: Mapping[str, str] | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Run]:
        """This job's runs, newest first (``Durably.get_runs`` with this job's name)."""
        return await self._durably.get_runs(
            status=status, job_name=self.name, labels=labels, limit=limit, offset=offset
        )


class Jobs(Mapping[str, JobHandle[Any, Any]]):
    """``durably.jobs.<key>`` and ``durably.jobs["key"]``."""

    def __init__(self) -> None:
        self._handles: dict[str, JobHandle[Any, Any]] = {}

    def _add(self, key: str, handle: JobHandle[Any, Any]) -> None:
        self._handles[key] = handle

    def __getitem__(self, key: str) -> JobHandle[Any, Any]:
        try:
            return self._handles[key]
        except KeyError:
            raise NotFoundError(
                f"No job registered under {key!r}; registered: {sorted(self._handles)}"
            ) from None

    def __getattr__(self, key: str) -> JobHandle[Any, Any]:
        if key.startswith("_"):
            raise AttributeError(key)
        handles = self.__dict__.get("_handles", {})
        if key in handles:
            return handles[key]  # type: ignore[no-any-return]
        raise AttributeError(
            f"No job registered under {key!r}; registered: {sorted(handles)}. "
            "Pass jobs={'key': job} to create_durably() or call durably.register()."
        )

    def __contains__(self, key: object) -> bool:
        return key in self._handles

    def __iter__(self) -> Iterator[str]:
        return iter(self._handles)

    def __len__(self) -> int:
        return len(self._handles)

    def __repr__(self) -> str:
        return f"Jobs({sorted(self._handles)})"


def check_job_key(key: Any) -> str:
    if not isinstance(key, str) or not key:
        raise ValidationError(f"Job keys must be non-empty strings, got {key!r}")
    if not key.startswith("_") and hasattr(Jobs, key):
        raise ValidationError(
            f"Job key {key!r} is a method of durably.jobs (durably.jobs.{key} would not be "
            "the job); register it under another key"
        )
    return key


def _log_data(event: LogWriteEvent) -> LogData:
    return LogData(
        level=event.level, message=event.message, data=event.data, step_name=event.step_name
    )
