"""JSON for everything that goes into the database (msgspec), and typed
validation at the edges (pydantic ``TypeAdapter``). Never pickle.

- Untyped values must be JSON-native after msgspec's conversions (dicts,
  lists, str, int, float, bool, None, plus datetimes, UUIDs, dataclasses,
  msgspec Structs and pydantic models, which are dumped in JSON mode).
- Typed values (a job's input/output schema, a step's return type) go through
  the type's ``TypeAdapter``: encoded with ``dump_json`` and decoded with
  ``validate_json``, so a value reads back as the same type.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import typing
import weakref
from collections.abc import Callable
from typing import Any

import msgspec
import pydantic
from pydantic_core import PydanticSerializationError


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, pydantic.BaseModel):
        return obj.model_dump(mode="json")
    raise NotImplementedError(f"Objects of type {type(obj).__name__} are not JSON-serializable")


class Codec:
    """One encoder/decoder pair built once and reused (per ``Durably``)."""

    def __init__(self) -> None:
        self._encoder = msgspec.json.Encoder(enc_hook=_enc_hook)
        self._decoder = msgspec.json.Decoder()
        self._adapters: dict[Any, pydantic.TypeAdapter[Any]] = {}
        # weakly keyed: a job's step functions are looked up on every step.run, and
        # typing.get_type_hints is slow
        self._return_types: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()

    def encode(self, value: Any) -> str:
        """Compact JSON text. Raises ``TypeError`` for what cannot be encoded."""
        try:
            return self._encoder.encode(value).decode()
        except (TypeError, NotImplementedError, OverflowError, ValueError) as exc:
            raise TypeError(str(exc)) from exc

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

    def encode_typed(self, tp: Any, value: Any) -> str:
        """Encode ``value`` as ``tp`` would dump it. Raises ``TypeError`` when it cannot."""
        try:
            adapter = self.adapter(tp)
        except Exception as exc:  # not a type pydantic can build a schema for
            raise TypeError(f"{tp!r} is not a type pydantic can validate ({exc})") from exc
        try:
            # validate first so a dict returned for `returns=Model` becomes a Model
            return adapter.dump_json(adapter.validate_python(value)).decode()
        except (PydanticSerializationError, pydantic.ValidationError) as exc:
            raise TypeError(str(exc)) from exc

    def decode_typed(self, tp: Any, text: str | bytes) -> Any:
        return self.adapter(tp).validate_json(text)

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
