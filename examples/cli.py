"""A command-line tool with a live progress bar fed by the run's progress.

    uv run python examples/cli.py process data.csv

The job reports progress with ``step.progress(current, total, message)``;
``trigger_and_wait(on_progress=...)`` hands each report (a ``Progress``: ``current``,
``total``, ``message``) to a rich progress bar. Interrupt it and run the same
command again: the file's run is found by its idempotency key and continues after
the last finished batch.

Rich draws the live bar only on a terminal; piped, it prints the final state.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path

from pydantic import BaseModel
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from durably import Progress as RunProgress
from durably import Step, create_durably, define_job

BATCH_SIZE = 10
# Pretend each batch takes a while, so there is something to watch.
BATCH_SECONDS = float(os.environ.get("CLI_BATCH_SECONDS", "0.3"))


class FileIn(BaseModel):
    path: str


class FileOut(BaseModel):
    lines: int
    words: int


def read_lines(path: str) -> list[str]:
    return Path(path).read_text().splitlines()


def count_words(lines: list[str]) -> int:
    time.sleep(BATCH_SECONDS)
    return sum(len(line.split()) for line in lines)


@define_job("process-file", input=FileIn, output=FileOut)
async def process_file(step: Step, file: FileIn) -> FileOut:
    lines: list[str] = await step.run("read", read_lines, file.path)
    words = 0
    # On a resumed run the finished batches are replayed from the database in an
    # instant; their progress calls run again, so the bar catches up at once.
    for start in range(0, len(lines), BATCH_SIZE):
        words += await step.run(f"batch-{start}", count_words, lines[start : start + BATCH_SIZE])
        done = min(start + BATCH_SIZE, len(lines))
        step.progress(done, len(lines), f"{done} lines")
    return FileOut(lines=len(lines), words=words)


async def process(path: Path, version: int, console: Console) -> None:
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[message]}"),
        TimeElapsedColumn(),
    )
    async with create_durably(jobs={"process_file": process_file}) as durably:
        with Progress(*columns, console=console) as bar:
            task = bar.add_task(path.name, total=None, message="waiting for a worker")

            def on_progress(p: RunProgress) -> None:
                bar.update(task, completed=p.current, total=p.total, message=p.message or "")

            result = await durably.jobs.process_file.trigger_and_wait(
                {"path": str(path)},
                on_progress=on_progress,
                # One run per version of the file: rerunning the command after an
                # interruption resumes the run; an unchanged file is not processed again.
                idempotency_key=f"{path}@{version}",
            )
            if result.disposition == "idempotent" and result.run.progress is not None:
                # Already processed earlier: show the progress it finished with.
                p = result.run.progress
                bar.update(task, completed=p.current, total=p.total, message="(earlier run)")
        console.print(
            f"[green]done[/green] run {result.id}: "
            f"{result.output.lines} lines, {result.output.words} words"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description="Process files with durably.")
    commands = parser.add_subparsers(dest="command", required=True)
    process_cmd = commands.add_parser("process", help="count the lines and words of a file")
    process_cmd.add_argument("filename")
    args = parser.parse_args()
    if args.command == "process":
        path = Path(args.filename).resolve()
        if not path.is_file():
            raise SystemExit(f"no such file: {args.filename}")
        asyncio.run(process(path, path.stat().st_mtime_ns, Console()))


if __name__ == "__main__":
    main()
