"""OpenTelemetry for durably: traces and metrics (extra ``durably-core[otel]``).

    from durably.otel import instrument

    instrument(durably)  # a Durably, or a durably.sync instance

Spans (through the OpenTelemetry API: the application configures the SDK and its
exporters; without one, nothing is recorded):

- ``trigger <job>`` (kind PRODUCER) around each trigger or batch, a child of the
  caller's current span. Its context is stored with the runs as the labels
  ``otel.traceparent`` / ``otel.tracestate`` (W3C trace context), so the process
  that executes them — any process, any machine — continues the trace;
- ``run <job>`` (CONSUMER) per execution of a run: a child of the trigger span
  (a run resumed after a crash, a retry, a handed-back lease is a new execution:
  a new ``run`` span, ``durably.run.attempt`` = its lease generation). It is the
  current span while the job runs, so spans the job's code makes nest under it;
- ``step <name>`` (INTERNAL) per executed step, current while its function runs
  (in its thread too); a replayed step (its checkpoint returned, its function not
  called) is a span of no duration marked ``durably.step.replayed = true``.

Metrics: ``durably.runs.triggered``, ``durably.runs.finished`` (by ``status``),
``durably.run.duration``, ``durably.step.duration``, ``durably.claim.latency``
(trigger to first claim), ``durably.lease.losses``, ``durably.worker.errors``.

What it costs: not instrumented, nothing per step (and one ``is None`` check per
trigger, execution and replayed step). Instrumented, the step events are built
and a span made per step (measured in docs/performance.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import Token
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from . import __version__
from ._app import Durably
from ._errors import ConflictError, ValidationError
from ._events import Event
from ._observe import TRACE_LABELS, RunOutcome
from ._records import Run, StepRecord
from .sync import SyncDurably

if TYPE_CHECKING:
    from ._trigger import TriggerResult

__all__ = ["Instrumentation", "instrument"]

#: The instrumentation scope of durably's spans and metrics.
SCOPE = "durably"

# only the trace context travels in labels (no baggage: labels are for run data)
_PROPAGATOR = TraceContextTextMapPropagator()
_LABEL_PREFIX = "otel."

#: Outcomes that are errors of the run (a cancel or a hand-back is not).
_ERRORS = frozenset({"failed", "lease-lost", "storage-error", "unfinished"})

_STEP_EVENTS = (
    "step:start",
    "step:complete",
    "step:fail",
    "step:retry",
    "step:cancel",
    "worker:error",
)


class Instrumentation:
    """What :func:`instrument` returns: ``uninstrument()`` takes it off again."""

    def __init__(self, undo: Callable[[], None]) -> None:
        self._undo: Callable[[], None] | None = undo

    def uninstrument(self) -> None:
        """Stop making spans and metrics (idempotent); spans in progress still end."""
        undo, self._undo = self._undo, None
        if undo is not None:
            undo()


def instrument(
    durably: Durably | SyncDurably,
    *,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
) -> Instrumentation:
    """Make spans and metrics for ``durably``'s triggers, runs and steps, with the
    given providers (by default the global ones the SDK sets up). Instrument every
    process that triggers or executes runs: the trace goes from one to the other
    through the runs' labels. A second ``instrument`` of the same instance is a
    ``ConflictError``."""
    if isinstance(durably, SyncDurably):
        # on its engine now, and on the one a forked child builds
        return Instrumentation(
            durably._attach(lambda engine: _install(engine, tracer_provider, meter_provider))
        )
    if not isinstance(durably, Durably):
        raise ValidationError(
            f"instrument() takes a Durably or a durably.sync instance, got {type(durably).__name__}"
        )
    return Instrumentation(_install(durably, tracer_provider, meter_provider))


def _install(
    durably: Durably,
    tracer_provider: trace.TracerProvider | None,
    meter_provider: metrics.MeterProvider | None,
) -> Callable[[], None]:
    services = durably._services
    if services.observer is not None:
        raise ConflictError("This Durably is instrumented already; uninstrument() it first")
    observer = _Telemetry(
        trace.get_tracer(SCOPE, __version__, tracer_provider),
        metrics.get_meter(SCOPE, __version__, meter_provider),
        services.owner,
    )
    services.observer = observer
    unsubscribes = [durably.on(t, observer.on_event) for t in _STEP_EVENTS]

    def undo() -> None:
        if services.observer is observer:
            services.observer = None
        for unsubscribe in unsubscribes:
            unsubscribe()

    return undo


def trace_labels() -> dict[str, str]:
    """The current trace context as run labels (empty when no span is recording)."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return {_LABEL_PREFIX + key: value for key, value in carrier.items()}


