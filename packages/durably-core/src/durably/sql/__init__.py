"""The shared SQL implementation of :class:`durably.Storage` (SQLite dialect).

A backend with a SQLite-compatible driver supplies only an :class:`Executor`;
:class:`SqlStorage` does the rest. Nothing here imports a database driver.
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
    "Row",
    "SqlStorage",
    "SqlValue",
    "Statement",
    "constraint_violation",
    "migrate",
    "progress_json",
    "unstorable_text",
]
