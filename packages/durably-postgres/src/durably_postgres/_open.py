"""Open a PostgreSQL storage (imports the driver: reached only from ``plugin._open``)."""

from __future__ import annotations

from typing import Any

from durably.sql import PostgresStorage

from ._executor import AsyncpgExecutor
from ._url import parse_config


def open_postgres(url: str, **options: Any) -> PostgresStorage:
    """A :class:`durably.sql.PostgresStorage` on the database the URL names.

    Nothing is connected yet: the first operation (usually ``migrate()``) does, so
    errors about the server surface there. See :mod:`durably_postgres` for the options.
    """
    config = parse_config(url, options)
    return PostgresStorage(AsyncpgExecutor(config), channel=config.channel, schema=config.schema)
