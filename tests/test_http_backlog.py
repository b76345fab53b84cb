"""Bounded SSE streams: a client that does not read is disconnected once its
stream has queued ``sse_max_backlog`` bytes for it, instead of the server
holding every later event (it reconnects and gets the replay). Against a real
uvicorn socket with small buffers; the tests await the disconnect itself."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from http_support import (
    GATES,
    JOBS,
    TIMEOUT,
    reach,
    read_to_end,
    serve,
    sse,
    stalled_client,
    wait_until,
)

from durably import Durably, ValidationError
from durably.http import create_handler

LIMIT = 16 * 1024


@pytest.fixture(autouse=True)
def _closed_gates() -> None:
    GATES.reset()


def assert_cut(data: bytes) -> None:
    """The response started as a stream and ended without its last chunk: the
    server dropped the connection (an EventSource reconnects)."""
    assert data.startswith(b"HTTP/1.1 200 OK\r\n"), data[:200]
    assert b"text/event-stream" in data.split(b"\r\n\r\n", 1)[0]
    assert not data.endswith(b"0\r\n\r\n"), data[-200:]


async def test_backlog__a_runs_stream_that_is_not_read_is_cut(make_durably: Any) -> None:
    d: Durably = make_durably(jobs=JOBS)
    await d.migrate()
    app = create_handler(d, sse_max_backlog=LIMIT)
    hub = app.state.durably_hub
    async with serve(app, sndbuf=8192) as base:
        sock = await stalled_client(base, "/runs/subscribe")
        await wait_until(lambda: hub.streams == 1)
        triggered = 0
        async with asyncio.timeout(TIMEOUT * 3):
            while hub.streams:  # each run:trigger frame carries 1 KB of labels
                await d.jobs["add"].trigger({"a": 1, "b": 2}, labels={"pad": "x" * 1000})
                triggered += 1
                await asyncio.sleep(0)  # let the fan-out's flush timer run
        data = await read_to_end(sock)
        sock.close()
        assert_cut(data)
        assert data.count(b"run:trigger") < triggered  # it missed what came after the cut
        # a client that reads gets a stream as usual
        async with httpx.AsyncClient(base_url=base) as client, sse(client, "/runs/subscribe") as s:
            run = await d.jobs["add"].trigger({"a": 5, "b": 5})
            frame = await s.frame()
        assert frame is not None
        assert (frame["type"], frame["runId"]) == ("run:trigger", run.id)


async def test_backlog__a_run_stream_that_is_not_read_is_cut_then_replayed(
    make_durably: Any,
) -> None:
    d: Durably = make_durably(jobs=JOBS)
    await d.init()
    app = create_handler(d, sse_max_backlog=LIMIT)
    hub = app.state.durably_hub
    async with serve(app, sndbuf=8192) as base:
        run_id = (await d.jobs["chatty"].trigger({"key": "c"})).id
        await reach(d, run_id, "leased")
        sock = await stalled_client(base, f"/subscribe?runId={run_id}")
        await wait_until(lambda: hub.streams == 1)
        # the job logs 1 KB messages until told to stop; the stream must be cut
        await wait_until(lambda: hub.streams == 0)
        data = await read_to_end(sock)
        sock.close()
        assert_cut(data)
        assert b"log:write" in data
        # the client reconnects: the replay of the run as it is now, then live events
        async with (
            httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as client,
            sse(client, f"/subscribe?runId={run_id}") as s,
        ):
            first = await s.frame()
            assert first is not None
            assert (first["type"], first["runId"], first["sequence"]) == (
                "run:leased",
                run_id,
                0,
            )
            GATES.open("c:end")
            frames = await s.frames_until_close()
    assert frames[-1]["type"] == "run:complete"
    assert frames[-1]["output"]["logs"] > 0


async def test_backlog__a_client_that_reads_is_never_cut(make_durably: Any) -> None:
    """Only what queues while the server waits for the client counts: a run
    sending more than the limit in all to a client that keeps reading is whole."""
    d: Durably = make_durably(jobs=JOBS)
    await d.init()
    app = create_handler(d, sse_max_backlog=4 * LIMIT)
    async with (
        serve(app) as base,
        httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as client,
    ):
        run_id = (await d.jobs["gated"].trigger({"key": "r", "steps": 200})).id
        async with sse(client, f"/subscribe?runId={run_id}") as s:
            for i in range(200):
                GATES.open(f"r:{i}")
            frames = await s.frames_until_close()
    assert frames[-1]["type"] == "run:complete"
    assert sum(f["type"] == "step:complete" for f in frames) == 200
    assert sum(len(raw) for raw in s.raw) > 4 * LIMIT


def test_create_handler__checks_sse_max_backlog(make_durably: Any) -> None:
    d = make_durably()
    bad: Any
    for bad in [0, -1, 1.5, True, "1mb", None]:
        with pytest.raises(ValidationError, match="sse_max_backlog"):
            create_handler(d, sse_max_backlog=bad)
