"""PostgreSQL URLs and options (no driver import here: the plugin module uses it).

``postgresql://user[:password]@host[:port]/database?param=value`` (or
``postgres://``), as libpq reads it. The password comes from, in this order: the
``password=`` option, the URL, ``PGPASSWORD``, ``~/.pgpass`` (the last two read by
the driver). It is kept out of every repr, log line and error message: the
configuration holds it in a field that is never shown, and messages name the URL
without credentials (:func:`redact`).

durably's own options (keyword arguments of ``create_durably``, or query
parameters of the URL; keywords win):

- ``schema``: the PostgreSQL schema the tables live in (created by ``migrate()``
  when missing); default: the server's ``search_path`` (usually ``public``).
- ``pool_size``: connections at most (default 10); ``min_pool_size`` kept open (1).
- ``statement_timeout``: seconds a statement may run before the server cancels it
  (default: the server's setting).
- ``connect_timeout``: seconds to establish a connection (default 10).
- ``ssl``: ``True``/``False``, a libpq ``sslmode`` (``disable``, ``prefer``,
  ``require``, ``verify-ca``, ``verify-full``) or an ``ssl.SSLContext``; the URL's
  ``sslmode`` too. Default: the driver's (``prefer``).
- ``channel``: the ``LISTEN``/``NOTIFY`` channel for wake-ups (default
  ``durably_claimable``; with a ``schema``, the schema's name is appended).
- ``statement_cache_size``: prepared statements kept per connection (default 256;
  0 behind a pooler in transaction mode, such as PgBouncer).
- ``password``, ``application_name``.

Other libpq query parameters (``sslrootcert``, ``target_session_attrs``,
``options``…) go to the driver as they are.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from durably import ValidationError
from durably.sql.postgres import DEFAULT_CHANNEL

__all__ = ["OPTIONS", "SCHEMES", "PostgresConfig", "parse_config", "redact"]

SCHEMES = ("postgresql", "postgres")
OPTIONS = (
    "application_name",
    "channel",
    "connect_timeout",
    "min_pool_size",
    "password",
    "pool_size",
    "schema",
    "ssl",
    "statement_cache_size",
    "statement_timeout",
)
#: libpq query parameters passed to the driver as they are.
LIBPQ_PARAMS = (
    "sslmode",
    "sslcert",
    "sslkey",
    "sslrootcert",
    "sslcrl",
    "sslpassword",
    "target_session_attrs",
    "options",
    "host",
    "port",
    "user",
    "dbname",
    "passfile",
    "krbsrvname",
    "gsslib",
)
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_CHANNEL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def redact(url: str) -> str:
    """The URL without password or query (safe for messages and reprs)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "<invalid URL>"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if port is not None:
        host = f"{host}:{port}"
    if parts.username:
        host = f"{quote(unquote(parts.username), safe='')}@{host}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


@dataclass(frozen=True)
class PostgresConfig:
    """What to connect to and how. The password is never part of the repr."""

    dsn: str  # the URL for the driver, without password and durably's own parameters
    where: str  # the redacted URL, for messages
    password: str | None = field(default=None, repr=False)
    schema: str | None = None
    pool_size: int = 10
    min_pool_size: int = 1
    statement_timeout: float | None = None
    connect_timeout: float = 10.0
    ssl: Any = field(default=None, repr=False)
    channel: str = DEFAULT_CHANNEL
    statement_cache_size: int = 256
    application_name: str = "durably"

    def server_settings(self) -> dict[str, str]:
        """The settings each connection starts with (``search_path``, the timeout…)."""
        settings = {"application_name": self.application_name}
        if self.schema is not None:
            settings["search_path"] = f'"{self.schema}"'
        if self.statement_timeout is not None:
            settings["statement_timeout"] = str(max(1, round(self.statement_timeout * 1000)))
        return settings


def _number(name: str, raw: Any, *, minimum: float, integer: bool) -> Any:
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
    if not math.isfinite(value) or value < minimum:
        kind = "a whole number" if integer else "a number"
        raise ValidationError(f"Invalid {name}={raw!r}: give {kind} >= {minimum:g}")
    return value


