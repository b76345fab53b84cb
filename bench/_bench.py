"""Shared helpers for the W1–W5 benchmarks: the raw sqlite3 baseline, figures, output.

Every script prints one JSON line per figure (``{"bench": "W2", "figure": ...}``)
and then a readable table. Disk fsync speed changes from hour to hour, so each
script measures raw ``sqlite3`` (one ``INSERT`` + commit per step, same journal
mode and ``synchronous``) in the same run and reports our figure as a ratio to it:
only ratios within one run count.

Two raw baselines, both one ``INSERT`` + commit per step in WAL mode:

- ``bare``: a bare 5-column table with only its primary key (the floor);
- ``steps``: a table shaped like ``durably_steps`` with its indexes (the same
  pages a checkpoint's step row writes).

And, where a figure says so, ``checkpoint``: the same INSERT into ``durably_steps``
plus the ``UPDATE`` of the run's row that the reference schema asks of every
checkpoint (its step index and count), in one transaction: the floor of a
checkpoint's shape.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import pstats
import sqlite3
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from durably import Durably, JobDefinition, create_durably
from durably.sql import SCHEMA_V1

SYNCS = ("NORMAL", "FULL")
_TS = "2026-01-01T00:00:00.000Z"

FIGURES: list[dict[str, Any]] = []


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or "unknown"
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
    }


def emit(bench: str, figure: str, value: float, unit: str, **extra: Any) -> dict[str, Any]:
    """Print one figure as a JSON line and remember it for the table."""
    record: dict[str, Any] = {"bench": bench, "figure": figure, "value": round(value, 3)}
    record["unit"] = unit
    for key, val in extra.items():
        record[key] = round(val, 3) if isinstance(val, float) else val
    FIGURES.append(record)
    print(json.dumps(record), flush=True)
    return record


def print_table(figures: Iterable[dict[str, Any]] | None = None) -> None:
    """The figures as a readable table (markdown, so it can go into the README)."""
    rows = list(FIGURES if figures is None else figures)
    print()
    print("| bench | figure | durably | raw sqlite3 | ratio | note |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        raw = r.get("raw")
        ratio = r.get("ratio")
        raw_s = "" if raw is None else f"{_fmt(raw)} {r.get('raw_unit', r['unit'])}"
        ratio_s = "" if ratio is None else f"{ratio:.2f}×"
        if r.get("raw_steps") is not None:
            raw_s += f" / {_fmt(r['raw_steps'])} (steps-shaped)"
            ratio_s += f" / {r['ratio_steps']:.2f}×"
        if r.get("raw_checkpoint") is not None:
            raw_s += f" / {_fmt(r['raw_checkpoint'])} (checkpoint-shaped)"
            ratio_s += f" / {r['ratio_checkpoint']:.2f}×"
        print(
            f"| {r['bench']} | {r['figure']} | {_fmt(r['value'])} {r['unit']} | {raw_s} | "
            f"{ratio_s} | {r.get('note', '')} |"
        )
    print()


def _fmt(x: float) -> str:
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.3g}"


def header(title: str) -> None:
    m = machine()
    print(
        f"# {title} — {m['nproc']} CPUs ({m['cpu']}), Python {m['python']}, SQLite {m['sqlite']}",
        file=sys.stderr,
        flush=True,
    )


# -- the raw sqlite3 baseline --


_RAW_RUN = (
    "INSERT INTO durably_runs (id, job_name, input, status, current_step_index, "
    "completed_step_count, lease_generation, created_at, updated_at) "
    "VALUES (?, 'raw', '{}', 'leased', 0, 0, 1, ?, ?)"
)
_RAW_ADVANCE = (
    "UPDATE durably_runs SET current_step_index = ?, completed_step_count = "
    "completed_step_count + 1, updated_at = ? WHERE id = ?"
)


def raw_connect(path: Path, synchronous: str, shape: str) -> tuple[sqlite3.Connection, str]:
    conn = sqlite3.connect(path, isolation_level=None, timeout=30.0)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    if shape in ("steps", "checkpoint"):
        for ddl in SCHEMA_V1:
            conn.execute(ddl)
        sql = (
            'INSERT INTO durably_steps (id, run_id, name, "index", status, output, error, '
            "started_at, completed_at) VALUES (?, ?, ?, ?, 'completed', ?, NULL, ?, ?)"
        )
    else:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS t (id TEXT PRIMARY KEY, run_id TEXT, name TEXT, "
            "output TEXT, started_at TEXT)"
        )
        sql = "INSERT INTO t VALUES (?, ?, ?, ?, ?)"
    return conn, sql


def raw_insert(conn: sqlite3.Connection, sql: str, shape: str, key: str, i: int) -> None:
    """One step's floor: ``BEGIN``, one ``INSERT``, ``COMMIT`` (``checkpoint``: and the
    ``UPDATE`` of the run's row; the first call, ``i == -1``, creates the run)."""
    if shape == "checkpoint" and i == -1:
        conn.execute(_RAW_RUN, (key, _TS, _TS))
    conn.execute("BEGIN")
    if shape in ("steps", "checkpoint"):
        conn.execute(sql, (f"{key}-{i}", key, f"s{i}", i, '{"i":1}', _TS, _TS))
        if shape == "checkpoint":
            conn.execute(_RAW_ADVANCE, (i + 1, _TS, key))
    else:
        conn.execute(sql, (f"{key}-{i}", key, f"s{i}", '{"i":1}', _TS))
    conn.execute("COMMIT")


