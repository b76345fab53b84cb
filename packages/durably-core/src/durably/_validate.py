"""Validation at the edges: job input, labels, trigger options, Durably options.

Each failure is a ``ValidationError`` whose message says what was wrong and how
to fix it; nothing has been written when one is raised.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pydantic
from pydantic_core import PydanticSerializationError

from ._errors import ValidationError
from .codec import NonFiniteNumberError

if TYPE_CHECKING:
    from .codec import Codec

#: ``\Z``, not ``$``: ``$`` also matches before a final newline, so ``"a\n"`` passed.
LABEL_KEY = re.compile(r"\A[a-zA-Z0-9\-_./]+\Z")

#: The bounds of ``create_durably``'s options, in seconds. A lease is at most a day: a
#: dead worker's run waits that long to be resumed, and far beyond it the lease's
#: expiry leaves the range of a datetime (``lease_duration=1e12``). A millisecond is
#: the database's precision: a shorter interval is zero there.
MIN_INTERVAL = 0.001
MAX_LEASE = 86400.0
MAX_POLLING_INTERVAL = 86400.0
MAX_CONCURRENT_RUNS = 10_000
#: The longest duration counted back or forward from now (``retain_runs``,
#: ``purge_runs(older_than=)``, wait timeouts): a century keeps the result a datetime.
MAX_DURATION = 100 * 365 * 86400.0
#: Row counts handed to the database (``purge_runs(limit=)``): a 32-bit integer.
MAX_COUNT = 2**31 - 1
#: The largest integer SQLite, libSQL and PostgreSQL store (``get_runs`` limit and offset).
SQL_INT_MAX = (1 << 63) - 1
#: Deepest nesting of objects and arrays in a value a client gives (a job's input;
#: over HTTP, the request body). Decoding and encoding recurse, and how deep they
#: get depends on the stack they are called from: ~990 levels were accepted, and a
#: value stored from a shallow stack could fail to decode later on a deeper one.
MAX_JSON_DEPTH = 100


def describe_pydantic_error(exc: pydantic.ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ())) or "(value)"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def adapter_for(tp: Any, refused: str) -> pydantic.TypeAdapter[Any]:
    """``pydantic.TypeAdapter(tp)``, or a ``ValidationError`` starting with ``refused``
    when pydantic cannot build a schema for ``tp`` (it raises several kinds)."""
    try:
        return pydantic.TypeAdapter(tp)
    except Exception as exc:
        raise ValidationError(
            f"{refused} cannot be validated by pydantic ({type(exc).__name__}: {exc})"
        ) from None


def encode_validated(codec: Codec, tp: Any, value: Any) -> str:
    """``value`` validated as ``tp`` (a job's input or output type; ``None``: any JSON
    value) and encoded. A ``ValidationError`` says why, for the caller to prefix
    with what the value was."""
    try:
        if tp is None:
            return codec.encode(value)
        adapter = codec.adapter(tp)
        return codec.dump(adapter, adapter.validate_python(value))
    except pydantic.ValidationError as exc:
        raise ValidationError(describe_pydantic_error(exc)) from None
    except NonFiniteNumberError as exc:
        raise ValidationError(str(exc)) from None
    except (TypeError, PydanticSerializationError) as exc:
        raise ValidationError(f"not JSON-serializable ({exc})") from None
    except Exception as exc:  # a user validator raising something else: same outcome
        raise ValidationError(f"{type(exc).__name__}: {exc}") from exc


def decode_validated(codec: Codec, tp: Any, value: Any) -> Any:
    """A stored JSON value restored to ``tp`` (``None``: the value as it is). A
    ``ValidationError`` says why, for the caller to prefix with what the value was."""
    if tp is None:
        return value
    try:
        return codec.to_typed(tp, value)
    except pydantic.ValidationError as exc:
        raise ValidationError(describe_pydantic_error(exc)) from None
    except Exception as exc:  # a user validator raising something else: same outcome
        raise ValidationError(f"{type(exc).__name__}: {exc}") from exc


def json_depth_within(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``value`` nests objects and arrays at most ``limit`` deep (without
    recursing)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if not isinstance(item, dict | list):
            continue
        if depth > limit:
            return False
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return True


def check_json_depth(codec: Codec, encoded: str) -> None:
    """A ``ValidationError`` when the JSON text ``encoded`` nests objects and arrays
    more than :data:`MAX_JSON_DEPTH` deep. Text with fewer brackets than that cannot
    nest deeper: the usual value costs two counts of its text, not a decoding."""
    if encoded.count("[") + encoded.count("{") <= MAX_JSON_DEPTH:
        return
    try:
        within = json_depth_within(codec.decode(encoded))
    except RecursionError:  # deeper than this stack decodes
        within = False
    if not within:
        raise ValidationError(f"objects and arrays nested more than {MAX_JSON_DEPTH} deep")


def check_text(what: str, value: str) -> str:
    """``value`` if it can be stored as text (UTF-8): a lone surrogate cannot."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(
            f"{what} is not valid Unicode text (it holds a lone surrogate such as '\\ud800'); "
            "decode bytes with errors='replace' or pass real text"
        ) from None
    return value


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_progress(current: Any, total: Any, message: Any) -> None:
    """``step.progress(current, total=None, message=None)``: finite numbers, text."""
    if not _finite(current):
        raise ValidationError(f"step.progress: current must be a finite number, got {current!r}")
    if total is not None and not _finite(total):
        raise ValidationError(
            f"step.progress: total must be a finite number or None, got {total!r}"
        )
    if message is not None:
        if not isinstance(message, str):
            raise ValidationError(
                f"step.progress: message must be a string or None, got {type(message).__name__}"
            )
        check_text("step.progress message", message)


