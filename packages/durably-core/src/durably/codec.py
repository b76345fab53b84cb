"""JSON for everything that goes into the database (msgspec), and typed
validation at the edges (pydantic ``TypeAdapter``). Never pickle.

- Untyped values must be JSON-native after msgspec's conversions (dicts,
  lists, str, int, float, bool, None, plus datetimes, UUIDs, dataclasses,
  msgspec Structs and pydantic models, which are dumped in JSON mode).
- Typed values (a job's input/output schema, a step's return type) go through
  the type's ``TypeAdapter``: encoded with ``dump_json`` and decoded with
  ``validate_json``, so a value reads back as the same type.
- NaN and ±infinity are refused (:class:`NonFiniteNumberError`): JSON has no form
  for them, and both msgspec and pydantic would silently write ``null``, which a
  ``float`` never reads back as (pydantic's ``ser_json_inf_nan`` spellings are
  refused too). The check costs a substring search of the encoded text for
  ``null``; only text that holds one is checked further (see :meth:`Codec.step_result`
  for the per-step path).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import typing
import weakref
from collections.abc import Callable
from typing import Any

import msgspec
import pydantic
from pydantic_core import PydanticSerializationError


class NonFiniteNumberError(TypeError):
    """A value holds NaN or ±infinity, which JSON cannot represent."""


def _children(item: Any) -> Any:
    """``(key, child)`` pairs of a container msgspec encodes, else ``None``."""
    if isinstance(item, pydantic.BaseModel):
        return item.model_dump().items()
    if isinstance(item, msgspec.Struct):
        return msgspec.structs.asdict(item).items()
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        return ((f.name, getattr(item, f.name)) for f in dataclasses.fields(item))
    if isinstance(item, dict):
        return item.items()
    if isinstance(item, list | tuple | set | frozenset):
        return enumerate(item)
    return None


def _non_finite(value: Any) -> tuple[str, float] | None:
    """Where (``"a.b.2"``, ``""`` for the value itself) a value holds a NaN or an
    infinity, and that number; ``None`` when it holds none. Walks what msgspec
    encodes: containers, pydantic models (dumped in Python mode: JSON mode would
    already have turned a NaN in an ``Any`` field into ``None``), dataclasses and
    msgspec Structs. Iterative (no recursion limit); a path is built only for the
    number found. ``x - x != 0.0`` is true exactly for NaN and ±inf."""
    if isinstance(value, float):
        return None if value - value == 0.0 else ("", value)
    trail: list[tuple[int, Any]] = []  # (parent's index in trail, key) per container
    stack: list[tuple[Any, int, Any]] = [(value, -1, None)]
    push = stack.append
    while stack:
        item, parent, key = stack.pop()
        kind = type(item)
        if kind is dict:
            children: Any = item.items()
        elif kind is list or kind is tuple:
            children = enumerate(item)
        else:
            children = _children(item)
            if children is None:
                if isinstance(item, float) and item - item != 0.0:  # a float subclass
                    return _path(trail, parent, key), item
                continue
        here = len(trail)
        trail.append((parent, key))
        for child_key, child in children:
            kind = type(child)
            if kind is float:
                if child - child != 0.0:
                    return _path(trail, here, child_key), child
            elif kind is not str and kind is not int and kind is not bool and child is not None:
                push((child, here, child_key))
    return None


def _path(trail: list[tuple[int, Any]], parent: int, key: Any) -> str:
    parts = [str(key)]
    while parent > 0:  # index 0 is the value itself
        parent, key = trail[parent]
        parts.append(str(key))
    return ".".join(reversed(parts))


def refuse_non_finite(native: Any) -> None:
    """Raise :class:`NonFiniteNumberError` if ``native`` holds a NaN or an infinity."""
    found = _non_finite(native)
    if found is not None:
        path, number = found
        raise NonFiniteNumberError(
            f"{path or 'the value'} is {number!r}: NaN and infinity cannot be stored (JSON "
            "has no form for them; they would be saved as null); use None or a string"
        )


def _python_dump(obj: Any) -> Any:
    if isinstance(obj, pydantic.BaseModel):
        return obj.model_dump()  # Python mode: a NaN stays a float
    raise NotImplementedError


def _same_builtins(value: Any, native: Any) -> bool:
    """Is ``native`` (decoded JSON) ``value`` with msgspec's conversions (tuples as
    lists, datetimes as text, dataclasses as dicts…) and no NaN written as null? A
    NaN stays a float in ``to_builtins`` and never equals ``None``. At C speed: the
    walk is left for what this cannot tell."""
    try:
        return bool(msgspec.to_builtins(value, enc_hook=_python_dump) == native)
    except Exception:  # e.g. a type only the encoder's hook knows: walk it instead
        return False


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, pydantic.BaseModel):
        return obj.model_dump(mode="json")
    raise NotImplementedError(f"Objects of type {type(obj).__name__} are not JSON-serializable")


class Codec:
    """One encoder/decoder pair built once and reused (per ``Durably``)."""

    def __init__(self) -> None:
        self._encoder = msgspec.json.Encoder(enc_hook=_enc_hook)
        self._canonical = msgspec.json.Encoder(enc_hook=_enc_hook, order="sorted")
        self._decoder = msgspec.json.Decoder()
        self._adapters: dict[Any, pydantic.TypeAdapter[Any]] = {}
        # weakly keyed: a job's step functions are looked up on every step.run, and
        # typing.get_type_hints is slow
        self._return_types: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()

    def encode(self, value: Any) -> str:
        """Compact JSON text. Raises ``TypeError`` for what cannot be encoded
        (:class:`NonFiniteNumberError` for a NaN or an infinity)."""
        return self._encode_with(self._encoder, value)

    def encode_canonical(self, value: Any) -> str:
        """``encode`` with every object's keys sorted, so that equal values have equal
        text (a signal's payload is compared with the one already accepted)."""
        return self._encode_with(self._canonical, value)

    @staticmethod
    def _encode_with(encoder: msgspec.json.Encoder, value: Any) -> str:
        try:
            text = encoder.encode(value).decode()
        except (TypeError, NotImplementedError, OverflowError, ValueError) as exc:
            raise TypeError(str(exc)) from exc
        # msgspec writes NaN and ±inf as null: was there one? (`in` on str, not bytes:
        # bytes.__contains__ takes ~10 times longer)
        if "null" in text:
            refuse_non_finite(value)
        return text

    def decode(self, text: str | bytes) -> Any:
        return self._decoder.decode(text)

    def adapter(self, tp: Any) -> pydantic.TypeAdapter[Any]:
        try:
            return self._adapters[tp]
        except (KeyError, TypeError):
            pass
        adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(tp)
        # unhashable type expressions are simply not cached
        with contextlib.suppress(TypeError):
            self._adapters[tp] = adapter
        return adapter

    @staticmethod
    def dump(adapter: pydantic.TypeAdapter[Any], validated: Any) -> str:
        """``validated`` (already validated by ``adapter``) as JSON text. Raises
        :class:`NonFiniteNumberError` for a NaN or an infinity; pydantic writes them as
        ``null``, or as ``NaN``/``Infinity`` under ``ser_json_inf_nan``."""
        text = adapter.dump_json(validated).decode()
        if "null" in text or "NaN" in text or "Infinity" in text:
            refuse_non_finite(adapter.dump_python(validated))
        return text

    def step_result(self, tp: Any, value: Any) -> tuple[str, Any, Any]:
        """A step's result as it is checkpointed: ``(text, native, restored)`` — the
        JSON text, its JSON-native decoding, and (``tp`` given) its decoding as
        ``tp``, i.e. what every replay returns. Raises ``TypeError`` when it cannot
        be stored (:class:`NonFiniteNumberError` for a NaN or an infinity) and
        ``pydantic.ValidationError`` when the text does not read back as ``tp``.

        The NaN check rides on the decoding a checkpoint does anyway: only when the
        text holds ``null`` (or pydantic's ``NaN``/``Infinity``) and its decoding
        differs from the value is the value walked for the number."""
        if tp is not None and tp in _EXACT_SCALARS and type(value) is tp:
            # an int, str or bool returned for that type: what pydantic would check and
            # write is the value itself (a subclass, e.g. a bool for int, goes the long way)
            try:
                data = self._encoder.encode(value)
            except (TypeError, OverflowError, ValueError):
                pass  # e.g. an int beyond 64 bits: pydantic's turn
            else:
                native = self._decoder.decode(data)
                return data.decode(), native, native
        if tp is None:
            try:
                data = self._encoder.encode(value)
            except (TypeError, NotImplementedError, OverflowError, ValueError) as exc:
                raise TypeError(str(exc)) from exc
            text = data.decode()
            native = self._decoder.decode(data)
            if "null" in text and native != value and not _same_builtins(value, native):
                refuse_non_finite(value)
            return text, native, None
        try:
            adapter = self.adapter(tp)
        except Exception as exc:  # not a type pydantic can build a schema for
            raise TypeError(f"{tp!r} is not a type pydantic can validate ({exc})") from exc
        try:
            # validate first so a dict returned for `returns=Model` becomes a Model
            validated = adapter.validate_python(value)
            data = adapter.dump_json(validated)
        except (PydanticSerializationError, pydantic.ValidationError) as exc:
            raise TypeError(str(exc)) from exc
        text = data.decode()
        if "NaN" in text or "Infinity" in text:  # ser_json_inf_nan="constants"/"strings"
            refuse_non_finite(adapter.dump_python(validated))
        try:
            restored = adapter.validate_json(data)
        except pydantic.ValidationError:
            if "null" in text:  # a NaN written as null does not read back as a float
                refuse_non_finite(adapter.dump_python(validated))
            raise
        if "null" in text and restored != validated:  # a NaN comes back as None (or fails)
            refuse_non_finite(adapter.dump_python(validated))
        return text, self._decoder.decode(data), restored

    def to_typed(self, tp: Any, native: Any) -> Any:
        """A JSON-native value (as read from storage) restored to ``tp``."""
        return self.adapter(tp).validate_json(self._encoder.encode(native))

    def step_function(self, fn: Callable[..., Any]) -> tuple[Any, bool]:
        """(:func:`return_type_of` ``fn``, whether ``fn`` is a coroutine function),
        cached per function object (a bound method by its function); lookups whose
        annotations cannot be resolved yet are not cached."""
        key: Any = getattr(fn, "__func__", fn)
        try:
            found = self._return_types.get(key, _MISSING)
        except TypeError:  # not weak-referenceable or not hashable
            key = None
            found = _MISSING
        if found is not _MISSING:
            return found  # type: ignore[no-any-return]
        tp, resolved = return_type_of(fn)
        if tp is not None:
            try:
                self.adapter(tp)
            except Exception:  # e.g. typing.TypedDict on 3.11, a plain class: not a schema
                tp = None
        info = (tp, inspect.iscoroutinefunction(fn))
        if resolved and key is not None:
            with contextlib.suppress(TypeError):
                self._return_types[key] = info
        return info


_MISSING: Any = object()
#: Return types whose values a checkpoint stores without pydantic when returned exactly.
_EXACT_SCALARS = frozenset((int, str, bool))


def return_type_of(fn: Callable[..., Any]) -> tuple[Any, bool]:
    """The declared return type of ``fn`` (unwrapping ``Awaitable``), or ``None`` if
    there is none worth validating against (missing, ``Any``, ``None``); and whether
    the annotations could be resolved (a forward reference may resolve later)."""
    target: Any = fn
    while isinstance(target, functools.partial):
        target = target.func
    try:
        hints = typing.get_type_hints(target)
    except Exception:
        return None, False
    tp = hints.get("return", inspect.Signature.empty)
    if tp is inspect.Signature.empty or tp is Any or tp is type(None) or tp is None:
        return None, True
    origin = typing.get_origin(tp)
    if origin is not None and getattr(origin, "__name__", "") in ("Awaitable", "Coroutine"):
        args = typing.get_args(tp)
        tp = args[-1] if args else None
        if tp is Any or tp is type(None):
            return None, True
    return tp, True
