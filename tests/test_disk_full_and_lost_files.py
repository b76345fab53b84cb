"""A full disk and a database file lost under a running worker, on real file systems.

Disk full: a size-limited tmpfs (mounted by the test, which needs root: CAP_SYS_ADMIN)
filled with a file until ``ENOSPC``, then freed. A worker that met a full disk used
to back off to 30 s between claims; now it retries at most every 2 s, and after a
full disk the SQLite executor checkpoints and truncates the WAL before the next
write, so the space that came back goes to the database, not to more WAL frames.

Lost files: the database file deleted, or replaced by another, while a worker runs
on it. It used to go unnoticed (the open connection kept "completing" runs into a
file nobody would see); now the worker's identity check (device and inode, at most
once per polling interval) reports a ``StorageLostError`` as ``worker:error``
(context ``storage-lost``) and the worker stops claiming; the storage refuses every
further operation.

Time is a ``ManualClock``: every wait is for an event, never a measured duration.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from engine_support import eventually, recorder
from libsql_support import TursoServer

from durably import (
    RunStatus,
    Step,
    StorageFullError,
    StorageLostError,
    create_durably,
    define_job,
)
from durably._worker import FULL_BACKOFF
from durably_sqlite import SqliteExecutor
from durably_testing import ManualClock

MIB = 1024 * 1024


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Any]:
    """``small_fs(megabytes)``: a directory on a tmpfs of that size, unmounted after."""
    mounted: list[Path] = []

    def mount(megabytes: int) -> Path:
        target = tmp_path / f"fs{len(mounted)}"
        target.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(target)],
            capture_output=True,
            check=False,
        )
        if done.returncode != 0:
            pytest.skip(
                "mounting a size-limited tmpfs needs root (CAP_SYS_ADMIN): "
                + done.stderr.decode(errors="replace").strip()
            )
        mounted.append(target)
        return target

    yield mount
    for target in mounted:
        subprocess.run(["umount", "-l", str(target)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the file system is full; it is returned for ``unlink``."""
    filler = directory / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as f:
        for size in (len(chunk), 4096, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(chunk[:size])
    probe = directory / "probe"
    with pytest.raises(OSError, match="No space left") as info, open(probe, "wb", buffering=0) as f:
        f.write(b"x" * 4096)
    assert info.value.errno == errno.ENOSPC
    probe.unlink(missing_ok=True)
    return filler


def more_than(items: list[Any], count: int) -> Callable[[], bool]:
    """A predicate: ``items`` has grown past ``count``."""
    return lambda: len(items) > count


def wal_size(database: Path) -> int:
    wal = database.with_name(database.name + "-wal")
    return wal.stat().st_size if wal.exists() else 0


async def one_step(step: Step, payload: Any) -> str:
    return await step.run("only", lambda: "done")


async def trigger_until_full(d: Any, pad: int, attempts: int) -> None:
    """Trigger runs with ``pad`` bytes of input until one fails (the WAL a database
    already has takes writes until its pages are used up)."""
    for _ in range(attempts):
        await d.jobs.j.trigger({"pad": "x" * pad})


# -- disk full --


async def test_sqlite__full_disk_is_a_storage_full_error_and_nothing_is_acknowledged(
    small_fs: Any,
) -> None:
    fs = small_fs(2)
    d = create_durably(f"sqlite:///{fs / 'd.db'}", jobs={"j": define_job("j", run=one_step)})
    try:
        await d.migrate()
        await d.jobs.j.trigger({})
        filler = fill(fs)
        with pytest.raises(StorageFullError, match="the disk is full"):
            await trigger_until_full(d, 100_000, 100)
        acknowledged = len(await d.get_runs())
        filler.unlink()
        await d.jobs.j.trigger({})
        assert len(await d.get_runs()) == acknowledged + 1
    finally:
        await d.close()


async def test_sqlite__after_a_full_disk_the_wal_is_truncated_before_the_next_write(
    small_fs: Any,
) -> None:
    """Before: the WAL kept its megabytes after space came back (passive checkpoints
    never shrink it), and new writes went on filling the space it left."""
    fs = small_fs(12)
    database = fs / "wal.db"
    executor = SqliteExecutor(database, synchronous="FULL")
    try:
        await executor.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, pad TEXT)")
        pad = "x" * 10_000
        await executor.batch([("INSERT INTO t (pad) VALUES (?)", (pad,))] * 200)
        big = wal_size(database)
        assert big > MIB
        filler = fill(fs)
        with pytest.raises(StorageFullError):
            await executor.batch([("INSERT INTO t (pad) VALUES (?)", (pad,))] * 600)
        filler.unlink()
        await executor.execute("INSERT INTO t (pad) VALUES ('small')")
        assert wal_size(database) < 256 * 1024 < big
        assert await executor.fetch("SELECT count(*) FROM t") == [(201,)]
    finally:
        await executor.close()


