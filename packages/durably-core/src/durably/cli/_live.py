"""What moves on the screen: a run followed to its end (``trigger --wait``) and the
worker's status (``worker``). On a terminal, rich live displays; otherwise one
plain line per change, so logs and pipes stay readable."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import click
from rich.console import Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from .. import Durably, Run, RunStatus, WaitTimeoutError
from ._render import console, event_line, progress_text, status_text


def _interactive() -> bool:
    return sys.stdout.isatty()


async def follow_run(durably: Durably, run_id: str, timeout: float | None) -> Run:
    """Poll the run until it finishes, showing its status and progress; the last
    reading. Another process executes it, so its events never reach this one."""
    interval = min(durably.settings.polling_interval, 0.5)
    began = time.monotonic()
    deadline = None if timeout is None else began + timeout
    patience = hint_patience(durably.settings.polling_interval)
    err = console(stderr=True)
    bar = Progress(
        TextColumn("{task.fields[status]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    )
    task = bar.add_task("", total=None, status="pending")
    last: tuple[Any, ...] | None = None
    interactive = err.is_terminal
    if interactive:
        bar.start()
    try:
        while True:
            run = await durably.get_run(run_id)
            if run is None:
                raise click.ClickException(f"run {run_id} was deleted")
            note = _waiting_note(run, time.monotonic() - began, patience)
            state = (run.status, run.progress, note)
            if state != last:
                last = state
                p = run.progress
                status = run.status.value
                if interactive:
                    bar.update(
                        task,
                        status=status_text(status).markup,
                        total=None if p is None else p.total,
                        completed=0 if p is None else p.current,
                        description=(p.message or "") if p else note,
                    )
                else:
                    click.echo(f"{status} {progress_text(p) or note}".rstrip(), err=True)
            if run.is_terminal:
                return run
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeoutError(run_id, timeout or 0.0)
            await asyncio.sleep(interval)
    finally:
        if interactive:
            bar.stop()


def hint_patience(polling_interval: float) -> float:
    """How long a run may stay pending before ``trigger --wait`` suggests starting a
    worker: a running worker claims a new run within its polling interval (sooner when
    woken), so only a run pending for longer than two of them (at least a second)
    suggests that none is running."""
    return max(1.0, 2 * polling_interval)


def _waiting_note(run: Run, waited: float, patience: float) -> str:
    """The line's note for a run that is not moving: who it waits for."""
    if run.status is RunStatus.PENDING:
        if waited < patience:
            return ""  # a worker may be about to claim it
        return "waiting for a worker (start one with `durably worker APP`)"
    if run.status is RunStatus.WAITING and run.waiting_on_wait_id is not None:
        return f"waiting for a signal (`durably runs show {run.id}` names its wait)"
    return ""


@dataclass
class _InFlight:
    run_id: str
    job: str
    started: float
    step: str = ""
    progress: str = ""


