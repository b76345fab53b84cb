"""What OpenTelemetry costs per step: one run of N trivial steps, µs per step inside
the job, not instrumented / instrumented.

Per round, interleaved so load changes hit all alike: raw sqlite3 (the bare-table
baseline of the W benchmarks), then the same job on each configuration:

- ``plain``: not instrumented (what every user without ``durably.otel`` pays);
- ``otel-api``: ``instrument(durably)`` with the API's default no-op provider (the
  extra installed, no SDK configured);
- ``otel-sdk``: an SDK ``TracerProvider`` and ``MeterProvider`` with a
  ``BatchSpanProcessor`` to an exporter that drops the spans (recording and
  queueing every span: what an application exporting traces pays, less the export).

On ``sqlite:///:memory:`` (the engine and SQL without a disk) and a SQLite file at
``synchronous=NORMAL`` (``memory://`` scans a run's steps at each checkpoint, which
would swamp the figures).
Medians over the rounds. Runs where ``durably.otel`` does not exist (an older
checkout) measure ``plain`` only, for a before/after comparison in the same hour.

    uv run python bench/otel_overhead.py [--steps N] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _bench import emit, header, print_table, raw_us_per_insert, sqlite_url

from durably import Step, create_durably, define_job

try:
    from durably.otel import instrument
except ImportError:  # before durably.otel: only the plain figure
    instrument = None  # type: ignore[assignment]


async def trivial() -> int:
    return 1


@define_job("otel-bench")
async def bench_job(step: Step, payload: dict[str, Any]) -> float:
    n = payload["steps"]
    t0 = time.perf_counter()
    for i in range(n):
        await step.run(f"s{i}", trivial)
    return time.perf_counter() - t0


def sdk_providers() -> tuple[Any, Any]:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class Drop(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(Drop(), max_queue_size=1 << 16))
    return tracer_provider, MeterProvider()


async def per_step(url: str, n: int, mode: str, providers: tuple[Any, Any] | None) -> float:
    async with create_durably(url, jobs={"b": bench_job}) as durably:
        if mode == "otel-api":
            instrument(durably)
        elif mode == "otel-sdk":
            assert providers is not None
            instrument(durably, tracer_provider=providers[0], meter_provider=providers[1])
        result = await durably.jobs.b.trigger_and_wait({"steps": n})
    return float(result.output) / n * 1e6


async def main(n: int, rounds: int) -> None:
    header(f"OpenTelemetry per-step cost: 1 run x {n} trivial steps, {rounds} rounds")
    modes = ["plain"] if instrument is None else ["plain", "otel-api", "otel-sdk"]
    providers = sdk_providers() if instrument is not None else None
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        targets = {
            "sqlite-memory": lambda: "sqlite:///:memory:",
            "sqlite-file": lambda: sqlite_url(d / "x.db"),
        }
        results: dict[tuple[str, str], list[float]] = {}
        raw: list[float] = []
        for mode in modes:  # warm-up
            for target in targets.values():
                await per_step(target(), n, mode, providers)
        for _ in range(rounds):
            raw.append(raw_us_per_insert(d / "raw.db", "NORMAL", n, "bare"))
            for mode in modes:
                for name, target in targets.items():
                    value = await per_step(target(), n, mode, providers)
                    results.setdefault((name, mode), []).append(value)
    b = statistics.median(raw)
    for (name, mode), values in results.items():
        value = statistics.median(values)
        plain = statistics.median(results[(name, "plain")])
        emit(
            "OTEL",
            f"µs per step, {name}, {mode}",
            value,
            "µs",
            raw=b,
            ratio=value / b,
            vs_plain=value - plain,
            steps=n,
            rounds=rounds,
            samples=[round(x, 1) for x in values],
        )
    if providers is not None:
        providers[0].shutdown()
    print_table()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.steps, args.rounds))
