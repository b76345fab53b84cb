"""durably-libsql: the Hrana-over-HTTP executor, its URLs, and the facts about the
server it relies on (checked against the real tursodb, not assumed)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from libsql_support import TursoServer, free_port

from durably import (
    ConflictError,
    StorageAuthError,
    StorageConnectionError,
    StorageError,
    ValidationError,
    create_durably,
    define_job,
)
from durably.plugins import BackendRegistry
from durably.sql import ConstraintViolation, SqlStorage
from durably_libsql import HranaError, HranaExecutor, open_libsql
from durably_libsql._url import local_sqlite_url, remote_config

TOKEN = "s3cr3t-t0ken-value"

# -- the server facts the executor is built on --


def pipeline(url: str, *requests: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{url}/v2/pipeline", json={"requests": list(requests)}, timeout=10)


def execute(sql: str, args: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    stmt: dict[str, Any] = {"sql": sql, **extra}
    if args is not None:
        stmt["args"] = args
    return {"type": "execute", "stmt": stmt}


def result(response: httpx.Response, i: int = 0) -> dict[str, Any]:
    data = response.json()["results"][i]
    assert data["type"] == "ok", data
    return dict(data["response"]["result"])


def test_server_facts__values_counts_and_statements(libsql_server: TursoServer) -> None:
    url = libsql_server.url
    assert pipeline(url).status_code == 200  # ready: an empty pipeline answers
    r = pipeline(
        url,
        execute(
            "SELECT ?, ?, ?, ?, 9223372036854775807",
            [
                {"type": "integer", "value": "42"},
                {"type": "float", "value": 1.5},
                {"type": "blob", "base64": "AA=="},
                {"type": "text", "value": "日本 🎉"},
            ],
        ),
    )
    row = result(r)["rows"][0]
    assert row[0] == {"type": "integer", "value": "42"}  # integers travel as strings
    assert row[1] == {"type": "float", "value": 1.5}  # floats as JSON numbers
    assert row[2] == {"type": "blob", "base64": "AA"}  # blobs: unpadded base64
    assert row[3] == {"type": "text", "value": "日本 🎉"}
    assert row[4] == {"type": "integer", "value": "9223372036854775807"}
    assert r.json()["baton"] is None  # no streams kept: `close` must not be sent

    pipeline(url, execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"))
    # named arguments are accepted and silently bound as NULL
    named = pipeline(
        url,
        {
            "type": "execute",
            "stmt": {
                "sql": "INSERT INTO t (v) VALUES (:v) RETURNING v",
                "named_args": [{"name": ":v", "value": {"type": "text", "value": "x"}}],
            },
        },
    )
    assert result(named)["rows"] == [[{"type": "null"}]]
    # affected_row_count is always 0: changes() in the same pipeline is right
    r = pipeline(url, execute("UPDATE t SET v = 'y'"), execute("SELECT changes()"))
    assert result(r, 0)["affected_row_count"] == 0
    assert result(r, 1)["rows"] == [[{"type": "integer", "value": "1"}]]
    # a string with two statements runs only the first one
    pipeline(url, execute("INSERT INTO t (v) VALUES ('a'); INSERT INTO t (v) VALUES ('b')"))
    r = pipeline(url, execute("SELECT count(*) FROM t"))
    assert result(r)["rows"] == [[{"type": "integer", "value": "2"}]]
    # only execute and batch requests
    for kind in ("close", "sequence", "get_autocommit"):
        assert pipeline(url, {"type": kind}).status_code == 500
    # one server connection for everybody: a transaction outlives its request
    pipeline(url, execute("BEGIN"))
    r = pipeline(url, execute("BEGIN"))
    assert "within a transaction" in r.json()["results"][0]["error"]["message"]
    pipeline(url, execute("ROLLBACK"))


def test_server_facts__wal_grows_until_checkpointed(libsql_server: TursoServer) -> None:
    url, wal = libsql_server.url, Path(f"{libsql_server.database}-wal")
    pipeline(url, execute("CREATE TABLE big (x TEXT)"))
    for _ in range(30):
        pipeline(url, execute("INSERT INTO big VALUES (hex(randomblob(4000)))"))
    assert wal.stat().st_size > 30 * 4000  # nothing checkpointed it
    pipeline(url, execute("PRAGMA wal_checkpoint(TRUNCATE)"))
    assert wal.stat().st_size == 0


# -- the executor against the real server --


@pytest.fixture
async def remote(libsql_server: TursoServer) -> AsyncIterator[HranaExecutor]:
    storage = open_libsql(libsql_server.url)
    executor = storage.executor
    assert isinstance(executor, HranaExecutor)
    yield executor
    await storage.close()


async def test_executor__values_round_trip(remote: HranaExecutor) -> None:
    values = (None, 0, -(2**63), 2**63 - 1, 2**53 + 1, 0.1, -1e308, "", "é🎉", b"", b"\x00\xff")
    rows = await remote.fetch("SELECT " + ", ".join("?" * len(values)), values)
    assert rows == [values]
    assert [type(v) for v in rows[0]] == [type(v) for v in values]


async def test_executor__execute_counts_rows_with_changes(remote: HranaExecutor) -> None:
    await remote.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    assert await remote.execute("INSERT INTO t (v) VALUES ('a'), ('b'), ('c')") == 3
    assert await remote.execute("UPDATE t SET v = 'x' WHERE id > 1") == 2
    assert await remote.execute("UPDATE t SET v = 'x' WHERE 0") == 0


async def test_executor__failed_batch_rolls_back_and_leaves_no_transaction(
    remote: HranaExecutor,
) -> None:
    await remote.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    with pytest.raises(ConstraintViolation) as caught:
        await remote.batch([("INSERT INTO t VALUES (1)", ()), ("INSERT INTO t VALUES (1)", ())])
    assert caught.value.kind == "unique"
    assert (caught.value.table, caught.value.columns) == ("t", ("id",))
    assert isinstance(caught.value.__cause__, HranaError)
    assert await remote.fetch("SELECT count(*) FROM t") == [(0,)]
    # no transaction was left open on the shared connection: a new batch can begin
    assert await remote.batch([("INSERT INTO t VALUES (2) RETURNING id", ())]) == [[(2,)]]


async def test_executor__server_errors_mapped(remote: HranaExecutor) -> None:
    with pytest.raises(StorageError, match="no such table") as caught:
        await remote.fetch("SELECT * FROM missing")
    assert isinstance(caught.value.__cause__, HranaError)
    with pytest.raises(ValidationError, match="Named SQL parameters"):
        await remote.fetch("SELECT :a", {"a": 1})  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="One SQL statement per call"):
        await remote.execute("SELECT 1; SELECT 2")
    assert await remote.fetch("SELECT ';' AS x; ") == [(";",)]  # a trailing ; is fine


async def test_storage__multi_column_constraint_names_both_columns(
    libsql_server: TursoServer,
) -> None:
    """tursodb names the columns as ``t.(a, b)``; SqlStorage needs them to tell a
    pending-concurrency conflict from other violations."""
    d = create_durably(libsql_server.url, jobs={"j": define_job("j", run=_noop)})
    try:
        await d.migrate()
        await d.jobs.j.trigger({}, concurrency_key="k")
        with pytest.raises(ConflictError, match="already has a pending run"):
            await d.jobs.j.trigger({}, concurrency_key="k")
    finally:
        await d.storage.close()


async def _noop(step: Any, payload: Any) -> None:
    return None


# -- one operation, one request --


class CountingTransport(httpx.AsyncBaseTransport):
    """Wraps the real transport and records every request body."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.bodies: list[dict[str, Any]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(json.loads(await request.aread()))
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_one_checkpoint_is_one_request(libsql_server: TursoServer) -> None:
    transport = CountingTransport()
    per_step: list[int] = []

    async def job(step: Any, payload: Any) -> int:
        total = 0
        for i in range(5):
            before = len(transport.bodies)
            total += await step.run(f"s{i}", lambda i=i: i)
            per_step.append(len(transport.bodies) - before)
        return total

    d = create_durably(libsql_server.url, jobs={"j": define_job("j", run=job)}, transport=transport)
    try:
        await d.migrate()
        run = await d.jobs.j.trigger({})
        start = len(transport.bodies)
        assert await d.process_one()
        whole_run = transport.bodies[start:]
    finally:
        await d.storage.close()
    assert per_step == [1] * 5
    checkpoints = [b for b in whole_run if b["requests"][0]["type"] == "batch"]
    assert len(checkpoints) >= 5
    steps = checkpoints[0]["requests"][0]["batch"]["steps"]
    assert [s["stmt"]["sql"].split()[0] for s in steps] == [
        "BEGIN",
        "INSERT",
        "UPDATE",
        "SELECT",  # changes(): whether the fenced writes applied
        "COMMIT",
        "ROLLBACK",
    ]
    # claim, replay read, 5 checkpoints, completion: one request each
    assert len(whole_run) == 8, [b["requests"][0]["stmt"]["sql"][:30] for b in whole_run[:3]]
    assert (await d.get_run(run.id)).output == 10  # type: ignore[union-attr]


