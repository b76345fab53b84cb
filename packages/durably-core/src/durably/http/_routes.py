"""The routes of the reference's ``createDurablyHandler``, on Starlette."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from .. import (
    ConflictError,
    Durably,
    DurablyError,
    JobHandle,
    NotFoundError,
    Run,
    RunStatus,
    SignalRejectedError,
    ValidationError,
)
from ._auth import (
    Auth,
    RunOperation,
    RunsFilter,
    RunsSubscribeFilter,
    SignalRequest,
    TriggerRequest,
    call,
    scoped_key,
)
from ._backlog import DEFAULT_MAX_BACKLOG, Backlog
from ._dashboard import Dashboard
from ._fanout import RunsStream
from ._hub import EventHub
from ._request import (
    DEFAULT_MAX_BODY_SIZE,
    RequestError,
    decode_json,
    label_filters,
    parse_int,
    read_body,
    signal_request,
    trigger_request,
    values,
)
from ._serialize import (
    client_attempt,
    client_run,
    client_schedule,
    client_step,
    client_wait,
    encode,
    event_payload,
    sse_frame,
)
from ._sse import EventQueue, SSEResponse, replay, run_filter, run_frames, runs_frames

logger = logging.getLogger("durably.http")

OnSignal = Callable[
    [Any, Run, SignalRequest], "SignalRequest | Awaitable[SignalRequest | None] | None"
]

#: The statuses the protocol accepts (the reference refuses the "running" alias here).
VALID_STATUSES = tuple(s.value for s in RunStatus)
_STATUS_LIST = ", ".join(VALID_STATUSES)


class _JSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        return encode(content)


def json_response(data: Any, status: int = 200) -> Response:
    return _JSON(data, status_code=status)


def error_response(message: str, status: int) -> Response:
    return json_response({"error": message}, status)


def _status_of(exc: DurablyError) -> int | None:
    if isinstance(exc, ValidationError):
        return 400
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, ConflictError):
        return 409
    return None


class _Handler:
    def __init__(
        self,
        durably: Durably,
        auth: Auth | None,
        sse_throttle: float,
        sse_poll_interval: float | None,
        on_request: Callable[[], Awaitable[None] | None] | None,
        max_body_size: int,
        sse_max_backlog: int,
        dashboard: bool,
        watch_interval: float,
        on_signal: OnSignal | None = None,
    ) -> None:
        self.durably = durably
        self.on_signal = on_signal
        self.max_body_size = max_body_size
        self.max_backlog = sse_max_backlog
        self.auth = auth
        self.throttle = sse_throttle
        self.poll_interval = sse_poll_interval
        self.on_request = on_request
        self.hub = EventHub(durably, sse_throttle)
        self.routes: dict[tuple[str, str], Callable[[Request, Any], Awaitable[Response]]] = {
            ("GET", "/subscribe"): self.subscribe,
            ("GET", "/runs"): self.runs,
            ("GET", "/run"): self.run,
            ("GET", "/steps"): self.steps,
            ("GET", "/attempts"): self.attempts,
            ("GET", "/runs/subscribe"): self.runs_subscribe,
            ("POST", "/trigger"): self.trigger,
            ("POST", "/retrigger"): self.retrigger,
            ("POST", "/cancel"): self.cancel,
            ("DELETE", "/run"): self.delete,
            ("GET", "/schedules"): self.schedules,
            ("GET", "/waits"): self.waits,
            ("GET", "/wait"): self.wait,
            ("POST", "/signal"): self.signal,
        }
        if dashboard:
            self.routes.update(Dashboard(self, watch_interval).routes())

    async def dispatch(self, request: Request) -> Response:
        try:
            ctx = None
            if self.auth is not None:
                ctx = await call(self.auth.authenticate, request)
            if self.on_request is not None:
                await call(self.on_request)
            route = self.routes.get((request.method, "/" + request.path_params["path"]))
            if route is None:
                return PlainTextResponse("Not Found", status_code=404)
            return await route(request, ctx)
        except RequestError as exc:
            headers = {"Connection": "close"} if exc.status == 413 else None
            return _JSON({"error": exc.message}, status_code=exc.status, headers=headers)
        except HTTPException as exc:
            return _JSON({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)
        except DurablyError as exc:
            status = _status_of(exc)
            if status is not None:
                return error_response(str(exc), status)
            logger.exception("durably.http: %s %s failed", request.method, request.url.path)
            return error_response("Internal server error", 500)
        except Exception:
            logger.exception("durably.http: %s %s failed", request.method, request.url.path)
            return error_response("Internal server error", 500)

    # -- helpers --

    def _job(self, name: str) -> JobHandle[Any, Any] | None:
        for handle in self.durably.jobs.values():
            if handle.name == name:
                return handle
        return None

    async def run_access(self, request: Request, ctx: Any, operation: RunOperation) -> Run:
        run_id = request.query_params.get("runId")
        if not run_id:
            raise RequestError("runId query parameter is required")
        run = await self.durably.get_run(run_id)
        if run is None:
            raise RequestError("Run not found", 404)
        if self.auth is not None and self.auth.on_run_access is not None:
            await call(self.auth.on_run_access, ctx, run, operation)
        return run

    # -- routes --

    async def trigger(self, request: Request, ctx: Any) -> Response:
        req = trigger_request(decode_json(await read_body(request, self.max_body_size)))
        handle = self._job(req.job_name)
        if handle is None:
            return error_response(f"Job not found: {req.job_name}", 404)
        if self.auth is not None and self.auth.on_trigger is not None:
            replaced = await call(self.auth.on_trigger, ctx, req)
            if isinstance(replaced, TriggerRequest):
                if replaced.job_name != req.job_name:
                    handle = self._job(replaced.job_name)
                    if handle is None:
                        return error_response(f"Job not found: {replaced.job_name}", 404)
                req = replaced
        keys = await self._scoped_keys(ctx, req)
        try:
            result = await handle.trigger(
                req.input,
                idempotency_key=keys[0],
                concurrency_key=keys[1],
                labels=req.labels,
                coalesce=req.coalesce,
            )
        except ConflictError as exc:
            if keys[1] == req.concurrency_key:
                raise
            # the message names the stored key; the caller knows the one it sent
            message = str(exc).replace(repr(keys[1]), repr(req.concurrency_key))
            raise ConflictError(message, run_id=exc.run_id, status=exc.status) from None
        return json_response({"runId": result.id, "disposition": result.disposition})

    async def _scoped_keys(self, ctx: Any, req: TriggerRequest) -> tuple[Any, Any]:
        """The request's idempotency and concurrency keys in the caller's namespace
        (``Auth.scope_keys``), or as sent."""
        keys = (req.idempotency_key, req.concurrency_key)
        if self.auth is None or self.auth.scope_keys is None or keys == (None, None):
            return keys
        namespace = await call(self.auth.scope_keys, ctx)
        if namespace is None:
            return keys
        if not isinstance(namespace, str):
            raise TypeError(
                f"Auth.scope_keys must return a string or None, got {type(namespace).__name__}"
            )

        def scope(key: Any) -> Any:
            # a key of another type is left for trigger() to refuse with its own message
            return scoped_key(namespace, key) if isinstance(key, str) else key

        return scope(keys[0]), scope(keys[1])

    async def runs(self, request: Request, ctx: Any) -> Response:
        params = request.query_params
        statuses = values(params, "status") or ()
        for s in statuses:
            if s == "":
                return error_response(
                    f"Invalid status: empty value. Must be one of: {_STATUS_LIST}", 400
                )
            if s not in VALID_STATUSES:
                return error_response(f"Invalid status: {s}. Must be one of: {_STATUS_LIST}", 400)
        query = RunsFilter(
            job_name=values(params, "jobName"),
            status=statuses or None,
            labels=label_filters(params),
            limit=parse_int(params.get("limit"), "limit"),
            offset=parse_int(params.get("offset"), "offset"),
        )
        if self.auth is not None and self.auth.scope_runs is not None:
            query = await call(self.auth.scope_runs, ctx, query)
        runs = await self.durably.get_runs(
            status=query.status,
            job_name=query.job_name,
            labels=query.labels,
            limit=query.limit,
            offset=query.offset or 0,
        )
        return json_response([client_run(r) for r in runs])

    async def run(self, request: Request, ctx: Any) -> Response:
        run = await self.run_access(request, ctx, "read")
        return json_response(client_run(run))

    async def steps(self, request: Request, ctx: Any) -> Response:
        run = await self.run_access(request, ctx, "steps")
        steps = await self.durably.get_steps(run.id)
        return json_response([client_step(s) for s in steps])

    async def attempts(self, request: Request, ctx: Any) -> Response:
        run = await self.run_access(request, ctx, "attempts")
        attempts = await self.durably.get_attempts(run.id)
        return json_response([client_attempt(a) for a in attempts])

    async def retrigger(self, request: Request, ctx: Any) -> Response:
        run = await self.run_access(request, ctx, "retrigger")
        new = await self.durably.retrigger(run.id)
        return json_response({"success": True, "runId": new.id})

    async def cancel(self, request: Request, ctx: Any) -> Response:
        run = await self.run_access(request, ctx, "cancel")
        await self.durably.cancel(run.id)
        return json_response({"success": True})

    async def delete(self, request: Request, ctx: Any) -> Response:
        run = await self.run_access(request, ctx, "delete")
        await self.durably.delete_run(run.id)
        return json_response({"success": True})

    async def schedules(self, request: Request, ctx: Any) -> Response:
        """Python only: the stored schedules (``?jobName=`` narrows them), with their next
        fire time. Guarded by ``authenticate`` alone: schedules belong to no tenant."""
        names = values(request.query_params, "jobName")
        records = await self.durably.schedules.list(job_name=names)
        return json_response([client_schedule(s) for s in records])

    async def _wait_access(self, request: Request, ctx: Any, operation: RunOperation) -> Run:
        """The run of a wait route: ``on_run_access`` is required once requests are
        authenticated (the address of a wait grants nothing by itself)."""
        if self.auth is not None and self.auth.on_run_access is None:
            raise RequestError(
                "The wait routes need Auth(on_run_access=...) to check who may read or "
                "signal a run's waits",
                403,
            )
        return await self.run_access(request, ctx, operation)

    async def waits(self, request: Request, ctx: Any) -> Response:
        run = await self._wait_access(request, ctx, "waits")
        return json_response([client_wait(w) for w in await self.durably.get_waits(run.id)])

    async def wait(self, request: Request, ctx: Any) -> Response:
        run = await self._wait_access(request, ctx, "waits")
        name = request.query_params.get("name")
        if not name:
            raise RequestError("name query parameter is required")
        wait = await self.durably.get_wait(run.id, name)
        if wait is None:
            return error_response(f"Wait not found: {name}", 404)
        return json_response(client_wait(wait))

    async def signal(self, request: Request, ctx: Any) -> Response:
        run = await self._wait_access(request, ctx, "signal")
        req = signal_request(decode_json(await read_body(request, self.max_body_size)))
        if self.on_signal is not None:
            replaced = await call(self.on_signal, ctx, run, req)
            if replaced is not None:
                if not isinstance(replaced, SignalRequest):
                    raise TypeError(f"on_signal returned {replaced!r}, not a SignalRequest")
                req = replaced
        try:
            receipt = await self.durably.signal(
                run.id, req.name, req.payload, signal_id=req.signal_id
            )
        except SignalRejectedError as exc:
            body = {"error": str(exc), "reason": exc.reason, "wait": client_wait(exc.wait)}
            return json_response(body, 409)
        return json_response(
            {"disposition": receipt.disposition, "wait": client_wait(receipt.wait)}
        )

    async def subscribe(self, request: Request, ctx: Any) -> Response:
        run = await self.run_access(request, ctx, "subscribe")
        if run.is_terminal:
            # the common reconnect (EventSource retries a closed stream every ~3 s):
            # one read, one frame, no stream machinery
            return Response(
                b"".join(sse_frame(event_payload(e)) for e in replay(self.durably, run)),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        # listen, then read again, so nothing between the read and the stream is lost
        backlog = Backlog(self.max_backlog)
        queue = EventQueue(self.throttle, run_filter, backlog)
        stop = self.hub.watch_run(run.id, queue.push)
        try:
            current = await self.durably.get_run(run.id)
        except BaseException:
            stop()
            raise
        if current is None:
            stop()
            return error_response("Run not found", 404)
        frames = run_frames(self.durably, queue, current, self.poll_interval)
        return SSEResponse(frames, stop, backlog)

    async def runs_subscribe(self, request: Request, ctx: Any) -> Response:
        query = await self.runs_subscribe_filter(request, ctx)
        stream = RunsStream(Backlog(self.max_backlog))
        stop = self.hub.watch_runs(stream, query.job_name, query.labels)
        return SSEResponse(runs_frames(stream), stop, stream.backlog)

    async def runs_subscribe_filter(self, request: Request, ctx: Any) -> RunsSubscribeFilter:
        """A list stream's filter (``jobName``, ``label.*``), narrowed by the auth hooks."""
        query = RunsSubscribeFilter(
            job_name=values(request.query_params, "jobName"),
            labels=label_filters(request.query_params),
        )
        if self.auth is not None:
            if self.auth.scope_runs_subscribe is not None:
                query = await call(self.auth.scope_runs_subscribe, ctx, query)
            elif self.auth.scope_runs is not None:
                scoped = await call(
                    self.auth.scope_runs,
                    ctx,
                    RunsFilter(job_name=query.job_name, labels=query.labels),
                )
                query = RunsSubscribeFilter(job_name=scoped.job_name, labels=scoped.labels)
        return query


