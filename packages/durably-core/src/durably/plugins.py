"""Plugin discovery: storage backends are found through pluggy.

A backend package declares an entry point in the group ``durably`` pointing at
a module with a hook implementation::

    # my_backend/plugin.py  (imports only durably; the driver is imported in `open`)
    from durably.plugins import StorageBackend, hookimpl

    def _open(url: str, **options: object) -> Storage:
        from my_backend.storage import MyStorage   # driver imported here, lazily
        return MyStorage(url, **options)

    @hookimpl
    def durably_storage_backends() -> list[StorageBackend]:
        return [StorageBackend(name="mine", schemes=("mine",), open=_open,
                               package="my-backend")]

A plugin manager is built per ``Durably`` (never a module global), so tests can
pass plugins explicitly.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, cast

import pluggy

from ._errors import PluginError, UnknownBackendError, ValidationError
from ._storage import Storage

__all__ = [
    "ENTRY_POINT_GROUP",
    "KNOWN_PACKAGES",
    "PROJECT",
    "BackendRegistry",
    "StorageBackend",
    "hookimpl",
    "hookspec",
    "url_scheme",
]

PROJECT = "durably"
"""The pluggy project name: hook functions are named ``durably_*``."""

ENTRY_POINT_GROUP = "durably"
"""The entry-point group a backend package registers its plugin module in."""

hookspec = pluggy.HookspecMarker(PROJECT)
"""Marks durably's hook specifications."""

hookimpl = pluggy.HookimplMarker(PROJECT)
"""Marks a plugin's hook implementations: ``@hookimpl def durably_storage_backends()``."""

KNOWN_PACKAGES: Mapping[str, str] = MappingProxyType(
    {
        "sqlite": "durably-sqlite",
        "file": "durably-libsql",
        "libsql": "durably-libsql",
        "http": "durably-libsql",
        "https": "durably-libsql",
        "postgresql": "durably-postgres",
        "postgres": "durably-postgres",
        "memory": "durably-testing",
    }
)
"""Schemes of the backends we publish, so an unknown-scheme error can say what to install."""


@dataclass(frozen=True)
class StorageBackend:
    """A storage backend a plugin offers: which URL schemes it opens, and how."""

    name: str
    schemes: tuple[str, ...]
    open: Callable[..., Storage]
    package: str = ""
    plugin: str = field(default="", compare=False)


class _HookSpecs:
    @hookspec
    def durably_storage_backends(self) -> list[StorageBackend]:  # type: ignore[empty-body]
        """Return the storage backends this plugin provides."""


def url_scheme(url: str) -> str:
    """The scheme of a database URL (``sqlite:///x.db`` → ``sqlite``, ``file:x.db`` → ``file``)."""
    scheme, sep, _ = url.partition(":")
    if (
        not sep
        or not scheme
        or not (
            scheme[0].isalpha()
            and scheme.replace("+", "").replace("-", "").replace(".", "").isalnum()
        )
    ):
        raise ValidationError(
            f"Invalid database URL {url!r}: expected '<scheme>:…', e.g. "
            "'sqlite:///durably.db', 'file:local.db' or 'memory://'"
        )
    return scheme.lower()


class BackendRegistry:
    """The backends of one ``Durably``: a pluggy manager and a scheme table."""

    def __init__(self, plugins: Sequence[object] = (), *, load_entry_points: bool = True):
        self._pm = pluggy.PluginManager(PROJECT)
        self._pm.add_hookspecs(_HookSpecs)
        if load_entry_points:
            self._load_entry_points()
        for plugin in plugins:
            if not self._pm.is_registered(plugin):
                self._pm.register(plugin)
        self._by_scheme = self._build_table()

    def _load_entry_points(self) -> None:
        """Like pluggy's ``load_setuptools_entrypoints``, but a plugin that fails to
        import is a ``PluginError`` naming its package (not a raw ImportError)."""
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if self._pm.get_plugin(ep.name) is not None or self._pm.is_blocked(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                dist = ep.dist.name if ep.dist is not None else "unknown package"
                raise PluginError(
                    f"The durably plugin {ep.name!r} (entry point {ep.value!r} of "
                    f"{dist!r}) failed to import: {type(exc).__name__}: {exc}. Reinstall "
                    f"{dist!r}, or uninstall it if it is not needed."
                ) from exc
            self._pm.register(plugin, name=ep.name)

    def _build_table(self) -> dict[str, StorageBackend]:
        table: dict[str, StorageBackend] = {}
        caller = self._pm.hook.durably_storage_backends
        for impl in caller.get_hookimpls():
            plugin_name = impl.plugin_name
            try:
                backends = cast("Iterable[object]", impl.function() or [])
            except Exception as exc:
                raise PluginError(
                    f"Plugin {plugin_name!r} failed while listing its storage backends: {exc}"
                ) from exc
            for backend in backends:
                if not isinstance(backend, StorageBackend):
                    raise PluginError(
                        f"Plugin {plugin_name!r} returned {backend!r} from "
                        "durably_storage_backends(); expected StorageBackend instances"
                    )
                backend = StorageBackend(
                    name=backend.name,
                    schemes=tuple(s.lower() for s in backend.schemes),
                    open=backend.open,
                    package=backend.package,
                    plugin=plugin_name,
                )
                for scheme in backend.schemes:
                    other = table.get(scheme)
                    if other is not None:
                        raise PluginError(
                            f"URL scheme {scheme!r} is claimed by two storage backends: "
                            f"{other.name!r} (plugin {other.plugin!r}) and {backend.name!r} "
                            f"(plugin {plugin_name!r}); uninstall one of them"
                        )
                    table[scheme] = backend
        return table

    @property
    def schemes(self) -> list[str]:
        """The URL schemes the installed backends open, sorted."""
        return sorted(self._by_scheme)

    def backend_for(self, url: str) -> StorageBackend:
        """The backend for the URL's scheme; ``UnknownBackendError`` (listing the
        installed schemes and the package to install) when none handles it."""
        scheme = url_scheme(url)
        backend = self._by_scheme.get(scheme)
        if backend is None:
            installed = ", ".join(f"{s}: ({b.name})" for s, b in sorted(self._by_scheme.items()))
            hint = ""
            if scheme in KNOWN_PACKAGES:
                hint = f" Install {KNOWN_PACKAGES[scheme]!r} to use {scheme}: URLs."
            raise UnknownBackendError(
                f"No storage backend handles {scheme!r} URLs. Installed schemes: "
                f"{installed or 'none'}.{hint}"
            )
        return backend

    def open(self, url: str, **options: Any) -> Storage:
        """Open a storage for the URL with its backend (``options`` go to it)."""
        return self.backend_for(url).open(url, **options)
