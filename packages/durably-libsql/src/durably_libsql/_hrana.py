"""Hrana v2 over HTTP: the JSON of ``POST /v2/pipeline`` requests and responses.

Only what durably needs: ``execute`` and ``batch`` requests (plus ``close`` for
servers that keep streams, detected from the ``baton`` they return), positional
arguments, and the value encoding::

    null     {"type": "null"}
    integer  {"type": "integer", "value": "42"}       (a string: 64-bit safe)
    float    {"type": "float", "value": 1.5}          (a JSON number)
    text     {"type": "text", "value": "…"}
    blob     {"type": "blob", "base64": "AAE"}        (servers may omit the padding)

No driver is imported here; errors are plain data until the executor maps them.
"""

from __future__ import annotations

import base64
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

from durably import ValidationError
from durably.sql import Params, Row, Statement
from durably.sql.executor import is_read_only as _is_read_only

__all__ = [
    "HranaError",
    "batch_request",
    "decode_value",
    "encode_value",
    "execute_request",
    "is_read_only",
]

_NULL: dict[str, Any] = {"type": "null"}


class HranaError(Exception):
    """An error the server reported for one request or batch step (``message``,
    ``code``). Chained as the cause of the durably error it is mapped to."""

    def __init__(self, message: str, code: str | None = None, *, step: int | None = None):
        where = f" (batch step {step})" if step is not None else ""
        super().__init__(f"{message}{where}" + (f" [{code}]" if code else ""))
        self.message = message
        self.code = code
        self.step = step


def encode_value(value: Any) -> dict[str, Any]:
    if value is None:
        return _NULL
    if isinstance(value, str):
        return {"type": "text", "value": value}
    if isinstance(value, int):  # bool too: SQLite stores it as 0/1
        return {"type": "integer", "value": str(int(value))}
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(
                f"Cannot send {value!r} to a libSQL server: JSON has no NaN or infinity"
            )
        return {"type": "float", "value": value}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"type": "blob", "base64": base64.b64encode(bytes(value)).decode("ascii")}
    raise ValidationError(
        f"Cannot bind a {type(value).__name__} as an SQL parameter; use str, int, float, "
        "bytes or None"
    )


def decode_value(value: Mapping[str, Any]) -> Any:
    kind = value.get("type")
    if kind == "null":
        return None
    if kind == "integer":
        return int(value["value"])
    if kind == "text":
        return value["value"]
    if kind == "float":
        return float(value["value"])
    if kind == "blob":
        data: str = value["base64"]
        return base64.b64decode(data + "=" * (-len(data) % 4))
    raise ValueError(f"unknown Hrana value type {kind!r}")


def decode_rows(result: Mapping[str, Any]) -> list[Row]:
    return [tuple(decode_value(v) for v in row) for row in result.get("rows") or ()]


@functools.lru_cache(maxsize=512)
def _checked(sql: str) -> str:
    """``sql`` if it holds one statement; a trailing ``;`` is fine. The server runs
    only the first statement of a string and ignores the rest silently."""
    i, n = 0, len(sql)
    end: int | None = None
    while i < n:
        c = sql[i]
        if c in "'\"`":
            close = sql.find(c, i + 1)
            while close != -1 and sql[close + 1 : close + 2] == c:  # doubled quote
                close = sql.find(c, close + 2)
            i = n if close == -1 else close + 1
            continue
        if c == "[":
            close = sql.find("]", i + 1)
            i = n if close == -1 else close + 1
            continue
        if sql.startswith("--", i):
            newline = sql.find("\n", i)
            i = n if newline == -1 else newline + 1
            continue
        if sql.startswith("/*", i):
            close = sql.find("*/", i + 2)
            i = n if close == -1 else close + 2
            continue
        if c == ";":
            end = i if end is None else end
        elif end is not None and not c.isspace():
            raise ValidationError(
                "One SQL statement per call: a libSQL server runs only the first statement "
                f"of {sql[:80]!r}…; send the others separately or in a batch"
            )
        i += 1
    return sql


def _stmt(sql: str, params: Params, *, want_rows: bool = True) -> dict[str, Any]:
    if isinstance(params, Mapping):
        raise ValidationError(
            "Named SQL parameters are not supported over libSQL (the server binds them "
            "as NULL): use positional '?' parameters and a sequence of values"
        )
    stmt: dict[str, Any] = {"sql": _checked(sql), "want_rows": want_rows}
    if params:
        stmt["args"] = [encode_value(v) for v in params]
    return stmt


def execute_request(sql: str, params: Params = (), *, want_rows: bool = True) -> dict[str, Any]:
    return {"type": "execute", "stmt": _stmt(sql, params, want_rows=want_rows)}


def batch_request(statements: Sequence[Statement]) -> dict[str, Any]:
    """One write transaction: ``BEGIN IMMEDIATE``, each statement only if the one
    before succeeded, ``COMMIT`` only if all did, and ``ROLLBACK`` whenever the
    ``COMMIT`` did not succeed (did not run, or failed) — so no transaction is left
    open on the server, whose connection other clients share."""
    steps: list[dict[str, Any]] = [{"stmt": {"sql": "BEGIN IMMEDIATE", "want_rows": False}}]
    for sql, params in statements:
        steps.append(
            {"stmt": _stmt(sql, params), "condition": {"type": "ok", "step": len(steps) - 1}}
        )
    commit = len(steps)
    steps.append(
        {
            "stmt": {"sql": "COMMIT", "want_rows": False},
            "condition": {"type": "ok", "step": commit - 1},
        }
    )
    steps.append(
        {
            "stmt": {"sql": "ROLLBACK", "want_rows": False},
            "condition": {"type": "not", "cond": {"type": "ok", "step": commit}},
        }
    )
    return {"type": "batch", "batch": {"steps": steps}}


#: Called on every request: the SQL texts are the storage's few constants.
is_read_only = functools.lru_cache(maxsize=512)(_is_read_only)


def batch_error(result: Mapping[str, Any], count: int) -> HranaError | None:
    """The first error among the BEGIN, the ``count`` statements and the COMMIT."""
    errors = result.get("step_errors") or ()
    for index, error in enumerate(errors[: count + 2]):
        if error is not None:
            # step 0 is BEGIN: report statement numbers from 0 as the caller sees them
            return HranaError(
                str(error.get("message", "unknown error")),
                error.get("code"),
                step=index - 1 if 0 < index <= count else None,
            )
    return None


def batch_rows(result: Mapping[str, Any], count: int) -> list[list[Row]]:
    step_results = result.get("step_results") or ()
    out: list[list[Row]] = []
    for index in range(1, count + 1):
        step = step_results[index] if index < len(step_results) else None
        out.append([] if step is None else decode_rows(step))
    return out
