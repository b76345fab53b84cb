"""The dashboard's routes of ``create_handler(durably, dashboard=True)``: the page and
its files (offline: nothing but relative URLs), ``/counts``, ``/logs``, ``/retry``
behind the auth hooks, and ``/watch`` following a run that *another* instance
executes (the browser test, tests/test_dashboard_browser.py, drives the page)."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from ci_support import unavailable
from http_support import JOBS, serve, sse
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import Mount

from durably import Durably, NotFoundError, Run, RunStatus, Step, create_durably, define_job
from durably.http import Auth, RunsFilter, create_handler
from durably.http._dashboard import ASSETS


@define_job("flaky")
async def flaky(step: Step, payload: Any) -> Any:
    step.log.warn("about to fail", attempt=1)
    await step.run("boom", _boom)


def _boom() -> None:
    raise RuntimeError("boom")


def client_for(app: Any) -> httpx.AsyncClient:
    outer = Starlette(routes=[Mount("/api/durably", app=app)])
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=outer), base_url="http://test/api/durably"
    )


@pytest.fixture
def backend() -> str:
    return "sqlite-file"


async def test_dashboard__off_by_default(make_durably: Any) -> None:
    d = make_durably(jobs=JOBS)
    async with client_for(create_handler(d)) as client:
        for method, path in [
            ("GET", "/"),
            ("GET", "/watch"),
            ("GET", "/counts"),
            ("POST", "/retry"),
        ]:
            assert (await client.request(method, path)).status_code == 404


async def test_dashboard__the_page_and_its_files_work_offline(make_durably: Any) -> None:
    d = make_durably(jobs=JOBS)
    async with client_for(create_handler(d, dashboard=True)) as client:
        bare = await client.get("http://test/api/durably")
        assert bare.status_code == 307
        assert bare.headers["location"].endswith("/api/durably/")
        page = await client.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        for name, media in ASSETS.items():
            if name == "index.html":
                continue
            assert f'"dashboard/{name}"' in page.text
            asset = await client.get(f"/dashboard/{name}")
            assert asset.status_code == 200
            assert asset.headers["content-type"] == media
            # no CDN, no absolute URL: the files and the handler are all it loads
            assert not re.search(r"https?://", asset.text), name
        assert not re.search(r"https?://", page.text)


async def test_dashboard__counts_logs_retry_behind_the_auth_hooks(make_durably: Any) -> None:
    d: Durably = make_durably(jobs={**JOBS, "flaky": flaky}, preserve_steps=True)
    await d.migrate()
    mine = (await d.jobs.flaky.trigger({}, labels={"org": "a"})).run
    theirs = (await d.jobs.flaky.trigger({}, labels={"org": "b"})).run
    while await d.process_one():
        pass
    seen: list[tuple[str, str]] = []

    def authenticate(request: Any) -> str:
        org = request.headers.get("x-org")
        if org is None:
            raise HTTPException(401, "who are you?")
        return str(org)

    def on_run_access(org: str, run: Run, operation: str) -> None:
        seen.append((run.id, operation))
        if run.labels.get("org") != org:
            raise NotFoundError("Run not found")

    def scope_runs(org: str, query: RunsFilter) -> RunsFilter:
        return dataclasses.replace(query, labels={**(query.labels or {}), "org": org})

    auth = Auth(authenticate=authenticate, on_run_access=on_run_access, scope_runs=scope_runs)
    async with client_for(create_handler(d, dashboard=True, auth=auth)) as client:
        assert (await client.get("/")).status_code == 401  # the page too
        client.headers["x-org"] = "a"
        counts = (await client.get("/counts")).json()
        assert counts == {s.value: int(s == "failed") for s in RunStatus}
        assert (await client.get("/counts", params={"jobName": "add"})).json()["failed"] == 0
        logs = (await client.get("/logs", params={"runId": mine.id})).json()
        assert [(log["level"], log["message"], log["data"]) for log in logs] == [
            ("warn", "about to fail", {"attempt": 1})
        ]
        assert set(logs[0]) == {"id", "runId", "stepName", "level", "message", "data", "createdAt"}
        assert (await client.get("/logs", params={"runId": theirs.id})).status_code == 404
        assert (await client.post("/retry", params={"runId": theirs.id})).status_code == 404
        retried = await client.post("/retry", params={"runId": mine.id})
        assert retried.status_code == 200
        assert retried.json()["run"]["status"] == "pending"
        again = await client.post("/retry", params={"runId": mine.id})
        assert again.status_code == 409
        assert "only failed or cancelled runs can be retried" in again.json()["error"]
        assert (await client.post("/retry")).status_code == 400
    assert (mine.id, "logs") in seen
    assert (mine.id, "retry") in seen
    assert (theirs.id, "retry") in seen


async def test_dashboard__watch_follows_a_run_executed_by_another_instance(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'watch.db'}"
    served = create_durably(url, jobs={"flaky": flaky})
    executor = create_durably(url, jobs={"flaky": flaky}, preserve_steps=True)
    await executor.migrate()
    app = create_handler(served, dashboard=True, watch_interval=0.05)
    try:
        # the stream answers once its feed has taken stock: what follows is news
        async with (
            serve(app) as base,
            httpx.AsyncClient(base_url=base, timeout=10) as client,
            sse(client, "/watch") as stream,
        ):
            run = (await executor.jobs.flaky.trigger({}, labels={"k": "v"})).run
            assert await executor.process_one()
            types: list[str] = []
            while "run:fail" not in types:
                frame = await stream.frame()
                assert frame is not None
                if frame["runId"] == run.id:
                    types.append(frame["type"])
                    assert frame["labels"] == {"k": "v"}
            assert types[0] == "run:trigger"
            assert types.index("run:leased") < types.index("step:fail") < len(types) - 1
    finally:
        await executor.close()
        await served.close()


@pytest.mark.slow
def test_dashboard__its_files_ship_in_the_wheel(tmp_path: Path) -> None:
    uv = shutil.which("uv")
    if uv is None:
        unavailable("uv is needed to build the wheel")
    root = Path(__file__).resolve().parent.parent
    subprocess.run(
        [uv, "build", "--package", "durably-core", "--wheel", "-o", str(tmp_path)],
        cwd=root,
        check=True,
        capture_output=True,
        timeout=600,
    )
    [wheel] = tmp_path.glob("durably_core-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        scripts = archive.read(next(n for n in names if n.endswith("entry_points.txt")))
    for name in ASSETS:
        assert f"durably/http/dashboard/{name}" in names
    assert b"durably = durably.cli:main" in scripts
