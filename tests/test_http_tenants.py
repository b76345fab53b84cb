"""Tenants sharing one handler (``tenant_auth()`` in http_support, the recipe of
docs/http-protocol.md): with ``Auth.scope_keys`` tenant B can never learn of,
join or be coalesced into tenant A's run through idempotency or concurrency
keys — not by triggering, not from a 409, not on a stream, not in a listing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from http_support import JOBS, serve, sse, tenant_auth
from test_http_routes import assert_error, client_for

from durably import Durably
from durably.http import Auth, create_handler, scoped_key

A = {"x-tenant": "ann"}
B = {"x-tenant": "bob"}


@pytest.fixture
async def durably(make_durably: Any) -> Durably:
    d: Durably = make_durably(jobs=JOBS)
    await d.migrate()  # no worker: triggered runs stay pending
    return d


@pytest.fixture
async def client(durably: Durably) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(create_handler(durably, auth=tenant_auth())) as c:
        yield c


async def trigger(
    client: httpx.AsyncClient, headers: dict[str, str], a: int = 1, **options: Any
) -> dict[str, Any]:
    body = {"jobName": "add", "input": {"a": a, "b": 0}, **options}
    r = await client.post("/trigger", json=body, headers=headers)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def listed(client: httpx.AsyncClient, headers: dict[str, str]) -> list[str]:
    r = await client.get("/runs", headers=headers)
    assert r.status_code == 200, r.text
    return [run["id"] for run in r.json()]


async def test_tenants__one_idempotency_key_is_two_runs(
    client: httpx.AsyncClient, durably: Durably
) -> None:
    a = await trigger(client, A, idempotencyKey="order-1")
    b = await trigger(client, B, a=2, idempotencyKey="order-1")
    assert a["disposition"] == b["disposition"] == "created"
    assert b["runId"] != a["runId"]
    # each tenant's own key still deduplicates
    assert await trigger(client, A, a=3, idempotencyKey="order-1") == {
        "runId": a["runId"],
        "disposition": "idempotent",
    }
    assert await trigger(client, B, a=4, idempotencyKey="order-1") == {
        "runId": b["runId"],
        "disposition": "idempotent",
    }
    assert await listed(client, A) == [a["runId"]]
    assert await listed(client, B) == [b["runId"]]
    run_b = await durably.get_run(b["runId"])
    assert run_b is not None
    assert run_b.input == {"a": 2, "b": 0}  # B's run has B's input
    assert run_b.idempotency_key == scoped_key("bob", "order-1")
    assert_error(await client.get(f"/run?runId={a['runId']}", headers=B), 404, "Run not found")


async def test_tenants__a_409_names_only_the_callers_own_pending_run(
    client: httpx.AsyncClient,
) -> None:
    a = await trigger(client, A, concurrencyKey="nightly")
    b = await trigger(client, B, concurrencyKey="nightly")  # A's pending run is no conflict
    assert b["disposition"] == "created"
    for headers, mine, theirs in [(B, b, a), (A, a, b)]:
        r = await client.post(
            "/trigger",
            json={"jobName": "add", "input": {"a": 1, "b": 0}, "concurrencyKey": "nightly"},
            headers=headers,
        )
        message = assert_error(r, 409)
        assert mine["runId"] in message
        assert theirs["runId"] not in message
        assert "'nightly'" in message  # the key the caller sent, not the stored one
        assert ":nightly" not in message


async def test_tenants__coalesce_joins_only_the_callers_own_run(durably: Durably) -> None:
    app = create_handler(durably, auth=tenant_auth())
    async with serve(app) as base, httpx.AsyncClient(base_url=base, timeout=10) as c:
        a = await trigger(c, A, concurrencyKey="sync")
        async with (
            sse(c, "/runs/subscribe", A) as stream_a,
            sse(c, "/runs/subscribe", B) as stream_b,
        ):
            b = await trigger(c, B, a=666, concurrencyKey="sync", coalesce="skip")
            assert b["disposition"] == "created"
            again = await trigger(c, B, a=667, concurrencyKey="sync", coalesce="skip")
            assert again == {"runId": b["runId"], "disposition": "coalesced"}
            sentinel = await trigger(c, A, a=7)
            # A's stream: everything before A's next run, none of it B's
            seen_a = []
            while (frame := await stream_a.frame()) is not None:
                seen_a.append(frame)
                if frame["runId"] == sentinel["runId"]:
                    break
            assert [(f["type"], f["runId"]) for f in seen_a] == [("run:trigger", sentinel["runId"])]
            # B's stream: its own run and its own coalesced trigger
            frames_b = [await stream_b.frame(), await stream_b.frame()]
    assert [(f["type"], f["runId"]) for f in frames_b if f] == [
        ("run:trigger", b["runId"]),
        ("run:coalesced", b["runId"]),
    ]
    assert frames_b[1] is not None
    assert frames_b[1]["skippedInput"] == {"a": 667, "b": 0}
    run_a = await durably.get_run(a["runId"])
    assert run_a is not None
    assert run_a.input == {"a": 1, "b": 0}


async def test_tenants__scope_keys_none_leaves_keys_as_sent(durably: Durably) -> None:
    recipe = tenant_auth()
    admin = Auth(
        authenticate=recipe.authenticate,
        on_trigger=recipe.on_trigger,
        scope_keys=lambda tenant: None if tenant == "admin" else tenant,
    )
    async with client_for(create_handler(durably, auth=admin)) as c:
        run_id = (await trigger(c, {"x-tenant": "admin"}, idempotencyKey="k"))["runId"]
        run = await durably.get_run(run_id)
        assert run is not None
        assert run.idempotency_key == "k"
        # server code sharing a tenant's keys computes the stored key the same way
        mine = await trigger(c, A, idempotencyKey="k")
    handle = durably.jobs["add"]
    same = await handle.trigger({"a": 9, "b": 9}, idempotency_key=scoped_key("ann", "k"))
    assert (same.id, same.disposition) == (mine["runId"], "idempotent")


def test_scoped_key__one_to_one() -> None:
    pairs = [("a", "b:c"), ("a:b", "c"), ("", "a:b:c"), ("ab", "c"), ("a", "bc")]
    assert len({scoped_key(ns, key) for ns, key in pairs}) == len(pairs)
    with pytest.raises(TypeError):
        scoped_key("a", 1)  # type: ignore[arg-type]
