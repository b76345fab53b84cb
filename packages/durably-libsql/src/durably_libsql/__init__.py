"""Turso / libSQL storage for durably: a local file or a remote server, by URL.

- ``file:local.db`` (``file:///abs/path.db``): a local file, through durably-sqlite's
  executor. Options as for ``sqlite:`` URLs.
- ``libsql://<db>-<org>.turso.io`` (TLS), ``https://host``, ``http://host:port``:
  a remote libSQL server (Turso Cloud, sqld, tursodb) over Hrana v2 HTTP. The auth
  token comes from ``auth_token=`` or ``TURSO_AUTH_TOKEN``. Options: ``timeout``,
  ``max_in_flight``, ``retries``, ``checkpoint_every``, ``transport``. See
  :mod:`durably_libsql._executor` for what one operation sends and what is retried.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._executor import HranaExecutor
    from ._hrana import HranaError
    from ._open import open_libsql
    from ._url import RemoteConfig

#: The package version: the one place it is written (its pyproject.toml reads it).
__version__ = "0.1.0"

__all__ = ["HranaError", "HranaExecutor", "RemoteConfig", "open_libsql"]


def __getattr__(name: str) -> Any:
    # Lazy, so that importing durably_libsql.plugin does not import httpx.
    if name == "HranaExecutor":
        from ._executor import HranaExecutor

        return HranaExecutor
    if name == "HranaError":
        from ._hrana import HranaError

        return HranaError
    if name == "open_libsql":
        from ._open import open_libsql

        return open_libsql
    if name == "RemoteConfig":
        from ._url import RemoteConfig

        return RemoteConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