def _parent_of(run: Run) -> otel_context.Context | None:
    """The trace context the run's trigger stored, if any (else: the current one)."""
    carrier = {
        key[len(_LABEL_PREFIX) :]: run.labels[key] for key in TRACE_LABELS if key in run.labels
    }
    return _PROPAGATOR.extract(carrier) if carrier else None


def _run_attributes(run: Run, worker_id: str) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "durably.job.name": run.job_name,
        "durably.run.id": run.id,
        "durably.run.attempt": run.lease_generation,
        "durably.worker.id": worker_id,
    }
    for key, value in run.labels.items():
        if key not in TRACE_LABELS:
            attributes[f"durably.run.label.{key}"] = value
    return attributes


@dataclass
class _TriggerScope:
    telemetry: _Telemetry
    job_name: str
    span: Span
    labels: Mapping[str, str]

    def done(self, results: Sequence[TriggerResult]) -> None:
        if len(results) == 1:
            self.span.set_attribute("durably.run.id", results[0].id)
            self.span.set_attribute("durably.trigger.disposition", results[0].disposition)
        for result in results:
            self.telemetry.triggered.add(
                1, {"durably.job.name": self.job_name, "disposition": result.disposition}
            )


@dataclass
class _OpenStep:
    span: Span
    token: Token[otel_context.Context]
    t0: float


@dataclass
class _RunScope:
    telemetry: _Telemetry
    run: Run
    span: Span
    token: Token[otel_context.Context]
    t0: float = field(default_factory=time.perf_counter)
    replays: int = 0
    step: _OpenStep | None = None

    def replayed(self, name: str, index: int, record: StepRecord) -> None:
        self.replays += 1
        now = time.time_ns()  # a mark, not a measure: the work was done before
        span = self.telemetry.tracer.start_span(
            f"step {name}",
            context=trace.set_span_in_context(self.span),
            start_time=now,
            attributes={
                "durably.job.name": self.run.job_name,
                "durably.run.id": self.run.id,
                "durably.step.name": name,
                "durably.step.index": index,
                "durably.step.replayed": True,
                "durably.step.completed_at": record.completed_at.isoformat()
                if record.completed_at
                else "",
            },
        )
        span.end(end_time=now)

    def finished(self, outcome: RunOutcome, error: str | None) -> None:
        telemetry, span, job = self.telemetry, self.span, self.run.job_name
        telemetry.runs.pop(self.run.id, None)
        if self.step is not None:  # a step cut off without its event (its lease lost)
            self.step.span.set_status(Status(StatusCode.ERROR, outcome))
            self.step.span.end()
        span.set_attribute("durably.run.status", outcome)
        span.set_attribute("durably.run.replayed_steps", self.replays)
        if outcome == "completed":
            span.set_status(Status(StatusCode.OK))
        elif outcome in _ERRORS:
            span.set_status(Status(StatusCode.ERROR, error or outcome))
        span.end()
        otel_context.detach(self.token)
        attributes = {"durably.job.name": job, "status": outcome}
        telemetry.finished.add(1, attributes)
        telemetry.run_duration.record(time.perf_counter() - self.t0, attributes)
        if outcome == "lease-lost":
            telemetry.lease_losses.add(1, {"durably.job.name": job})


