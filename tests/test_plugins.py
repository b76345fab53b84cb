"""Backend discovery through pluggy: entry points, explicit plugins, errors."""

from __future__ import annotations

from typing import Any

import pytest

from durably import PluginError, Storage, UnknownBackendError, ValidationError, create_durably
from durably.plugins import BackendRegistry, StorageBackend, hookimpl, url_scheme
from durably_testing.memory import MemoryStorage


class _Plugin:
    """A third-party plugin passed explicitly, as a test would."""

    def __init__(self, name: str, schemes: tuple[str, ...]) -> None:
        self.name = name
        self.schemes = schemes
        self.opened: list[tuple[str, dict[str, Any]]] = []

    @hookimpl
    def durably_storage_backends(self) -> list[StorageBackend]:
        def _open(url: str, **options: Any) -> Storage:
            self.opened.append((url, options))
            return MemoryStorage()

        return [StorageBackend(name=self.name, schemes=self.schemes, open=_open, package="x")]


def test_registry__discovers_memory_backend_through_entry_point() -> None:
    registry = BackendRegistry()
    assert "memory" in registry.schemes
    backend = registry.backend_for("memory://")
    assert backend.name == "memory"
    assert backend.plugin  # pluggy names the plugin that provided it
    assert isinstance(registry.open("memory://"), MemoryStorage)


def test_registry__explicit_plugin_opens_its_scheme_with_options() -> None:
    plugin = _Plugin("mine", ("mine",))
    registry = BackendRegistry([plugin])
    storage = registry.open("mine://db", answer=42)
    assert isinstance(storage, MemoryStorage)
    assert plugin.opened == [("mine://db", {"answer": 42})]


def test_registry__duplicate_scheme_names_both_plugins() -> None:
    with pytest.raises(PluginError) as info:
        BackendRegistry([_Plugin("first", ("dup",)), _Plugin("second", ("dup",))])
    message = str(info.value)
    assert "'dup'" in message
    assert "first" in message
    assert "second" in message


def test_registry__plugin_clashing_with_installed_backend_is_an_error() -> None:
    with pytest.raises(PluginError, match="memory"):
        BackendRegistry([_Plugin("impostor", ("memory",))])


def test_registry__unknown_scheme_lists_installed_schemes() -> None:
    with pytest.raises(UnknownBackendError) as info:
        BackendRegistry().open("nosuch://x")
    assert "memory" in str(info.value)
    assert "'nosuch'" in str(info.value)


def test_registry__known_but_uninstalled_scheme_names_the_package() -> None:
    registry = BackendRegistry(load_entry_points=False)
    with pytest.raises(UnknownBackendError, match="durably-libsql"):
        registry.open("libsql://db.example")


def test_registry__without_entry_points_only_explicit_plugins() -> None:
    registry = BackendRegistry([_Plugin("mine", ("mine",))], load_entry_points=False)
    assert registry.schemes == ["mine"]


def test_registry__each_registry_has_its_own_plugin_manager() -> None:
    a = BackendRegistry([_Plugin("a", ("aaa",))])
    b = BackendRegistry()
    assert "aaa" in a.schemes
    assert "aaa" not in b.schemes


def test_registry__plugin_returning_garbage_is_named() -> None:
    class Broken:
        @hookimpl
        def durably_storage_backends(self) -> list[Any]:
            return ["not a backend"]

    with pytest.raises(PluginError, match="StorageBackend"):
        BackendRegistry([Broken()])


def test_registry__plugin_raising_is_wrapped() -> None:
    class Raising:
        @hookimpl
        def durably_storage_backends(self) -> list[StorageBackend]:
            raise RuntimeError("boom")

    with pytest.raises(PluginError, match="boom"):
        BackendRegistry([Raising()])


def test_registry__plugin_that_fails_to_import_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    installed = importlib.metadata.entry_points(group="durably")
    broken = importlib.metadata.EntryPoint(
        name="broken", value="durably_no_such_module:plugin", group="durably"
    )

    def entry_points(**selection: Any) -> Any:
        assert selection == {"group": "durably"}
        return [*installed, broken]

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    with pytest.raises(PluginError, match=r"'broken'.*durably_no_such_module.*failed to import"):
        BackendRegistry()
    # the installed ones still load by themselves, under their entry-point names
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **_: installed)
    registry = BackendRegistry()
    assert registry.backend_for("memory://").plugin == "memory"


@pytest.mark.parametrize(
    ("url", "scheme"),
    [
        ("sqlite:///durably.db", "sqlite"),
        ("file:local.db", "file"),
        ("memory://", "memory"),
        ("HTTPS://db.example", "https"),
        ("libsql://db-org.turso.io", "libsql"),
    ],
)
def test_url_scheme__parses(url: str, scheme: str) -> None:
    assert url_scheme(url) == scheme


@pytest.mark.parametrize("url", ["", "durably.db", ":memory:", "1abc://x", "/tmp/x.db"])
def test_url_scheme__rejects_urls_without_scheme(url: str) -> None:
    with pytest.raises(ValidationError, match="database URL"):
        url_scheme(url)


async def test_create_durably__uses_explicit_plugin() -> None:
    plugin = _Plugin("mine", ("mine",))
    d = create_durably("mine://x", plugins=[plugin], flavour="sweet")
    assert plugin.opened == [("mine://x", {"flavour": "sweet"})]
    assert isinstance(d.storage, MemoryStorage)
