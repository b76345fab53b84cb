"""Installable as the README says: the five packages are built into wheels
(``uv build``), installed into a fresh virtual environment outside the workspace
(their dependencies from the package index, through uv's cache), and the README's
quick start runs there. This catches a file left out of a wheel, a dependency the
workspace provides but a package does not declare, and an entry point that only
works in the workspace (the `durably` command included)."""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import pytest
from ci_support import unavailable
from process_support import run_captured

import durably

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = [
    "durably-core",
    "durably-sqlite",
    "durably-libsql",
    "durably-postgres",
    "durably-testing",
]


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    """A command's output; a failure shows what it printed."""
    done = run_captured(list(args), cwd, env)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def readme_quick_start() -> str:
    """The README's quick-start program (the first python block after its heading)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quick start", 1)[1]
    match = re.search(r"^```python\n(.*?)^```", section, flags=re.MULTILINE | re.DOTALL)
    assert match, "README.md: no python block under 'Quick start'"
    return match.group(1)


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The wheel of each package, built from this checkout."""
    uv = shutil.which("uv")
    if uv is None:
        unavailable("uv is not on PATH (pip install uv)")
    dist = tmp_path_factory.mktemp("dist")
    run(uv, "build", "--all-packages", "--wheel", "--out-dir", dist, cwd=ROOT)
    built = {}
    for package in PACKAGES:
        name = package.replace("-", "_")
        (wheel,) = dist.glob(f"{name}-{durably.__version__}-*.whl")
        built[package] = wheel
    return built


def fresh_venv(where: Path, wheels: list[Path | str]) -> Path:
    """A new virtual environment holding ``wheels`` and their declared dependencies;
    its python."""
    uv = shutil.which("uv")
    assert uv is not None
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    run(uv, "venv", "--quiet", "--python", sys.executable, where / "venv", cwd=where, env=env)
    python = where / "venv" / "bin" / "python"
    run(uv, "pip", "install", "--quiet", "--python", python, *wheels, cwd=where, env=env)
    return python


def clean_env() -> dict[str, str]:
    """This process's environment without what points into the workspace."""
    drop = ("VIRTUAL_ENV", "PYTHONPATH", "DURABLY_DATABASE_URL")
    return {k: v for k, v in os.environ.items() if k not in drop}


def test_wheels__readme_quick_start_runs_from_core_and_sqlite(
    wheels: dict[str, Path], tmp_path: Path
) -> None:
    # exactly what the README installs: durably-core and durably-sqlite
    python = fresh_venv(tmp_path, [wheels["durably-core"], wheels["durably-sqlite"]])
    where = run(python, "-c", "import durably; print(durably.__file__)", cwd=tmp_path)
    assert Path(where.strip()).is_relative_to(tmp_path / "venv")  # not the workspace's
    work = tmp_path / "work"
    work.mkdir()
    output = run(python, "-c", readme_quick_start(), cwd=work, env=clean_env())
    run_id, count = output.split()
    assert (len(run_id), count) == (26, "250")
    assert (work / "local.db").exists()


CHECK_ALL = """
import asyncio
import importlib.metadata as metadata

import sys

import durably, durably_libsql, durably_postgres, durably_sqlite, durably_testing
from durably.plugins import BackendRegistry

dists = ("durably-core", "durably-sqlite", "durably-libsql", "durably-postgres", "durably-testing")
packages = (durably, durably_sqlite, durably_libsql, durably_postgres, durably_testing)
versions = {metadata.version(d) for d in dists}
modules = {m.__version__ for m in packages}
assert versions == modules == {durably.__version__}, (versions, modules)


async def main():
    for url in ("memory://", "sqlite:///:memory:", "file:lib.db"):
        storage = BackendRegistry().open(url)  # through each package's entry point
        await storage.migrate()
        await storage.close()


asyncio.run(main())
# the driver is imported when a PostgreSQL database is opened, not before
assert "asyncpg" not in sys.modules
print(" ".join(sorted(BackendRegistry().schemes)))
"""

#: A user's test of a job, with the fixtures of durably-testing's pytest plugin.
USER_TEST = """
from durably import Step, define_job


@define_job("double")
async def double(step: Step, payload: dict) -> int:
    return await step.run("double", lambda: payload["n"] * 2)


async def test_double(durably, durably_run):
    durably.register({"double": double})
    result = await durably_run(durably.jobs.double, {"n": 21})
    assert result.output == 42
"""


def test_wheels__every_package_installs_with_its_entry_points_and_command(
    wheels: dict[str, Path], tmp_path: Path
) -> None:
    core = f"durably-core[cli] @ {wheels['durably-core'].as_uri()}"  # with the command
    others: list[Path | str] = [w for p, w in wheels.items() if p != "durably-core"]
    python = fresh_venv(tmp_path, [core, *others])
    work = tmp_path / "work"
    work.mkdir()
    schemes = run(python, "-c", CHECK_ALL, cwd=work, env=clean_env()).split()
    expected = {"memory", "sqlite", "file", "libsql", "http", "https", "postgresql", "postgres"}
    assert expected <= set(schemes), schemes
    # the pytest plugin is found through its pytest11 entry point
    (work / "test_user.py").write_text(USER_TEST, encoding="utf-8")
    args = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "asyncio_mode=auto"]
    output = run(python, *args, "test_user.py", cwd=work, env=clean_env())
    assert "1 passed" in output
    # the `durably` command (console script of durably-core[cli]) runs from the venv
    command = python.parent / "durably"
    assert "Inspect and operate durably" in run(command, "--help", cwd=work, env=clean_env())