def create_handler(
    durably: Durably,
    *,
    auth: Auth | None = None,
    sse_throttle: float = 0.1,
    sse_poll_interval: float | None = 1.0,
    on_request: Callable[[], Awaitable[None] | None] | None = None,
    max_body_size: int = DEFAULT_MAX_BODY_SIZE,
    sse_max_backlog: int = DEFAULT_MAX_BACKLOG,
    dashboard: bool = False,
    watch_interval: float = 1.0,
    on_signal: OnSignal | None = None,
) -> Starlette:
    """An ASGI app serving durably's HTTP/SSE protocol (that of the TypeScript
    ``createDurablyHandler``), for ``@coji/durably-react``'s hooks.

    Mount it under any path (``app.mount("/api/durably", create_handler(d))``).
    ``sse_throttle``: seconds between two ``run:progress`` frames of a run (0 = no
    throttling). ``sse_poll_interval``: a run's stream re-reads the run after this
    many seconds without events, to follow runs executed by other processes
    (``None`` = never). ``on_request``: called before each request, after
    ``authenticate``. The worker is not started here: run ``durably.init()`` /
    ``stop()`` in the application's lifespan. ``max_body_size``: the largest request
    body, in bytes (default 1 MiB); a larger one is refused with 413 before it is
    read whole. ``sse_max_backlog``: the most bytes a stream queues while waiting for
    a client that does not read (default 1 MiB); past it the client is disconnected
    (it reconnects and gets the replay) instead of the server holding ever more for it.

    ``dashboard=True`` also serves the operators' dashboard at the mount point
    (``GET /``; its routes ``/watch``, ``/counts``, ``/logs``, ``/retry`` are behind the
    same ``auth``, ``on_run_access`` seeing the operations ``logs`` and ``retry``). Its
    live list follows runs executed by any process by reading the database every
    ``watch_interval`` seconds while a dashboard is open.

    ``on_signal(ctx, run, request)``: called for ``POST /signal`` after
    ``on_run_access``, before the signal is stored (``ctx`` is ``None`` without
    ``auth``); it may return a replacement ``SignalRequest`` (e.g. the payload
    validated and normalized) or reject the signal by raising (``ValidationError``:
    400, ``starlette.exceptions.HTTPException``: its status).
    """
    if on_signal is not None and not callable(on_signal):
        raise ValidationError(f"on_signal must be callable, got {on_signal!r}")
    if auth is not None and not isinstance(auth, Auth):
        raise ValidationError(
            f"auth must be a durably.http.Auth(authenticate=...), got {type(auth).__name__}"
        )
    if not isinstance(sse_throttle, int | float) or sse_throttle < 0:
        raise ValidationError(
            f"sse_throttle must be a number of seconds >= 0, got {sse_throttle!r}"
        )
    if sse_poll_interval is not None and (
        not isinstance(sse_poll_interval, int | float) or sse_poll_interval <= 0
    ):
        raise ValidationError(
            "sse_poll_interval must be a number of seconds > 0 (or None), "
            f"got {sse_poll_interval!r}"
        )
    for name, value in [("max_body_size", max_body_size), ("sse_max_backlog", sse_max_backlog)]:
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValidationError(f"{name} must be a number of bytes > 0, got {value!r}")
    if not isinstance(watch_interval, int | float) or not watch_interval > 0:
        raise ValidationError(
            f"watch_interval must be a number of seconds > 0, got {watch_interval!r}"
        )
    handler = _Handler(
        durably,
        auth,
        sse_throttle,
        sse_poll_interval,
        on_request,
        max_body_size,
        sse_max_backlog,
        bool(dashboard),
        float(watch_interval),
        on_signal,
    )
    methods = ["GET", "POST", "DELETE", "PUT", "PATCH", "OPTIONS"]
    app = Starlette(routes=[Route("/{path:path}", handler.dispatch, methods=methods)])
    app.state.durably_hub = handler.hub
    return app
