"""durably.otel: spans (trigger → run → steps, replayed steps marked, one trace from
the code that triggers to the worker that executes, across processes) and metrics,
read from the OpenTelemetry SDK's in-memory exporters (docs/guides/observability.md)."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from engine_support import at_once, recorder
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, get_current_span
from process_support import run_captured

from durably import ConflictError, RunFailedError, Step, ValidationError, define_job
from durably.otel import Instrumentation, instrument
from durably.sync import create_durably as create_blocking
from durably_testing.clock import ManualClock


@dataclass
class Otel:
    """An SDK set up as an application would, exporting to memory."""

    spans: InMemorySpanExporter
    tracer_provider: TracerProvider
    metrics: InMemoryMetricReader
    meter_provider: MeterProvider

    def instrument(self, durably: Any) -> Instrumentation:
        return instrument(
            durably, tracer_provider=self.tracer_provider, meter_provider=self.meter_provider
        )

    def finished(self, name: str | None = None) -> list[ReadableSpan]:
        spans = list(self.spans.get_finished_spans())
        return [s for s in spans if name is None or s.name == name]

    def points(self, metric: str) -> list[tuple[dict[str, Any], Any]]:
        """``(attributes, value or count)`` of each data point of ``metric``."""
        data = self.metrics.get_metrics_data()
        found: list[tuple[dict[str, Any], Any]] = []
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for m in scope.metrics:
                    if m.name == metric:
                        for p in m.data.data_points:
                            # a counter's value, or how many values a histogram got
                            value = getattr(p, "value", None)
                            if value is None:
                                value = getattr(p, "count", None)
                            found.append((dict(p.attributes or {}), value))
        return found


@pytest.fixture
def otel() -> Iterator[Otel]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield Otel(spans, tracer_provider, reader, meter_provider)
    tracer_provider.shutdown()
    meter_provider.shutdown()


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


def attrs(span: ReadableSpan) -> Any:
    assert span.attributes is not None
    return span.attributes


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.trace_id)


class Flaky:
    """Step ``b`` fails on its first call; the job's own code makes a span in each step."""

    def __init__(self, tracer_provider: TracerProvider) -> None:
        self.failures = 1
        self.tracer = tracer_provider.get_tracer("app")
        self.seen_in_b: list[int] = []

    async def job(self, step: Step, payload: Any) -> Any:
        a = await step.run("a", self.a)
        return a + await step.run("b", self.b)

    async def a(self) -> int:
        with self.tracer.start_as_current_span("app work in a"):
            return 1

    def b(self) -> int:  # sync: runs in a thread
        self.seen_in_b.append(get_current_span().get_span_context().span_id)
        if self.failures:
            self.failures -= 1
            raise RuntimeError("b broke")
        return 2


async def test_spans__trigger_run_steps_one_trace(make_durably: Any, otel: Otel) -> None:
    flaky = Flaky(otel.tracer_provider)
    d = make_durably({"j": define_job("j", run=flaky.job)}, preserve_steps=True)
    otel.instrument(d)
    with otel.tracer_provider.get_tracer("app").start_as_current_span("request") as request:
        result = await d.jobs.j.trigger(None, labels={"tenant": "acme"})
    assert set(result.run.labels) == {"tenant", "otel.traceparent"}
    await d.process_one()  # fails in b
    with pytest.raises(RunFailedError):
        await d.wait_for_run(result.id)
    await d.retry(result.id)
    await d.process_one()  # a replayed, b runs again
    assert (await d.wait_for_run(result.id)).output == 3

    (req,) = otel.finished("request")
    (trigger,) = otel.finished("trigger j")
    first, second = otel.finished("run j")
    assert {trace_id(s) for s in otel.finished()} == {request.get_span_context().trace_id}
    assert trigger.kind is SpanKind.PRODUCER
    assert parent_id(trigger) == span_id(req)
    assert trigger.attributes is not None
    assert trigger.attributes["durably.run.id"] == result.id
    assert trigger.attributes["durably.trigger.disposition"] == "created"
    for run, attempt, status, code in (
        (first, 1, "failed", StatusCode.ERROR),
        (second, 2, "completed", StatusCode.OK),
    ):
        assert run.kind is SpanKind.CONSUMER
        assert parent_id(run) == span_id(trigger)
        assert run.attributes is not None
        assert run.attributes["durably.run.id"] == result.id
        assert run.attributes["durably.job.name"] == "j"
        assert run.attributes["durably.run.attempt"] == attempt
        assert run.attributes["durably.run.status"] == status
        assert run.attributes["durably.run.label.tenant"] == "acme"
        assert "durably.run.label.otel.traceparent" not in run.attributes
        assert run.attributes["durably.worker.id"] == d.worker_id
        assert run.status.status_code is code
    assert first.status.description == "b broke"

    steps = [s for s in otel.finished() if s.name.startswith("step ")]
    by_run = {span_id(first): [], span_id(second): []}  # type: dict[int, list[ReadableSpan]]
    for s in steps:
        by_run[parent_id(s) or 0].append(s)
    assert [
        (s.name, (s.attributes or {})["durably.step.replayed"], s.status.status_code)
        for s in by_run[span_id(first)]
    ] == [
        ("step a", False, StatusCode.OK),
        ("step b", False, StatusCode.ERROR),
    ]
    replayed_a, b = by_run[span_id(second)]
    assert (replayed_a.name, (replayed_a.attributes or {})["durably.step.replayed"]) == (
        "step a",
        True,
    )
    assert replayed_a.start_time == replayed_a.end_time  # marked, not re-timed
    assert (b.name, (b.attributes or {})["durably.step.replayed"]) == ("step b", False)
    assert (second.attributes or {})["durably.run.replayed_steps"] == 1
    # the job's own spans nest under the step running them, in its thread too
    (work,) = otel.finished("app work in a")
    assert parent_id(work) == span_id(by_run[span_id(first)][0])
    assert flaky.seen_in_b == [span_id(by_run[span_id(first)][1]), span_id(b)]


