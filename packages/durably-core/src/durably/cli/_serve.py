"""``durably dashboard``: the HTTP handler with its dashboard, on uvicorn."""

from __future__ import annotations

import click
import uvicorn

from .. import create_durably
from ..http import create_handler
from ._context import check_schema, database_url, load_app


async def serve_dashboard(app: str | None, url: str | None, host: str, port: int) -> None:
    durably = load_app(app, url) if app else create_durably(database_url(url))
    try:
        await check_schema(durably, database_url(url))
        handler = create_handler(durably, dashboard=True)
        config = uvicorn.Config(handler, host=host, port=port, log_level="warning")
        server = uvicorn.Server(config)
        click.echo(
            f"durably dashboard on http://{host}:{port}/ for {database_url(url)} (Ctrl-C stops it)",
            err=True,
        )
        await server.serve()
    finally:
        await durably.close()
