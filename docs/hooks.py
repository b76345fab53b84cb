"""MkDocs hooks of this site (``hooks:`` in mkdocs.yml; not a page).

A strict build (``uv run mkdocs build --strict``, run by ``tests/test_docs_site.py``)
fails on any warning. mkdocstrings quietly leaves out what has no docstring, so
this hook adds the warnings it does not give:

- every name in the ``__all__`` of a public module (:func:`public_modules`) must be
  rendered by some ``::: identifier`` block of the API reference (``docs/reference``);
- every such name must have a docstring, and so must each public method and property
  a public class defines.

The public modules are not listed by hand: every module under ``packages/*/src``
whose dotted name has no part starting with ``_`` is public and must define
``__all__``, unless :data:`NOT_API` says why it is not. So a new package or public
module cannot skip the reference (nor ``tests/test_public_api.py``, which pins the
``__all__`` of the same modules).

Module-level constants and type aliases take their docstring from a string literal
right after the assignment (what griffe reads), not from a ``#:`` comment.

Two kinds of method need none of their own: one implementing a documented method of
a protocol in :data:`PROTOCOLS` (``MemoryStorage.enqueue`` is ``Storage.enqueue``;
its class docstring says which protocol it implements), and a hypothesis rule of a
state machine (``@rule``, ``@invariant``, …: steps the machine takes, described by
its module).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import griffe
import yaml

log = logging.getLogger("mkdocs.hooks.api_reference")

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "reference"

#: Modules with a public name that are not API, and why (their names are never
#: imported by users; the reference leaves them out).
NOT_API = {
    "durably.codec": "the engine's JSON codec, used through Durably (docs/architecture.md)",
    # durably.sql's own modules: what users and adapters import is what durably.sql
    # re-exports (rendered and pinned there); the rest is shared by in-tree backends
    "durably.sql.executor": "a module of durably.sql, whose __all__ is its API",
    "durably.sql.helpers": "a module of durably.sql, whose __all__ is its API",
    "durably.sql.postgres": "a module of durably.sql, whose __all__ is its API",
    "durably.sql.schema": "a module of durably.sql, whose __all__ is its API",
    "durably.sql.storage": "a module of durably.sql, whose __all__ is its API",
    "durably_sqlite.plugin": "the package's entry point in the durably group",
    "durably_libsql.plugin": "the package's entry point in the durably group",
    "durably_postgres.plugin": "the package's entry point in the durably group",
    "durably_testing.plugin": "the package's entry point in the durably group",
}


def public_modules(root: Path = ROOT) -> list[str]:
    """Every module under ``packages/*/src`` with no ``_``-prefixed part in its dotted
    name, but those of :data:`NOT_API`: the modules whose ``__all__`` is public API."""
    found: set[str] = set()
    for src in root.glob("packages/*/src"):
        for path in src.rglob("*.py"):
            parts = list(path.relative_to(src).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            if parts and not any(part.startswith("_") for part in parts):
                found.add(".".join(parts))
    return sorted(found - set(NOT_API))


#: Protocols whose documented methods an implementation need not document again.
PROTOCOLS = (
    "durably.Storage",
    "durably.SupportsIdentityCheck",
    "durably.SupportsDatabaseTime",
    "durably.Clock",
    "durably.sql.Executor",
)

#: Decorators of hypothesis state-machine steps.
_MACHINE_STEPS = frozenset({"rule", "invariant", "initialize", "precondition"})

_DIRECTIVE = re.compile(
    r"^::: *(?P<id>[\w.]+)[ \t]*\n(?P<options>(?:[ \t]+\S.*\n|[ \t]*\n)*)", re.MULTILINE
)


def on_pre_build(config: Any) -> None:
    search_paths = sorted(str(p) for p in ROOT.glob("packages/*/src"))
    modules_of_api = public_modules()
    loader = griffe.GriffeLoader(search_paths=search_paths)
    for package in {name.partition(".")[0] for name in modules_of_api}:
        loader.load(package)
    loader.resolve_aliases(implicit=False, external=None)
    modules = loader.modules_collection

    protocols = [_methods(_target(modules[path])) for path in PROTOCOLS]
    reported: set[str] = set()
    rendered: set[str] = set()
    for page, identifier, options in _directives():
        try:
            obj = _target(modules[identifier])
        except KeyError:
            log.warning("API reference: %s renders %r, which does not exist", page, identifier)
            continue
        rendered.update(_rendered_paths(obj, options.get("members")))

    for module_name in modules_of_api:
        module = modules[module_name]
        if module.exports is None:
            log.warning(
                "API reference: public module %r has no __all__; define one (and render "
                "its names in a page of docs/reference/), or say in NOT_API of "
                "docs/hooks.py why it is not API",
                module_name,
            )
            continue
        for name in (str(e) for e in module.exports):
            public = f"{module_name}.{name}"
            try:
                obj = _target(module[name])
            except (KeyError, griffe.AliasResolutionError):
                log.warning("API reference: %s is in __all__ but cannot be found", public)
                continue
            if obj.canonical_path not in rendered:
                log.warning(
                    "API reference: %s is public but no page of docs/reference renders it; "
                    "add it to a '::: %s' block's members",
                    public,
                    module_name,
                )
            if obj.canonical_path in reported:
                continue  # exported twice (a package and its submodule)
            reported.add(obj.canonical_path)
            for where, missing in _undocumented(obj, public, protocols):
                log.warning("API reference: %s has no docstring (%s)", missing, where)


def _directives() -> Iterator[tuple[str, str, dict[str, Any]]]:
    """``(page, identifier, options)`` of every ``::: identifier`` block."""
    for page in sorted(REFERENCE.rglob("*.md")):
        text = page.read_text(encoding="utf-8")
        for match in _DIRECTIVE.finditer(text):
            block = yaml.safe_load(_dedent(match.group("options"))) or {}
            options = block.get("options", {}) if isinstance(block, dict) else {}
            yield str(page.relative_to(ROOT)), match.group("id"), options or {}


def _dedent(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    indent = min((len(line) - len(line.lstrip()) for line in lines), default=0)
    return "\n".join(line[indent:] for line in lines)


def _target(obj: griffe.Object | griffe.Alias) -> griffe.Object:
    while isinstance(obj, griffe.Alias):
        obj = obj.target
    return obj


def _rendered_paths(obj: griffe.Object, members: Any) -> Iterator[str]:
    """Canonical paths of what a block renders: the object, and the members it shows."""
    yield obj.canonical_path
    if members is False or not isinstance(obj, griffe.Module):
        return
    if isinstance(members, list):
        names = [str(m) for m in members]
    elif obj.exports is not None:
        names = [str(e) for e in obj.exports]
    else:
        names = [n for n in obj.members if not n.startswith("_")]
    for name in names:
        try:
            yield _target(obj[name]).canonical_path
        except (KeyError, griffe.AliasResolutionError):
            continue


def _methods(cls: griffe.Object) -> dict[str, bool]:
    """A class's own public methods: whether each has a docstring."""
    return {
        name: _has_docstring(member)
        for name, member in cls.members.items()
        if not name.startswith("_") and isinstance(member, griffe.Function)
    }


def _undocumented(
    obj: griffe.Object, public: str, protocols: list[dict[str, bool]]
) -> Iterator[tuple[str, str]]:
    """``(where, name)`` for the object and its public methods/properties without docstring."""
    where = obj.relative_filepath if obj.filepath else obj.path
    if not _has_docstring(obj):
        yield f"{where}:{obj.lineno}", public
    if not isinstance(obj, griffe.Class):
        return
    # with those of its base classes (a mixin may hold some of them)
    own = {name for name in obj.all_members if not name.startswith("_")}
    # the documented methods of each protocol this class implements (has every method of)
    inherited = {
        name
        for protocol in protocols
        if own >= set(protocol)
        for name, documented in protocol.items()
        if documented
    }
    for name, member in obj.members.items():
        if name.startswith(("_", "test_")) or isinstance(member, griffe.Alias):
            continue
        is_property = "property" in member.labels
        if not (isinstance(member, griffe.Function) or is_property):
            continue  # data fields, enum members: described by the class
        if isinstance(member, griffe.Function) and (name in inherited or _is_machine_step(member)):
            continue
        if not _has_docstring(member):
            yield f"{where}:{member.lineno}", f"{public}.{name}"


def _is_machine_step(function: griffe.Function) -> bool:
    for decorator in function.decorators:
        callee = str(decorator.callable_path).rpartition(".")[2]
        if callee in _MACHINE_STEPS:
            return True
    return False


def _has_docstring(obj: griffe.Object) -> bool:
    return obj.docstring is not None and bool(obj.docstring.value.strip())