@dataclass
class _Status:
    worker_id: str
    url: str
    slots: int
    started: float = field(default_factory=time.monotonic)
    running: dict[str, _InFlight] = field(default_factory=dict)
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    #: Runs that suspended on a durable wait (their slot released; any worker resumes them).
    suspended: int = 0
    #: Runs that wait for a retry without a slot: the whole run's, or a step's backoff
    #: of at least this many seconds (the worker's lease_renew_interval).
    retrying: int = 0
    slotless_backoff: float = 5.0
    last_error: str = ""
    stopping: str = ""

    def on_event(self, event: Any) -> None:
        kind = event.type
        run_id: str = getattr(event, "run_id", None) or ""
        if kind == "run:leased":
            self.running[run_id] = _InFlight(run_id, event.job_name, time.monotonic())
        elif kind == "step:start" and run_id in self.running:
            self.running[run_id].step = event.step_name
        elif kind == "run:progress" and run_id in self.running:
            self.running[run_id].progress = progress_text(event.progress)
        elif kind == "run:waiting":
            self.running.pop(run_id, None)
            self.suspended += 1
        elif kind == "run:retry" or (kind == "step:retry" and event.delay >= self.slotless_backoff):
            self.running.pop(run_id, None)
            self.retrying += 1
        elif kind in ("run:complete", "run:fail", "run:cancel"):
            self.running.pop(run_id, None)
            if kind == "run:complete":
                self.completed += 1
            elif kind == "run:fail":
                self.failed += 1
            else:
                self.cancelled += 1
        elif kind == "worker:error":
            self.last_error = f"{event.context}: {event.error}"

    def render(self) -> Group:
        head = Text()
        head.append("durably worker ", style="bold")
        head.append(f"{self.worker_id}  ", style="bright_black")
        head.append(f"{self.url}\n", style="bright_black")
        head.append(f"running {len(self.running)}/{self.slots}  ")
        head.append(f"completed {self.completed}  ", style="green")
        head.append(f"failed {self.failed}  ", style="red" if self.failed else "")
        head.append(f"cancelled {self.cancelled}  ")
        head.append(f"suspended {self.suspended}  ")
        head.append(f"retrying {self.retrying}")
        if self.stopping:
            head.append(f"\n{self.stopping}", style="yellow")
        if self.last_error:
            head.append(f"\nlast error: {self.last_error}", style="red")
        table = Table(box=None, header_style="bold")
        for column in ("RUN", "JOB", "STEP", "PROGRESS", "FOR"):
            table.add_column(column)
        now = time.monotonic()
        for item in self.running.values():
            table.add_row(
                item.run_id, item.job, item.step, item.progress, f"{now - item.started:.0f}s"
            )
        return Group(head, table)


_PLAIN_EVENTS = (
    "run:leased",
    "run:waiting",
    "run:retry",
    "step:retry",
    "run:complete",
    "run:fail",
    "run:cancel",
    "worker:error",
)


async def run_worker(durably: Durably, url: str, concurrency: int | None, grace: float) -> None:
    """Migrate, start the worker, and run until SIGINT/SIGTERM (see ``durably worker``)."""
    out = console()
    interactive = out.is_terminal
    await durably.migrate()
    slots = concurrency or durably.settings.max_concurrent_runs
    status = _Status(
        durably.worker_id, url, slots, slotless_backoff=durably.settings.lease_renew_interval
    )
    signals = asyncio.Queue[int]()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, signals.put_nowait, sig)

    def plain(event: Any) -> None:
        status.on_event(event)
        if event.type in _PLAIN_EVENTS:
            out.print(event_line(event))

    unsubscribe = durably.on("*", status.on_event if interactive else plain)
    durably.start(max_concurrent_runs=concurrency)
    if not interactive:
        out.print(
            f"durably worker {durably.worker_id} on {url}: {slots} slot(s), jobs: "
            + (", ".join(sorted(h.name for h in durably.jobs.values())) or "none")
        )
    live = Live(status.render(), console=out, refresh_per_second=4) if interactive else None
    try:
        if live is not None:
            live.start()
        first = await _until_signal(signals, live, status)
        note = (
            f"{signal.Signals(first).name}: stopping; waiting up to {grace:g}s for "
            f"{len(status.running)} run(s) in flight (signal again to stop now)"
        )
        status.stopping = note
        if live is None:
            out.print(note)
        stop = asyncio.ensure_future(durably.stop(timeout=grace))
        again = asyncio.ensure_future(signals.get())
        while not stop.done():
            if live is not None:
                live.update(status.render())
            done, _ = await asyncio.wait(
                {stop, again}, timeout=0.25, return_when=asyncio.FIRST_COMPLETED
            )
            if again in done:
                status.stopping = (
                    "stopping now: runs in flight are cancelled (they resume elsewhere)"
                )
                if live is None:
                    out.print(status.stopping)
                await durably.stop(timeout=0)
                await stop
        again.cancel()
    finally:
        unsubscribe()
        if live is not None:
            live.update(status.render())
            live.stop()
        await durably.close()
    out.print(
        f"durably worker stopped: {status.completed} completed, {status.failed} failed, "
        f"{status.cancelled} cancelled, {status.suspended} suspended, "
        f"{status.retrying} waiting to retry"
    )


async def _until_signal(signals: asyncio.Queue[int], live: Live | None, status: _Status) -> int:
    while True:
        try:
            return await asyncio.wait_for(signals.get(), timeout=0.25)
        except TimeoutError:
            if live is not None:
                live.update(status.render())
