"""Helpers for the HTTP tests: jobs whose pace the test controls, a real uvicorn
server on 127.0.0.1 inside the test's event loop, and an SSE frame reader."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import uvicorn
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from durably import NotFoundError, Step, define_job
from durably.http import Auth, RunsFilter, RunsSubscribeFilter, TriggerRequest

#: Safety net for waits on conditions (never a sleep to let something happen).
TIMEOUT = 10.0

#: The handler's routes about one run (``?runId=``).
RUN_ROUTES = [
    ("GET", "/run"),
    ("GET", "/steps"),
    ("GET", "/attempts"),
    ("POST", "/retrigger"),
    ("POST", "/cancel"),
    ("DELETE", "/run"),
    ("GET", "/subscribe"),
    ("GET", "/waits"),
    ("GET", "/wait"),
    ("POST", "/signal"),
]
#: Every route of the handler.
ROUTES = [
    ("POST", "/trigger"),
    ("GET", "/runs"),
    ("GET", "/runs/subscribe"),
    ("GET", "/schedules"),
    *RUN_ROUTES,
]


class Gates:
    """asyncio.Events a job waits on, created on demand by name."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def __getitem__(self, name: str) -> asyncio.Event:
        return self._events.setdefault(name, asyncio.Event())

    def open(self, name: str) -> None:
        self[name].set()

    def reset(self) -> None:
        """Forget every gate (each test, and each backend of a test, starts closed)."""
        self._events.clear()


GATES = Gates()


class AddIn(BaseModel):
    a: int
    b: int


class AddOut(BaseModel):
    sum: int


@define_job("add", input=AddIn, output=AddOut)
async def add(step: Step, payload: AddIn) -> AddOut:
    total = await step.run("sum", lambda: payload.a + payload.b)
    step.log.info("added", total=total)
    return AddOut(sum=total)


class GatedIn(BaseModel):
    key: str
    steps: int = 2


@define_job("gated", input=GatedIn)
async def gated(step: Step, payload: GatedIn) -> dict[str, Any]:
    """Waits for gate ``<key>:<i>`` before step i; reports progress after each."""
    for i in range(payload.steps):
        await GATES[f"{payload.key}:{i}"].wait()
        await step.run(f"step-{i}", lambda i=i: i)
        step.progress(i + 1, payload.steps, f"step {i + 1}")
    return {"done": payload.steps}


class BoomIn(BaseModel):
    message: str = "boom"


@define_job("boom", input=BoomIn)
async def boom(step: Step, payload: BoomIn) -> None:
    def explode() -> None:
        raise RuntimeError(payload.message)

    await step.run("explode", explode)


class Answer(BaseModel):
    ok: bool


@define_job("ask")
async def ask(step: Step, payload: dict[str, Any]) -> dict[str, Any]:
    """Waits for a signal to its wait ``answer`` (an ``Answer``), an hour at most."""
    wait = await step.prepare_wait("answer", timeout=3600, payload=Answer, metadata=payload)
    result = await step.wait_for(wait)
    return {"outcome": result.outcome, "ok": None if result.payload is None else result.payload.ok}


JOBS = {"add": add, "gated": gated, "boom": boom, "ask": ask}


