"""``durably doctor``: what a person on call wants to know about a database first."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from .. import Durably, DurablyError, RunStatus, create_durably
from .._timefmt import format_ts
from ..lifecycle import ACTIVE_STATUSES
from ..plugins import url_scheme
from ..sql import SqlStorage
from ..sql.schema import PY_SCHEMA_VERSION, REFERENCE_SCHEMA_VERSION
from ._context import missing_sqlite_file
from ._render import ago, status_text

#: A pending run older than this with no worker taking it is worth a look.
_STALE_PENDING_SECONDS = 300.0


async def schema_report(durably: Durably) -> dict[str, Any]:
    """Backend facts: storage class, schema versions, SQLite's journal mode."""
    storage = durably.storage
    report: dict[str, Any] = {"storage": type(storage).__name__, "schema": None}
    if not isinstance(storage, SqlStorage):
        return report
    reference, python = await storage.schema_versions()
    report["schema"] = {
        "reference": reference,
        "python": python or 0,
        "release_reference": REFERENCE_SCHEMA_VERSION,
        "release_python": PY_SCHEMA_VERSION,
    }
    for pragma in ("journal_mode", "synchronous"):
        try:
            rows = await storage.executor.fetch(f"PRAGMA {pragma}")
        except DurablyError:
            rows = []  # not SQLite (or a server that refuses pragmas)
        report[pragma] = _pragma(pragma, rows[0][0]) if rows else None
    return report


def _pragma(name: str, value: Any) -> Any:
    if name == "synchronous" and isinstance(value, int):
        return {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(value, value)
    return value


async def diagnose(url: str) -> dict[str, Any]:
    """Everything ``doctor`` shows; ``problems`` lists what needs attention."""
    now = datetime.now(UTC)
    problems: list[str] = []
    warnings: list[str] = []
    durably = create_durably(url)
    report: dict[str, Any] = {"url": url, "backend": url_scheme(url)}
    missing = missing_sqlite_file(durably)
    if missing is not None:  # checking is reading: it does not create the file
        problems.append(
            f"the SQLite file {missing} does not exist: check the URL, or create it with "
            "`durably migrate`"
        )
        report.update(storage=type(durably.storage).__name__, problems=problems, warnings=[])
        await durably.close()  # nothing was opened; as every path does
        return report
    try:
        report.update(await schema_report(durably))
        schema = report["schema"]
        if schema is not None:
            if schema["reference"] == 0:
                problems.append("no durably tables: run `durably migrate` (or start a worker)")
                report.update(problems=problems, warnings=warnings)
                return report
            if schema["python"] > schema["release_python"]:
                problems.append(
                    f"the database's Python schema ({schema['python']}) is newer than this "
                    "release knows: upgrade durably"
                )
            elif (
                schema["reference"] < schema["release_reference"]
                or schema["python"] < schema["release_python"]
            ):
                problems.append("the schema is older than this release: run `durably migrate`")
        storage = durably.storage
        from .._app import build_filter

        counts = await storage.count_runs(build_filter(None, None, None, None, 0))
        report["runs"] = {s.value: counts.get(s, 0) for s in RunStatus}
        leased = await storage.get_runs(build_filter("leased", None, None, None, 0))
        expired = [
            r for r in leased if r.lease_expires_at is not None and r.lease_expires_at <= now
        ]
        report["expired_leases"] = len(expired)
        if expired:
            oldest = min(r.lease_expires_at for r in expired if r.lease_expires_at)
            warnings.append(
                f"{len(expired)} leased run(s) whose lease expired (oldest {ago(oldest, now)}): "
                "their worker stopped or stalled; a running worker puts them back to pending "
                "while idle"
            )
        pending = report["runs"]["pending"]
        report["oldest_pending"] = None
        if pending:
            query = build_filter("pending", None, None, 1, pending - 1)
            found = await storage.get_runs(query)
            if found:
                oldest_run = found[0]
                report["oldest_pending"] = {
                    "id": oldest_run.id,
                    "job_name": oldest_run.job_name,
                    "created_at": format_ts(oldest_run.created_at),
                }
                age = (now - oldest_run.created_at).total_seconds()
                if age > _STALE_PENDING_SECONDS:
                    warnings.append(
                        f"the oldest pending run was created {ago(oldest_run.created_at, now)}"
                        ": is a worker running (`durably worker APP`)?"
                    )
        active = sum(report["runs"][s.value] for s in ACTIVE_STATUSES)
        report["active"] = active
    finally:
        await durably.close()
    report.update(problems=problems, warnings=warnings)
    return report


def render(report: dict[str, Any]) -> Group:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("database", report["url"])
    grid.add_row("backend", f"{report['backend']} ({report.get('storage', '?')})")
    schema = report.get("schema")
    if schema is not None:
        grid.add_row(
            "schema",
            f"reference {schema['reference']}, Python {schema['python']} (this release: "
            f"{schema['release_reference']}, {schema['release_python']})",
        )
    if report.get("journal_mode") is not None:
        grid.add_row("journal mode", str(report["journal_mode"]))
    if report.get("synchronous") is not None:
        grid.add_row(
            "synchronous",
            f"{report['synchronous']} (this connection's; each process sets its own: "
            "create_durably(url, synchronous=...))",
        )
    runs = report.get("runs")
    if runs is not None:
        counts = Text()
        for status, n in runs.items():
            counts.append_text(status_text(status))
            counts.append(f" {n}  ")
        grid.add_row("runs", counts)
        grid.add_row("expired leases", str(report["expired_leases"]))
        oldest = report.get("oldest_pending")
        grid.add_row(
            "oldest pending",
            "-"
            if oldest is None
            else f"{oldest['id']} ({oldest['job_name']}) since {oldest['created_at']}",
        )
    lines: list[Any] = [grid]
    for problem in report["problems"]:
        lines.append(Text(f"✗ {problem}", style="red"))
    for warning in report["warnings"]:
        lines.append(Text(f"! {warning}", style="yellow"))
    if not report["problems"] and not report["warnings"]:
        lines.append(Text("✓ no problems found", style="green"))
    return Group(*lines)