# -- errors, retries and secrets, with a fake server --

Handler = Callable[[httpx.Request], httpx.Response]


def fake(handler: Handler, **options: Any) -> tuple[SqlStorage, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    options.setdefault("retries", 3)
    storage = open_libsql(
        "libsql://db-org.example.test", transport=httpx.MockTransport(record), **options
    )
    return storage, seen


def ok_results(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    results = []
    for req in body["requests"]:
        if req["type"] == "batch":
            n = len(req["batch"]["steps"])
            res: dict[str, Any] = {
                "type": "batch",
                "result": {
                    "step_results": [{"cols": [], "rows": []}] * n,
                    "step_errors": [None] * n,
                },
            }
        else:
            rows = [[{"type": "integer", "value": "1"}]]
            res = {"type": "execute", "result": {"cols": [], "rows": rows}}
        results.append({"type": "ok", "response": res})
    return httpx.Response(200, json={"baton": None, "base_url": None, "results": results})


async def test_auth__token_sent_as_bearer_and_never_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TURSO_AUTH_TOKEN", TOKEN)
    storage, seen = fake(lambda r: httpx.Response(401, text="Unauthorized"))
    with pytest.raises(StorageAuthError, match="auth token was refused") as caught:
        await storage.get_run("x")
    await storage.close()
    assert seen[0].headers["authorization"] == f"Bearer {TOKEN}"
    assert str(seen[0].url) == "https://db-org.example.test/v2/pipeline"
    shown = [repr(storage), repr(storage.executor), str(caught.value), repr(caught.value)]
    shown += [repr(storage.executor.config), str(caught.value.__cause__)]  # type: ignore[attr-defined]
    assert not any(TOKEN in text for text in shown), shown


async def test_auth__missing_token_says_how_to_give_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TURSO_AUTH_TOKEN", raising=False)
    storage, seen = fake(lambda r: httpx.Response(401))
    with pytest.raises(StorageAuthError, match="TURSO_AUTH_TOKEN"):
        await storage.get_run("x")
    await storage.close()
    assert "authorization" not in seen[0].headers


async def test_wrong_url__404_says_so() -> None:
    storage, _ = fake(lambda r: httpx.Response(404, text="Not Found"))
    with pytest.raises(
        StorageConnectionError, match=r"No Hrana v2 endpoint.*check the database URL"
    ):
        await storage.get_run("x")
    await storage.close()


async def test_not_a_libsql_server__says_so() -> None:
    storage, _ = fake(lambda r: httpx.Response(200, text="<html>hello</html>"))
    with pytest.raises(StorageError, match="is this the URL of a libSQL server"):
        await storage.get_run("x")
    await storage.close()


async def test_unreachable_server__retried_then_clear_error() -> None:
    # a port nobody listens on: the connection is refused, nothing was sent
    port = free_port()
    storage = open_libsql(f"http://127.0.0.1:{port}", retries=2)
    executor = storage.executor
    assert isinstance(executor, HranaExecutor)
    with pytest.raises(StorageConnectionError, match="Cannot reach the libSQL server") as caught:
        await storage.complete_run("r", 1, "{}", datetime.now(UTC), delete_steps=True)
    await storage.close()
    assert executor.requests == 3  # a write too: it provably never left
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


async def test_lost_answer__write_not_repeated_read_repeated() -> None:
    calls = {"n": 0}

    def flaky(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            raise httpx.ReadError("connection reset", request=request)
        return ok_results(request)

    storage, seen = fake(flaky)
    with pytest.raises(StorageConnectionError, match="outcome is unknown"):
        await storage.executor.execute("UPDATE durably_runs SET status = 'x' WHERE 0")
    assert len(seen) == 1  # the write was not sent again
    calls["n"] = 0
    assert await storage.executor.fetch("SELECT 1") == [(1,)]
    assert len(seen) == 3  # the read was
    await storage.close()


async def test_streams_closed_only_when_the_server_keeps_them() -> None:
    def with_baton(request: httpx.Request) -> httpx.Response:
        response = ok_results(request)
        body = json.loads(response.content)
        body["baton"] = "b1"
        body["results"] += [{"type": "ok", "response": {"type": "close"}}] * (
            len(json.loads(request.content)["requests"]) - len(body["results"])
        )
        return httpx.Response(200, json=body)

    storage, seen = fake(with_baton)
    await storage.executor.fetch("SELECT 1")
    await storage.executor.fetch("SELECT 1")
    await storage.close()
    kinds = [[r["type"] for r in json.loads(s.content)["requests"]] for s in seen]
    assert kinds == [["execute"], ["execute", "close"]]


async def test_wal_checkpoint_rides_along_every_nth_write() -> None:
    storage, seen = fake(ok_results, checkpoint_every=3)
    for _ in range(6):
        await storage.executor.execute("DELETE FROM t WHERE 0")
    await storage.executor.fetch("SELECT 1")
    await storage.close()
    sizes = [len(json.loads(s.content)["requests"]) for s in seen]
    assert sizes == [2, 2, 3, 2, 2, 3, 1]
    last = json.loads(seen[2].content)["requests"][-1]
    assert last["stmt"]["sql"] == "PRAGMA wal_checkpoint(TRUNCATE)"


# -- URLs --


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("libsql://db-org.turso.io", "https://db-org.turso.io"),
        ("libsql://localhost:8080?tls=0", "http://localhost:8080"),
        ("https://db.example:8443/", "https://db.example:8443"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
    ],
)
def test_url__remote_base(url: str, base: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TURSO_AUTH_TOKEN", raising=False)
    config = remote_config(url, {})
    assert config.base_url == base
    assert config.auth_token is None


def test_url__token_from_query_option_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TURSO_AUTH_TOKEN", "from-env")
    assert remote_config("libsql://h", {}).auth_token == "from-env"
    assert remote_config(f"libsql://h?authToken={TOKEN}", {}).auth_token == TOKEN
    config = remote_config("libsql://h?authToken=q", {"auth_token": TOKEN})
    assert config.auth_token == TOKEN
    assert TOKEN not in repr(config)
    assert "authToken" not in config.base_url


@pytest.mark.parametrize(
    ("url", "options", "message"),
    [
        ("libsql://", {}, "Invalid libSQL URL"),
        ("https://user:pw@h", {}, "credentials"),
        ("http://h", {"timeout": -1}, "timeout"),
        ("http://h", {"max_in_flight": 0}, "max_in_flight"),
        ("http://h", {"pool": 3}, "Unknown option"),
        ("libsql://h?tls=2", {}, "tls"),
    ],
)
def test_url__bad_remote_urls_and_options(url: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message) as caught:
        remote_config(url, options)
    assert "pw" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "sqlite"),
    [
        ("file:local.db", "sqlite:///local.db"),
        ("file:data/x.db?synchronous=FULL", "sqlite:///data/x.db?synchronous=FULL"),
        ("file:/abs/x.db", "sqlite:////abs/x.db"),
        ("file:///abs/x.db", "sqlite:////abs/x.db"),
        ("file::memory:", "sqlite:///:memory:"),
    ],
)
def test_url__file_urls_use_the_sqlite_executor(url: str, sqlite: str) -> None:
    assert local_sqlite_url(url) == sqlite


def test_url__file_url_with_a_host_is_refused() -> None:
    with pytest.raises(ValidationError, match="names a local file"):
        local_sqlite_url("file://server/x.db")


def test_plugin__one_backend_for_all_libsql_schemes() -> None:
    registry = BackendRegistry()
    backends = {
        registry.backend_for(u).name for u in ("file:x.db", "libsql://h", "https://h", "http://h")
    }
    assert backends == {"libsql"}


def test_base64__blob_decoding_accepts_unpadded() -> None:
    from durably_libsql._hrana import decode_value

    for data in (b"", b"\x00", b"\x00\x01", b"\x00\x01\x02"):
        unpadded = base64.b64encode(data).decode().rstrip("=")
        assert decode_value({"type": "blob", "base64": unpadded}) == data


# -- lost answers: checked, not repeated blindly, and not paid for with a lease --


class LosingTransport(httpx.AsyncBaseTransport):
    """Loses the answer to the first copy of every write request: ``after`` the real
    server applied it (the connection broke on the way back), or ``before`` it reached
    the server (dropped on the way there). Reads and second copies pass."""

    def __init__(self, when: str) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.when = when
        self.seen: set[bytes] = set()
        self.lost: list[str] = []

    @staticmethod
    def _first_sql(body: dict[str, Any]) -> str:
        request = body["requests"][0]
        if request["type"] == "batch":
            return str(request["batch"]["steps"][1]["stmt"]["sql"])
        return str(request["stmt"]["sql"])

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        sql = self._first_sql(body) if body["requests"] else "SELECT"
        write = not sql.lstrip().upper().startswith("SELECT") or "RETURNING" in sql.upper()
        first_copy = request.content not in self.seen
        self.seen.add(request.content)
        if not (write and first_copy and "durably_runs SET status = 'leased'" not in sql):
            return await self.inner.handle_async_request(request)
        self.lost.append(" ".join(sql.split()[:3]))
        if self.when == "after":
            response = await self.inner.handle_async_request(request)
            await response.aread()
        raise httpx.ReadError("connection reset by peer", request=request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.parametrize("when", ["after", "before"])
async def test_lost_answers__checked_then_resent_once__no_lease_waited_for(
    libsql_server: TursoServer, when: str
) -> None:
    from durably_testing.clock import ManualClock

    transport = LosingTransport(when)
    calls: list[int] = []

    async def job(step: Any, payload: Any) -> int:
        total = 0
        for i in range(3):

            async def work(i: int = i) -> int:
                calls.append(i)
                return i

            total += await step.run(f"s{i}", work)
            step.progress(i + 1, 3)
            step.log.info("step done", i=i)
        return total

    clock = ManualClock()  # never advanced: no lease can expire during the test
    d = create_durably(
        libsql_server.url,
        jobs={"j": define_job("j", run=job)},
        transport=transport,
        clock=clock,
        preserve_steps=True,
    )
    errors: list[Any] = []
    d.on("worker:error", errors.append)
    try:
        await d.migrate()
        triggered = await d.jobs.j.trigger({}, idempotency_key="k")
        assert triggered.disposition == "created"  # its answer was lost, yet it is ours
        assert await d.process_one()
        run = await d.get_run(triggered.id)
        steps = await d.get_steps(triggered.id)
    finally:
        await d.storage.close()
    assert run is not None
    assert (run.status.value, run.output, run.completed_step_count) == ("completed", 3, 3)
    assert calls == [0, 1, 2]  # every step ran once
    assert [s.name for s in steps] == ["s0", "s1", "s2"]
    assert not errors
    lost = " | ".join(transport.lost)
    for what in ("INSERT INTO durably_runs", "INSERT INTO durably_steps", "UPDATE durably_runs"):
        assert what in lost, lost
