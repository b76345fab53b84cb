"""The ``durably`` commands (click)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import click

from .. import Durably, JobHandle, Run, RunStatus, SignalReceipt, ValidationError, Wait
from .._app import build_filter
from .._timefmt import parse_duration, parse_ts
from .._watch import RunWatcher
from ..lifecycle import TERMINAL_STATUSES
from ._context import APP_ENV, database_url, fail, load_app, opened, run_command
from ._render import console, event_line, run_detail, runs_table, to_json

F = TypeVar("F", bound=Callable[..., Any])

_URL_HELP = "database URL (default: $DURABLY_DATABASE_URL, else sqlite:///durably.db)"
_APP_HELP = f"module:attribute naming your Durably, or a function returning one (${APP_ENV})"


def url_option(fn: F) -> F:
    return click.option("--url", envvar="DURABLY_DATABASE_URL", metavar="URL", help=_URL_HELP)(fn)


def json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="print JSON, for scripts")(fn)


def app_option(fn: F) -> F:
    return click.option("--app", envvar=APP_ENV, metavar="MODULE:ATTR", help=_APP_HELP)(fn)


def labels_of(pairs: Sequence[str]) -> dict[str, str] | None:
    labels: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"invalid label {pair!r}: write KEY=VALUE")
        labels[key] = value
    return labels or None


def since_of(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return datetime.now(UTC) - parse_duration(text)
    except ValidationError:
        pass
    try:
        return parse_ts(text)
    except ValueError:
        fail(f"invalid --since {text!r}: a duration (30m, 12h, 7d) or an ISO time")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="durably-core", prog_name="durably")
def cli() -> None:
    """Inspect and operate durably: runs, workers, events, the dashboard.

    Every command reads the database from --url or DURABLY_DATABASE_URL.
    """


# -- runs --


@cli.group()
def runs() -> None:
    """List, inspect, retry, cancel, delete and purge runs."""


@runs.command("list")
@click.option(
    "--status", "-s", multiple=True, help="pending, leased, waiting, completed, failed, cancelled"
)
@click.option("--job", "-j", multiple=True, help="job name (repeatable)")
@click.option("--label", "-l", multiple=True, metavar="KEY=VALUE", help="all must match")
@click.option(
    "--since", metavar="AGE|TIME", help="created in the last 30m / 12h / 7d, or since a time"
)
@click.option("--limit", "-n", type=click.IntRange(min=0), default=50, show_default=True)
@url_option
@json_option
def runs_list(
    status: tuple[str, ...],
    job: tuple[str, ...],
    label: tuple[str, ...],
    since: str | None,
    limit: int,
    url: str | None,
    as_json: bool,
) -> None:
    """Runs, newest first."""
    labels = labels_of(label)
    cutoff = since_of(since)

    async def main() -> list[Run]:
        async with opened(url) as durably:
            return await _list(durably, status, job, labels, cutoff, limit)

    found = run_command(main)
    if as_json:
        click.echo(to_json(found))
        return
    out = console()
    if not found:
        out.print("no runs")
        return
    out.print(runs_table(found))


async def _list(
    durably: Durably,
    status: Sequence[str],
    job: Sequence[str],
    labels: dict[str, str] | None,
    cutoff: datetime | None,
    limit: int,
) -> list[Run]:
    page = limit if cutoff is None else 200
    found: list[Run] = []
    offset = 0
    while len(found) < limit:
        query = build_filter(status or None, job or None, labels, page, offset)
        batch = await durably.storage.get_runs(query)
        for run in batch:
            if cutoff is not None and run.created_at < cutoff:
                return found  # newest first: the rest is older
            found.append(run)
            if len(found) == limit:
                break
        if len(batch) < page:
            break
        offset += page
    return found


@runs.command("show")
@click.argument("run_id")
@url_option
@json_option
def runs_show(run_id: str, url: str | None, as_json: bool) -> None:
    """One run: status, input, output or error, steps, waits, logs, progress."""

    async def main() -> tuple[Run, list[Any], list[Wait], list[Any]]:
        async with opened(url) as durably:
            run = await durably.storage.get_run(run_id)
            if run is None:
                fail(f"run {run_id} not found", "not-found")
            steps = await durably.storage.get_steps(run_id)
            waits = await durably.storage.get_waits(run_id)
            logs = await durably.storage.get_logs(run_id)
            return run, steps, waits, logs

    run, steps, waits, logs = run_command(main)
    if as_json:
        click.echo(to_json({"run": run, "steps": steps, "waits": waits, "logs": logs}))
        return
    console().print(run_detail(run, steps, logs, waits))


def _act(
    name: str, help_text: str, action: Callable[[Durably, str], Any], done: Callable[[Run], str]
) -> None:
    @runs.command(name, help=help_text)
    @click.argument("run_id")
    @url_option
    @json_option
    def command(run_id: str, url: str | None, as_json: bool) -> None:
        async def main() -> Run:
            async with opened(url) as durably:
                result: Run = await action(durably, run_id)
                return result

        run = run_command(main)
        click.echo(to_json(run) if as_json else done(run))


_act(
    "retry",
    "Put a failed or cancelled run back to pending; a worker resumes it after its last "
    "completed step (same id, same input).",
    lambda d, i: d.retry(i),
    lambda r: (
        f"run {r.id} ({r.job_name}) is pending again; a worker resumes it after its "
        f"{r.completed_step_count} completed step(s)"
    ),
)
_act(
    "cancel",
    "Cancel a pending or running run (a worker elsewhere stops it at its next lease renewal).",
    lambda d, i: d.cancel(i),
    lambda r: f"run {r.id} ({r.job_name}) cancelled",
)
_act(
    "delete",
    "Delete a finished run with its steps, logs and labels.",
    lambda d, i: d.delete_run(i),
    lambda r: f"run {r.id} ({r.job_name}) deleted",
)


@runs.command("retrigger")
@click.argument("run_id")
@app_option
@url_option
@json_option
def runs_retrigger(run_id: str, app: str | None, url: str | None, as_json: bool) -> None:
    """Trigger a finished run again as a new run (its input is validated again, so
    this needs your jobs: --app)."""

    async def main() -> Run:
        durably = load_app(app, url)
        try:
            return await durably.retrigger(run_id)
        finally:
            await durably.close()

    run = run_command(main)
    click.echo(to_json(run) if as_json else f"new run {run.id} ({run.job_name}) is pending")


@runs.command("purge")
@click.option(
    "--older-than", required=True, metavar="AGE", help="finished longer ago than 7d / 12h / 30m"
)
@click.option(
    "--status", "-s", multiple=True, help="only runs that completed / failed / were cancelled"
)
@url_option
@json_option
def runs_purge(older_than: str, status: tuple[str, ...], url: str | None, as_json: bool) -> None:
    """Delete finished runs (with their steps and logs) that finished before a cutoff."""
    try:
        age = parse_duration(older_than)
    except ValidationError as exc:
        fail(str(exc))

    async def main() -> int:
        async with opened(url) as durably:
            if not status:
                total = 0
                while True:
                    deleted = await durably.purge_runs(age)
                    total += deleted
                    if deleted == 0:
                        return total
            query = build_filter(status, None, None, None, 0)
            if any(s not in TERMINAL_STATUSES for s in query.statuses or ()):
                fail("--status takes finished statuses only: completed, failed, cancelled")
            cutoff = datetime.now(UTC) - age
            total = 0
            for run in await durably.storage.get_runs(query):
                if run.completed_at is not None and run.completed_at < cutoff:
                    await durably.delete_run(run.id)
                    total += 1
            return total

    count = run_command(main)
    click.echo(json.dumps({"deleted": count}) if as_json else f"purged {count} run(s)")


# -- durable waits --


@cli.command()
@click.argument("run_id")
@click.argument("name")
@click.option(
    "--payload", "-p", default="null", metavar="JSON", help="the signal's payload, as JSON"
)
@click.option(
    "--signal-id",
    metavar="ID",
    help="the signal's id: sent again with the same payload, it is a duplicate, not an error",
)
@url_option
@json_option
def signal(
    run_id: str, name: str, payload: str, signal_id: str | None, url: str | None, as_json: bool
) -> None:
    """Answer the durable wait NAME of run RUN_ID (what the job prepared with
    step.prepare_wait): the payload becomes the wait's result, and a worker resumes
    the run at its next poll. Needs no job code: the job checks the payload when it
    resumes."""
    try:
        value = json.loads(payload)
    except json.JSONDecodeError as exc:
        fail(f"--payload is not JSON: {exc}")

    async def main() -> SignalReceipt:
        async with opened(url) as durably:
            return await durably.signal(run_id, name, value, signal_id=signal_id)

    receipt = run_command(main)
    if as_json:
        click.echo(to_json({"disposition": receipt.disposition, "wait": receipt.wait}))
    elif receipt.disposition == "duplicate":
        click.echo(f"wait {name!r} of run {run_id} already has this signal (a duplicate)")
    else:
        click.echo(f"signalled wait {name!r} of run {run_id}; a worker resumes it")


# -- events --


@cli.command()
@click.option("--job", "-j", multiple=True, help="job name (repeatable)")
@click.option("--label", "-l", multiple=True, metavar="KEY=VALUE")
@click.option("--run", "run_id", metavar="RUN_ID", help="one run; ends when it finishes")
@click.option("--type", "-t", "types", multiple=True, help="event type, e.g. run:fail (repeatable)")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.05),
    default=1.0,
    show_default=True,
    help="seconds between two readings of the database",
)
@url_option
@json_option
def events(
    job: tuple[str, ...],
    label: tuple[str, ...],
    run_id: str | None,
    types: tuple[str, ...],
    interval: float,
    url: str | None,
    as_json: bool,
) -> None:
    """Follow what happens to runs, whichever process executes them.

    The event bus is in-process, so this reads the database every --interval and
    reports what changed as events (run:trigger, run:leased, step:complete,
    step:fail, log:write, run:progress, run:waiting, run:complete, run:fail,
    run:cancel, run:delete). step:start cannot be seen this way, and of several progress
    updates between two readings only the latest.
    """
    labels = labels_of(label)
    out = console()

    async def main() -> None:
        async with opened(url) as durably:
            watcher = RunWatcher(durably, job_names=job or None, labels=labels, run_id=run_id)
            await watcher.poll()
            click.echo(f"following runs in {database_url(url)} (Ctrl-C stops)", err=True)
            if run_id is not None:
                run = await durably.storage.get_run(run_id)
                if run is None:
                    fail(f"run {run_id} not found", "not-found")
                if run.is_terminal:
                    return
            while True:
                await asyncio.sleep(interval)
                for event in await watcher.poll():
                    if types and event.type not in types:
                        continue
                    if as_json:
                        click.echo(to_json(event))
                    else:
                        out.print(event_line(event))
                    if run_id is not None and event.type in (
                        "run:complete",
                        "run:fail",
                        "run:cancel",
                        "run:delete",
                    ):
                        return

    run_command(main)


# -- trigger --


def _job(durably: Durably, name: str) -> JobHandle[Any, Any]:  # noqa: RET503 (fail raises)
    for key, handle in durably.jobs.items():
        if name in (key, handle.name):
            return handle
    names = ", ".join(sorted(h.name for h in durably.jobs.values())) or "none"
    fail(f"no job named {name!r} in the app (its jobs: {names})", "not-found")


@cli.command()
@click.argument("job")
@click.option(
    "--input",
    "-i",
    "input_",
    default="{}",
    metavar="JSON",
    help="the job's input, as JSON",
    show_default=True,
)
@click.option("--label", "-l", multiple=True, metavar="KEY=VALUE")
@click.option("--idempotency-key", metavar="KEY")
@click.option("--concurrency-key", metavar="KEY")
@click.option("--wait", "-w", is_flag=True, help="wait for the run to finish, with a progress bar")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    help="with --wait: give up after this many seconds (the run goes on)",
)
@app_option
@url_option
@json_option
def trigger(
    job: str,
    input_: str,
    label: tuple[str, ...],
    idempotency_key: str | None,
    concurrency_key: str | None,
    wait: bool,
    timeout: float | None,
    app: str | None,
    url: str | None,
    as_json: bool,
) -> None:
    """Trigger a run of JOB (its name or key in your app). The input is validated
    with the job's input type, so this needs your jobs: --app. A worker (`durably
    worker`) executes it."""
    try:
        payload = json.loads(input_)
    except json.JSONDecodeError as exc:
        fail(f"--input is not JSON: {exc}")
    labels = labels_of(label)
    from ._live import follow_run

    async def main() -> int:
        durably = load_app(app, url)
        try:
            handle = _job(durably, job)
            result = await handle.trigger(
                payload,
                labels=labels,
                idempotency_key=idempotency_key,
                concurrency_key=concurrency_key,
            )
            if not wait:
                if as_json:
                    click.echo(to_json({"run": result.run, "disposition": result.disposition}))
                else:
                    click.echo(f"run {result.id} ({result.disposition}): {result.status}")
                return 0
            if not as_json:
                click.echo(f"run {result.id} ({result.disposition})", err=True)
            run = await follow_run(durably, result.id, timeout)
            if as_json:
                click.echo(to_json(run))
            elif run.status is RunStatus.COMPLETED:
                click.echo(to_json(run.output))
            else:
                click.echo(f"run {run.id} {run.status.value}: {run.error or ''}".rstrip(), err=True)
            return 0 if run.status is RunStatus.COMPLETED else 1
        finally:
            await durably.close()

    raise SystemExit(run_command(main))


# -- worker --


@cli.command()
@click.argument("app", envvar=APP_ENV, metavar="APP")
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(min=1),
    help="runs executed at once (default: the app's max_concurrent_runs)",
)
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=25.0,
    show_default=True,
    help="on SIGINT/SIGTERM, seconds to let runs in flight finish",
)
@url_option
def worker(app: str, concurrency: int | None, grace: float, url: str | None) -> None:
    """Run a worker for APP (module:attribute naming your Durably, or a function
    returning one) until SIGINT or SIGTERM.

    On the first signal it stops claiming and lets the runs in flight finish for up
    to --grace seconds; a run still going then (or at a second signal) is cancelled
    without writing anything more and its lease handed back: the next worker claims
    it at once and resumes it after its last completed step. Shows a live status on a
    terminal, one line per event otherwise.
    """
    from ._live import run_worker

    run_command(lambda: run_worker(load_app(app, url), database_url(url), concurrency, grace))


# -- database --


@cli.command()
@url_option
@json_option
def migrate(url: str | None, as_json: bool) -> None:
    """Create or upgrade durably's tables (safe to run from several processes)."""
    from ._doctor import schema_report

    async def main() -> dict[str, Any]:
        async with opened(url, schema=False) as durably:
            await durably.migrate()
            return await schema_report(durably)

    report = run_command(main)
    if as_json:
        click.echo(json.dumps(report))
        return
    versions = report.get("schema") or {}
    click.echo(
        f"{database_url(url)}: schema up to date (reference {versions.get('reference', '-')}, "
        f"Python {versions.get('python', '-')})"
    )


@cli.command()
@url_option
@json_option
def doctor(url: str | None, as_json: bool) -> None:
    """Check the database: backend, schema, journal mode, runs by status, expired
    leases, the oldest pending run. Exit 1 when something needs attention."""
    from ._doctor import diagnose, render

    report = run_command(lambda: diagnose(database_url(url)))
    if as_json:
        click.echo(json.dumps(report))
    else:
        console().print(render(report))
    raise SystemExit(1 if report["problems"] else 0)


# -- dashboard --


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", "-p", type=int, default=8000, show_default=True)
@app_option
@url_option
def dashboard(host: str, port: int, app: str | None, url: str | None) -> None:
    """Serve the web dashboard (runs, live progress, cancel / retry / retrigger /
    delete). With --app, retrigger works too (it validates input with your jobs).
    It has no login: keep it on localhost, or mount create_handler(durably,
    dashboard=True, auth=...) in your own app."""
    from ._serve import serve_dashboard

    run_command(lambda: serve_dashboard(app, url, host, port))
