"""PostgreSQL storage for durably: ``create_durably("postgresql://user@host:5432/db")``.

The schema is the TypeScript library's (``@coji/durably`` 0.15 on PostgreSQL), so Node
and Python workers can share one database. Claims lock rows ``FOR UPDATE SKIP LOCKED``
with the reference's advisory lock per concurrency key; ``LISTEN``/``NOTIFY`` wakes
idle workers of other processes when a run is triggered. The statements are
:class:`durably.sql.PostgresStorage`'s; this package adds the asyncpg executor, the
URL and its options (see :mod:`durably_postgres._url`): ``schema``, ``pool_size``,
``min_pool_size``, ``statement_timeout``, ``connect_timeout``, ``ssl``, ``channel``,
``statement_cache_size``, ``password``, ``application_name``. The password (``password=``,
in the URL, ``PGPASSWORD`` or ``~/.pgpass``) never appears in a repr, a log line or an
error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._executor import AsyncpgExecutor
    from ._open import open_postgres
    from ._url import PostgresConfig

__all__ = ["AsyncpgExecutor", "PostgresConfig", "open_postgres"]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Lazy, so that importing durably_postgres (or its plugin) does not import asyncpg.
    if name == "AsyncpgExecutor":
        from ._executor import AsyncpgExecutor

        return AsyncpgExecutor
    if name == "open_postgres":
        from ._open import open_postgres

        return open_postgres
    if name == "PostgresConfig":
        from ._url import PostgresConfig

        return PostgresConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
