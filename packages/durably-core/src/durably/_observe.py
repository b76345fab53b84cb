"""The seam instrumentation plugs into (``durably.otel`` implements it).

An :class:`Observer` is consulted around each trigger (in the caller's context,
before anything is written: the labels it returns go into the runs), when an
execution starts and ends (in the execution's context: what it makes current
there, the job's code sees), and at each replayed step. Steps that execute are
followed through the events (``step:start`` …), which are built only when someone
listens. So with no observer (``Services.observer is None``, the default) this
costs one ``is None`` check per trigger, per execution and per *replayed* step, and
nothing per executed step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from ._records import Run, StepRecord
    from ._trigger import TriggerResult

#: The labels that carry the trace context (W3C ``traceparent`` / ``tracestate``)
#: of the code that triggered a run to the worker that executes it, in any
#: process. ``retrigger`` does not copy them: the new run belongs to the trace that
#: retriggers it.
TRACE_LABELS = ("otel.traceparent", "otel.tracestate")

RunOutcome = Literal[
    "completed",
    "failed",
    "cancelled",
    "waiting",
    "lease-lost",
    "shutdown",
    "storage-error",
    "unfinished",
]
"""How an execution ended: the run completed or failed; it was cancelled; it
waits (``waiting``: suspended on a durable wait, or waiting for its next attempt —
a step's long backoff or a retry of the whole run; a later execution resumes it);
this worker lost its lease; it was stopped and handed back (``shutdown``); the
database failed; or it ended otherwise (the process going down)."""


class TriggerObservation(Protocol):
    """One trigger (or batch), observed."""

    #: Labels to add to the triggered runs (labels given to the trigger win).
    labels: Mapping[str, str]

    def done(self, results: Sequence[TriggerResult]) -> None:
        """The trigger stored (or found) these runs."""


class RunObservation(Protocol):
    """One execution of a run, observed."""

    def replayed(self, name: str, index: int, record: StepRecord) -> None:
        """The step ``name`` returned its checkpoint; its function was not called."""

    def finished(self, outcome: RunOutcome, error: str | None) -> None:
        """The execution ended (called in the context ``run_started`` was called in)."""


class Observer(Protocol):
    def triggering(
        self, job_name: str, count: int
    ) -> AbstractContextManager[TriggerObservation]: ...

    def run_started(self, run: Run) -> RunObservation: ...
