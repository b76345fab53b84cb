"""durably.http against hostile clients: bodies too large or too deep, integers
out of range, too many filters, wrong types aimed at the hooks. Each is a 4xx
with a JSON error, decided before any hook or the database sees the request."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from http_support import JOBS, asgi_request, serve
from test_http_routes import assert_error, client_for

from durably import Durably, ValidationError
from durably.http import Auth, TriggerRequest, create_handler

ADD = {"jobName": "add", "input": {"a": 1, "b": 2}}


@pytest.fixture
async def durably(make_durably: Any) -> Durably:
    d: Durably = make_durably(jobs=JOBS)
    await d.migrate()
    return d


@pytest.fixture
async def client(durably: Durably) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(create_handler(durably)) as c:
        yield c


# -- request bodies --


class CountingBody:
    """A request body of ``chunks`` chunks of 64 KiB, counting what was read."""

    def __init__(self, chunks: int) -> None:
        self.chunks = chunks
        self.read = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b'{"jobName": "add", "input": {"a": 1, "b": 2, "pad": "'
        for _ in range(self.chunks):
            self.read += 1
            yield b"x" * 65536
        yield b'"}}'


async def test_trigger__body_over_the_limit_is_413_and_is_not_read_whole(
    client: httpx.AsyncClient, durably: Durably
) -> None:
    body = CountingBody(1024)  # 64 MiB, sent without a Content-Length
    r = await client.post("/trigger", content=body)
    assert_error(r, 413, "Request body too large: the limit is 1048576 bytes")
    assert r.headers["connection"] == "close"
    assert body.read <= 17  # stopped at the first chunk past 1 MiB
    assert await durably.get_runs() == []


async def test_trigger__declared_length_over_the_limit_is_413_unread(durably: Durably) -> None:
    app = create_handler(durably, max_body_size=1000)
    r = await asgi_request(
        app,
        "POST",
        "/trigger",
        headers=[(b"content-length", b"1001")],
        body=[b"this body must never be read"] * 1000,
    )
    assert (r.status, r.json()) == (
        413,
        {"error": "Request body too large: the limit is 1000 bytes"},
    )
    for length in [b"-1", b"12x", b"", b"1e3", b"99999999999999999999999999"]:
        r = await asgi_request(app, "POST", "/trigger", headers=[(b"content-length", length)])
        assert r.status in (400, 413), (length, r.status)
        assert "error" in r.json()


async def test_trigger__body_at_the_limit_is_accepted(durably: Durably) -> None:
    body = b'{"jobName": "add", "input": {"a": 1, "b": 2}}'
    async with client_for(create_handler(durably, max_body_size=len(body))) as c:
        assert (await c.post("/trigger", content=body)).status_code == 200
        r = await c.post("/trigger", content=body + b" ")
        assert_error(r, 413, f"Request body too large: the limit is {len(body)} bytes")
    assert len(await durably.get_runs()) == 1


async def test_trigger__413_from_a_real_server(durably: Durably) -> None:
    async with (
        serve(create_handler(durably, max_body_size=1024)) as base,
        httpx.AsyncClient(base_url=base) as c,
    ):
        r = await c.post("/trigger", json={**ADD, "input": {"a": 1, "b": 2, "pad": "x" * 65536}})
        assert_error(r, 413, "Request body too large: the limit is 1024 bytes")
        r = await c.post("/trigger", json=ADD)  # a new connection: the old one was closed
        assert r.status_code == 200
    assert len(await durably.get_runs()) == 1


@pytest.mark.parametrize("depth", [101, 999, 1000, 100_000])
async def test_trigger__deeply_nested_json_is_400(
    client: httpx.AsyncClient, durably: Durably, depth: int
) -> None:
    nested = b"[" * depth + b"]" * depth
    body = b'{"jobName": "add", "input": {"a": 1, "b": 2, "deep": ' + nested + b"}}"
    r = await client.post("/trigger", content=body)
    assert_error(r, 400, "Invalid JSON body: objects and arrays nested more than 100 deep")
    assert await durably.get_runs() == []


async def test_trigger__json_nested_100_deep_is_accepted(client: httpx.AsyncClient) -> None:
    deep: Any = "bottom"
    for _ in range(97):  # body > input > "deep" > 97 more levels = 100
        deep = [deep]
    r = await client.post("/trigger", json={**ADD, "input": {"a": 1, "b": 2, "deep": deep}})
    assert r.status_code == 200, r.text


def test_create_handler__checks_max_body_size(durably: Durably) -> None:
    for bad in [0, -1, 1.5, True, "1mb"]:
        with pytest.raises(ValidationError, match="max_body_size"):
            create_handler(durably, max_body_size=bad)  # type: ignore[arg-type]


# -- query strings --


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("limit=9223372036854775808", "Invalid limit: must be at most 9223372036854775807"),
        ("offset=9223372036854775808", "Invalid offset: must be at most 9223372036854775807"),
        ("limit=" + "9" * 5000, "Invalid limit: must be at most 9223372036854775807"),
        ("offset=1" + "0" * 30 + "abc", "Invalid offset: must be at most 9223372036854775807"),
        ("limit=-9223372036854775809", "Invalid limit: must be a non-negative integer"),
        ("limit=%20-3", "Invalid limit: must be a non-negative integer"),
        ("limit=%D9%A3", "Invalid limit: must be a non-negative integer"),  # an Arabic 3
    ],
)
async def test_runs__limit_and_offset_out_of_range_are_400(
    client: httpx.AsyncClient, query: str, message: str
) -> None:
    assert_error(await client.get(f"/runs?{query}"), 400, message)


async def test_runs__limit_and_offset_at_the_top_of_the_range(
    client: httpx.AsyncClient,
) -> None:
    top = "9223372036854775807"
    r = await client.get(f"/runs?limit={top}&offset={top}")
    assert (r.status_code, r.json()) == (200, [])
    r = await client.get(f"/runs?limit=000000000000000000000000000{top}&offset=-0")
    assert r.status_code == 200, r.text


async def test_runs__too_many_filters_are_400(durably: Durably) -> None:
    app = create_handler(durably)
    for name, limit in [("label.k", 1100), ("label.k", 21), ("jobName", 40_000), ("status", 101)]:
        pairs = [f"{name}{i}=v" if name == "label.k" else f"{name}=pending" for i in range(limit)]
        for path in ["/runs", "/runs/subscribe"]:
            if path == "/runs/subscribe" and name == "status":
                continue  # not a filter of the list stream
            r = await asgi_request(app, "GET", path, query="&".join(pairs).encode())
            assert r.status == 400, (name, path, r.status, r.body[:200])
            assert r.json()["error"].startswith("Too many"), r.body[:200]
    ok = "&".join(f"label.k{i}=v" for i in range(20)) + "&" + "&".join(["jobName=add"] * 100)
    r = await asgi_request(app, "GET", "/runs", query=ok.encode())
    assert (r.status, r.json()) == (200, [])


# -- types reaching the hooks --


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"jobName": 5}, "jobName must be a string, got a number"),
        ({"jobName": ["add"]}, "jobName must be a string, got an array"),
        ({"labels": ["a"]}, "Invalid labels: expected a dict of str to str, got list"),
        ({"labels": "tenant=a"}, "Invalid labels: expected a dict of str to str, got str"),
        ({"labels": {"tenant": 1}}, "Invalid label 'tenant': values must be strings, got int"),
        ({"labels": {"bad key": "v"}}, None),
        ({"idempotencyKey": {"k": 1}}, None),
        ({"idempotencyKey": ""}, None),
        ({"concurrencyKey": 7}, None),
        ({"coalesce": "always"}, "Invalid coalesce 'always': the only supported value is 'skip'"),
        ({"coalesce": True}, "Invalid coalesce True: the only supported value is 'skip'"),
    ],
)
async def test_trigger__wrong_types_are_400_before_on_trigger(
    durably: Durably, extra: dict[str, Any], message: str | None
) -> None:
    seen: list[TriggerRequest] = []

    def on_trigger(ctx: Any, trigger: TriggerRequest) -> None:
        seen.append(trigger)

    auth = Auth(authenticate=lambda request: "ctx", on_trigger=on_trigger)
    async with client_for(create_handler(durably, auth=auth)) as c:
        assert_error(await c.post("/trigger", json={**ADD, **extra}), 400, message)
        assert seen == []
        assert (await c.post("/trigger", json={**ADD, "labels": {"t": "a"}})).status_code == 200
    (trigger,) = seen
    assert trigger.labels == {"t": "a"}
    assert len(await durably.get_runs()) == 1


async def test_trigger__client_disconnecting_mid_body_is_no_500(durably: Durably) -> None:
    app = create_handler(durably)
    r = await asgi_request(app, "POST", "/trigger", body=[b'{"jobName": "add", '], hang_up=True)
    assert (r.status, r.json()) == (
        400,
        {"error": "The client disconnected before sending the whole body"},
    )
    assert await durably.get_runs() == []
