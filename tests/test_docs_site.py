"""The documentation site (``mkdocs.yml``, ``docs/``): it builds with ``--strict`` —
no broken link or anchor, no page outside the navigation, no public name missing
from the API reference or without a docstring (``docs/hooks.py``) — and the
guides' complete examples run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from process_support import run_captured

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def python_blocks(page: str) -> list[str]:
    """The ```python code blocks of a page, in order."""
    text = (DOCS / page).read_text(encoding="utf-8")
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def python(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """This interpreter with ``args``, its output captured."""
    return run_captured([sys.executable, *args], cwd, env)


@pytest.mark.slow
def test_site__builds_strictly(tmp_path: Path) -> None:
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's banner, not a warning
    result = python("-m", "mkdocs", "build", "--strict", "--site-dir", str(site), cwd=ROOT, env=env)
    problems = [
        line for line in result.stderr.splitlines() if line.startswith(("WARNING", "ERROR"))
    ]
    assert result.returncode == 0, "\n".join(problems) or result.stderr[-4000:]
    # the API reference was generated from the docstrings, not left empty
    reference = (site / "reference" / "durably" / "index.html").read_text(encoding="utf-8")
    for anchor in ("durably.create_durably", "durably.Durably.wait_for_run", "durably.Step.run"):
        assert f'id="{anchor}"' in reference, anchor
    assert 'id="durably_testing.pytest_plugin.durably_run"' in (
        site / "reference" / "testing" / "index.html"
    ).read_text(encoding="utf-8")


def test_quickstart__runs_as_written(tmp_path: Path) -> None:
    (program,) = python_blocks("quickstart.md")
    env = {k: v for k, v in os.environ.items() if k != "DURABLY_DATABASE_URL"}
    result = python("-c", program, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    run_id, count = result.stdout.split()
    assert (len(run_id), count) == (26, "250")
    assert (tmp_path / "local.db").exists()


def test_testing_guide__examples_pass(pytester: pytest.Pytester) -> None:
    code = "\n\n".join(python_blocks("guides/testing.md"))
    tests = len(re.findall(r"^async def test_", code, flags=re.MULTILINE))
    assert tests >= 5
    pytester.makeini(
        """
        [pytest]
        asyncio_mode = auto
        asyncio_default_fixture_loop_scope = function
        filterwarnings = error
        """
    )
    pytester.makepyfile(test_guide=code)
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=tests)
