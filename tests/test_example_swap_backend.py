"""examples/swap_backend.py, run twice as a real program: on ``file:local.db`` and on
a real libSQL server, chosen only by ``DURABLY_DATABASE_URL``; the output is the
same apart from the line that names the kind of database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from libsql_support import TursoServer

pytestmark = pytest.mark.slow


EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "swap_backend.py"

EXPECTED = [
    "A-1: total=66 receipt=R-A-1-66 (created)",
    "A-2: total=11 receipt=R-A-2-11 (created)",
    "completed runs: 2",
]


def run_example(url: str, cwd: Path) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DURABLY_", "TURSO_"))}
    env |= {"DURABLY_DATABASE_URL": url, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.splitlines()


def test_swap_backend__same_program_on_a_file_and_on_a_server(
    libsql_server: TursoServer, tmp_path: Path
) -> None:
    local = run_example("file:local.db", tmp_path)
    assert (tmp_path / "local.db").is_file()  # relative to the working directory
    remote = run_example(libsql_server.url, tmp_path)
    assert local == ["database: a local file", *EXPECTED]
    assert remote == ["database: a libSQL server", *EXPECTED]
    # run again: the idempotency keys find the finished runs
    again = run_example(libsql_server.url, tmp_path)
    assert again[1:3] == [line.replace("created", "idempotent") for line in EXPECTED[:2]]


def test_swap_backend__the_same_program_on_sqlite_and_postgresql(
    postgres_url: str, tmp_path: Path
) -> None:
    local = run_example("sqlite:///local.db", tmp_path)
    assert (tmp_path / "local.db").is_file()
    server = run_example(postgres_url, tmp_path)
    assert local == ["database: a local file", *EXPECTED]
    assert server == ["database: a PostgreSQL server", *EXPECTED]
    again = run_example(postgres_url, tmp_path)
    assert again[1:3] == [line.replace("created", "idempotent") for line in EXPECTED[:2]]
