"""A FastAPI app serving durably's HTTP/SSE protocol for ``@coji/durably-react``.

    uv run uvicorn examples.web_app:app --port 8000

``POST /imports`` (``{"filename": "a.csv"}``) is an endpoint of the app's own that
triggers a run and answers at once with its id; ``GET /imports/<id>`` reads it back.
durably's handler is mounted at ``/api/durably`` (give the React hooks
``createDurably({ api: "/api/durably" })``); the worker runs in the app's
lifespan, so runs triggered from the browser execute in this process and their
progress streams back live.

The database is ``DURABLY_DATABASE_URL`` if set, else a local SQLite file
(``sqlite:///web_app.db``), so runs survive a restart of the server.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from durably import Durably, Step, create_durably, define_job
from durably.http import create_handler

STEP_SECONDS = float(os.environ.get("WEB_APP_STEP_SECONDS", "0.5"))


class ImportIn(BaseModel):
    filename: str
    rows: int = 300


class ImportOut(BaseModel):
    imported: int


@define_job("import-csv", input=ImportIn, output=ImportOut)
async def import_csv(step: Step, payload: ImportIn) -> ImportOut:
    batches = list(range(0, payload.rows, 100))
    for n, start in enumerate(batches, 1):

        async def insert(start: int = start) -> int:
            await asyncio.sleep(STEP_SECONDS)  # pretend to write rows
            return min(100, payload.rows - start)

        await step.run(f"batch-{start}", insert)
        step.progress(n, len(batches), f"imported {min(start + 100, payload.rows)} rows")
    step.log.info("done", filename=payload.filename)
    return ImportOut(imported=payload.rows)


DEFAULT_URL = "sqlite:///web_app.db"


def make_durably(url: str | None = None) -> Durably:
    url = url or os.environ.get("DURABLY_DATABASE_URL") or DEFAULT_URL
    return create_durably(url, jobs={"import_csv": import_csv})


def create_app(durably: Durably | None = None) -> FastAPI:
    durably = durably or make_durably()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await durably.init()  # migrate + start the worker
        try:
            yield
        finally:
            await durably.close()  # wait for in-flight runs, release the database

    app = FastAPI(title="durably web app", lifespan=lifespan)
    app.state.durably = durably
    app.mount("/api/durably", create_handler(durably))

    # Your own endpoints trigger jobs too (the counterpart of the docs' Express
    # routes): the request returns at once with the run id; the worker in this
    # process picks the run up immediately, no polling delay.
    @app.post("/imports", status_code=202)
    async def start_import(body: ImportIn) -> dict[str, str]:
        run = await durably.jobs.import_csv.trigger(body)
        return {"runId": run.id, "status": run.status.value}

    @app.get("/imports/{run_id}")
    async def import_status(run_id: str) -> dict[str, object]:
        run = await durably.jobs.import_csv.get_run(run_id)
        if run is None:
            raise HTTPException(status_code=404, detail=f"no import {run_id}")
        return {"runId": run.id, "status": run.status.value, "output": run.output}

    @app.get("/health")
    async def health() -> dict[str, bool]:
        return {"worker": durably.running}

    return app


app = create_app()