async def test_worker__retries_within_seconds_of_space_returning(
    small_fs: Any, clock: ManualClock
) -> None:
    """Every claim on the full disk fails; each retry comes at most ``FULL_BACKOFF``
    seconds (of the manual clock) after the last, however many failed before (it used
    to double up to 30 s). Once space is back, the run completes at the next retry."""
    fs = small_fs(4)
    database = fs / "d.db"
    d = create_durably(
        f"sqlite:///{database}",
        jobs={"j": define_job("j", run=one_step)},
        synchronous="FULL",
        clock=clock,
        polling_interval=1.0,
    )
    try:
        await d.migrate()
        run_id = (await d.jobs.j.trigger({})).id
        with sqlite3.connect(database) as other:  # no WAL left: the claim must grow one
            other.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        filler = fill(fs)
        errors = recorder(d, "worker:error")
        d.start()
        await eventually(lambda: len(errors) >= 1, "the first claim failing")
        for _ in range(8):
            seen = len(errors)
            await eventually(lambda: clock.sleepers == 1, "the worker backing off")
            await clock.advance(FULL_BACKOFF)
            await eventually(more_than(errors, seen), "a retry within FULL_BACKOFF")
        assert {e.context for e in errors} == {"claim"}
        assert all("the disk is full" in e.error for e in errors)
        filler.unlink()
        await eventually(lambda: clock.sleepers == 1, "the worker backing off")
        await clock.advance(FULL_BACKOFF)

        async def completed() -> bool:
            run = await d.get_run(run_id)
            return run is not None and run.status is RunStatus.COMPLETED

        await eventually(completed, "the run completing once space is back")
    finally:
        await d.close()


async def test_libsql_remote__full_disk_is_a_storage_full_error(
    small_fs: Any, tursodb: Path
) -> None:
    """A tursodb server whose database is on a full tmpfs answers "no storage space"."""
    fs = small_fs(1)
    server = TursoServer(tursodb, fs / "remote.db").start()
    d = create_durably(server.url, jobs={"j": define_job("j", run=one_step)})
    try:
        await d.migrate()
        with pytest.raises(StorageFullError, match="is full"):
            await trigger_until_full(d, 50_000, 200)
    finally:
        await d.storage.close()
        server.stop()


async def test_libsql_remote__after_a_full_disk_the_wal_is_emptied_before_the_next_write(
    small_fs: Any, tursodb: Path
) -> None:
    """tursodb never checkpoints by itself: the pipeline of the first write after a
    full disk starts with a WAL checkpoint (TRUNCATE), so the space that came back
    goes to the database. Before: the WAL kept its megabytes and took more."""
    fs = small_fs(6)
    database = fs / "remote.db"
    server = TursoServer(tursodb, database).start()
    d = create_durably(server.url, jobs={"j": define_job("j", run=one_step)})
    try:
        await d.migrate()
        filler = fs / "filler"
        filler.write_bytes(b"\0" * (3 * MIB))
        with pytest.raises(StorageFullError):
            await trigger_until_full(d, 50_000, 200)
        big = wal_size(database)
        assert big > MIB
        acknowledged = len(await d.get_runs())
        filler.unlink()
        await d.jobs.j.trigger({})
        assert wal_size(database) < 256 * 1024 < big
        assert len(await d.get_runs()) == acknowledged + 1
    finally:
        await d.storage.close()
        server.stop()


# -- lost files --


@pytest.fixture(params=["sqlite", "file"])
def file_url(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Path]:
    database = tmp_path / "lost.db"
    scheme = "sqlite:///" if request.param == "sqlite" else "file:"
    return f"{scheme}{database}", database


def delete(database: Path) -> None:
    for suffix in ("", "-wal", "-shm"):  # what `rm lost.db*` does
        database.with_name(database.name + suffix).unlink(missing_ok=True)


def replace(database: Path) -> None:
    other = database.with_name("other.db")
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE restored (x)")
    os.replace(other, database)


@pytest.mark.parametrize("lose", [delete, replace], ids=["deleted", "replaced"])
async def test_worker__database_file_lost_is_reported_and_claiming_stops(
    file_url: tuple[str, Path], clock: ManualClock, lose: Any
) -> None:
    url, database = file_url
    d = create_durably(
        url, jobs={"j": define_job("j", run=one_step)}, clock=clock, polling_interval=1.0
    )
    try:
        errors = recorder(d, "worker:error")
        completed = recorder(d, "run:complete")
        await d.init()
        await d.jobs.j.trigger({})
        await eventually(lambda: len(completed) == 1, "the first run completing")
        lose(database)
        await clock.advance(1.0)
        await eventually(lambda: not d.running, "the worker stopping")
        [error] = errors
        assert error.context == "storage-lost"
        assert ("was deleted" if lose is delete else "was replaced") in error.error
        # nothing more is acknowledged into a file nobody sees
        with pytest.raises(StorageLostError, match="restart the process"):
            await d.jobs.j.trigger({})
        with pytest.raises(StorageLostError):
            await d.get_runs()
        assert len(completed) == 1
    finally:
        await d.close()


async def test_worker__identity_is_checked_at_most_once_per_polling_interval(
    tmp_path: Path, clock: ManualClock
) -> None:
    database = tmp_path / "calls.db"
    d = create_durably(
        f"sqlite:///{database}",
        jobs={"j": define_job("j", run=one_step)},
        clock=clock,
        polling_interval=5.0,
    )
    executor: Any = d.storage.executor  # type: ignore[attr-defined]
    calls: list[object] = []
    check = executor.check_identity

    async def counting() -> None:
        calls.append(clock.now())
        await check()

    executor.check_identity = counting
    try:
        completed = recorder(d, "run:complete")
        await d.init()
        for i in range(5):  # each trigger wakes the loop; none of them is 5 s apart
            await d.jobs.j.trigger({})
            await eventually(more_than(completed, i), "a run completing")
        assert len(calls) == 1
        await clock.advance(5.0)
        await eventually(lambda: len(calls) == 2, "the next check, 5 s later")
    finally:
        await d.close()
