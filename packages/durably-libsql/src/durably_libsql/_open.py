"""Open a libSQL storage (imports the driver: reached only from ``plugin._open``)."""

from __future__ import annotations

from typing import Any

from durably.sql import SqlStorage

from ._url import is_remote, local_sqlite_url, remote_config


def open_libsql(url: str, **options: Any) -> SqlStorage:
    """A :class:`durably.sql.SqlStorage` over the libSQL database the URL names.

    ``file:`` URLs use durably-sqlite's executor on the local file; ``libsql://``,
    ``https://`` and ``http://`` URLs a Hrana-over-HTTP client. Nothing is
    connected yet: the first operation (usually ``migrate()``) does, so errors about
    the server surface there.
    """
    if is_remote(url):
        from ._executor import HranaExecutor

        return SqlStorage(HranaExecutor(remote_config(url, options)))
    from durably_sqlite import open_sqlite

    return open_sqlite(local_sqlite_url(url), **options)
