"""How runs, steps, logs and events look on a terminal, and as JSON for scripts.

JSON is the records' own fields (snake_case, ISO-8601 UTC times), one document per
command (``events``: one per line).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .. import Event, LogRecord, Progress, Run, RunStatus, StepRecord, Wait
from .._timefmt import format_ts

STATUS_STYLE = {
    "pending": "yellow",
    "leased": "cyan",
    "waiting": "magenta",
    "completed": "green",
    "failed": "red bold",
    "cancelled": "bright_black",
}

_encode = msgspec.json.Encoder(enc_hook=lambda o: str(o)).encode


def _builtins(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_ts(value)
    if isinstance(value, msgspec.Struct):
        data = {f: _builtins(getattr(value, f)) for f in value.__struct_fields__}
        if isinstance(value, Run):
            data["is_terminal"] = value.is_terminal
        if isinstance(value, Event):
            data = {"type": value.type, **data}
        return data
    if isinstance(value, dict):
        return {str(k): _builtins(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_builtins(v) for v in value]
    return value


def to_json(value: Any) -> str:
    """Compact JSON of records (and dicts/lists of them)."""
    return _encode(_builtins(value)).decode()


def ago(t: datetime | None, now: datetime | None = None) -> str:
    if t is None:
        return "-"
    seconds = ((now or datetime.now(UTC)) - t).total_seconds()
    if seconds < 0:
        return "just now"
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


def duration(start: datetime | None, end: datetime | None) -> str:
    return "-" if start is None or end is None else span(end - start)


def span(length: timedelta | None) -> str:
    if length is None:
        return "-"
    ms = length.total_seconds() * 1000
    if ms < 1000:
        return f"{ms:.0f}ms"
    if ms < 60_000:
        return f"{ms / 1000:.1f}s"
    return f"{ms / 60_000:.1f}m"


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, ""))


def progress_text(progress: Progress | None) -> str:
    if progress is None:
        return ""
    current = f"{progress.current:g}"
    text = current if progress.total is None else f"{current}/{progress.total:g}"
    return f"{text} {progress.message}" if progress.message else text


def short(value: Any, width: int = 60) -> str:
    text = value if isinstance(value, str) else to_json(value)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def labels_text(labels: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(labels.items()))


def runs_table(runs: Sequence[Run]) -> Table:
    now = datetime.now(UTC)
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("ID", "JOB", "STATUS", "STEPS", "PROGRESS", "CREATED", "LABELS", "ERROR"):
        if column == "ID":
            table.add_column(column, no_wrap=True, min_width=26)
        else:
            table.add_column(column, overflow="ellipsis", no_wrap=column != "ERROR")
    for run in runs:
        table.add_row(
            run.id,
            run.job_name,
            status_text(run.status.value),
            str(run.completed_step_count),
            progress_text(run.progress),
            ago(run.created_at, now),
            labels_text(run.labels),
            short(run.error or "", 50),
        )
    return table


def run_detail(
    run: Run,
    steps: Sequence[StepRecord],
    logs: Sequence[LogRecord],
    waits: Sequence[Wait] = (),
) -> Group:
    now = datetime.now(UTC)
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("run", run.id)
    head.add_row("job", run.job_name)
    head.add_row("status", status_text(run.status.value))
    if run.labels:
        head.add_row("labels", labels_text(run.labels))
    if run.progress is not None:
        head.add_row("progress", progress_text(run.progress))
    head.add_row("created", f"{format_ts(run.created_at)} ({ago(run.created_at, now)})")
    if run.started_at is not None:
        head.add_row("started", format_ts(run.started_at))
    if run.completed_at is not None:
        head.add_row(
            "finished",
            f"{format_ts(run.completed_at)} (took {duration(run.started_at, run.completed_at)})",
        )
    if run.lease_owner:
        expires = format_ts(run.lease_expires_at) if run.lease_expires_at else "-"
        head.add_row(
            "lease", f"{run.lease_owner} until {expires} (generation {run.lease_generation})"
        )
    for key in ("idempotency_key", "concurrency_key"):
        value = getattr(run, key)
        if value is not None:
            head.add_row(key.replace("_", " "), value)
    parts: list[Any] = [
        head,
        Panel(to_json(run.input), title="input", title_align="left", expand=False),
    ]
    if run.status is RunStatus.COMPLETED:
        parts.append(Panel(to_json(run.output), title="output", title_align="left", expand=False))
    if run.error:
        parts.append(
            Panel(Text(run.error, style="red"), title="error", title_align="left", expand=False)
        )
    steps_table = Table(title="steps", title_justify="left", box=None, header_style="bold")
    for column in ("#", "NAME", "STATUS", "TOOK", "OUTPUT / ERROR"):
        steps_table.add_column(column)
    for step in steps:
        detail = step.error if step.error else short(step.output, 70)
        steps_table.add_row(
            str(step.index),
            step.name,
            status_text(step.status.value),
            duration(step.started_at, step.completed_at),
            detail or "",
        )
    if not steps:
        note = "steps deleted when the run completed (preserve_steps=False)"
        steps_table.caption = note if run.status is RunStatus.COMPLETED else "no steps yet"
    parts.append(steps_table)
    if waits:
        parts.append(waits_table(run, waits))
    if logs:
        logs_table = Table(title="logs", title_justify="left", box=None, header_style="bold")
        for column in ("TIME", "LEVEL", "STEP", "MESSAGE", "DATA"):
            logs_table.add_column(column)
        for log in logs:
            logs_table.add_row(
                format_ts(log.created_at)[11:],
                Text(log.level, style={"error": "red", "warn": "yellow"}.get(log.level, "")),
                log.step_name or "",
                log.message,
                "" if log.data is None else short(log.data, 60),
            )
        parts.append(logs_table)
    return Group(*parts)


def waits_table(run: Run, waits: Sequence[Wait]) -> Table:
    """A run's durable waits: what each waits for, until when, what ended it, and how
    long the run waited for it (``input_wait``) and then for a worker
    (``execution_slot_wait``)."""
    table = Table(title="waits", title_justify="left", box=None, header_style="bold")
    for column in ("NAME", "KIND", "STATUS", "DEADLINE", "RESULT", "WAITED / FOR A WORKER"):
        table.add_column(column)
    for wait in waits:
        if wait.outcome == "signal":
            result = short(wait.payload, 60)
            if wait.signal_id is not None:
                result += f" (signal {wait.signal_id})"
        elif wait.outcome == "timeout":
            result = "timed out"
        elif run.waiting_on_wait_id == wait.id:
            result = "the run waits here"
        else:
            result = ""
        table.add_row(
            wait.name,
            wait.kind,
            status_text(wait.status.value),
            format_ts(wait.deadline_at) if wait.deadline_at else "-",
            result,
            f"{span(wait.input_wait)} / {span(wait.execution_slot_wait)}",
        )
    return table


def event_line(event: Event) -> Text:
    """One line per event: time, type, job, run, and what it says."""
    line = Text()
    line.append(format_ts(event.timestamp)[11:23] + " ", style="bright_black")
    kind = event.type
    style = {"run:fail": "red", "run:complete": "green", "step:fail": "red"}.get(kind, "cyan")
    line.append(f"{kind:<14}", style=style)
    job = getattr(event, "job_name", None)
    run_id = getattr(event, "run_id", None)
    if job is not None:
        line.append(f" {job}")
    if run_id is not None:
        line.append(f" {run_id}", style="bright_black")
    detail = _event_detail(event)
    if detail:
        line.append(f"  {detail}")
    return line


def _event_detail(event: Event) -> str:
    fields = {f: getattr(event, f) for f in event.__struct_fields__}
    if event.type in ("step:retry", "run:retry"):
        which = f"{fields['step_name']} " if event.type == "step:retry" else ""
        return (
            f"{which}attempt {fields['attempt']} failed: {fields['error']}; "
            f"next in {fields['delay']:g}s"
        )
    if "step_name" in fields and event.type.startswith("step:"):
        extra = fields.get("error") or ""
        return f"{fields['step_name']} {extra}".strip()
    if event.type == "run:progress":
        return progress_text(fields["progress"])
    if event.type == "run:fail":
        step = fields.get("failed_step_name")
        return f"{fields['error']}" + (f" (step {step})" if step else "")
    if event.type == "run:complete":
        return short(fields["output"], 60)
    if event.type == "log:write":
        data = "" if fields.get("data") is None else " " + short(fields["data"], 40)
        return f"[{fields['level']}] {fields['message']}{data}"
    if event.type == "run:leased":
        return f"by {fields['lease_owner']}"
    if event.type == "run:waiting":
        wake = fields.get("wake_at")
        until = f", resumes by {format_ts(wake)}" if wake is not None else ""
        return f"on wait {fields['wait_name']}{until}"
    if event.type == "worker:error":
        return f"{fields['context']}: {fields['error']}"
    return ""


def console(*, stderr: bool = False) -> Console:
    """A terminal's own width; a pipe or file gets wide lines, never folded ids."""
    probe = Console(stderr=stderr)
    width = None if probe.is_terminal else 200
    return Console(stderr=stderr, highlight=False, soft_wrap=False, width=width)