async def test_metrics__triggers_runs_steps_claims(make_durably: Any, otel: Otel) -> None:
    flaky = Flaky(otel.tracer_provider)
    d = make_durably({"j": define_job("j", run=flaky.job)}, preserve_steps=True)
    otel.instrument(d)
    result = await d.jobs.j.trigger(None, idempotency_key="k")
    await d.jobs.j.trigger(None, idempotency_key="k")
    await d.process_one()
    await d.retry(result.id)
    await d.process_one()
    assert sorted(otel.points("durably.runs.triggered"), key=str) == [
        ({"durably.job.name": "j", "disposition": "created"}, 1),
        ({"durably.job.name": "j", "disposition": "idempotent"}, 1),
    ]
    assert sorted(otel.points("durably.runs.finished"), key=str) == [
        ({"durably.job.name": "j", "status": "completed"}, 1),
        ({"durably.job.name": "j", "status": "failed"}, 1),
    ]
    assert sorted(otel.points("durably.step.duration"), key=str) == [
        ({"durably.job.name": "j", "status": "completed"}, 2),  # a, then b (a replayed)
        ({"durably.job.name": "j", "status": "failed"}, 1),
    ]
    assert len(otel.points("durably.run.duration")) == 2
    assert otel.points("durably.claim.latency") == [({"durably.job.name": "j"}, 1)]  # first claim
    assert otel.points("durably.lease.losses") == []


LEASE = 30.0


async def test_lease_loss__the_run_span_says_so(
    make_durably: Any, clock: ManualClock, otel: Otel
) -> None:
    entered, release = asyncio.Event(), asyncio.Event()
    calls = {"slow": 0}

    async def slow() -> str:
        calls["slow"] += 1
        if calls["slow"] == 1:
            entered.set()
            await release.wait()
        return "done"

    async def job(step: Step, payload: Any) -> Any:
        await step.run("first", lambda: 1)
        return await step.run("slow", slow)

    jobs = {"j": define_job("j", run=job)}
    a = make_durably(jobs, lease_duration=LEASE)
    b = make_durably(jobs, same_db_as=a, lease_duration=LEASE)
    otel.instrument(a)
    errors = recorder(a, "worker:error")
    run_id = (await a.jobs.j.trigger(None)).id
    task = asyncio.create_task(a.process_one())
    await asyncio.wait_for(entered.wait(), 5)
    clock.set(clock.now() + timedelta(seconds=LEASE + 1))  # A stalls past its lease
    assert await b.process_one()  # B takes the run over and completes it
    release.set()  # A wakes: its checkpoint is refused
    assert await asyncio.wait_for(task, 5)
    assert len(errors) == 1
    (run,) = otel.finished("run j")
    assert (run.attributes or {})["durably.run.status"] == "lease-lost"
    assert run.status.status_code is StatusCode.ERROR
    slow_span = otel.finished("step slow")[0]
    assert slow_span.status.status_code is StatusCode.ERROR  # ended with its run
    assert otel.points("durably.lease.losses") == [({"durably.job.name": "j"}, 1)]
    assert ({"context": "lease-lost"}, 1) in otel.points("durably.worker.errors") or (
        {"context": "lease-renewal"},
        1,
    ) in otel.points("durably.worker.errors")
    done = await b.get_run(run_id)
    assert done is not None
    assert done.output == "done"