class _Telemetry:
    """The observer of one Durably (see durably._observe)."""

    def __init__(self, tracer: trace.Tracer, meter: metrics.Meter, worker_id: str) -> None:
        self.tracer = tracer
        self.worker_id = worker_id
        #: Executions in progress in this process, by run id.
        self.runs: dict[str, _RunScope] = {}
        self.triggered = meter.create_counter(
            "durably.runs.triggered", unit="{run}", description="Runs triggered, by disposition"
        )
        self.finished = meter.create_counter(
            "durably.runs.finished",
            unit="{run}",
            description="Executions ended, by status (completed, failed, cancelled, "
            "waiting, lease-lost, shutdown, storage-error, unfinished)",
        )
        self.run_duration = meter.create_histogram(
            "durably.run.duration", unit="s", description="Duration of an execution of a run"
        )
        self.step_duration = meter.create_histogram(
            "durably.step.duration", unit="s", description="Duration of an executed step"
        )
        self.claim_latency = meter.create_histogram(
            "durably.claim.latency",
            unit="s",
            description="From a run's trigger to its first claim by a worker",
        )
        self.lease_losses = meter.create_counter(
            "durably.lease.losses", unit="{run}", description="Executions that lost their lease"
        )
        self.worker_errors = meter.create_counter(
            "durably.worker.errors", unit="{error}", description="worker:error events, by context"
        )

    # -- triggers: in the caller's context --

    @contextmanager
    def triggering(self, job_name: str, count: int) -> Iterator[_TriggerScope]:
        with self.tracer.start_as_current_span(
            f"trigger {job_name}",
            kind=SpanKind.PRODUCER,
            attributes={"durably.job.name": job_name, "durably.trigger.count": count},
        ) as span:
            yield _TriggerScope(self, job_name, span, trace_labels())

    # -- executions: in the execution's context --

    def run_started(self, run: Run) -> _RunScope:
        span = self.tracer.start_span(
            f"run {run.job_name}",
            context=_parent_of(run),
            kind=SpanKind.CONSUMER,
            attributes=_run_attributes(run, self.worker_id),
        )
        # current for the job (its task copies this context) and the steps' spans
        token = otel_context.attach(trace.set_span_in_context(span))
        scope = _RunScope(self, run, span, token)
        self.runs[run.id] = scope
        if run.lease_generation == 1 and run.started_at is not None:
            latency = (run.started_at - run.created_at).total_seconds()
            self.claim_latency.record(max(0.0, latency), {"durably.job.name": run.job_name})
        return scope

    # -- executed steps: the events, emitted in the job's task --

    def on_event(self, event: Event) -> None:
        kind = event.type
        if kind == "worker:error":
            self.worker_errors.add(1, {"context": getattr(event, "context", "")})
            return
        scope = self.runs.get(getattr(event, "run_id", ""))
        if scope is None:  # a run this observer did not see start
            return
        if kind == "step:start":
            self._step_started(scope, event)
        else:
            self._step_ended(scope, event)

    def _step_started(self, scope: _RunScope, event: Any) -> None:
        span = self.tracer.start_span(
            f"step {event.step_name}",
            context=trace.set_span_in_context(scope.span),
            attributes={
                "durably.job.name": event.job_name,
                "durably.run.id": event.run_id,
                "durably.step.name": event.step_name,
                "durably.step.index": event.step_index,
                "durably.step.replayed": False,
            },
        )
        # current while the step's function runs (a sync one's thread copies it)
        token = otel_context.attach(trace.set_span_in_context(span))
        scope.step = _OpenStep(span, token, time.perf_counter())

    def _step_ended(self, scope: _RunScope, event: Any) -> None:
        step = scope.step
        if step is None:
            return
        scope.step = None
        status = {
            "step:complete": "completed",
            "step:fail": "failed",
            "step:retry": "retried",  # this attempt failed; another comes
        }.get(event.type, "cancelled")
        step.span.set_attribute("durably.step.status", status)
        if status == "retried":
            step.span.set_attribute("durably.step.attempt", event.attempt)
        if status == "completed":
            step.span.set_status(Status(StatusCode.OK))
        elif status in ("failed", "retried"):
            step.span.set_status(Status(StatusCode.ERROR, event.error))
        step.span.end()
        # A step that waits for its next attempt without a slot is announced once its
        # job has unwound, from the execution's own context: the job's, where the span
        # was made current, has ended with its task (nothing to detach there).
        if trace.get_current_span() is step.span:
            otel_context.detach(step.token)
        self.step_duration.record(
            time.perf_counter() - step.t0, {"durably.job.name": event.job_name, "status": status}
        )
