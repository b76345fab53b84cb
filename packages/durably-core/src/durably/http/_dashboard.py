"""The dashboard of ``create_handler(durably, dashboard=True)``: a page and the few
routes it needs beyond the reference's protocol (**(py)**).

- ``GET /`` the page; ``GET /dashboard/<file>`` its script and style sheet. They are
  files of this package (no CDN, no build step), served behind ``authenticate``
  like every route.
- ``GET /watch`` server-sent list frames (those of ``/runs/subscribe``) of the runs
  as the database shows them, executed by any process (``_watchfeed.py``).
- ``GET /counts`` runs by status, ``{"pending": 3, ...}``, filtered and scoped as
  ``GET /runs``.
- ``GET /logs?runId=`` the run's stored logs; ``POST /retry?runId=`` ``retry()``.
  ``on_run_access`` sees them as the operations ``logs`` and ``retry``.
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from ._auth import RunsFilter, call
from ._backlog import Backlog
from ._fanout import RunsStream
from ._request import label_filters, values
from ._serialize import client_run, encode, iso
from ._sse import SSEResponse, runs_frames
from ._watchfeed import WatchFeed

if TYPE_CHECKING:
    from ._routes import _Handler

#: The page's files: name → media type.
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}


def _asset(name: str) -> bytes:
    return resources.files("durably.http").joinpath("dashboard", name).read_bytes()


class Dashboard:
    def __init__(self, handler: _Handler, watch_interval: float) -> None:
        self.handler = handler
        self.feed = WatchFeed(handler.durably, watch_interval, handler.throttle)
        self.assets = {name: _asset(name) for name in ASSETS}

    def routes(self) -> dict[tuple[str, str], Any]:
        return {
            ("GET", "/"): self.index,
            ("GET", "/dashboard/app.js"): self.asset,
            ("GET", "/dashboard/app.css"): self.asset,
            ("GET", "/watch"): self.watch,
            ("GET", "/counts"): self.counts,
            ("GET", "/logs"): self.logs,
            ("POST", "/retry"): self.retry,
        }

    async def index(self, request: Request, ctx: Any) -> Response:
        if not request.url.path.endswith("/"):
            # the page's links are relative to the handler's mount point
            return RedirectResponse(request.url.path + "/", status_code=307)
        return self._file("index.html")

    async def asset(self, request: Request, ctx: Any) -> Response:
        return self._file(request.url.path.rpartition("/")[2])

    def _file(self, name: str) -> Response:
        return Response(
            self.assets[name],
            media_type=ASSETS[name],
            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )

    async def watch(self, request: Request, ctx: Any) -> Response:
        query = await self.handler.runs_subscribe_filter(request, ctx)
        stream = RunsStream(Backlog(self.handler.max_backlog))
        stop = self.feed.watch(stream, query.job_name, query.labels)
        try:
            # the response starts once the feed has taken stock: from then on, every
            # change is reported (the page loads the list when the stream opens)
            await self.feed.primed()
        except BaseException:
            stop()
            raise
        return SSEResponse(runs_frames(stream), stop, stream.backlog)

    async def counts(self, request: Request, ctx: Any) -> Response:
        params = request.query_params
        query = RunsFilter(job_name=values(params, "jobName"), labels=label_filters(params))
        auth = self.handler.auth
        if auth is not None and auth.scope_runs is not None:
            query = await call(auth.scope_runs, ctx, query)
        counts = await self.handler.durably.count_runs(
            status=query.status, job_name=query.job_name, labels=query.labels
        )
        return Response(
            encode({s.value: n for s, n in counts.items()}), media_type="application/json"
        )

    async def logs(self, request: Request, ctx: Any) -> Response:
        run = await self.handler.run_access(request, ctx, "logs")
        logs = await self.handler.durably.get_logs(run.id)
        body = [
            {
                "id": log.id,
                "runId": log.run_id,
                "stepName": log.step_name,
                "level": log.level,
                "message": log.message,
                "data": log.data,
                "createdAt": iso(log.created_at),
            }
            for log in logs
        ]
        return Response(encode(body), media_type="application/json")

    async def retry(self, request: Request, ctx: Any) -> Response:
        run = await self.handler.run_access(request, ctx, "retry")
        retried = await self.handler.durably.retry(run.id)
        return Response(
            encode({"success": True, "run": client_run(retried)}), media_type="application/json"
        )
