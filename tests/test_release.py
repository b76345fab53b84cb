"""Release habits that a test can hold: one version per package, written once (its
``__version__``, which its pyproject.toml reads), the same for every package;
each requires the others within one minor version (``>=0.X,<0.X+1``) that includes
the current one; CHANGELOG.md has an Unreleased section."""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {
    "durably-core": "durably",
    "durably-sqlite": "durably_sqlite",
    "durably-libsql": "durably_libsql",
    "durably-postgres": "durably_postgres",
    "durably-testing": "durably_testing",
}


def pyproject(package: str) -> dict[str, object]:
    with (ROOT / "packages" / package / "pyproject.toml").open("rb") as f:
        project = tomllib.load(f)["project"]
    assert isinstance(project, dict)
    return project


@pytest.mark.parametrize("package", PACKAGES)
def test_version__written_once_and_installed_as_such(package: str) -> None:
    project = pyproject(package)
    assert "version" not in project
    assert project["dynamic"] == ["version"]
    module = importlib.import_module(PACKAGES[package])
    assert metadata.version(package) == module.__version__


def test_version__the_same_for_every_package() -> None:
    versions = {metadata.version(package) for package in PACKAGES}
    assert len(versions) == 1, versions


@pytest.mark.parametrize("package", PACKAGES)
def test_bounds__workspace_packages_required_within_one_minor_version(package: str) -> None:
    dependencies = pyproject(package).get("dependencies", [])
    assert isinstance(dependencies, list)
    for line in dependencies:
        requirement = Requirement(line)
        if requirement.name not in PACKAGES:
            continue
        current = Version(metadata.version(requirement.name))
        upper = Version(f"{current.major}.{current.minor + 1}")
        assert current in requirement.specifier, line
        assert str(requirement.specifier) == f"<{upper},>={current.major}.{current.minor}.0", line


def test_changelog__has_an_unreleased_section() -> None:
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "\n## [Unreleased]\n" in text
