"""libSQL URLs and options (no driver import here: the plugin module uses it).

- ``file:local.db``, ``file:data/x.db``, ``file:/abs/x.db``, ``file:///abs/x.db``,
  ``file::memory:``: a local database file, opened with durably-sqlite's executor.
  Options as for ``sqlite:`` URLs (``synchronous``, ``busy_timeout``, ``mode``).
- ``libsql://host[:port]`` (TLS, i.e. ``https``; ``?tls=0`` for plain HTTP),
  ``https://host[:port]``, ``http://host:port``: a remote libSQL server, spoken to
  with Hrana v2 over HTTP. Options: ``auth_token`` (default: the
  ``TURSO_AUTH_TOKEN`` environment variable), ``timeout`` (seconds per request),
  ``max_in_flight`` (requests at once), ``retries`` (see
  :mod:`durably_libsql._executor`), ``checkpoint_every`` (write requests between two
  WAL checkpoints, 0 = never), ``transport`` (an ``httpx.AsyncBaseTransport``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from durably import ValidationError

__all__ = [
    "REMOTE_OPTIONS",
    "RemoteConfig",
    "is_remote",
    "local_sqlite_url",
    "remote_config",
]

REMOTE_SCHEMES = ("libsql", "https", "http")
REMOTE_OPTIONS = (
    "auth_token",
    "timeout",
    "max_in_flight",
    "retries",
    "checkpoint_every",
    "transport",
)
#: Query parameters that carry the token (``authToken`` is the libSQL clients' spelling).
_TOKEN_PARAMS = ("auth_token", "authToken")
TOKEN_ENV = "TURSO_AUTH_TOKEN"


def is_remote(url: str) -> bool:
    return url.partition(":")[0].lower() in REMOTE_SCHEMES


def redact(url: str) -> str:
    """The URL without credentials or query (safe for messages and reprs)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # e.g. an unclosed IPv6 bracket, a port out of range
        return "<invalid URL>"
    host = parts.hostname or ""
    if port is not None:
        host = f"{host}:{port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


# -- local files --


def local_sqlite_url(url: str) -> str:
    """``file:`` URL → the equivalent ``sqlite:`` URL (query kept as options).

    ``file:local.db`` → ``sqlite:///local.db``; ``file:/abs/x.db`` and
    ``file:///abs/x.db`` → ``sqlite:////abs/x.db``; ``file::memory:`` →
    ``sqlite:///:memory:``.
    """
    scheme, sep, rest = url.partition(":")
    if not sep or scheme.lower() != "file":
        raise ValidationError(f"Invalid file URL {url!r}: use 'file:path/to/local.db'")
    location, qmark, query = rest.partition("?")
    if location.startswith("//"):
        host, slash, path = location[2:].partition("/")
        if host not in ("", "localhost"):
            raise ValidationError(
                f"Invalid file URL {url!r}: a file URL names a local file, not host "
                f"{host!r}; use 'file:relative/path.db' or 'file:///absolute/path.db' "
                "(remote servers: 'libsql://…', 'https://…' or 'http://…')"
            )
        location = slash + path
    path = unquote(location)
    if not path:
        raise ValidationError(
            f"Invalid file URL {url!r}: no file name; use 'file:local.db' or "
            "'file:///absolute/path.db'"
        )
    # sqlite:/// + a relative path, or + "/abs/path" (four slashes), or + ":memory:"
    target = f"sqlite:///{path}"
    return target + (qmark + query if query else "")


# -- remote servers --


@dataclass(frozen=True)
class RemoteConfig:
    """Where the server is and how to talk to it. ``auth_token`` never shows in the repr."""

    base_url: str  # http(s)://host[:port][/path], no query, no credentials
    auth_token: str | None = field(default=None, repr=False)
    timeout: float = 15.0
    max_in_flight: int = 8
    retries: int = 5
    checkpoint_every: int = 1000
    transport: Any = field(default=None, repr=False)


def _number(name: str, raw: Any, *, minimum: float, maximum: float, integer: bool) -> Any:
    try:
        if isinstance(raw, bool):
            raise TypeError
        value = float(raw)
        if integer:
            if not value.is_integer():
                raise ValueError
            value = int(value)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or not minimum <= value <= maximum:
        kind = "a whole number" if integer else "a number"
        raise ValidationError(
            f"Invalid {name}={raw!r}: give {kind} from {minimum:g} to {maximum:g}"
        )
    return value


def remote_config(url: str, options: Mapping[str, Any]) -> RemoteConfig:
    """Parse a remote URL and validate the options (keyword options override the query)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValidationError(f"Invalid libSQL URL {redact(url)!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in REMOTE_SCHEMES or not parts.hostname:
        raise ValidationError(
            f"Invalid libSQL URL {redact(url)!r}: use 'libsql://<db>-<org>.turso.io', "
            "'https://host' or 'http://host:port'"
        )
    if parts.username or parts.password:
        raise ValidationError(
            f"Invalid libSQL URL {redact(url)!r}: do not put credentials in the URL; pass "
            f"auth_token= or set {TOKEN_ENV}"
        )
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    token: str | None = None
    for name in _TOKEN_PARAMS:
        if name in query:
            token = query.pop(name)
    tls = query.pop("tls", None)
    if scheme == "libsql":
        if tls not in (None, "0", "1"):
            raise ValidationError(f"Invalid tls={tls!r} in the libSQL URL: use tls=0 or tls=1")
        scheme = "http" if tls == "0" else "https"
    elif tls is not None:
        raise ValidationError(
            "tls= applies to libsql:// URLs only; use https:// or http:// to choose"
        )
    merged: dict[str, Any] = {**query, **options}
    unknown = sorted(set(merged) - set(REMOTE_OPTIONS))
    if unknown:
        raise ValidationError(
            f"Unknown option(s) for the libsql backend: {', '.join(unknown)}. "
            f"Valid options: {', '.join(REMOTE_OPTIONS)}"
        )
    if "auth_token" in options:
        token = options["auth_token"]
    if token is None:
        token = os.environ.get(TOKEN_ENV) or None
    if token is not None and not isinstance(token, str):
        raise ValidationError("auth_token must be a string")
    host = parts.hostname
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    base_url = urlunsplit((scheme, netloc, parts.path.rstrip("/"), "", ""))
    transport = merged.get("transport")
    return RemoteConfig(
        base_url=base_url,
        auth_token=token or None,
        timeout=_number(
            "timeout", merged.get("timeout", 15.0), minimum=0.001, maximum=3600, integer=False
        ),
        max_in_flight=_number(
            "max_in_flight", merged.get("max_in_flight", 8), minimum=1, maximum=1000, integer=True
        ),
        retries=_number("retries", merged.get("retries", 5), minimum=0, maximum=100, integer=True),
        checkpoint_every=_number(
            "checkpoint_every",
            merged.get("checkpoint_every", 1000),
            minimum=0,
            maximum=2**31 - 1,
            integer=True,
        ),
        transport=transport,
    )