def validate_labels(
    labels: Any, schema: Any, adapter: pydantic.TypeAdapter[Any] | None
) -> dict[str, str]:
    if labels is None:
        labels = {}
    if adapter is not None:
        try:
            validated = adapter.validate_python(labels)
        except pydantic.ValidationError as exc:
            raise ValidationError(f"Invalid labels: {describe_pydantic_error(exc)}") from None
        labels = (
            validated.model_dump(mode="json", exclude_none=True)
            if isinstance(validated, pydantic.BaseModel)
            else validated
        )
    if not isinstance(labels, dict):
        raise ValidationError(
            f"Invalid labels: expected a dict of str to str, got {type(labels).__name__}"
        )
    for key, value in labels.items():
        if not isinstance(key, str) or not LABEL_KEY.match(key):
            raise ValidationError(
                f"Invalid label key {key!r}: keys may use only letters, digits and - _ . /"
            )
        if not isinstance(value, str):
            raise ValidationError(
                f"Invalid label {key!r}: values must be strings, got {type(value).__name__}"
            )
        check_text(f"Label {key!r}", value)
    return dict(labels)


def validate_key(kind: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ValidationError(f"Invalid {kind}: expected a non-empty string, got {value!r}")
    return check_text(kind, value)


def validate_coalesce(coalesce: Any, concurrency_key: str | None) -> bool:
    if coalesce is None:
        return False
    if coalesce != "skip":
        raise ValidationError(f"Invalid coalesce {coalesce!r}: the only supported value is 'skip'")
    if concurrency_key is None:
        raise ValidationError(
            "coalesce='skip' needs a concurrency_key: it returns the pending run of that key"
        )
    return True


def _seconds(value: float) -> str:
    for unit, size in (("a day", 86400.0), ("an hour", 3600.0)):
        if value == size:
            return f"{value:g} ({unit})"
    if value == MAX_DURATION:
        return f"{value:g} (a century)"
    return f"{value:g}"


def positive_number(
    name: str,
    value: Any,
    *,
    allow_zero: bool = False,
    minimum: float = 0.0,
    maximum: float = MAX_DURATION,
) -> float:
    """A number of seconds: ``minimum`` < value (≤ with ``allow_zero``) ≤ ``maximum``."""
    ok = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value >= minimum if allow_zero or minimum > 0 else value > minimum)
        and value <= maximum
    )
    if not ok:
        low = f"≥ {minimum:g}" if minimum > 0 else "≥ 0" if allow_zero else "> 0"
        raise ValidationError(
            f"Invalid {name} {value!r}: expected a number of seconds {low} and "
            f"≤ {_seconds(maximum)}"
        )
    return float(value)


def interval(name: str, value: Any, maximum: float) -> float:
    """An option that is an interval: ``MIN_INTERVAL`` to ``maximum`` seconds."""
    return positive_number(name, value, minimum=MIN_INTERVAL, maximum=maximum)


def positive_int(name: str, value: Any, maximum: int = MAX_COUNT) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1 or value > maximum:
        raise ValidationError(f"Invalid {name} {value!r}: expected an integer from 1 to {maximum}")
    return value


def duration(name: str, value: Any) -> timedelta:
    """``"7d"``/``"12h"``/``"30m"``/``"45s"``, seconds or a timedelta: ≥ 0, at most a century."""
    from ._timefmt import parse_duration

    try:
        parsed = parse_duration(value)
    except ValidationError as exc:
        raise ValidationError(f"Invalid {name}: {exc}") from None
    seconds = parsed.total_seconds()
    if not math.isfinite(seconds) or seconds < 0 or seconds > MAX_DURATION:
        raise ValidationError(
            f"Invalid {name} {value!r}: expected a duration ≥ 0 and ≤ 100 years "
            "(e.g. '7d', '12h', '30m', '45s' or a number of seconds)"
        )
    return parsed
