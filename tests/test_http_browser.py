"""End to end: the real ``@coji/durably-react@0.15.0`` client (its fullstack hooks,
bundled with esbuild) in Debian's headless chromium, driven by playwright-core,
against our Starlette app on 127.0.0.1 with the worker in the app's lifespan.

Needs chromium and the npm packages of tests/browser/package.json, which
scripts/setup-browser.sh installs (``uv run nox -s tests`` runs it first); without
them the test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from ci_support import unavailable
from http_support import GATES, JOBS, serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from durably import Durably, SystemClock
from durably.http import create_handler

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _closed_gates() -> None:
    GATES.reset()


ROOT = Path(__file__).resolve().parent.parent
BROWSER_DIR = ROOT / "tests" / "browser"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))

INDEX = """<!doctype html>
<html><head><meta charset="utf-8"><title>durably</title></head>
<body><div id="root"></div><script type="module" src="/static/app.js"></script></body></html>
"""


def _missing() -> list[str]:
    missing = []
    if not CHROMIUM.exists():
        missing.append(str(CHROMIUM))
    if shutil.which("node") is None:
        missing.append("node")
    for package in ("playwright-core", "esbuild", "@coji/durably-react", "react-dom"):
        if not (BROWSER_DIR / "node_modules" / package / "package.json").exists():
            missing.append(f"npm:{package}")
    return missing


@pytest.fixture(scope="session")
def browser_tools() -> None:
    """What scripts/setup-browser.sh installs (never installed here)."""
    missing = _missing()
    if missing:
        unavailable(f"browser test dependencies missing: {missing}; run scripts/setup-browser.sh")


@pytest.fixture(scope="session")
def bundle(browser_tools: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle")
    subprocess.run(
        ["node", str(BROWSER_DIR / "build.mjs"), str(out)], check=True, timeout=120, cwd=BROWSER_DIR
    )
    assert (out / "app.js").stat().st_size > 10_000
    return out


def make_app(durably: Durably, bundle: Path) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await durably.init()  # the worker runs in the app's lifespan
        try:
            yield
        finally:
            await durably.stop(timeout=5)

    async def index(request: Request) -> Response:
        return HTMLResponse(INDEX)

    async def open_gate(request: Request) -> Response:
        GATES.open(request.query_params["name"])
        return Response(status_code=204)

    return Starlette(
        routes=[
            Route("/", index),
            Route("/test/gate", open_gate, methods=["POST"]),
            Mount("/api/durably", create_handler(durably)),
            Mount("/static", StaticFiles(directory=bundle)),
        ],
        lifespan=lifespan,
    )


async def test_react_client_against_our_server(
    make_durably: Any, bundle: Path, tmp_path: Path
) -> None:
    durably: Durably = make_durably(jobs=JOBS, clock=SystemClock())
    app = make_app(durably, bundle)
    async with serve(app) as base:
        proc = await asyncio.create_subprocess_exec(
            "node",
            str(BROWSER_DIR / "drive.mjs"),
            base,
            str(tmp_path / "chromium-profile"),
            cwd=BROWSER_DIR,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(180):
                stdout, stderr = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 0, stderr.decode()[-4000:]
    seen = json.loads(stdout.decode().strip().splitlines()[-1])
    assert seen["initialRuns"] == []
    first, second, third = seen["first"]["id"], seen["second"]["id"], seen["third"]["id"]
    assert seen["first"]["progress"] == ["1/3 step 1", "2/3 step 2", "3/3 step 3"]
    assert json.loads(seen["first"]["output"]) == {"done": 3}
    assert seen["second"]["status"] == "cancelled"
    assert json.loads(seen["third"]["output"]) == {"done": 3}
    assert seen["runsAfterRetrigger"] == [third, second, first]
    assert seen["runsAfterDelete"] == [third, second]
    assert seen["pageErrors"] == []
    # and the server agrees with what the page showed
    assert await durably.get_run(first) is None
    statuses = {r.id: str(r.status) for r in await durably.get_runs()}
    assert statuses == {second: "cancelled", third: "completed"}