async def test_cancel__an_ended_run_not_an_error(make_durably: Any, otel: Otel) -> None:
    entered = asyncio.Event()

    async def job(step: Step, payload: Any) -> Any:
        async def wait() -> None:
            entered.set()
            await asyncio.Event().wait()

        return await step.run("wait", wait)

    d = make_durably({"j": define_job("j", run=job)})
    otel.instrument(d)
    run_id = (await d.jobs.j.trigger(None)).id
    task = asyncio.create_task(d.process_one())
    await asyncio.wait_for(entered.wait(), 5)
    await d.cancel(run_id)
    await asyncio.wait_for(task, 5)
    (run,) = otel.finished("run j")
    assert (run.attributes or {})["durably.run.status"] == "cancelled"
    assert run.status.status_code is StatusCode.UNSET
    (wait,) = otel.finished("step wait")
    assert (wait.attributes or {})["durably.step.status"] == "cancelled"


async def test_retrigger__joins_the_trace_that_retriggers(make_durably: Any, otel: Otel) -> None:
    d = make_durably({"j": define_job("j", run=Flaky(otel.tracer_provider).job)})
    otel.instrument(d)
    tracer = otel.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("first"):
        old = await d.jobs.j.trigger(None)
    await d.process_one()
    with tracer.start_as_current_span("second") as second:
        new = await d.retrigger(old.id)
    assert new.labels["otel.traceparent"] != old.run.labels["otel.traceparent"]
    assert f"{second.get_span_context().trace_id:032x}" in new.labels["otel.traceparent"]
    # no span current: the trigger span starts a trace of its own
    third = (await d.retrigger(old.id)).labels["otel.traceparent"]
    assert third.split("-")[1] not in (
        old.run.labels["otel.traceparent"],
        new.labels["otel.traceparent"],
    )
    (root,) = [s for s in otel.finished("trigger j") if s.parent is None]
    assert f"{trace_id(root):032x}" == third.split("-")[1]


async def test_batch_trigger__one_span_for_the_batch(make_durably: Any, otel: Otel) -> None:
    d = make_durably({"j": define_job("j", run=Flaky(otel.tracer_provider).job)})
    otel.instrument(d)
    runs = await d.jobs.j.batch_trigger([None, None, None])
    (trigger,) = otel.finished("trigger j")
    assert (trigger.attributes or {})["durably.trigger.count"] == 3
    assert len({r.run.labels["otel.traceparent"] for r in runs}) == 1
    with pytest.raises(ValidationError):
        await d.jobs.j.trigger(None, labels={"bad key!": "x"})
    failed = otel.finished("trigger j")[-1]
    assert failed.status.status_code is StatusCode.ERROR  # nothing written
    assert otel.points("durably.runs.triggered") == [
        ({"durably.job.name": "j", "disposition": "created"}, 3)
    ]


async def test_not_instrumented__nothing_listens_nothing_is_added(
    make_durably: Any, otel: Otel
) -> None:
    d = make_durably({"j": define_job("j", run=Flaky(otel.tracer_provider).job)})
    bus = d._services.bus
    assert d._services.observer is None
    instrumentation = otel.instrument(d)
    assert bus.wants("step:start")
    with pytest.raises(ConflictError, match="instrumented already"):
        otel.instrument(d)
    instrumentation.uninstrument()
    instrumentation.uninstrument()  # idempotent
    assert d._services.observer is None
    assert not bus.wants("step:start")  # the per-step path builds no event again
    with otel.tracer_provider.get_tracer("app").start_as_current_span("request"):
        result = await d.jobs.j.trigger(None)
    assert result.run.labels == {}
    await d.process_one()
    assert [s.name for s in otel.finished()] == ["request", "app work in a"]  # the app's own
    with pytest.raises(ValidationError, match=r"Durably or a durably\.sync"):
        instrument("not durably")  # type: ignore[arg-type]


def test_blocking_api__the_callers_span_crosses_to_the_loop_thread(
    tmp_path: Path, otel: Otel
) -> None:
    flaky = Flaky(otel.tracer_provider)
    flaky.failures = 0
    with create_blocking(
        f"sqlite:///{tmp_path / 'x.db'}", jobs={"j": define_job("j", run=flaky.job)}
    ) as d:
        otel.instrument(d)
        tracer = otel.tracer_provider.get_tracer("app")

        def request(_: int) -> Any:  # a WSGI request thread, with its own span
            with tracer.start_as_current_span("request"):
                return d.jobs.j.trigger_and_wait(None, timeout=60).output

        assert at_once(request, range(4)) == [3] * 4
    requests = otel.finished("request")
    triggers = otel.finished("trigger j")
    runs = otel.finished("run j")
    assert len(requests) == len(triggers) == len(runs) == 4
    assert {parent_id(t) for t in triggers} == {span_id(r) for r in requests}
    assert {parent_id(r) for r in runs} == {span_id(t) for t in triggers}
    assert len({trace_id(r) for r in requests}) == 4


