"""A Flask app whose views trigger durable runs through the blocking API.

    uv run flask --app examples/flask_app.py run       # the web process
    uv run flask --app examples/flask_app.py worker    # the worker (another terminal)

``POST /reports`` (``{"user": "ada", "days": 7}``) triggers a run and answers 202
with its id at once; ``GET /reports/<id>`` reads it back (status, progress,
output); ``POST /reports/<id>/cancel`` cancels it. The views are plain sync Flask
views: ``durably.sync`` runs the engine on a thread of its own, so no view needs
``await``. The job itself stays ``async def``.

The web process never starts a worker; ``flask ... worker`` (a CLI command of the
app) runs one until Ctrl-C or SIGTERM. The database is ``DURABLY_DATABASE_URL`` if
set, else ``sqlite:///flask_app.db``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import click
from flask import Flask, request
from pydantic import BaseModel

from durably import ConflictError, DurablyError, NotFoundError, Step, ValidationError, define_job
from durably.sync import SyncDurably, create_durably

STEP_SECONDS = float(os.environ.get("REPORT_STEP_SECONDS", "0.5"))


class ReportIn(BaseModel):
    user: str
    days: int = 7


class ReportOut(BaseModel):
    user: str
    lines: int


def count_events(user: str, day: int) -> int:
    time.sleep(STEP_SECONDS)  # pretend to query something slow (a sync step: a thread)
    return len(user) * (day + 1)


@define_job("report", input=ReportIn, output=ReportOut)
async def build_report(step: Step, payload: ReportIn) -> ReportOut:
    lines = 0
    for day in range(payload.days):
        lines += await step.run(f"day-{day}", count_events, payload.user, day)
        step.progress(day + 1, payload.days, f"day {day + 1} of {payload.days}")
    step.log.info("report built", user=payload.user, lines=lines)
    return ReportOut(user=payload.user, lines=lines)


def run_view(run: Any) -> dict[str, Any]:
    progress = run.progress
    return {
        "id": run.id,
        "status": run.status.value,
        "progress": None
        if progress is None
        else {"current": progress.current, "total": progress.total},
        "output": run.output,
        "error": run.error,
    }


def create_app(database_url: str | None = None) -> Flask:
    url = database_url or os.environ.get("DURABLY_DATABASE_URL") or "sqlite:///flask_app.db"
    durably: SyncDurably = create_durably(url, jobs={"report": build_report})
    app = Flask(__name__)
    app.extensions["durably"] = durably

    @app.errorhandler(DurablyError)
    def durably_error(exc: DurablyError) -> tuple[dict[str, str], int]:
        # a client's mistake is a 4xx with durably's message; anything else a 500
        status = {ValidationError: 400, NotFoundError: 404, ConflictError: 409}
        code = next((c for cls, c in status.items() if isinstance(exc, cls)), 500)
        return {"error": str(exc)}, code

    @app.post("/reports")
    def start_report() -> tuple[dict[str, str], int]:
        run = durably.jobs.report.trigger(request.get_json(silent=True) or {})
        return {"id": run.id, "status": run.status.value}, 202

    @app.get("/reports/<run_id>")
    def report_status(run_id: str) -> dict[str, Any] | tuple[dict[str, str], int]:
        run = durably.jobs.report.get_run(run_id)
        if run is None:
            return {"error": f"no report {run_id}"}, 404
        return run_view(run)

    @app.post("/reports/<run_id>/cancel")
    def cancel_report(run_id: str) -> dict[str, Any]:
        return run_view(durably.cancel(run_id))

    @app.cli.command("worker")
    @click.option("--concurrency", type=int, default=None, help="runs at once")
    @click.option("--grace", type=float, default=30.0, help="seconds runs get to finish")
    def worker(concurrency: int | None, grace: float) -> None:
        """Run the durably worker until Ctrl-C / SIGTERM."""
        click.echo(f"durably worker {durably.worker_id} on {url}")
        durably.run_worker(max_concurrent_runs=concurrency, grace=grace)
        click.echo("durably worker stopped")

    return app
