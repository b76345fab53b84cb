"""examples/web_app.py: the FastAPI app mounts the handler and runs the worker in
its lifespan; a run triggered over HTTP executes and streams its progress."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from http_support import serve, sse

pytestmark = pytest.mark.slow


EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "web_app.py"


@pytest.fixture(params=["memory", "sqlite-file"])
def web_app(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> ModuleType:
    url = {"memory": "memory://", "sqlite-file": f"sqlite:///{tmp_path / 'web_app.db'}"}
    monkeypatch.setenv("WEB_APP_STEP_SECONDS", "0")
    monkeypatch.setenv("DURABLY_DATABASE_URL", url[request.param])
    spec = importlib.util.spec_from_file_location("web_app_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_web_app__trigger_stream_and_list(web_app: Any) -> None:
    app = web_app.create_app()
    async with serve(app) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
        assert (await client.get("/health")).json() == {"worker": True}
        r = await client.post(
            "/api/durably/trigger",
            json={"jobName": "import-csv", "input": {"filename": "a.csv", "rows": 250}},
        )
        assert r.status_code == 200, r.text
        run_id = r.json()["runId"]
        async with sse(client, f"/api/durably/subscribe?runId={run_id}") as s:
            frames = await s.frames_until_close()
        assert frames[-1]["type"] == "run:complete"
        assert frames[-1]["output"] == {"imported": 250}
        runs = (await client.get("/api/durably/runs?jobName=import-csv")).json()
        assert [(run["id"], run["status"]) for run in runs] == [(run_id, "completed")]
        assert runs[0]["progress"] == {"current": 3, "total": 3, "message": "imported 250 rows"}
        bad = await client.post("/api/durably/trigger", json={"jobName": "import-csv", "input": {}})
        assert bad.status_code == 400
        assert "filename" in bad.json()["error"]
    # the lifespan stopped the worker and closed the database
    assert not app.state.durably.running


async def test_web_app__own_endpoint_triggers_and_reads_back(web_app: Any) -> None:
    app = web_app.create_app()
    async with serve(app) as base, httpx.AsyncClient(base_url=base, timeout=10) as client:
        r = await client.post("/imports", json={"filename": "b.csv", "rows": 120})
        assert r.status_code == 202, r.text
        assert r.json()["status"] == "pending"
        run_id = r.json()["runId"]
        for _ in range(200):
            status = (await client.get(f"/imports/{run_id}")).json()
            if status["status"] == "completed":
                break
            await asyncio.sleep(0.01)
        assert status == {"runId": run_id, "status": "completed", "output": {"imported": 120}}
        assert (await client.get("/imports/nope")).status_code == 404
        assert (await client.post("/imports", json={"rows": 1})).status_code == 422


def test_web_app__module_level_app_uses_the_environment(
    web_app: Any, request: pytest.FixtureRequest
) -> None:
    from durably.sql import SqlStorage
    from durably_testing.memory import MemoryStorage

    expected = MemoryStorage if "memory" in request.node.callspec.id else SqlStorage
    assert type(web_app.app.state.durably.storage) is expected