# -- two real processes: one triggers, the other executes --

COMMON = """
import json, sys
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from durably import Step, define_job
from durably.otel import instrument
from durably.sync import create_durably

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))

async def fetch() -> int:
    return 41

@define_job("report")
async def report(step: Step, payload: object) -> int:
    return await step.run("fetch", fetch) + await step.run("add", lambda: 1)

def dump(path: str) -> None:
    spans = [
        {"name": s.name, "trace": s.context.trace_id, "id": s.context.span_id,
         "parent": s.parent.span_id if s.parent else None,
         "replayed": (s.attributes or {}).get("durably.step.replayed")}
        for s in exporter.get_finished_spans()
    ]
    json.dump(spans, open(path, "w"))

d = create_durably(sys.argv[1], jobs={"report": report})
instrument(d, tracer_provider=provider)
"""

TRIGGER = """
with provider.get_tracer("web").start_as_current_span("POST /reports"):
    run = d.jobs.report.trigger(None)
d.close()
dump(sys.argv[2])
print(run.id)
"""

EXECUTE = """
assert d.process_until_idle() == 1
d.close()
dump(sys.argv[2])
"""


@pytest.mark.slow
def test_one_trace_across_two_processes(tmp_path: Path) -> None:
    """The trigger's process and the worker's process export their own spans; the
    trace goes from one to the other through the run's labels."""
    url = f"sqlite:///{tmp_path / 'x.db'}"
    (tmp_path / "trigger.py").write_text(COMMON + textwrap.dedent(TRIGGER))
    (tmp_path / "execute.py").write_text(COMMON + textwrap.dedent(EXECUTE))
    triggered = run_captured([sys.executable, "trigger.py", url, "a.json"], cwd=tmp_path)
    assert triggered.returncode == 0, triggered.stderr
    executed = run_captured([sys.executable, "execute.py", url, "b.json"], cwd=tmp_path)
    assert executed.returncode == 0, executed.stderr
    a = {s["name"]: s for s in json.loads((tmp_path / "a.json").read_text())}
    b = {s["name"]: s for s in json.loads((tmp_path / "b.json").read_text())}
    assert set(a) == {"POST /reports", "trigger report"}
    assert set(b) == {"run report", "step fetch", "step add"}
    assert {s["trace"] for s in [*a.values(), *b.values()]} == {a["POST /reports"]["trace"]}
    assert a["trigger report"]["parent"] == a["POST /reports"]["id"]
    assert b["run report"]["parent"] == a["trigger report"]["id"]
    assert b["step fetch"]["parent"] == b["step add"]["parent"] == b["run report"]["id"]
    assert b["step fetch"]["replayed"] is False


async def test_spans__a_retried_step_and_a_run_waiting_for_its_next_attempt(
    make_durably: Any, otel: Otel, clock: ManualClock
) -> None:
    from durably import Retry

    calls: list[int] = []

    def flaky() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("once")
        return 1

    async def job(step: Step, payload: Any) -> int:
        value = await step.run("s", flaky, retry=Retry(initial=10, jitter=0))
        if len(calls) < 3:
            raise RuntimeError("the whole run once")
        return value

    d = make_durably({"j": define_job("j", run=job, run_retry=Retry(initial=10, jitter=0))})
    otel.instrument(d)
    await d.migrate()
    await d.jobs.j.trigger({})
    assert await d.process_one()  # step attempt 1 fails: the run waits 10 s
    await clock.advance(10)
    assert await d.process_one()  # attempt 2 succeeds; the job fails: the run waits
    calls.append(1)
    await clock.advance(10)
    assert await d.process_one()  # replays the step, completes
    steps = [s for s in otel.finished("step s") if not attrs(s)["durably.step.replayed"]]
    assert [attrs(s)["durably.step.status"] for s in steps] == ["retried", "completed"]
    assert steps[0].status.status_code is StatusCode.ERROR
    assert attrs(steps[0])["durably.step.attempt"] == 1
    runs = otel.finished("run j")
    assert [attrs(r)["durably.run.status"] for r in runs] == [
        "waiting",
        "waiting",
        "completed",
    ]
    assert [r.status.status_code for r in runs[:2]] == [StatusCode.UNSET, StatusCode.UNSET]
