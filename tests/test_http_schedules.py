"""durably.http: ``GET /schedules`` (Python only), guarded by ``authenticate``."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import Mount

from durably import Durably, Step, define_job
from durably.http import Auth, create_handler
from durably_testing import ManualClock


async def work(step: Step, payload: Any) -> Any:
    return payload


JOBS = {"a": define_job("job-a", run=work), "b": define_job("job-b", run=work)}


def client_for(app: Any) -> httpx.AsyncClient:
    outer = Starlette(routes=[Mount("/api/durably", app=app)])
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=outer), base_url="http://test/api/durably"
    )


async def test_schedules__listed_with_next_fire_times(
    make_durably: Any, clock: ManualClock
) -> None:
    d: Durably = make_durably(jobs=JOBS)
    await d.schedules.create(
        "nightly",
        "job-a",
        cron="0 3 * * *",
        timezone="Europe/Paris",
        input={"x": 1},
        labels={"team": "a"},
    )
    await d.schedules.create("hourly", "job-b", cron="@hourly", catch_up="all", max_catch_up=3)
    await d.schedules.pause("hourly")
    clock.set(clock.now() + timedelta(hours=3))
    await d.schedules.fire_due()
    async with client_for(create_handler(d)) as c:
        r = await c.get("/schedules")
        assert r.status_code == 200, r.text
        hourly, nightly = r.json()
        assert nightly == {
            "name": "nightly",
            "jobName": "job-a",
            "cron": "0 3 * * *",
            "timezone": "Europe/Paris",
            "input": {"x": 1},
            "labels": {"team": "a"},
            "catchUp": "latest",
            "maxCatchUp": 10,
            "slotField": None,
            "status": "active",
            "nextFireAt": "2026-01-02T02:00:00.000Z",
            "lastFiredAt": "2026-01-01T02:00:00.000Z",
            "revision": 2,
            "createdAt": "2026-01-01T00:00:00.000Z",
            "updatedAt": "2026-01-01T03:00:00.000Z",
        }
        assert (hourly["name"], hourly["status"], hourly["nextFireAt"]) == (
            "hourly",
            "paused",
            None,
        )
        r = await c.get("/schedules", params={"jobName": "job-b"})
        assert [s["name"] for s in r.json()] == ["hourly"]
        r = await c.get("/schedules", params={"jobName": ["job-a", "job-b"]})
        assert [s["name"] for s in r.json()] == ["hourly", "nightly"]
        r = await c.get("/schedules", params={"jobName": "none"})
        assert r.json() == []


async def test_schedules__guarded_by_authenticate(make_durably: Any) -> None:
    d: Durably = make_durably(jobs=JOBS)
    await d.schedules.create("nightly", "job-a", cron="@daily")
    seen: list[str] = []

    def authenticate(request: Any) -> str:
        seen.append(request.url.path)
        if request.headers.get("x-user") is None:
            raise HTTPException(401, "Unauthorized")
        return "ann"

    async with client_for(create_handler(d, auth=Auth(authenticate=authenticate))) as c:
        r = await c.get("/schedules")
        assert (r.status_code, r.json()) == (401, {"error": "Unauthorized"})
        r = await c.get("/schedules", headers={"x-user": "ann"})
        assert [s["name"] for s in r.json()] == ["nightly"]
    assert seen == ["/api/durably/schedules"] * 2
