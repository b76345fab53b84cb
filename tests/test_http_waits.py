"""The wait routes of the HTTP handler: ``GET /waits``, ``GET /wait``, ``POST
/signal`` (docs/http-protocol.md, "Durable waits"): every one checks
``on_run_access`` against the owning run, ``on_signal`` can refuse or rewrite a
payload, and a signal resumes the waiting run; ``run:waiting`` reaches the run's
stream."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from http_support import JOBS, reach, serve, sse, tenant_auth
from starlette.exceptions import HTTPException

from durably import Durably, RunStatus, ValidationError
from durably.http import Auth, SignalRequest, create_handler
from durably_testing.clock import ManualClock

WAIT_KEYS = {
    "id",
    "runId",
    "name",
    "kind",
    "metadata",
    "status",
    "outcome",
    "payload",
    "signalId",
    "createdAt",
    "deadlineAt",
    "suspendedAt",
    "resolvedAt",
    "firstResumedAt",
    "inputWaitMs",
    "executionSlotWaitMs",
}


async def asking(d: Durably, **labels: str) -> str:
    """A run of ``ask`` suspended on its wait ``answer``."""
    run_id = (await d.jobs["ask"].trigger({"q": "ship it?"}, labels=labels or None)).id
    await reach(d, run_id, "waiting")
    return run_id


def client_of(app: Any, **headers: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test", headers=headers
    )


@pytest.fixture
async def durably(make_durably: Any) -> Durably:
    d: Durably = make_durably(jobs=JOBS, polling_interval=600)
    await d.init()
    return d


async def test_waits__read_a_runs_waits(durably: Durably, clock: ManualClock) -> None:
    run_id = await asking(durably)
    async with client_of(create_handler(durably)) as client:
        r = await client.get(f"/waits?runId={run_id}")
        assert r.status_code == 200, r.text
        [wait] = r.json()
        assert set(wait) == WAIT_KEYS
        assert (wait["runId"], wait["name"], wait["kind"], wait["status"]) == (
            run_id,
            "answer",
            "signal",
            "pending",
        )
        assert wait["metadata"] == {"q": "ship it?"}
        assert wait["deadlineAt"] is not None
        assert wait["suspendedAt"] is not None
        assert (wait["inputWaitMs"], wait["executionSlotWaitMs"]) == (None, None), "no result"
        one = await client.get(f"/wait?runId={run_id}&name=answer")
        assert one.json() == wait
        run = (await client.get(f"/run?runId={run_id}")).json()
        assert (run["status"], run["isWaiting"], run["isActive"]) == ("waiting", True, False)
        assert (await client.get(f"/wait?runId={run_id}&name=nope")).status_code == 404
        missing = await client.get(f"/wait?runId={run_id}")
        assert (missing.status_code, missing.json()) == (
            400,
            {"error": "name query parameter is required"},
        )


async def test_signal__accepted_resumes_the_run_then_duplicate_and_conflict(
    durably: Durably,
) -> None:
    run_id = await asking(durably)
    async with client_of(create_handler(durably)) as client:
        body = {"name": "answer", "payload": {"ok": True}, "signalId": "s-1"}
        r = await client.post(f"/signal?runId={run_id}", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["disposition"] == "accepted"
        assert r.json()["wait"]["payload"] == {"ok": True}
        await reach(durably, run_id, "completed")
        run = await durably.get_run(run_id)
        assert run is not None
        assert run.output == {"outcome": "signal", "ok": True}
        again = await client.post(f"/signal?runId={run_id}", json=body)
        assert (again.status_code, again.json()["disposition"]) == (200, "duplicate")
        other = await client.post(
            f"/signal?runId={run_id}", json={**body, "payload": {"ok": False}}
        )
        assert other.status_code == 409
        assert other.json()["reason"] == "conflict"
        assert other.json()["wait"]["payload"] == {"ok": True}
        unknown = await client.post(f"/signal?runId={run_id}", json={"name": "nope"})
        assert unknown.status_code == 404
        bad = await client.post(f"/signal?runId={run_id}", json={"payload": 1})
        assert (bad.status_code, bad.json()) == (
            400,
            {"error": "name (the wait's name) is required"},
        )


async def test_signal__after_the_deadline_is_expired(durably: Durably, clock: ManualClock) -> None:
    run_id = await asking(durably)
    await clock.advance(3600)  # the wait times out; the worker resumes the run
    await reach(durably, run_id, "completed")
    async with client_of(create_handler(durably)) as client:
        r = await client.post(f"/signal?runId={run_id}", json={"name": "answer", "payload": {}})
        assert r.status_code == 409
        assert r.json()["reason"] == "expired"
        assert r.json()["wait"]["outcome"] == "timeout"
        # suspended for the whole hour; the worker woke at the deadline: no slot wait
        wait = (await client.get(f"/wait?runId={run_id}&name=answer")).json()
        assert (wait["inputWaitMs"], wait["executionSlotWaitMs"]) == (3_600_000, 0)


async def test_wait_routes__on_run_access_guards_every_one(durably: Durably) -> None:
    run_id = await asking(durably, tenant="a")
    app = create_handler(durably, auth=tenant_auth())
    for tenant, expected in (("b", 404), ("a", 200)):
        async with client_of(app, **{"x-tenant": tenant}) as client:
            reads = [
                await client.get(f"/waits?runId={run_id}"),
                await client.get(f"/wait?runId={run_id}&name=answer"),
            ]
            assert [r.status_code for r in reads] == [expected, expected]
    async with client_of(app, **{"x-tenant": "b"}) as client:
        r = await client.post(f"/signal?runId={run_id}", json={"name": "answer", "payload": {}})
        assert r.status_code == 404
    [wait] = await durably.get_waits(run_id)
    assert wait.status.value == "pending", "tenant b's signal was not recorded"


async def test_wait_routes__authenticated_handler_needs_on_run_access(durably: Durably) -> None:
    run_id = await asking(durably)
    app = create_handler(durably, auth=Auth(authenticate=lambda request: "anyone"))
    async with client_of(app) as client:
        for r in (
            await client.get(f"/waits?runId={run_id}"),
            await client.get(f"/wait?runId={run_id}&name=answer"),
            await client.post(f"/signal?runId={run_id}", json={"name": "answer"}),
        ):
            assert r.status_code == 403
            assert "on_run_access" in r.json()["error"]
        # the other run routes keep working without it
        assert (await client.get(f"/run?runId={run_id}")).status_code == 200


async def test_signal__on_signal_refuses_or_rewrites_a_payload(durably: Durably) -> None:
    seen: list[tuple[Any, str, SignalRequest]] = []

    def on_signal(ctx: Any, run: Any, request: SignalRequest) -> SignalRequest | None:
        seen.append((ctx, run.id, request))
        if request.payload == "bad":
            raise ValidationError("payload must be yes or no")
        if request.payload == "forbidden":
            raise HTTPException(403, "not your call")
        if request.payload in ("yes", "no"):
            return SignalRequest(
                name=request.name, payload={"ok": request.payload == "yes"}, signal_id="x"
            )
        return None

    run_id = await asking(durably)
    app = create_handler(durably, on_signal=on_signal)
    async with client_of(app) as client:
        url = f"/signal?runId={run_id}"
        bad = await client.post(url, json={"name": "answer", "payload": "bad"})
        assert (bad.status_code, bad.json()) == (400, {"error": "payload must be yes or no"})
        forbidden = await client.post(url, json={"name": "answer", "payload": "forbidden"})
        assert forbidden.status_code == 403
        [wait] = await durably.get_waits(run_id)
        assert wait.status.value == "pending", "a refused signal is not recorded"
        ok = await client.post(url, json={"name": "answer", "payload": "yes"})
        assert ok.status_code == 200, ok.text
        assert (ok.json()["wait"]["payload"], ok.json()["wait"]["signalId"]) == ({"ok": True}, "x")
    assert [(ctx, rid) for ctx, rid, _ in seen] == [(None, run_id)] * 3
    await reach(durably, run_id, "completed")
    with pytest.raises(ValidationError, match="on_signal must be callable"):
        create_handler(durably, on_signal="nope")  # type: ignore[arg-type]


async def test_subscribe__a_run_that_suspends_sends_run_waiting(make_durably: Any) -> None:
    d: Durably = make_durably(jobs=JOBS)
    await d.migrate()  # the worker starts once the stream is open
    app = create_handler(d)
    async with serve(app) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
        r = await client.post("/trigger", json={"jobName": "ask", "input": {}})
        run_id = r.json()["runId"]
        async with sse(client, f"/subscribe?runId={run_id}") as s:
            d.start()
            frames: list[dict[str, Any]] = []
            while not any(f["type"] == "run:waiting" for f in frames):
                frame = await s.frame()
                assert frame is not None, frames
                frames.append(frame)
            waiting = frames[-1]
            assert waiting["runId"] == run_id
            assert waiting["waitName"] == "answer"
            assert waiting["waitId"]
            await d.signal(run_id, "answer", {"ok": False})
            rest = await s.frames_until_close()
        assert rest[-1]["type"] == "run:complete"
        assert rest[-1]["output"] == {"outcome": "signal", "ok": False}
    run = await d.get_run(run_id)
    assert run is not None
    assert run.status is RunStatus.COMPLETED
