"""durably.http's ``/runs/subscribe`` fan-out, without a server: filters (by job,
by labels, both, none), one encoding and one write per flush shared by all
streams, flush spacing, the shared progress throttle, and clean-up."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from durably import (
    Event,
    Progress,
    RunCompleteEvent,
    RunProgressEvent,
    RunTriggerEvent,
    StepStartEvent,
)
from durably.http import _serialize
from durably.http._backlog import Backlog
from durably.http._fanout import RUNS_FLUSH_INTERVAL, RUNS_LINGER, RunsFanout, RunsStream
from durably.http._serialize import Outgoing, event_payload, sse_frame, trimmed_payload

NOW = datetime(2026, 1, 2, 3, 4, 5, 678_000, tzinfo=UTC)


def run_event(cls: type[Event], run_id: str, job: str = "a", **fields: Any) -> Outgoing:
    labels = fields.pop("labels", {})
    event = cls(  # type: ignore[call-arg]
        timestamp=NOW, sequence=1, run_id=run_id, job_name=job, labels=labels, **fields
    )
    return Outgoing(event)


def trigger(run_id: str, job: str = "a", **labels: str) -> Outgoing:
    return run_event(RunTriggerEvent, run_id, job, input=None, labels=labels)


def progress(run_id: str, current: int) -> Outgoing:
    return run_event(RunProgressEvent, run_id, progress=Progress(current=current, total=9))


def complete(run_id: str) -> Outgoing:
    return run_event(RunCompleteEvent, run_id, output=None, duration=1.0)


def run_ids(chunk: bytes) -> list[str]:
    frames = chunk.split(b"\n\n")
    assert frames[-1] == b""
    return [f.split(b'"runId":"', 1)[1].split(b'"', 1)[0].decode() for f in frames[:-1]]


async def take(stream: RunsStream, timeout: float = 2.0) -> bytes:
    async with asyncio.timeout(timeout):
        return await stream.next()


async def nothing_in(stream: RunsStream, seconds: float) -> bool:
    try:
        await take(stream, seconds)
    except TimeoutError:
        return True
    return False


def test_outgoing__frames_are_the_protocol_frames_encoded_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = run_event(StepStartEvent, "r1", step_name="s", step_index=0)
    assert out.full == sse_frame(event_payload(out.event))
    assert out.trimmed == sse_frame(trimmed_payload(out.event))
    calls: list[Any] = []

    def counting(p: Any) -> bytes:
        calls.append(p)
        return b"x"

    monkeypatch.setattr(_serialize, "sse_frame", counting)
    assert out.full is out.full
    assert out.trimmed is out.trimmed
    assert calls == []  # both were cached by the first reads
    assert out.full.startswith(b'data: {"type":"step:start","timestamp":"2026-01-02T03:04:05.678Z"')


async def test_fanout__filters_by_job_labels_both_and_none() -> None:
    fanout = RunsFanout(throttle=0)
    streams = {
        name: RunsStream(Backlog(1 << 20)) for name in ("all", "job", "label", "two_labels", "both")
    }
    fanout.add(streams["all"], None, None)
    fanout.add(streams["job"], ("b", "c"), None)
    fanout.add(streams["label"], None, {"org": "x"})
    fanout.add(streams["two_labels"], None, {"org": "x", "team": "t"})
    fanout.add(streams["both"], ("b",), {"org": "x"})
    for out in (
        trigger("r1", "a"),
        trigger("r2", "b"),
        trigger("r3", "a", org="x"),
        trigger("r4", "b", org="x", team="t"),
        trigger("r5", "c", org="y", team="t"),
        trigger("r6", "a", team="t", org="x"),
    ):
        fanout.push(out)
    got = {name: run_ids(await take(s)) for name, s in streams.items()}
    assert got == {
        "all": ["r1", "r2", "r3", "r4", "r5", "r6"],
        "job": ["r2", "r4", "r5"],
        "label": ["r3", "r4", "r6"],
        "two_labels": ["r4", "r6"],
        "both": ["r4"],
    }


async def test_fanout__streams_with_one_filter_share_one_chunk_per_flush() -> None:
    fanout = RunsFanout(throttle=0)
    streams = [RunsStream(Backlog(1 << 20)) for _ in range(50)]
    for s in streams:
        fanout.add(s, ("a",), None)
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(30):  # a burst: gathered into one write
        fanout.push(trigger(f"r{i}"))
    chunks = [await take(s) for s in streams]
    assert loop.time() - start >= RUNS_LINGER * 0.9
    assert all(c is chunks[0] for c in chunks)  # joined once, the same bytes for all
    assert run_ids(chunks[0]) == [f"r{i}" for i in range(30)]
    assert all([await nothing_in(s, 0) for s in streams])


async def test_fanout__flushes_are_spaced() -> None:
    fanout = RunsFanout(throttle=0)
    stream = RunsStream(Backlog(1 << 20))
    fanout.add(stream, None, None)
    loop = asyncio.get_running_loop()
    fanout.push(trigger("r1"))
    await take(stream)
    first = loop.time()
    fanout.push(trigger("r2"))
    assert run_ids(await take(stream)) == ["r2"]
    assert loop.time() - first >= RUNS_FLUSH_INTERVAL * 0.9


async def test_fanout__one_throttle_first_at_once_latest_wins_flushed_before_terminal() -> None:
    fanout = RunsFanout(throttle=1.0)
    a, b = RunsStream(Backlog(1 << 20)), RunsStream(Backlog(1 << 20))
    fanout.add(a, None, None)
    fanout.add(b, ("a",), {"org": "x"})
    fanout.push(progress("r1", 1))
    assert run_ids(await take(a)) == ["r1"]
    for current in (2, 3, 4):
        fanout.push(progress("r1", current))
    assert await nothing_in(a, 0.3)  # held
    held = await take(a, 3.0)  # sent when the interval ends, with no other event
    assert held.count(b"run:progress") == 1
    assert b'"current":4' in held
    fanout.push(progress("r1", 5))
    fanout.push(progress("r1", 6))
    fanout.push(complete("r1"))
    end = await take(a)
    assert end.index(b'"current":6') < end.index(b"run:complete")
    assert b'"current":5' not in end
    assert await nothing_in(b, 0.05)  # not its labels


async def test_fanout__last_stream_leaving_resets_everything() -> None:
    fanout = RunsFanout(throttle=10)
    one, two = RunsStream(Backlog(1 << 20)), RunsStream(Backlog(1 << 20))
    stop_one = fanout.add(one, ("a",), {"org": "x"})
    stop_two = fanout.add(two, ("a",), {"org": "x"})
    fanout.push(run_event(RunProgressEvent, "r1", labels={"org": "x"}, progress=Progress(1)))
    fanout.push(run_event(RunProgressEvent, "r1", labels={"org": "x"}, progress=Progress(2)))
    stop_one()
    stop_one()  # twice is harmless
    assert fanout.open
    stop_two()
    assert not fanout.open
    again = RunsStream(Backlog(1 << 20))
    fanout.add(again, None, None)
    fanout.push(progress("r1", 3))  # a fresh throttle: sent at once
    assert b'"current":3' in await take(again)
