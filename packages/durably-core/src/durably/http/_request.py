"""Reading requests from clients that may be hostile: every malformed request is
a ``RequestError`` (a 4xx with a JSON error), checked before any hook or the
database sees it.

Why each bound exists: a request body is read in chunks and dropped once it
passes ``max_body_size`` (a 64 MB trigger would otherwise be read, decoded and
stored); JSON nested deeper than ``MAX_JSON_DEPTH`` is refused because decoding
and encoding it recurse, and a value stored from a shallow stack could fail to
decode later from a deeper one; integers must fit SQL's 64 bits; a query may
repeat a filter at most ``MAX_FILTER_VALUES`` times, and name at most
``MAX_LABEL_FILTERS`` labels (a bound on the work one request asks for; the
storages match any number of labels in one subquery).
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from starlette.datastructures import QueryParams
from starlette.requests import ClientDisconnect, Request

from .._validate import (
    MAX_JSON_DEPTH,
    SQL_INT_MAX,
    check_text,
    json_depth_within,
    validate_key,
    validate_labels,
)
from ._auth import SignalRequest, TriggerRequest

#: Default of ``create_handler(max_body_size=...)``: 1 MiB.
DEFAULT_MAX_BODY_SIZE = 1 << 20
#: How many times ``jobName`` or ``status`` may appear in a query.
MAX_FILTER_VALUES = 100
#: How many distinct ``label.*`` filters a query may have.
MAX_LABEL_FILTERS = 20
#: Largest ``limit`` / ``offset``: SQL's 64-bit integers (what ``get_runs`` accepts).
MAX_INT = SQL_INT_MAX

_LEADING_INT = re.compile(r"\s*([+-]?)([0-9]+)")


class RequestError(Exception):
    """A client's mistake: answered with ``{"error": message}`` and ``status``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, read chunk by chunk and abandoned past ``limit`` bytes
    (413); a declared ``Content-Length`` above the limit is refused unread."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise RequestError(f"Invalid Content-Length header: {declared[:40]!r}")
        if len(declared) > 20 or int(declared) > limit:
            raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect:
        raise RequestError("The client disconnected before sending the whole body") from None
    return b"".join(chunks)


def _too_large(limit: int) -> RequestError:
    return RequestError(f"Request body too large: the limit is {limit} bytes", 413)


def decode_json(body: bytes) -> Any:
    too_deep = f"Invalid JSON body: objects and arrays nested more than {MAX_JSON_DEPTH} deep"
    try:
        value = msgspec.json.decode(body)
    except msgspec.DecodeError:
        raise RequestError("Invalid JSON body") from None
    except RecursionError:  # msgspec's answer to nesting deeper than the stack allows
        raise RequestError(too_deep) from None
    if not json_depth_within(value):
        raise RequestError(too_deep)
    return value


def trigger_request(body: Any) -> TriggerRequest:
    """The ``POST /trigger`` body as a ``TriggerRequest`` whose fields have the
    types it declares (so ``on_trigger`` never sees anything else)."""
    if not isinstance(body, dict) or not body.get("jobName"):
        raise RequestError("jobName is required")
    name = body["jobName"]
    if not isinstance(name, str):
        raise RequestError(f"jobName must be a string, got {_json_type(name)}")
    labels = body.get("labels")
    coalesce = body.get("coalesce")
    if coalesce is not None and coalesce != "skip":
        raise RequestError(f"Invalid coalesce {coalesce!r}: the only supported value is 'skip'")
    return TriggerRequest(
        job_name=name,
        input=body.get("input"),
        idempotency_key=validate_key("idempotencyKey", body.get("idempotencyKey")),
        concurrency_key=validate_key("concurrencyKey", body.get("concurrencyKey")),
        labels=None if labels is None else validate_labels(labels, None, None),
        coalesce=coalesce,
    )


def signal_request(body: Any) -> SignalRequest:
    """The ``POST /signal`` body (``{name, payload?, signalId?}``) as a
    ``SignalRequest`` whose fields have the types it declares."""
    if not isinstance(body, dict) or not body.get("name"):
        raise RequestError("name (the wait's name) is required")
    name, signal_id = body["name"], body.get("signalId")
    if not isinstance(name, str):
        raise RequestError(f"name must be a string, got {_json_type(name)}")
    if signal_id is not None and (not isinstance(signal_id, str) or not signal_id):
        raise RequestError(f"signalId must be a non-empty string, got {_json_type(signal_id)}")
    for what, text in (("name", name), ("signalId", signal_id)):
        if text is not None:
            check_text(what, text)
    return SignalRequest(name=name, payload=body.get("payload"), signal_id=signal_id)


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", bool: "a boolean", str: "a string"}
    if value is None:
        return "null"
    return names.get(type(value), "a number")


def parse_int(raw: str | None, what: str) -> int | None:
    """``Number.parseInt`` leniency (``"10abc"`` is 10), as the reference parses,
    within 0 … 2^63 - 1."""
    if not raw:
        return None
    m = _LEADING_INT.match(raw)
    if m is None or (m.group(1) == "-" and m.group(2).strip("0")):
        raise RequestError(f"Invalid {what}: must be a non-negative integer")
    digits = m.group(2).lstrip("0")
    # the length check first: int() refuses strings of more than 4,300 digits
    if len(digits) > len(str(MAX_INT)) or int(digits or "0") > MAX_INT:
        raise RequestError(f"Invalid {what}: must be at most {MAX_INT}")
    return int(digits or "0")


def values(params: QueryParams, name: str) -> tuple[str, ...] | None:
    """Every value of a repeated query parameter (``None`` if absent), at most
    ``MAX_FILTER_VALUES`` of them."""
    found = params.getlist(name)
    if len(found) > MAX_FILTER_VALUES:
        raise RequestError(f"Too many {name} filters ({len(found)}): at most {MAX_FILTER_VALUES}")
    return tuple(found) or None


def label_filters(params: QueryParams) -> dict[str, str] | None:
    """The ``label.<key>=<value>`` filters, at most ``MAX_LABEL_FILTERS`` of them."""
    labels = {k[6:]: v for k, v in params.multi_items() if k.startswith("label.")}
    if len(labels) > MAX_LABEL_FILTERS:
        raise RequestError(f"Too many label filters ({len(labels)}): at most {MAX_LABEL_FILTERS}")
    return validate_labels(labels, None, None) if labels else None
