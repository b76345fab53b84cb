"""durably.http SSE: framing, replay on connect, live events, close after the
terminal event, progress throttling, ``/runs/subscribe`` — against a real
uvicorn server on 127.0.0.1 (ASGITransport buffers whole responses)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from http_support import GATES, JOBS, reach, serve, sse, wait_until

from durably import Durably, RunStatus
from durably.http import Auth, RunsFilter, RunsSubscribeFilter, create_handler


@pytest.fixture(autouse=True)
def _closed_gates() -> None:
    GATES.reset()


EVENT_BASE = {"type", "runId", "jobName", "labels", "timestamp", "sequence"}


@dataclass
class Server:
    durably: Durably
    client: httpx.AsyncClient
    app: Any

    @property
    def open_streams(self) -> int:
        return int(self.app.state.durably_hub.streams)

    async def trigger(self, job: str, input: Any, **options: Any) -> str:
        r = await self.client.post("/trigger", json={"jobName": job, "input": input, **options})
        assert r.status_code == 200, r.text
        return str(r.json()["runId"])


@pytest.fixture
def handler_options() -> dict[str, Any]:
    return {}


@pytest.fixture
async def server(make_durably: Any, handler_options: dict[str, Any]) -> AsyncIterator[Server]:
    d: Durably = make_durably(jobs=JOBS)
    await d.init()
    app = create_handler(d, **handler_options)
    async with serve(app) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
        yield Server(d, client, app)
        await wait_until(lambda: app.state.durably_hub.streams == 0)


def check_frame(frame: dict[str, Any], type_: str, run_id: str) -> None:
    assert frame["type"] == type_, frame
    assert frame["runId"] == run_id
    assert set(frame) >= EVENT_BASE
    assert not any("_" in key for key in frame), frame


async def test_subscribe__pending_run_gets_live_events_then_close(server: Server) -> None:
    run_id = await server.trigger("gated", {"key": "live", "steps": 2})
    # the worker claims it at once; hold it before its first step
    async with sse(server.client, f"/subscribe?runId={run_id}") as s:
        assert s.response.headers["cache-control"] == "no-cache"
        first = await s.frame()
        assert first is not None
        check_frame(first, "run:leased", run_id)
        GATES.open("live:0")
        GATES.open("live:1")
        frames = await s.frames_until_close()
    if frames and frames[0]["type"] == "run:leased":
        # a slow backend (remote libSQL): the snapshot read the claimed row before the
        # claiming worker emitted its live run:leased; it is the same lease
        assert frames[0]["leaseOwner"] == first["leaseOwner"]
        assert frames[0]["leaseExpiresAt"] == first["leaseExpiresAt"]
        frames = frames[1:]
    types = [f["type"] for f in frames]
    assert types[0] == "step:start"
    assert types[-1] == "run:complete"
    assert "run:trigger" not in types
    assert "run:lease-renewed" not in types
    assert {"step:start", "step:complete", "run:progress"} <= set(types)
    done = frames[-1]
    check_frame(done, "run:complete", run_id)
    assert done["output"] == {"done": 2}
    assert done["jobName"] == "gated"
    step = next(f for f in frames if f["type"] == "step:complete")
    assert {"stepName", "stepIndex", "output", "duration"} <= set(step)
    progress = [f for f in frames if f["type"] == "run:progress"]
    assert progress[-1]["progress"] == {"current": 2, "total": 2, "message": "step 2"}
    # framing: every frame exactly "data: <one-line JSON>\n\n"
    for raw in s.raw:
        assert raw.startswith(b"data: {")
        assert raw.endswith(b"}\n\n")
        assert raw.count(b"\n") == 2


async def test_subscribe__log_and_fail_frames(server: Server) -> None:
    run_id = await server.trigger("add", {"a": 1, "b": 2})
    await reach(server.durably, run_id, "completed")
    async with sse(server.client, f"/subscribe?runId={run_id}") as s:
        frames = await s.frames_until_close()
    assert [f["type"] for f in frames] == ["run:complete"]
    run_id = await server.trigger("boom", {"message": "kaput"})
    await reach(server.durably, run_id, "failed")
    async with sse(server.client, f"/subscribe?runId={run_id}") as s:
        (frame,) = await s.frames_until_close()
    check_frame(frame, "run:fail", run_id)
    assert "kaput" in frame["error"]
    assert frame["failedStepName"] == ""  # as the reference's replay
    assert frame["sequence"] == 0


async def test_subscribe__live_log_write_and_step_fail(server: Server) -> None:
    await server.durably.stop()  # trigger while no worker runs, so the stream sees everything
    run_id = await server.trigger("add", {"a": 2, "b": 2})
    boom_id = await server.trigger("boom", {"message": "bad"})
    async with (
        sse(server.client, f"/subscribe?runId={run_id}") as s,
        sse(server.client, f"/subscribe?runId={boom_id}") as b,
    ):
        await wait_until(lambda: server.open_streams == 2)
        server.durably.start()
        frames = await s.frames_until_close()
        boom_frames = await b.frames_until_close()
    assert [f["type"] for f in frames] == [
        "run:leased",
        "step:start",
        "step:complete",
        "log:write",
        "run:complete",
    ]
    log = frames[3]
    check_frame(log, "log:write", run_id)
    assert (log["stepName"], log["level"], log["message"], log["data"]) == (
        None,
        "info",
        "added",
        {"total": 4},
    )
    leased = frames[0]
    assert leased["input"] == {"a": 2, "b": 2}
    assert leased["leaseOwner"] == server.durably.worker_id
    assert leased["leaseExpiresAt"].endswith("Z")
    assert [f["type"] for f in boom_frames] == [
        "run:leased",
        "step:start",
        "step:fail",
        "run:fail",
    ]
    assert boom_frames[2]["error"] == "bad"
    assert boom_frames[3]["failedStepName"] == "explode"


async def test_subscribe__replay_of_a_leased_run(server: Server) -> None:
    run_id = await server.trigger("gated", {"key": "rp", "steps": 3})
    GATES.open("rp:0")
    await reach(server.durably, run_id, "leased", progressed=True)
    async with sse(server.client, f"/subscribe?runId={run_id}") as s:
        leased = await s.frame()
        progress = await s.frame()
        assert leased is not None
        assert progress is not None
        check_frame(leased, "run:leased", run_id)
        check_frame(progress, "run:progress", run_id)
        assert leased["sequence"] == progress["sequence"] == 0
        assert progress["progress"] == {"current": 1, "total": 3, "message": "step 1"}
        GATES.open("rp:1")
        GATES.open("rp:2")
        frames = await s.frames_until_close()
    assert frames[-1]["type"] == "run:complete"


async def test_subscribe__replay_of_a_leased_run_without_progress(server: Server) -> None:
    run_id = await server.trigger("gated", {"key": "np", "steps": 1})
    await reach(server.durably, run_id, "leased")
    async with sse(server.client, f"/subscribe?runId={run_id}") as s:
        leased = await s.frame()
        assert leased is not None
        check_frame(leased, "run:leased", run_id)
        GATES.open("np:0")
        frames = await s.frames_until_close()
    assert [f["type"] for f in frames] == [
        "step:start",
        "step:complete",
        "run:progress",
        "run:complete",
    ]


async def test_subscribe__replay_of_a_pending_run_is_nothing(server: Server) -> None:
    await server.durably.stop()
    run_id = await server.trigger("add", {"a": 1, "b": 1})
    async with sse(server.client, f"/subscribe?runId={run_id}") as s:
        await wait_until(lambda: server.open_streams == 1)
        r = await server.client.post(f"/cancel?runId={run_id}")
        assert r.status_code == 200
        frames = await s.frames_until_close()
    assert [f["type"] for f in frames] == ["run:cancel"]
    assert frames[0]["sequence"] > 0  # live, not a replay


async def test_subscribe__finished_runs_replay_their_terminal_event_and_close(
    server: Server,
) -> None:
    await server.durably.stop()
    run_id = await server.trigger("add", {"a": 1, "b": 1})
    await server.client.post(f"/cancel?runId={run_id}")
    for _ in range(3):  # a browser reconnects to a closed stream: same answer each time
        async with sse(server.client, f"/subscribe?runId={run_id}") as s:
            frames = await s.frames_until_close()
        assert len(frames) == 1
        check_frame(frames[0], "run:cancel", run_id)
        assert frames[0]["sequence"] == 0


async def test_subscribe__reconnect_storm_is_cheap_and_leaks_nothing(server: Server) -> None:
    run_id = await server.trigger("add", {"a": 1, "b": 1})
    await reach(server.durably, run_id, "completed")

    async def once() -> list[dict[str, Any]]:
        async with sse(server.client, f"/subscribe?runId={run_id}") as s:
            return await s.frames_until_close()

    results = await asyncio.gather(*(once() for _ in range(50)))
    assert all([f["type"] for f in frames] == ["run:complete"] for frames in results)
    await wait_until(lambda: server.open_streams == 0)


async def test_subscribe__client_disconnect_unsubscribes(server: Server) -> None:
    await server.durably.stop()
    run_id = await server.trigger("add", {"a": 1, "b": 1})
    async with sse(server.client, f"/subscribe?runId={run_id}"):
        await wait_until(lambda: server.open_streams == 1)
    await wait_until(lambda: server.open_streams == 0)


async def test_subscribe__other_runs_events_are_not_sent(server: Server) -> None:
    await server.durably.stop()
    mine = await server.trigger("add", {"a": 1, "b": 1})
    other = await server.trigger("add", {"a": 5, "b": 5})
    async with sse(server.client, f"/subscribe?runId={mine}") as s:
        await wait_until(lambda: server.open_streams == 1)
        server.durably.start()
        frames = await s.frames_until_close()
    assert {f["runId"] for f in frames} == {mine}
    assert other != mine


@pytest.mark.parametrize("handler_options", [{"sse_throttle": 30.0}])
async def test_throttle__first_at_once_latest_flushed_before_terminal(server: Server) -> None:
    await server.durably.stop()
    run_id = await server.trigger("burst", {"key": "b1", "n": 5})
    async with sse(server.client, f"/subscribe?runId={run_id}") as s:
        await wait_until(lambda: server.open_streams == 1)
        server.durably.start()
        frames: list[dict[str, Any]] = []
        while True:
            frame = await s.frame()
            assert frame is not None
            frames.append(frame)
            if frame["type"] == "run:progress":
                break
        assert frame["progress"] == {"current": 1, "total": 5, "message": "p1"}
        GATES.open("b1:end")
        frames += await s.frames_until_close()
    progress = [f["progress"]["current"] for f in frames if f["type"] == "run:progress"]
    assert progress == [1, 5]  # 2..4 were replaced by the latest within the interval
    assert [f["type"] for f in frames][-2:] == ["run:progress", "run:complete"]


@pytest.mark.parametrize("handler_options", [{"sse_throttle": 0.3}])
async def test_throttle__held_progress_is_sent_when_the_interval_ends(server: Server) -> None:
    await server.durably.stop()
    run_id = await server.trigger("burst", {"key": "b2", "n": 3})
    async with sse(server.client, f"/subscribe?runId={run_id}") as s:
        await wait_until(lambda: server.open_streams == 1)
        server.durably.start()
        seen: list[Any] = []
        while len(seen) < 2:
            frame = await s.frame()
            assert frame is not None
            if frame["type"] == "run:progress":
                seen.append(frame["progress"]["current"])
        # the second progress frame came from the timer, while the run still waits
        run = await server.durably.get_run(run_id)
        assert run is not None
        assert run.status is RunStatus.LEASED
        assert seen == [1, 3]
        GATES.open("b2:end")
        rest = await s.frames_until_close()
    assert [f["type"] for f in rest] == ["run:complete"]


@pytest.mark.parametrize("handler_options", [{"sse_throttle": 0}])
async def test_throttle__zero_sends_every_progress(server: Server) -> None:
    await server.durably.stop()
    run_id = await server.trigger("burst", {"key": "b3", "n": 4})
    async with sse(server.client, f"/subscribe?runId={run_id}") as s:
        await wait_until(lambda: server.open_streams == 1)
        server.durably.start()
        GATES.open("b3:end")
        frames = await s.frames_until_close()
    progress = [f["progress"]["current"] for f in frames if f["type"] == "run:progress"]
    assert progress == [1, 2, 3, 4]


@pytest.mark.parametrize("handler_options", [{"sse_poll_interval": 0.05}])
async def test_subscribe__follows_a_run_executed_by_another_process(
    server: Server, make_durably: Any
) -> None:
    await server.durably.stop()
    run_id = await server.trigger("add", {"a": 3, "b": 4})
    other = make_durably(jobs=JOBS, same_db_as=server.durably)
    async with sse(server.client, f"/subscribe?runId={run_id}") as s:
        await wait_until(lambda: server.open_streams == 1)
        assert await other.process_one()  # its events go to its own bus, not ours
        frames = await s.frames_until_close()
    assert frames[-1]["type"] == "run:complete"
    assert frames[-1]["output"] == {"sum": 7}
    assert frames[-1]["sequence"] == 0


# -- /runs/subscribe --


async def test_runs_subscribe__trimmed_frames_for_matching_runs(server: Server) -> None:
    async with sse(server.client, "/runs/subscribe?jobName=add&label.org=a") as s:
        await wait_until(lambda: server.open_streams == 1)
        await server.trigger("add", {"a": 1, "b": 1}, labels={"org": "b"})  # filtered out
        await server.trigger("boom", {}, labels={"org": "a"})  # filtered out
        run_id = await server.trigger("add", {"a": 1, "b": 1}, labels={"org": "a", "x": "y"})
        frames: list[dict[str, Any]] = []
        while not frames or frames[-1]["type"] != "run:complete":
            frame = await s.frame()
            assert frame is not None
            frames.append(frame)
        # the stream stays open: the next matching run shows up on it
        second = await server.trigger("add", {"a": 2, "b": 2}, labels={"org": "a"})
        frame = await s.frame()
        assert frame is not None
        assert (frame["type"], frame["runId"]) == ("run:trigger", second)
    assert {f["runId"] for f in frames} == {run_id}
    by_type = {f["type"]: f for f in frames}
    assert list(by_type) == [
        "run:trigger",
        "run:leased",
        "step:start",
        "step:complete",
        "log:write",
        "run:complete",
    ]
    base = {"type", "runId", "jobName", "labels"}
    assert set(by_type["run:trigger"]) == base
    assert set(by_type["run:leased"]) == base
    assert set(by_type["run:complete"]) == base
    assert set(by_type["step:start"]) == base | {"stepName", "stepIndex"}
    assert set(by_type["step:complete"]) == base | {"stepName", "stepIndex"}
    assert set(by_type["log:write"]) == base | {"stepName", "level", "message", "data"}
    assert by_type["run:trigger"]["labels"] == {"org": "a", "x": "y"}


async def test_runs_subscribe__progress_cancel_delete_and_fail(server: Server) -> None:
    await server.durably.stop()
    async with sse(server.client, "/runs/subscribe") as s:
        await wait_until(lambda: server.open_streams == 1)
        run_id = await server.trigger("add", {"a": 1, "b": 1})
        await server.client.post(f"/cancel?runId={run_id}")
        await server.client.delete(f"/run?runId={run_id}")
        types = []
        for _ in range(3):
            frame = await s.frame()
            assert frame is not None
            types.append(frame["type"])
        assert types == ["run:trigger", "run:cancel", "run:delete"]
        boom = await server.trigger("boom", {"message": "x"})
        burst = await server.trigger("burst", {"key": "rs", "n": 1})
        server.durably.start()
        seen: dict[str, dict[str, Any]] = {}
        while "run:progress" not in seen or "run:fail" not in seen:
            frame = await s.frame()
            assert frame is not None
            seen.setdefault(frame["type"], frame)
        GATES.open("rs:end")
    assert seen["step:fail"]["runId"] == boom
    assert set(seen["step:fail"]) == {
        "type",
        "runId",
        "jobName",
        "labels",
        "stepName",
        "stepIndex",
        "error",
    }
    assert seen["run:progress"]["runId"] == burst
    assert seen["run:progress"]["progress"] == {"current": 1, "total": 1, "message": "p1"}
    assert set(seen["run:fail"]) == {"type", "runId", "jobName", "labels"}


async def test_runs_subscribe__scoped_by_auth(make_durably: Any) -> None:
    d: Durably = make_durably(jobs=JOBS)
    await d.migrate()
    calls: list[Any] = []

    def scope_runs(ctx: Any, f: RunsFilter) -> RunsFilter:
        calls.append(("scope_runs", f))
        return RunsFilter(job_name=f.job_name, labels={"tenant": ctx})

    def scope_runs_subscribe(ctx: Any, f: RunsSubscribeFilter) -> RunsSubscribeFilter:
        calls.append(("scope_runs_subscribe", f))
        return RunsSubscribeFilter(job_name=("boom",), labels=None)

    for auth in (
        Auth(authenticate=lambda r: "ann", scope_runs=scope_runs),
        Auth(
            authenticate=lambda r: "ann",
            scope_runs=scope_runs,
            scope_runs_subscribe=scope_runs_subscribe,
        ),
    ):
        app = create_handler(d, auth=auth)
        async with serve(app) as base, httpx.AsyncClient(base_url=base) as c:
            async with sse(c, "/runs/subscribe?jobName=add&label.tenant=bob") as s:
                await wait_until(lambda app=app: app.state.durably_hub.streams == 1)
                handle = d.jobs["add"]
                await handle.trigger({"a": 1, "b": 1}, labels={"tenant": "bob"})
                ann = await handle.trigger({"a": 1, "b": 1}, labels={"tenant": "ann"})
                boom = await d.jobs["boom"].trigger({})
                frame = await s.frame()
            assert frame is not None
            expected = ann.id if auth.scope_runs_subscribe is None else boom.id
            assert frame["runId"] == expected
            await wait_until(lambda app=app: app.state.durably_hub.streams == 0)
    assert calls[0] == ("scope_runs", RunsFilter(job_name=("add",), labels={"tenant": "bob"}))
    assert calls[1] == (
        "scope_runs_subscribe",
        RunsSubscribeFilter(job_name=("add",), labels={"tenant": "bob"}),
    )


async def test_server_shutdown_ends_open_streams(make_durably: Any) -> None:
    d: Durably = make_durably(jobs=JOBS)
    await d.migrate()
    app = create_handler(d)
    servers: list[Any] = []
    run_id = (await d.jobs["add"].trigger({"a": 1, "b": 1})).id
    async with serve(app, servers) as base, httpx.AsyncClient(base_url=base) as c:
        async with sse(c, "/runs/subscribe") as s1, sse(c, f"/subscribe?runId={run_id}") as s2:
            await wait_until(lambda: app.state.durably_hub.streams == 2)
            servers[0].should_exit = True
            for s in (s1, s2):
                # the stream ends (cleanly or cut); either way the reader returns
                with contextlib.suppress(httpx.RemoteProtocolError):
                    assert await s.frames_until_close() == []
        await wait_until(lambda: app.state.durably_hub.streams == 0)
