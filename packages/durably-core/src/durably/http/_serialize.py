"""JSON shapes of the HTTP protocol (camelCase, as the TypeScript reference sends them).

Runs lose their lease and key fields (``toClientRun``); events keep every field,
renamed to camelCase; user data (inputs, outputs, log data) is passed through
untouched. Timestamps are ISO-8601 UTC with milliseconds and ``Z``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

import msgspec
import pydantic

from .. import Attempt, Event, Progress, Run, ScheduleRecord, StepRecord, Wait
from .._events import EVENT_CLASSES
from .._records import progress_data


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, pydantic.BaseModel):
        return obj.model_dump(mode="json")
    if isinstance(obj, datetime):
        return iso(obj)
    if isinstance(obj, set | frozenset):
        return list(obj)
    # never let an odd value in log data break a response or a stream
    return str(obj)


_encoder = msgspec.json.Encoder(enc_hook=_enc_hook)


def encode(value: Any) -> bytes:
    """Compact one-line JSON."""
    return _encoder.encode(value)


def iso(t: datetime | None) -> str | None:
    """``2026-11-22T03:04:05.123Z`` (the reference's ``Date.toISOString()``)."""
    if t is None:
        return None
    # isoformat is C code, several times faster than formatting the fields here (it
    # runs for every timestamp of every frame); it truncates to milliseconds, as
    # toISOString does, and always ends in "+00:00" once the time is in UTC
    return t.astimezone(UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def progress(p: Progress | None) -> dict[str, Any] | None:
    """``{current, total?, message?}``: unset keys are left out, as the reference stores it."""
    return None if p is None else progress_data(p)


def client_run(run: Run) -> dict[str, Any]:
    """The reference's ``toClientRun``: no lease owner/expiry/generation, no keys."""
    return {
        "id": run.id,
        "jobName": run.job_name,
        "input": run.input,
        "status": str(run.status),
        "currentStepIndex": run.current_step_index,
        "completedStepCount": run.completed_step_count,
        "progress": progress(run.progress),
        "output": run.output,
        "error": run.error,
        "labels": run.labels,
        "startedAt": iso(run.started_at),
        "completedAt": iso(run.completed_at),
        "createdAt": iso(run.created_at),
        "isTerminal": run.is_terminal,
        "isActive": run.is_active,
        "isWaiting": run.is_waiting,
    }


def client_wait(wait: Wait) -> dict[str, Any]:
    """A durable wait, with the reference's field names (its ``DurableWait``)."""
    return {
        "id": wait.id,
        "runId": wait.run_id,
        "name": wait.name,
        "kind": wait.kind,
        "metadata": wait.metadata,
        "status": str(wait.status),
        "outcome": wait.outcome,
        "payload": wait.payload,
        "signalId": wait.signal_id,
        "createdAt": iso(wait.created_at),
        "deadlineAt": iso(wait.deadline_at),
        "suspendedAt": iso(wait.suspended_at),
        "resolvedAt": iso(wait.resolved_at),
        "firstResumedAt": iso(wait.first_resumed_at),
        "inputWaitMs": milliseconds(wait.input_wait),
        "executionSlotWaitMs": milliseconds(wait.execution_slot_wait),
    }


def milliseconds(duration: timedelta | None) -> int | None:
    """A duration as whole milliseconds (the reference's ``…Ms`` fields), or null."""
    return None if duration is None else round(duration / timedelta(milliseconds=1))


def client_schedule(schedule: ScheduleRecord) -> dict[str, Any]:
    """A stored schedule for ``GET /schedules`` (Python only): every field, camelCase."""
    return {
        "name": schedule.name,
        "jobName": schedule.job_name,
        "cron": schedule.cron,
        "timezone": schedule.timezone,
        "input": schedule.input,
        "labels": schedule.labels,
        "catchUp": schedule.catch_up,
        "maxCatchUp": schedule.max_catch_up,
        "slotField": schedule.slot_field,
        "status": str(schedule.status),
        "nextFireAt": iso(schedule.next_fire_at),
        "lastFiredAt": iso(schedule.last_fired_at),
        "revision": schedule.revision,
        "createdAt": iso(schedule.created_at),
        "updatedAt": iso(schedule.updated_at),
    }


def client_step(step: StepRecord) -> dict[str, Any]:
    return {
        "id": step.id,
        "runId": step.run_id,
        "name": step.name,
        "index": step.index,
        "status": str(step.status),
        "output": step.output,
        "error": step.error,
        "startedAt": iso(step.started_at),
        "completedAt": iso(step.completed_at),
    }


def client_attempt(attempt: Attempt) -> dict[str, Any]:
    """An attempt record for ``GET /attempts`` (Python only): every field, camelCase."""
    return {
        "id": attempt.id,
        "runId": attempt.run_id,
        "stepName": attempt.step_name,
        "stepIndex": attempt.step_index,
        "attempt": attempt.attempt,
        "status": str(attempt.status),
        "leaseGeneration": attempt.lease_generation,
        "error": attempt.error,
        "startedAt": iso(attempt.started_at),
        "completedAt": iso(attempt.completed_at),
        "nextAttemptAt": iso(attempt.next_attempt_at),
    }


def _field(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, Progress):
        return progress(value)
    return value


#: Each event type's fields and their camelCase names, worked out once (read-only).
_FIELDS: Mapping[str, tuple[tuple[str, str], ...]] = MappingProxyType(
    {
        tag: tuple((name, camel(name)) for name in cls.__struct_fields__)
        for tag, cls in EVENT_CLASSES.items()
    }
)


def event_payload(event: Event) -> dict[str, Any]:
    """Every field of the event, camelCased, ``type`` first."""
    tag = event.type
    fields = _FIELDS.get(tag)
    if fields is None:  # not one of the bus's types: work the names out here
        fields = tuple((name, camel(name)) for name in event.__struct_fields__)
    out: dict[str, Any] = {"type": tag}
    for name, key in fields:
        out[key] = _field(getattr(event, name))
    return out


#: The fields ``/runs/subscribe`` adds per type, with their camelCase names (read-only).
_TRIMMED_EXTRA: Mapping[str, tuple[tuple[str, str], ...]] = MappingProxyType(
    {
        tag: tuple((name, camel(name)) for name in names)
        for tag, names in (
            ("run:coalesced", ("skipped_input", "skipped_labels")),
            ("run:progress", ("progress",)),
            ("run:waiting", ("wait_id", "wait_name")),
            ("step:start", ("step_name", "step_index")),
            ("step:complete", ("step_name", "step_index")),
            ("step:cancel", ("step_name", "step_index")),
            ("step:fail", ("step_name", "step_index", "error")),
            ("step:retry", ("step_name", "step_index", "attempt", "next_attempt_at")),
            ("run:retry", ("attempt", "next_attempt_at")),
            ("log:write", ("step_name", "level", "message", "data")),
        )
    }
)

#: What ``/runs/subscribe`` forwards (the reference's list, and **(py)** the retry
#: events; no lease renewals or worker errors).
RUNS_STREAM_TYPES = frozenset(
    {
        "run:trigger",
        "run:coalesced",
        "run:leased",
        "run:complete",
        "run:fail",
        "run:cancel",
        "run:delete",
        "run:waiting",
        "run:progress",
        "run:retry",
        "step:start",
        "step:complete",
        "step:fail",
        "step:cancel",
        "step:retry",
        "log:write",
    }
)


def trimmed_payload(event: Event) -> dict[str, Any]:
    """The reference's ``/runs/subscribe`` frame: identity, labels and a few fields."""
    out: dict[str, Any] = {
        "type": event.type,
        "runId": getattr(event, "run_id", None),
        "jobName": getattr(event, "job_name", None),
        "labels": getattr(event, "labels", None),
    }
    for name, key in _TRIMMED_EXTRA.get(out["type"], ()):
        out[key] = _field(getattr(event, name))
    return out


class Outgoing:
    """One event on its way to the streams, with its frames encoded on first use
    and then shared: an event sent to 200 streams is encoded once, not 200 times.

    ``type`` and ``run_id`` are copied out because the throttles and filters read
    them for every event (``Event.type`` is a property)."""

    __slots__ = ("_full", "_trimmed", "event", "run_id", "type")

    def __init__(self, event: Event) -> None:
        self.event = event
        self.type: str = event.type
        self.run_id: str | None = getattr(event, "run_id", None)
        self._full: bytes | None = None
        self._trimmed: bytes | None = None

    @property
    def full(self) -> bytes:
        """The ``/subscribe`` frame: every field."""
        if self._full is None:
            self._full = sse_frame(event_payload(self.event))
        return self._full

    @property
    def trimmed(self) -> bytes:
        """The ``/runs/subscribe`` frame: identity, labels and a few fields."""
        if self._trimmed is None:
            self._trimmed = sse_frame(trimmed_payload(self.event))
        return self._trimmed


def sse_frame(payload: dict[str, Any]) -> bytes:
    """``data: <one-line JSON>\\n\\n``."""
    return b"data: " + encode(payload) + b"\n\n"
