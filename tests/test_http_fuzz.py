"""Fuzzing every route of durably.http: hypothesis makes methods, paths, query
strings, headers and bodies (well-formed, almost well-formed and garbage) and
sends them straight into the ASGI app (no HTTP client to tidy them up), on a
real SQLite file holding runs in every status. No answer may be a 5xx; a 4xx
from a route is a JSON error; no stream may stay open after its client left.

The default suite runs a modest number of examples; the ``slow`` variant many more.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from http_support import JOBS, ROUTES, ASGIResult, asgi_request, tenant_auth
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from durably import Durably, create_durably
from durably.http import Auth, create_handler

pytestmark = pytest.mark.slow

METHODS = ["GET", "POST", "DELETE", "PUT", "PATCH", "OPTIONS", "HEAD", "TRACE", "BREW"]
PARAMS = ["runId", "jobName", "status", "limit", "offset", "label.tenant", "label.org", "name"]


@dataclass
class Target:
    """A handler on a SQLite file whose runs are pending, completed, failed and
    cancelled; the fuzzer picks among their ids."""

    runner: asyncio.Runner
    durably: Durably
    app: Any
    run_ids: list[str] = field(default_factory=list)


async def _seed(d: Durably) -> list[str]:
    await d.migrate()
    add, boom = d.jobs["add"], d.jobs["boom"]
    ids = []
    for tenant in ["a", "b"]:
        ids.append((await add.trigger({"a": 1, "b": 2}, labels={"tenant": tenant})).id)
        assert await d.process_one()  # completed
        ids.append((await boom.trigger({}, labels={"tenant": tenant})).id)
        assert await d.process_one()  # failed
        cancelled = (await add.trigger({"a": 1, "b": 2}, labels={"tenant": tenant})).id
        await d.cancel(cancelled)
        ids.append(cancelled)
        ids.append((await add.trigger({"a": 3, "b": 4}, labels={"tenant": tenant})).id)
        asked = (await d.jobs["ask"].trigger({"q": 1}, labels={"tenant": tenant})).id
        assert await d.process_one()  # waiting for a signal to its wait "answer"
        ids.append(asked)
    return ids


@pytest.fixture(params=["no-auth", "tenant-auth"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    runner = asyncio.Runner()
    # the worker is not started: triggered runs stay pending, streams stay open
    durably = create_durably(f"sqlite:///{tmp_path / 'fuzz.db'}", jobs=JOBS, preserve_steps=True)
    auth = tenant_auth() if request.param == "tenant-auth" else None
    run_ids = runner.run(_seed(durably))
    app = runner.run(_make_app(durably, auth))
    try:
        yield Target(runner, durably, app, run_ids)
    finally:
        runner.run(durably.stop(timeout=0))
        runner.run(durably.storage.close())
        runner.close()


async def _make_app(durably: Durably, auth: Auth | None) -> Any:
    return create_handler(durably, auth=auth, max_body_size=64 * 1024)


# -- strategies --

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
label_map = st.dictionaries(
    st.sampled_from(["tenant", "org", "bad key", "a\n", "x" * 300, ""]) | st.text(max_size=6),
    st.text(max_size=10) | json_leaf,
    max_size=4,
)


def mostly(likely: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> Any:
    """``likely`` three times in four (so most requests get past the first check)."""
    return st.integers(0, 3).flatmap(lambda i: other if i == 0 else likely)


trigger_body = st.fixed_dictionaries(
    {"jobName": mostly(st.sampled_from(["add", "boom"]), json_value | st.just("nope"))},
    optional={
        "input": mostly(
            st.fixed_dictionaries({"a": st.integers(), "b": st.integers()}),
            st.fixed_dictionaries({"a": json_leaf, "b": json_leaf}) | json_value,
        ),
        "idempotencyKey": mostly(st.sampled_from(["k1", "k2"]), json_leaf),
        "concurrencyKey": mostly(st.sampled_from(["c1", "c2"]), json_leaf),
        "labels": mostly(
            st.dictionaries(st.sampled_from(["tenant", "org"]), st.text(max_size=4)),
            label_map | json_value,
        ),
        "coalesce": mostly(st.just("skip"), json_leaf),
    },
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(
        mostly(
            st.sampled_from(["trigger", "signal"]),
            st.sampled_from(["json", "deep", "bytes", "empty", "big"]),
        )
    )
    if kind == "trigger":
        return json.dumps(draw(trigger_body)).encode()
    if kind == "signal":
        return json.dumps(draw(signal_body)).encode()
    if kind == "json":
        return json.dumps(draw(json_value)).encode()
    if kind == "deep":
        depth = draw(st.integers(min_value=90, max_value=5000))
        inner = b"[" * depth + b"]" * depth
        return b'{"jobName": "add", "input": {"a": 1, "b": 2, "x": ' + inner + b"}}"
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "big":
        return b'{"jobName": "add", "input": "' + b"x" * draw(st.integers(60_000, 70_000)) + b'"}'
    return b""


@st.composite
def query_values(draw: st.DrawFn, run_ids: list[str]) -> str:
    return draw(
        st.sampled_from(run_ids)
        | st.sampled_from(["add", "boom", "pending", "completed", "running", "", "-0", " 7x"])
        | st.just("answer")
        | st.integers(min_value=-(2**80), max_value=2**80).map(str)
        | st.text(max_size=12)
    )


@st.composite
def query_strings(draw: st.DrawFn, run_ids: list[str]) -> bytes:
    pairs = []
    if draw(st.integers(0, 4)):
        pairs.append(("runId", draw(mostly(st.sampled_from(run_ids), query_values(run_ids)))))
    pairs += draw(
        st.lists(
            st.tuples(st.sampled_from(PARAMS) | st.text(max_size=10), query_values(run_ids)),
            max_size=4,
        )
    )
    parts = [f"{quote(k, safe='.')}={quote(v)}" for k, v in pairs]
    if draw(st.integers(0, 7)) == 0:  # many filters at once
        name = draw(st.sampled_from(["label.k", "jobName", "status"]))
        count = draw(st.integers(min_value=90, max_value=1200))
        parts += [f"{name}{i if name == 'label.k' else ''}=x" for i in range(count)]
    query = "&".join(parts).encode()
    if draw(st.integers(0, 7)) == 0:  # raw garbage: bad escapes, bytes that are not UTF-8
        query += draw(st.sampled_from([b"&%zz", b"&runId=%ED%A0%80", b"&label.%ff=1", b"&&=&"]))
    return query


signal_body = st.fixed_dictionaries(
    {"name": mostly(st.just("answer"), json_value | st.just("nope"))},
    optional={
        "payload": mostly(st.fixed_dictionaries({"ok": st.booleans()}), json_value),
        "signalId": mostly(st.sampled_from(["s1", "s2"]), json_leaf),
    },
)


@st.composite
def requests(draw: st.DrawFn, run_ids: list[str]) -> dict[str, Any]:
    if draw(st.integers(0, 9)) < 8:
        method, path = draw(st.sampled_from(ROUTES))
        if draw(st.integers(0, 9)) == 0:
            method = draw(st.sampled_from(METHODS))
    else:
        method = draw(st.sampled_from(METHODS))
        path = "/" + draw(st.text(max_size=15) | st.sampled_from(["runs/", "/runs", "run/x"]))
    headers = []
    if draw(st.integers(0, 5)):
        headers.append((b"x-tenant", draw(st.sampled_from([b"a", b"b", b""]))))
    if draw(st.booleans()):
        headers.append((b"content-type", draw(st.sampled_from([b"application/json", b"x/y"]))))
    body = draw(bodies())
    if draw(st.integers(0, 4)) == 0:  # a Content-Length that may lie
        length = draw(st.sampled_from([str(len(body)), "0", "-1", "abc", "9" * 30, "70000"]))
        headers.append((b"content-length", length.encode()))
    cut = draw(st.integers(min_value=0, max_value=len(body)))
    return {
        "method": method,
        "path": path,
        "query": draw(query_strings(run_ids)),
        "headers": headers,
        "body": [body[:cut], body[cut:]],
        "hang_up": draw(st.integers(0, 19)) == 0,
    }


def check(result: ASGIResult, request: dict[str, Any]) -> None:
    assert result.status is not None, request
    assert result.status < 500, (request, result.status, result.body[:300])
    if result.status < 400:
        return
    content_type = result.headers.get("content-type", "")
    if content_type.startswith("text/plain"):  # no such route (404) or method (405)
        assert result.status in (404, 405), (request, result.status, result.body)
        return
    assert content_type.startswith("application/json"), (request, result.headers)
    error = result.json()["error"]
    assert isinstance(error, str)
    assert error


def fuzz(target: Target, data: st.DataObject) -> None:
    request = data.draw(requests(target.run_ids))
    result = target.runner.run(asgi_request(target.app, **request))
    check(result, request)
    # every stream ended when its client left
    assert target.app.state.durably_hub.streams == 0


SETTINGS: dict[str, Any] = {
    "deadline": None,
    "database": None,  # the examples depend on the fixture's run ids
    "suppress_health_check": [
        HealthCheck.function_scoped_fixture,  # one database for all examples, deliberately
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
}


@settings(max_examples=150, **SETTINGS)
@given(data=st.data())
def test_fuzz__no_route_answers_5xx(target: Target, data: st.DataObject) -> None:
    fuzz(target, data)


#: Examples of the long fuzz per handler: 600 in the whole run (about 15 s each on a
#: loaded machine; the examples differ from run to run, so runs add up); raise it to
#: fuzz longer, e.g. ``DURABLY_FUZZ_EXAMPLES=20000 uv run pytest tests/test_http_fuzz.py``.
LONG_EXAMPLES = int(os.environ.get("DURABLY_FUZZ_EXAMPLES", "600"))


@pytest.mark.slow
@settings(max_examples=LONG_EXAMPLES, **SETTINGS)
@given(data=st.data())
def test_fuzz__no_route_answers_5xx__long(target: Target, data: st.DataObject) -> None:
    fuzz(target, data)
