"""durably.http: every non-streaming route, its JSON and its errors, and the auth
hooks, through httpx's ASGI transport (the handler mounted under a path)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from http_support import JOBS, RUN_ROUTES
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import Mount

from durably import Durably, NotFoundError, RunStatus, ValidationError
from durably.http import Auth, RunsFilter, TriggerRequest, create_handler

CLIENT_RUN_KEYS = {
    "id",
    "jobName",
    "input",
    "status",
    "currentStepIndex",
    "completedStepCount",
    "progress",
    "output",
    "error",
    "labels",
    "startedAt",
    "completedAt",
    "createdAt",
    "isTerminal",
    "isActive",
    "isWaiting",
}
STATUS_LIST = "pending, leased, waiting, completed, failed, cancelled"


@pytest.fixture
async def durably(make_durably: Any) -> Durably:
    d: Durably = make_durably(jobs=JOBS, preserve_steps=True)
    await d.migrate()
    return d


def client_for(app: Any) -> httpx.AsyncClient:
    outer = Starlette(routes=[Mount("/api/durably", app=app)])
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=outer), base_url="http://test/api/durably"
    )


@pytest.fixture
async def client(durably: Durably) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(create_handler(durably)) as c:
        yield c


async def trigger(client: httpx.AsyncClient, job: str = "add", **body: Any) -> str:
    body.setdefault("input", {"a": 1, "b": 2})
    r = await client.post("/trigger", json={"jobName": job, **body})
    assert r.status_code == 200, r.text
    return str(r.json()["runId"])


def assert_error(r: httpx.Response, status: int, message: str | None = None) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"}
    if message is not None:
        assert body["error"] == message
    assert "Traceback" not in r.text
    return str(body["error"])


# -- POST /trigger --


async def test_trigger__returns_run_id_and_disposition(
    client: httpx.AsyncClient, durably: Durably
) -> None:
    r = await client.post("/trigger", json={"jobName": "add", "input": {"a": 2, "b": 3}})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"runId", "disposition"}
    assert body["disposition"] == "created"
    run = await durably.get_run(body["runId"])
    assert run is not None
    assert run.input == {"a": 2, "b": 3}
    assert run.status is RunStatus.PENDING


async def test_trigger__options_in_camel_case(client: httpx.AsyncClient, durably: Durably) -> None:
    body = {
        "jobName": "add",
        "input": {"a": 1, "b": 1},
        "idempotencyKey": "k1",
        "concurrencyKey": "c1",
        "labels": {"tenant": "t1"},
    }
    first = (await client.post("/trigger", json=body)).json()
    again = (await client.post("/trigger", json=body)).json()
    assert again == {"runId": first["runId"], "disposition": "idempotent"}
    run = await durably.get_run(first["runId"])
    assert run is not None
    assert (run.idempotency_key, run.concurrency_key, run.labels) == ("k1", "c1", {"tenant": "t1"})
    coalesced = await client.post(
        "/trigger",
        json={
            "jobName": "add",
            "input": {"a": 5, "b": 5},
            "concurrencyKey": "c1",
            "coalesce": "skip",
        },
    )
    assert coalesced.json() == {"runId": first["runId"], "disposition": "coalesced"}


@pytest.mark.parametrize(
    "body",
    [b"{}", b'{"jobName": ""}', b'{"jobName": null}', b'{"input": {}}', b"[]", b'"add"', b"null"],
)
async def test_trigger__without_job_name_is_400(client: httpx.AsyncClient, body: bytes) -> None:
    assert_error(await client.post("/trigger", content=body), 400, "jobName is required")


async def test_trigger__invalid_json_is_400(client: httpx.AsyncClient) -> None:
    r = await client.post("/trigger", content=b"{not json")
    assert_error(r, 400, "Invalid JSON body")


async def test_trigger__unknown_job_is_404(client: httpx.AsyncClient) -> None:
    r = await client.post("/trigger", json={"jobName": "nope", "input": {}})
    assert_error(r, 404, "Job not found: nope")


async def test_trigger__job_is_found_by_name_not_key(make_durably: Any) -> None:
    d = make_durably(jobs={"adder": JOBS["add"]})
    async with client_for(create_handler(d)) as c:
        assert (
            await c.post("/trigger", json={"jobName": "add", "input": {"a": 1, "b": 1}})
        ).is_success
        r = await c.post("/trigger", json={"jobName": "adder", "input": {"a": 1, "b": 1}})
        assert_error(r, 404, "Job not found: adder")


async def test_trigger__invalid_input_is_400_with_the_validation_message(
    client: httpx.AsyncClient, durably: Durably
) -> None:
    r = await client.post("/trigger", json={"jobName": "add", "input": {"a": "x"}})
    message = assert_error(r, 400)
    assert "Invalid input for job 'add'" in message
    assert "a" in message
    assert "b" in message
    assert await durably.get_runs() == []


@pytest.mark.parametrize(
    "extra",
    [{"labels": {"bad key!": "v"}}, {"coalesce": "skip"}, {"idempotencyKey": 5}],
)
async def test_trigger__invalid_options_are_400(
    client: httpx.AsyncClient, extra: dict[str, Any]
) -> None:
    r = await client.post("/trigger", json={"jobName": "add", "input": {"a": 1, "b": 1}, **extra})
    assert_error(r, 400)


async def test_trigger__pending_concurrency_conflict_is_409(client: httpx.AsyncClient) -> None:
    await trigger(client, concurrencyKey="only-one")
    r = await client.post(
        "/trigger", json={"jobName": "add", "input": {"a": 1, "b": 1}, "concurrencyKey": "only-one"}
    )
    assert_error(r, 409)


# -- GET /runs --


async def test_runs__client_runs_newest_first(client: httpx.AsyncClient, durably: Durably) -> None:
    first = await trigger(client)
    second = await trigger(client, job="gated", input={"key": "x"})
    r = await client.get("/runs")
    assert r.status_code == 200
    runs = r.json()
    assert [run["id"] for run in runs] == [second, first]
    for run in runs:
        assert set(run) == CLIENT_RUN_KEYS
    assert runs[1]["jobName"] == "add"
    assert runs[1]["status"] == "pending"
    assert runs[1]["isActive"] is True
    assert runs[1]["isTerminal"] is False
    assert runs[1]["progress"] is None
    assert runs[1]["createdAt"].endswith("Z")
    assert len(runs[1]["createdAt"]) == 24


async def test_runs__completed_run_json(client: httpx.AsyncClient, durably: Durably) -> None:
    run_id = await trigger(client, input={"a": 20, "b": 22})
    assert await durably.process_one()
    run = (await client.get("/runs")).json()[0]
    assert run["id"] == run_id
    assert run["status"] == "completed"
    assert run["output"] == {"sum": 42}
    assert run["isTerminal"] is True
    assert run["isActive"] is False
    assert run["completedStepCount"] == 1
    assert run["startedAt"] is not None
    assert run["completedAt"] is not None


async def test_runs__filters(client: httpx.AsyncClient, durably: Durably) -> None:
    a1 = await trigger(client, labels={"org": "a"})
    b1 = await trigger(client, job="boom", labels={"org": "b"})
    g1 = await trigger(client, job="gated", input={"key": "f"}, labels={"org": "a", "env": "x"})
    assert await durably.process_one()  # a1 completes

    async def ids(query: str) -> list[str]:
        r = await client.get("/runs" + query)
        assert r.status_code == 200, r.text
        return [run["id"] for run in r.json()]

    assert await ids("?jobName=add") == [a1]
    assert await ids("?jobName=add&jobName=boom") == [b1, a1]
    assert await ids("?status=completed") == [a1]
    assert await ids("?status=pending&status=completed") == [g1, b1, a1]
    assert await ids("?label.org=a") == [g1, a1]
    assert await ids("?label.org=a&label.env=x") == [g1]
    assert await ids("?limit=1") == [g1]
    assert await ids("?limit=1&offset=1") == [b1]
    assert await ids("?offset=2") == [a1]
    assert await ids("?limit=2abc") == [g1, b1]  # Number.parseInt leniency, as the reference
    assert await ids("?limit=") == [g1, b1, a1]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("status=running", f"Invalid status: running. Must be one of: {STATUS_LIST}"),
        ("status=pending&status=nope", f"Invalid status: nope. Must be one of: {STATUS_LIST}"),
        ("status=", f"Invalid status: empty value. Must be one of: {STATUS_LIST}"),
        ("limit=abc", "Invalid limit: must be a non-negative integer"),
        ("limit=-1", "Invalid limit: must be a non-negative integer"),
        ("offset=x", "Invalid offset: must be a non-negative integer"),
        ("offset=-5", "Invalid offset: must be a non-negative integer"),
    ],
)
async def test_runs__bad_query_is_400(client: httpx.AsyncClient, query: str, message: str) -> None:
    assert_error(await client.get(f"/runs?{query}"), 400, message)


async def test_runs__bad_label_key_is_400(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/runs?label.bad%20key=1"), 400)


# -- GET /run, /steps --


async def test_run__one_client_run(client: httpx.AsyncClient, durably: Durably) -> None:
    run_id = await trigger(client)
    r = await client.get(f"/run?runId={run_id}")
    assert r.status_code == 200
    body = r.json()
    assert set(body) == CLIENT_RUN_KEYS
    assert body["id"] == run_id
    assert body["input"] == {"a": 1, "b": 2}


@pytest.mark.parametrize(("method", "path"), RUN_ROUTES)
async def test_run_routes__missing_or_unknown_run_id(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    message = "runId query parameter is required"
    assert_error(await client.request(method, path), 400, message)
    assert_error(await client.request(method, path + "?runId="), 400, message)
    assert_error(await client.request(method, path + "?runId=nope"), 404, "Run not found")


async def test_steps__step_records_in_camel_case(
    client: httpx.AsyncClient, durably: Durably
) -> None:
    run_id = await trigger(client, input={"a": 1, "b": 1})
    assert await durably.process_one()
    r = await client.get(f"/steps?runId={run_id}")
    assert r.status_code == 200
    (step,) = r.json()
    assert set(step) == {
        "id",
        "runId",
        "name",
        "index",
        "status",
        "output",
        "error",
        "startedAt",
        "completedAt",
    }
    assert (step["runId"], step["name"], step["index"], step["status"], step["output"]) == (
        run_id,
        "sum",
        0,
        "completed",
        2,
    )


async def test_steps__failed_step_has_its_error(
    client: httpx.AsyncClient, durably: Durably
) -> None:
    run_id = await trigger(client, job="boom", input={"message": "kaput"})
    assert await durably.process_one()
    (step,) = (await client.get(f"/steps?runId={run_id}")).json()
    assert (step["status"], step["error"], step["output"]) == ("failed", "kaput", None)
    run = (await client.get(f"/run?runId={run_id}")).json()
    assert run["status"] == "failed"
    assert "kaput" in run["error"]


async def test_attempts__failed_attempts_in_camel_case(
    client: httpx.AsyncClient, durably: Durably
) -> None:
    ok = await trigger(client)
    failing = await trigger(client, job="boom", input={"message": "kaput"})
    assert await durably.process_one()
    assert await durably.process_one()
    assert (await client.get(f"/attempts?runId={ok}")).json() == []
    r = await client.get(f"/attempts?runId={failing}")
    assert r.status_code == 200
    (attempt,) = r.json()
    assert set(attempt) == {
        "id",
        "runId",
        "stepName",
        "stepIndex",
        "attempt",
        "status",
        "leaseGeneration",
        "error",
        "startedAt",
        "completedAt",
        "nextAttemptAt",
    }
    assert (attempt["runId"], attempt["stepName"], attempt["attempt"], attempt["status"]) == (
        failing,
        "explode",
        1,
        "failed",
    )
    assert (attempt["error"], attempt["nextAttemptAt"], attempt["leaseGeneration"]) == (
        "kaput",
        None,
        1,
    )
    assert attempt["startedAt"].endswith("Z")


# -- control --


async def test_retrigger__a_finished_run(client: httpx.AsyncClient, durably: Durably) -> None:
    run_id = await trigger(client, labels={"org": "a"})
    assert_error(await client.post(f"/retrigger?runId={run_id}"), 409)
    assert await durably.process_one()
    r = await client.post(f"/retrigger?runId={run_id}")
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"success", "runId"}
    assert body["success"] is True
    assert body["runId"] != run_id
    new = await durably.get_run(body["runId"])
    assert new is not None
    assert (new.input, new.labels, new.status) == ({"a": 1, "b": 2}, {"org": "a"}, "pending")


async def test_cancel__pending_run_then_conflict(
    client: httpx.AsyncClient, durably: Durably
) -> None:
    run_id = await trigger(client)
    r = await client.post(f"/cancel?runId={run_id}")
    assert (r.status_code, r.json()) == (200, {"success": True})
    run = await durably.get_run(run_id)
    assert run is not None
    assert run.status is RunStatus.CANCELLED
    assert_error(await client.post(f"/cancel?runId={run_id}"), 409)


async def test_delete__finished_run_only(client: httpx.AsyncClient, durably: Durably) -> None:
    run_id = await trigger(client)
    assert_error(await client.delete(f"/run?runId={run_id}"), 409)
    assert await durably.process_one()
    r = await client.delete(f"/run?runId={run_id}")
    assert (r.status_code, r.json()) == (200, {"success": True})
    assert await durably.get_run(run_id) is None
    assert_error(await client.get(f"/run?runId={run_id}"), 404, "Run not found")


# -- routing --


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/nope"),
        ("GET", "/"),
        ("GET", "/trigger"),
        ("POST", "/runs"),
        ("DELETE", "/runs"),
        ("PUT", "/run"),
        ("GET", "/runs/"),
        ("POST", "/subscribe"),
    ],
)
async def test_unknown_routes_are_plain_404(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    r = await client.request(method, path)
    assert r.status_code == 404
    assert r.text == "Not Found"
    assert r.headers["content-type"].startswith("text/plain")


def test_create_handler__checks_its_options(durably: Durably) -> None:
    with pytest.raises(ValidationError, match=r"durably\.http\.Auth"):
        create_handler(durably, auth={"authenticate": lambda r: None})  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="sse_throttle"):
        create_handler(durably, sse_throttle=-1)
    with pytest.raises(ValidationError, match="sse_poll_interval"):
        create_handler(durably, sse_poll_interval=0)


# -- auth --


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def auth(self, **overrides: Any) -> Auth:
        def authenticate(request: Any) -> dict[str, str]:
            user = request.headers.get("x-user")
            self.calls.append(("authenticate", request.url.path))
            if user is None:
                raise HTTPException(401, "Unauthorized", headers={"WWW-Authenticate": "Bearer"})
            return {"user": user}

        async def on_trigger(ctx: Any, trig: TriggerRequest) -> None:
            self.calls.append(("on_trigger", ctx["user"], trig.job_name))

        def on_run_access(ctx: Any, run: Any, operation: str) -> None:
            self.calls.append(("on_run_access", ctx["user"], run.id, operation))

        async def scope_runs(ctx: Any, f: RunsFilter) -> RunsFilter:
            self.calls.append(("scope_runs", ctx["user"], f))
            return f

        hooks: dict[str, Any] = {
            "authenticate": authenticate,
            "on_trigger": on_trigger,
            "on_run_access": on_run_access,
            "scope_runs": scope_runs,
        }
        hooks.update(overrides)
        return Auth(**hooks)


async def test_auth__authenticate_runs_first_on_every_route(durably: Durably) -> None:
    rec = Recorder()
    async with client_for(create_handler(durably, auth=rec.auth())) as c:
        for method, path in [("GET", "/runs"), ("POST", "/trigger"), ("GET", "/nope")]:
            r = await c.request(method, path)
            assert_error(r, 401, "Unauthorized")
            assert r.headers["www-authenticate"] == "Bearer"
        assert [name for name, *_ in rec.calls] == ["authenticate"] * 3
        assert await durably.get_runs() == []
        r = await c.get("/nope", headers={"x-user": "ann"})
        assert (r.status_code, r.text) == (404, "Not Found")


async def test_auth__hook_order_per_route(durably: Durably) -> None:
    rec = Recorder()
    h = {"x-user": "ann"}
    async with client_for(create_handler(durably, auth=rec.auth())) as c:
        r = await c.post("/trigger", json={"jobName": "add", "input": {"a": 1, "b": 1}}, headers=h)
        run_id = r.json()["runId"]
        assert rec.calls == [
            ("authenticate", "/api/durably/trigger"),
            ("on_trigger", "ann", "add"),
        ]
        rec.calls.clear()
        # checks before hooks: no on_trigger for a bad body or an unknown job
        assert_error(await c.post("/trigger", json={}, headers=h), 400)
        assert_error(await c.post("/trigger", json={"jobName": "x"}, headers=h), 404)
        assert_error(await c.get("/run", headers=h), 400)
        assert_error(await c.get("/run?runId=nope", headers=h), 404)
        assert [name for name, *_ in rec.calls] == ["authenticate"] * 4
        rec.calls.clear()
        await c.get(f"/run?runId={run_id}", headers=h)
        await c.get(f"/steps?runId={run_id}", headers=h)
        await c.get(f"/attempts?runId={run_id}", headers=h)
        await c.post(f"/cancel?runId={run_id}", headers=h)
        await c.post(f"/retrigger?runId={run_id}", headers=h)
        await c.delete(f"/run?runId={run_id}", headers=h)
        ops = [call[3] for call in rec.calls if call[0] == "on_run_access"]
        assert ops == ["read", "steps", "attempts", "cancel", "retrigger", "delete"]
        assert all(call[2] == run_id for call in rec.calls if call[0] == "on_run_access")
        rec.calls.clear()
        await c.get("/runs?jobName=add&status=pending&label.org=a&limit=5&offset=1", headers=h)
        assert rec.calls[1] == (
            "scope_runs",
            "ann",
            RunsFilter(
                job_name=("add",), status=("pending",), labels={"org": "a"}, limit=5, offset=1
            ),
        )


async def test_auth__rejections_from_hooks(durably: Durably) -> None:
    def deny(*args: Any) -> None:
        raise HTTPException(403, "Forbidden")

    def hide(*args: Any) -> None:
        raise NotFoundError("Run not found")

    h = {"x-user": "bob"}
    run_id = (await JOBS_HANDLE(durably).trigger({"a": 1, "b": 1})).id
    async with client_for(create_handler(durably, auth=Recorder().auth(on_trigger=deny))) as c:
        r = await c.post("/trigger", json={"jobName": "add", "input": {"a": 1, "b": 1}}, headers=h)
        assert_error(r, 403, "Forbidden")
        assert len(await durably.get_runs()) == 1
    async with client_for(create_handler(durably, auth=Recorder().auth(on_run_access=hide))) as c:
        for method, path in [("GET", "/run"), ("POST", "/cancel"), ("GET", "/subscribe")]:
            assert_error(await c.request(method, f"{path}?runId={run_id}", headers=h), 404)
    run = await durably.get_run(run_id)
    assert run is not None
    assert run.status is RunStatus.PENDING


def JOBS_HANDLE(durably: Durably) -> Any:
    return durably.jobs["add"]


async def test_auth__on_trigger_may_replace_the_request(durably: Durably) -> None:
    def tenant(ctx: Any, trig: TriggerRequest) -> TriggerRequest:
        return TriggerRequest(
            job_name=trig.job_name, input=trig.input, labels={"tenant": ctx["user"]}
        )

    async with client_for(create_handler(durably, auth=Recorder().auth(on_trigger=tenant))) as c:
        r = await c.post(
            "/trigger",
            json={"jobName": "add", "input": {"a": 1, "b": 1}, "labels": {"tenant": "evil"}},
            headers={"x-user": "ann"},
        )
    run = await durably.get_run(r.json()["runId"])
    assert run is not None
    assert run.labels == {"tenant": "ann"}


async def test_auth__scope_runs_narrows_the_list(durably: Durably) -> None:
    def only_mine(ctx: Any, f: RunsFilter) -> RunsFilter:
        return RunsFilter(
            job_name=f.job_name, status=f.status, labels={"tenant": ctx["user"]}, limit=f.limit
        )

    handle = durably.jobs["add"]
    mine = (await handle.trigger({"a": 1, "b": 1}, labels={"tenant": "ann"})).id
    await handle.trigger({"a": 1, "b": 1}, labels={"tenant": "bob"})
    async with client_for(create_handler(durably, auth=Recorder().auth(scope_runs=only_mine))) as c:
        r = await c.get("/runs", headers={"x-user": "ann"})
    assert [run["id"] for run in r.json()] == [mine]


async def test_errors__no_internals_in_500s(durably: Durably) -> None:
    def broken(*args: Any) -> None:
        raise RuntimeError("secret database password in /etc/secret")

    async with client_for(create_handler(durably, auth=Auth(authenticate=broken))) as c:
        r = await c.get("/runs")
    assert_error(r, 500, "Internal server error")
    assert "secret" not in r.text


async def test_on_request_runs_after_authenticate(durably: Durably) -> None:
    calls: list[str] = []

    async def on_request() -> None:
        calls.append("on_request")

    def authenticate(request: Any) -> str:
        calls.append("authenticate")
        return "ctx"

    handler = create_handler(durably, auth=Auth(authenticate=authenticate), on_request=on_request)
    async with client_for(handler) as c:
        assert (await c.get("/runs")).json() == []
    assert calls == ["authenticate", "on_request"]
