"""Triggering: a job's input and trigger options checked into a ``NewRun``, enqueued,
announced (``run:trigger`` or ``run:coalesced``) and the worker woken.

Every check runs before anything is written: an invalid trigger (or any invalid
item of a batch) raises ``ValidationError`` and stores nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._errors import ValidationError
from ._events import RunCoalescedEvent, RunTriggerEvent
from ._job import JobDefinition
from ._records import Disposition, NewRun, Run, RunStatus
from ._services import Services
from ._validate import (
    adapter_for,
    check_json_depth,
    encode_validated,
    validate_coalesce,
    validate_key,
    validate_labels,
)

#: The options ``trigger`` takes besides the input (``None`` means "not given").
OPTIONS = frozenset({"idempotency_key", "concurrency_key", "labels", "coalesce"})


@dataclass(frozen=True)
class TriggerResult:
    """The run that now stands for a trigger, and how it came to be."""

    run: Run
    disposition: Disposition

    @property
    def id(self) -> str:
        """The run's id."""
        return self.run.id

    @property
    def status(self) -> RunStatus:
        """The run's status when the trigger returned."""
        return self.run.status


class Triggers:
    """Triggering for one ``Durably``: its labels schema, its storage, its worker."""

    def __init__(
        self,
        services: Services,
        labels_schema: Any,
        *,
        ready: Callable[[], Awaitable[None]],
        wake: Callable[[], None],
    ) -> None:
        self._services = services
        #: The codec inputs are encoded with (job handles decode outputs with it too).
        self.codec = services.codec
        self._ready = ready  # migrates the database on first use
        self._wake = wake
        self._labels_adapter = None
        if labels_schema is not None:
            try:
                self._labels_adapter = adapter_for(labels_schema, f"labels={labels_schema!r}")
            except ValidationError as exc:
                raise ValidationError(f"{exc}; pass a pydantic model of str fields") from None

    def check_labels(self, labels: Any) -> dict[str, str]:
        """``labels`` checked as a trigger checks them (with the labels schema, if any)."""
        return validate_labels(labels, None, self._labels_adapter)

    async def trigger(
        self, definition: JobDefinition[Any, Any], input: Any, **options: Any
    ) -> TriggerResult:
        observer = self._services.observer
        if observer is None:
            return await self._trigger(definition, input, options, None)
        with observer.triggering(definition.name, 1) as observation:
            result = await self._trigger(definition, input, options, observation.labels)
            observation.done([result])
            return result

    async def _trigger(
        self,
        definition: JobDefinition[Any, Any],
        input: Any,
        options: Mapping[str, Any],
        extra_labels: Mapping[str, str] | None,
    ) -> TriggerResult:
        new, coalesce = self._new_run(definition, input, options, extra_labels=extra_labels)
        await self._ready()
        enq = await self._services.storage.enqueue(new, coalesce=coalesce)
        result = TriggerResult(enq.run, enq.disposition)
        self._announce(new, result)
        return result

    async def batch(
        self, definition: JobDefinition[Any, Any], items: Sequence[Any]
    ) -> list[TriggerResult]:
        if isinstance(items, str | bytes) or not isinstance(items, Sequence):
            raise ValidationError("batch_trigger() takes a list of inputs or (input, options)")
        observer = self._services.observer
        if observer is None:
            return await self._batch(definition, items, None)
        with observer.triggering(definition.name, len(items)) as observation:
            results = await self._batch(definition, items, observation.labels)
            observation.done(results)
            return results

    async def _batch(
        self,
        definition: JobDefinition[Any, Any],
        items: Sequence[Any],
        extra_labels: Mapping[str, str] | None,
    ) -> list[TriggerResult]:
        prepared: list[tuple[NewRun, bool]] = []
        for i, item in enumerate(items):
            if isinstance(item, tuple):
                if len(item) != 2 or not isinstance(item[1], Mapping):
                    raise ValidationError(
                        f"Item {i}: expected an input or (input, options_dict), got {item!r}"
                    )
                input, options = item
            else:
                input, options = item, {}
            prepared.append(
                self._new_run(
                    definition, input, options, where=f"Item {i}: ", extra_labels=extra_labels
                )
            )
        if not prepared:
            return []
        await self._ready()
        results = await self._services.storage.enqueue_many(prepared)
        out = [TriggerResult(r.run, r.disposition) for r in results]
        for (new, _), result in zip(prepared, out, strict=True):
            self._announce(new, result)
        return out

    def _new_run(
        self,
        definition: JobDefinition[Any, Any],
        input: Any,
        options: Mapping[str, Any],
        where: str = "",
        extra_labels: Mapping[str, str] | None = None,
    ) -> tuple[NewRun, bool]:
        """The run to enqueue and whether to coalesce; ``where`` prefixes every error.
        ``extra_labels`` (an observer's: the trace context) join the checked labels;
        the labels given win."""
        services = self._services
        options = {k: v for k, v in options.items() if v is not None}
        unknown = set(options) - OPTIONS
        if unknown:
            raise ValidationError(
                f"{where}Unknown trigger option(s) {sorted(unknown)}; allowed: {sorted(OPTIONS)}"
            )
        try:
            input_json = encode_validated(services.codec, definition.input, input)
            check_json_depth(services.codec, input_json)
        except ValidationError as exc:
            raise ValidationError(
                f"{where}Invalid input for job {definition.name!r}: {exc}"
            ) from exc.__cause__
        try:
            idem = validate_key("idempotency_key", options.get("idempotency_key"))
            conc = validate_key("concurrency_key", options.get("concurrency_key"))
            coalesce = validate_coalesce(options.get("coalesce"), conc)
            labels = validate_labels(options.get("labels"), None, self._labels_adapter)
        except ValidationError as exc:
            raise ValidationError(f"{where}{exc}") from None
        if extra_labels:
            labels = {**extra_labels, **labels}
        now = services.now()
        run = NewRun(
            id=services.new_id(now),
            job_name=definition.name,
            input_json=input_json,
            idempotency_key=idem,
            concurrency_key=conc,
            labels=labels,
            created_at=now,
        )
        return run, coalesce

    def _announce(self, new: NewRun, result: TriggerResult) -> None:
        bus = self._services.bus
        run = result.run
        if result.disposition == "created":
            bus.emit_run(RunTriggerEvent, run, input=run.input)
            self._wake()
        elif result.disposition == "coalesced":
            bus.emit_run(
                RunCoalescedEvent,
                run,
                skipped_input=self._services.codec.decode(new.input_json),
                skipped_labels=new.labels,
            )
