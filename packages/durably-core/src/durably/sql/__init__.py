"""The shared SQL implementation of :class:`durably.Storage`.

A backend with a SQLite-compatible driver supplies only an :class:`Executor`;
:class:`SqlStorage` does the rest. :class:`PostgresStorage` is the same statements on
PostgreSQL, with the few that a database of row locks writes otherwise. An adapter that
implements :class:`durably.Storage` directly uses the helpers (the stored timestamp
format, the resolution of a lost answer). Nothing here imports a database driver.
"""

from .executor import (
    ConstraintViolation,
    Executor,
    Params,
    Row,
    SqlValue,
    Statement,
    constraint_violation,
    unstorable_text,
)
from .helpers import format_timestamp, parse_timestamp, resolve_lost_answer
from .postgres import PostgresStorage
from .schema import PY_MIGRATIONS, PY_SCHEMA_VERSION, SCHEMA_V1, Migration, migrate
from .storage import SqlStorage, progress_json

__all__ = [
    "PY_MIGRATIONS",
    "PY_SCHEMA_VERSION",
    "SCHEMA_V1",
    "ConstraintViolation",
    "Executor",
    "Migration",
    "Params",
    "PostgresStorage",
    "Row",
    "SqlStorage",
    "SqlValue",
    "Statement",
    "constraint_violation",
    "format_timestamp",
    "migrate",
    "parse_timestamp",
    "progress_json",
    "resolve_lost_answer",
    "unstorable_text",
]
