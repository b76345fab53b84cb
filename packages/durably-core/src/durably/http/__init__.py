"""HTTP + SSE for durably: the protocol of the TypeScript ``createDurablyHandler``,
so ``@coji/durably-react``'s hooks work against a Python server.

Needs the ``http`` extra: ``pip install "durably-core[http]"``.

    from durably.http import create_handler

    app.mount("/api/durably", create_handler(durably))
"""

from ._auth import (
    Auth,
    RunOperation,
    RunsFilter,
    RunsSubscribeFilter,
    SignalRequest,
    TriggerRequest,
    scoped_key,
)
from ._routes import create_handler

__all__ = [
    "Auth",
    "RunOperation",
    "RunsFilter",
    "RunsSubscribeFilter",
    "SignalRequest",
    "TriggerRequest",
    "create_handler",
    "scoped_key",
]