def free_socket(sndbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if sndbuf is not None:  # the accepted connections inherit it (Linux)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.asynccontextmanager
async def serve(
    app: Any, servers: list[uvicorn.Server] | None = None, *, sndbuf: int | None = None
) -> AsyncIterator[str]:
    """Run ``app`` with uvicorn on a free 127.0.0.1 port; yields the base URL
    (the ``uvicorn.Server`` is appended to ``servers`` if given; ``sndbuf`` sets
    the send buffer of the server's sockets)."""
    sock = free_socket(sndbuf)
    config = uvicorn.Config(
        app, log_level="warning", lifespan="auto", timeout_graceful_shutdown=2, ws="none"
    )
    server = uvicorn.Server(config)
    if servers is not None:
        servers.append(server)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(TIMEOUT):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        host, port = sock.getsockname()
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


class SSEReader:
    """Reads an SSE response frame by frame, checking the exact framing."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._chunks = response.aiter_raw()
        self._buffer = b""
        self.raw: list[bytes] = []

    async def frame(self) -> dict[str, Any] | None:
        """The next ``data:`` frame as JSON; ``None`` when the stream ends.
        Comment frames (keep-alive pings) are skipped."""
        async with asyncio.timeout(TIMEOUT):
            while True:
                if b"\n\n" in self._buffer:
                    frame, self._buffer = self._buffer.split(b"\n\n", 1)
                    if frame.startswith(b":"):
                        continue
                    self.raw.append(frame + b"\n\n")
                    assert frame.startswith(b"data: "), frame
                    assert b"\n" not in frame, frame
                    assert b"\r" not in frame, frame
                    return json.loads(frame[6:])  # type: ignore[no-any-return]
                try:
                    chunk = await self._chunks.__anext__()
                except StopAsyncIteration:
                    assert self._buffer == b"", self._buffer
                    return None
                self._buffer += chunk

    async def frames_until_close(self) -> list[dict[str, Any]]:
        out = []
        while (frame := await self.frame()) is not None:
            out.append(frame)
        return out


@contextlib.asynccontextmanager
async def sse(
    client: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None
) -> AsyncIterator[SSEReader]:
    headers = {"Accept": "text/event-stream", **(headers or {})}
    async with client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200, response.status_code
        assert response.headers["content-type"].startswith("text/event-stream")
        yield SSEReader(response)


async def wait_until(predicate: Any) -> None:
    """Wait for a cheap in-process condition that no event signals (e.g. the server
    noticing a client went away), re-checking every few ms; bounded by TIMEOUT."""
    async with asyncio.timeout(TIMEOUT):
        while not predicate():  # noqa: ASYNC110 - nothing to wait on but the condition
            await asyncio.sleep(0.005)


class BurstIn(BaseModel):
    key: str
    n: int = 3


@define_job("burst", input=BurstIn)
async def burst(step: Step, payload: BurstIn) -> dict[str, int]:
    """Reports progress 1..n at once, then waits for gate ``<key>:end``."""
    for i in range(1, payload.n + 1):
        step.progress(i, payload.n, f"p{i}")
    await GATES[f"{payload.key}:end"].wait()
    return {"n": payload.n}


JOBS["burst"] = burst


def next_event(durably: Any, event_type: str, run_id: str | None = None) -> asyncio.Future[Any]:
    """A future resolved by the next ``event_type`` event (of ``run_id``, if given)."""
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def listener(event: Any) -> None:
        if run_id is not None and getattr(event, "run_id", None) != run_id:
            return
        if not fut.done():
            fut.set_result(event)
        unsubscribe()

    unsubscribe = durably.on(event_type, listener)
    return fut


async def settle(fut: asyncio.Future[Any]) -> Any:
    async with asyncio.timeout(TIMEOUT):
        return await fut


async def reach(durably: Any, run_id: str, *statuses: str, progressed: bool = False) -> Any:
    """Wait (on the run's events, not on time) until the run has one of ``statuses``
    (and some progress, if asked); returns the run. Race-free: listens first."""
    changed = asyncio.Event()

    def listener(event: Any) -> None:
        if getattr(event, "run_id", None) == run_id:
            changed.set()

    unsubscribe = durably.on("*", listener)
    try:
        async with asyncio.timeout(TIMEOUT):
            while True:
                changed.clear()
                run = await durably.get_run(run_id)
                ready = run is not None and run.status in statuses
                if ready and (not progressed or run.progress is not None):
                    return run
                # events wake us at once; a short re-check covers background writes
                # (progress is written just after its event)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), 0.02)
    finally:
        unsubscribe()


class ASGIResult:
    """What an ASGI app answered: status, headers, and the body it sent (for a
    stream: whatever it sent before the client went away)."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.body = b""
        self.complete = False

    def json(self) -> Any:
        return json.loads(self.body)


async def asgi_request(
    app: Any,
    method: str,
    path: str,
    *,
    query: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    body: list[bytes] | None = None,
    hang_up: bool = False,
) -> ASGIResult:
    """One request straight into the ASGI app, with no HTTP client or server in
    between to refuse or tidy anything. The body is sent in the given chunks. A
    stream is read until the response starts and then the client disconnects
    (the stream must end when told so). ``hang_up``: the client disconnects after
    the chunks instead of ending the body."""
    chunks = list(body or [b""])
    result = ASGIResult()
    started = asyncio.Event()
    gone = asyncio.Event()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("utf-8", "surrogateescape"),
        "root_path": "",
        "query_string": query,
        "headers": headers or [],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
        "state": {},
    }

    async def receive() -> dict[str, Any]:
        if chunks:
            chunk = chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": hang_up or bool(chunks)}
        if not hang_up:
            await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            result.status = message["status"]
            result.headers = {
                k.decode("latin-1"): v.decode("latin-1") for k, v in message["headers"]
            }
            started.set()
        elif message["type"] == "http.response.body":
            result.body += message.get("body", b"")
            result.complete = not message.get("more_body", False)

    task = asyncio.create_task(app(scope, receive, send))
    waiter = asyncio.create_task(started.wait())
    try:
        async with asyncio.timeout(TIMEOUT):
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            gone.set()  # a stream ends when its client goes; a response is sent anyway
            await task
    finally:
        waiter.cancel()
        task.cancel()
    task.result()
    return result


def tenant_auth(*, scope_keys: bool = True) -> Auth:
    """The multi-tenant recipe of docs/http-protocol.md: the tenant comes from the
    ``x-tenant`` header; its runs carry a ``tenant`` label that it cannot choose,
    it sees and lists only those, and its keys live in its own namespace."""

    def authenticate(request: Any) -> str:
        tenant = request.headers.get("x-tenant")
        if not tenant:
            raise HTTPException(401, "Unauthorized")
        return str(tenant)

    def on_trigger(tenant: str, trigger: TriggerRequest) -> TriggerRequest:
        assert isinstance(trigger.job_name, str)  # the handler checked the types
        assert trigger.labels is None or all(isinstance(v, str) for v in trigger.labels.values())
        return dataclasses.replace(trigger, labels={**(trigger.labels or {}), "tenant": tenant})

    def on_run_access(tenant: str, run: Any, operation: str) -> None:
        if run.labels.get("tenant") != tenant:
            raise NotFoundError("Run not found")

    def scope_runs(tenant: str, query: RunsFilter) -> RunsFilter:
        return dataclasses.replace(query, labels={**(query.labels or {}), "tenant": tenant})

    def scope_runs_subscribe(tenant: str, query: RunsSubscribeFilter) -> RunsSubscribeFilter:
        return dataclasses.replace(query, labels={**(query.labels or {}), "tenant": tenant})

    return Auth(
        authenticate=authenticate,
        on_trigger=on_trigger,
        on_run_access=on_run_access,
        scope_runs=scope_runs,
        scope_runs_subscribe=scope_runs_subscribe,
        scope_keys=(lambda tenant: str(tenant)) if scope_keys else None,
    )


async def stalled_client(base: str, path: str) -> socket.socket:
    """A client that sends ``GET path`` and then does not read (its receive buffer
    is 4 KiB, so the server's writes back up soon)."""
    host, port = base.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (host, int(port)))
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n"
    await loop.sock_sendall(sock, request.encode())
    return sock


async def read_to_end(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    loop = asyncio.get_running_loop()
    data = b""
    async with asyncio.timeout(TIMEOUT):
        while chunk := await loop.sock_recv(sock, 65536):
            data += chunk
    return data


class ChattyIn(BaseModel):
    key: str
    size: int = 1000


@define_job("chatty", input=ChattyIn)
async def chatty(step: Step, payload: ChattyIn) -> dict[str, int]:
    """Logs ``size``-byte messages as fast as it can until gate ``<key>:end`` opens."""
    count = 0
    while not GATES[f"{payload.key}:end"].is_set():
        count += 1
        step.log.info("x" * payload.size, count=count)
        await asyncio.sleep(0)
    step.progress(count, count)
    return {"logs": count}


JOBS["chatty"] = chatty