def raw_us_per_insert(path: Path, synchronous: str, n: int, shape: str = "bare") -> float:
    """µs per ``INSERT`` + commit, ``n`` in a row, on the WAL file ``path``."""
    conn, sql = raw_connect(path, synchronous, shape)
    key = f"r{time.perf_counter_ns()}"
    raw_insert(conn, sql, shape, key, -1)  # warm the statement cache
    start = time.perf_counter()
    for i in range(n):
        raw_insert(conn, sql, shape, key, i)
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed / n * 1e6


def raw_baseline(directory: Path, synchronous: str, n: int, rounds: int = 3) -> tuple[float, float]:
    """Median µs per INSERT + commit: (bare table, steps-shaped table)."""
    bare = [raw_us_per_insert(directory / "raw_bare.db", synchronous, n, "bare")]
    steps = [raw_us_per_insert(directory / "raw_steps.db", synchronous, n, "steps")]
    for _ in range(rounds - 1):
        bare.append(raw_us_per_insert(directory / "raw_bare.db", synchronous, n, "bare"))
        steps.append(raw_us_per_insert(directory / "raw_steps.db", synchronous, n, "steps"))
    return statistics.median(bare), statistics.median(steps)


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


#: The C calls of the ``sqlite3`` module that do SQLite's own work (a statement run by
#: a cursor or straight on the connection, and the rows fetched).
_SQLITE_CALLS = (
    "<method 'execute' of 'sqlite3.Cursor' objects>",
    "<method 'execute' of 'sqlite3.Connection",
    "<method 'fetchall' of 'sqlite3",
)


def sqlite_share(stats: pstats.Stats) -> float:
    """The share of a profile's own time spent in SQLite's work (the rest is Python)."""
    table: Any = stats.stats  # type: ignore[attr-defined]  # pstats' table, undocumented
    total = sum(row[2] for row in table.values())
    sqlite = sum(row[2] for (_, _, name), row in table.items() if name.startswith(_SQLITE_CALLS))
    return sqlite / total if total else 0.0


async def enqueue(path: Path, job: JobDefinition[Any, Any], runs: int, payload: Any) -> None:
    """A file made and migrated by durably with ``runs`` runs of ``job`` pending (one
    ``batch_trigger``), and no worker started."""
    app = create_durably(sqlite_url(path), jobs={job.name: job})
    await app.migrate()
    await app.jobs[job.name].batch_trigger([payload] * runs)
    await app.close()


def completions(app: Durably, runs: int) -> asyncio.Event:
    """An event set once ``app`` has completed ``runs`` runs."""
    done = asyncio.Event()
    count = 0

    def on_complete(_: Any) -> None:
        nonlocal count
        count += 1
        if count == runs:
            done.set()

    app.on("run:complete", on_complete)
    return done


def transaction(cur: sqlite3.Cursor, statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
    """``statements`` in one ``BEGIN IMMEDIATE`` … ``COMMIT``, as the SQLite executor
    writes a batch (for the raw baselines that send durably's own statements)."""
    cur.execute("BEGIN IMMEDIATE")
    for sql, params in statements:
        cur.execute(sql, params).fetchall()
    cur.execute("COMMIT")