def _ssl(raw: Any) -> Any:
    if raw is None or isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        value = raw.strip().lower()
        if value in ("true", "1", "on", "yes"):
            return True
        if value in ("false", "0", "off", "no"):
            return False
        if value in SSL_MODES:
            return value
    elif type(raw).__name__ == "SSLContext":
        return raw
    raise ValidationError(
        f"Invalid ssl={raw!r}: give True/False, an ssl.SSLContext or one of {', '.join(SSL_MODES)}"
    )


def parse_config(url: str, options: Mapping[str, Any]) -> PostgresConfig:
    """Parse a ``postgresql://`` URL and validate the options (keywords override the query)."""
    where = redact(url)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ValidationError(f"Invalid PostgreSQL URL {where!r}: {exc}") from None
    if parts.scheme.lower() not in SCHEMES:
        raise ValidationError(
            f"Invalid PostgreSQL URL {where!r}: use 'postgresql://user@host:5432/database'"
        )
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValidationError(
            f"Unknown option(s) for the postgresql backend: {', '.join(unknown)}. "
            f"Valid options: {', '.join(OPTIONS)}"
        )
    ours = {k: v for k, v in query.items() if k in OPTIONS}
    libpq = {k: v for k, v in query.items() if k not in OPTIONS}
    strange = sorted(k for k in libpq if k not in LIBPQ_PARAMS)
    if strange:
        raise ValidationError(
            f"Unknown parameter(s) in the PostgreSQL URL {where!r}: {', '.join(strange)}. "
            f"durably's: {', '.join(OPTIONS)}; libpq's: {', '.join(LIBPQ_PARAMS)}"
        )
    if "password" in libpq:
        raise ValidationError("the password must not be a URL parameter")  # pragma: no cover
    merged: dict[str, Any] = {**ours, **options}
    password = merged.get("password")
    if password is None and parts.password is not None:
        password = unquote(parts.password)
    if password is not None and not isinstance(password, str):
        raise ValidationError("password must be a string")
    ssl = _ssl(merged.get("ssl"))
    if ssl is not None and "sslmode" in libpq:
        raise ValidationError("give either ssl= or sslmode in the URL, not both")
    schema = merged.get("schema")
    if schema is not None and (not isinstance(schema, str) or not _IDENTIFIER.match(schema)):
        raise ValidationError(
            f"Invalid schema={schema!r}: a PostgreSQL identifier (letters, digits, _; "
            "not starting with a digit; at most 63 characters)"
        )
    channel = merged.get("channel")
    if channel is None:
        channel = DEFAULT_CHANNEL if schema is None else f"{DEFAULT_CHANNEL}_{schema}"[:63]
    if not isinstance(channel, str) or not _CHANNEL.match(channel):
        raise ValidationError(f"Invalid channel={channel!r}: a PostgreSQL identifier")
    timeout = merged.get("statement_timeout")
    pool_size = _number("pool_size", merged.get("pool_size", 10), minimum=1, integer=True)
    min_pool = _number("min_pool_size", merged.get("min_pool_size", 1), minimum=0, integer=True)
    if min_pool > pool_size:
        raise ValidationError(f"min_pool_size ({min_pool}) is larger than pool_size ({pool_size})")
    app = merged.get("application_name", "durably")
    if not isinstance(app, str):
        raise ValidationError("application_name must be a string")
    # the URL the driver gets: no password, no parameter of ours
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    if parts.username:
        netloc = f"{quote(unquote(parts.username), safe='')}@{netloc}"
    dsn = urlunsplit(("postgresql", netloc, parts.path, urlencode(libpq), ""))
    return PostgresConfig(
        dsn=dsn,
        where=where,
        password=password,
        schema=schema,
        pool_size=pool_size,
        min_pool_size=min_pool,
        statement_timeout=None
        if timeout is None
        else _number("statement_timeout", timeout, minimum=0.001, integer=False),
        connect_timeout=_number(
            "connect_timeout", merged.get("connect_timeout", 10.0), minimum=0.001, integer=False
        ),
        ssl=ssl,
        channel=channel,
        statement_cache_size=_number(
            "statement_cache_size",
            merged.get("statement_cache_size", 256),
            minimum=0,
            integer=True,
        ),
        application_name=app,
    )
