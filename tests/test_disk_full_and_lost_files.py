"""A full disk and a database file lost under a running worker, on real files.

Disk full: a size-limited tmpfs, mounted by the test, filled with a file until
``ENOSPC``, then freed. Mounting needs root (CAP_SYS_ADMIN); where this process
may not mount (an unprivileged CI container), the same tests cap the database with
SQLite's ``max_page_count`` instead, which fails writes with the same
``SQLITE_FULL`` (``DURABLY_TEST_NO_MOUNT=1`` chooses that here). A worker that met
a full disk used to back off to 30 s between claims; now it retries at most every
2 s, and after a full disk the first write checkpoints and truncates the WAL (on
SQLite, and on a libSQL server in the same request), so the space that came back
goes to the database, not to more WAL frames. On PostgreSQL, a tablespace on such a
tmpfs holds the tables: the server's ``disk_full`` (SQLSTATE 53100) is the same
``StorageFullError`` with the same retries.

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
import inspect
import os
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ci_support import unavailable
from engine_support import eventually, recorder
from libsql_support import TursoServer
from postgres_support import PostgresServer, fresh_schema

from durably import (
    EnqueueResult,
    RunStatus,
    Schedule,
    ScheduleFire,
    Step,
    StorageFullError,
    StorageLostError,
    create_durably,
    define_job,
)
from durably._backoff import FULL_BACKOFF
from durably_libsql._executor import HranaExecutor
from durably_sqlite import SqliteExecutor
from durably_testing import ManualClock, MemoryStorage
from durably_testing.clock import settle

MIB = 1024 * 1024
NO_CAP = 4294967294  # SQLite's default max_page_count
#: Under a page cap, every update of a run also needs a new page: on a full file
#: system a claim needs WAL space; under the cap it needs this.
GROW_ON_UPDATE = (
    "CREATE TABLE IF NOT EXISTS test_pad (b BLOB)",
    "CREATE TRIGGER IF NOT EXISTS test_grow BEFORE UPDATE ON durably_runs "
    "BEGIN INSERT INTO test_pad VALUES (zeroblob(8192)); END",
)


class Disk:
    """A directory for a database whose free space the test takes and gives back."""

    def __init__(self, directory: Path, mounted: bool) -> None:
        self.directory = directory
        self.mounted = mounted
        self._filler: Path | None = None

    async def fill(self, database: SqliteExecutor | str) -> None:
        """No space left: fill the tmpfs, or cap ``database`` (an executor, or a
        libSQL server's URL) at the pages it has."""
        if self.mounted:
            self._filler = fill(self.directory)
        else:
            await _cap(database, on=True)

    async def free(self, database: SqliteExecutor | str) -> None:
        if self.mounted:
            assert self._filler is not None
            self._filler.unlink()
        else:
            await _cap(database, on=False)


async def _cap(database: SqliteExecutor | str, *, on: bool) -> None:
    if isinstance(database, str):  # tursodb: all clients share the server's connection
        executor = HranaExecutor.from_url(database)
        try:
            [(pages,)] = await executor.fetch("PRAGMA page_count")
            await executor.fetch(f"PRAGMA max_page_count = {pages if on else NO_CAP}")
        finally:
            await executor.close()
        return
    conns = [c for c in (database._fast, database._slow) if c is not None]
    tables = {r[0] for r in conns[0].execute("SELECT name FROM sqlite_master").fetchall()}
    if on and "durably_runs" in tables:
        for sql in GROW_ON_UPDATE:
            conns[0].execute(sql)
    for conn in conns:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages if on else NO_CAP}")


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Callable[[int], Disk]]:
    """``disk(megabytes)``: a :class:`Disk` on a tmpfs of that size (unmounted after),
    or, where mounting is not allowed, a plain directory with page-capped databases."""
    mounted: list[Path] = []

    def make(megabytes: int) -> Disk:
        target = tmp_path / f"fs{len(mounted)}"
        target.mkdir()
        if os.environ.get("DURABLY_TEST_NO_MOUNT"):
            return Disk(target, mounted=False)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(target)],
            capture_output=True,
            check=False,
        )
        if done.returncode != 0:  # not allowed here: SQLITE_FULL from a page cap
            return Disk(target, mounted=False)
        mounted.append(target)
        return Disk(target, mounted=True)

    yield make
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


async def retries_within_full_backoff_until_freed(
    d: Any, clock: ManualClock, run_id: str, free: Callable[[], Any]
) -> None:
    """Start the worker of ``d`` on a full disk: every claim fails, each retry comes
    at most ``FULL_BACKOFF`` seconds (of the manual clock) after the last; after
    ``free()`` (a coroutine or not) the run ``run_id`` completes at the next retry."""
    errors = recorder(d, "worker:error")
    d.start()
    await eventually(lambda: len(errors) >= 1, "the first claim failing")
    for _ in range(8):
        seen = len(errors)
        await settle()  # the worker, having reported, goes to its backoff sleep
        await clock.advance(FULL_BACKOFF)
        await eventually(more_than(errors, seen), "a retry within FULL_BACKOFF")
    assert {e.context for e in errors} == {"claim"}
    assert all("the disk is full" in e.error for e in errors)
    freed = free()
    if inspect.isawaitable(freed):
        await freed
    await settle()
    await clock.advance(FULL_BACKOFF)

    async def completed() -> bool:
        run = await d.get_run(run_id)
        return run is not None and run.status is RunStatus.COMPLETED

    await eventually(completed, "the run completing once space is back")


def executor_of(d: Any) -> SqliteExecutor:
    executor = d.storage.executor
    assert isinstance(executor, SqliteExecutor)
    return executor


# -- disk full --


async def test_sqlite__full_disk_is_a_storage_full_error_and_nothing_is_acknowledged(
    disk: Any,
) -> None:
    space = disk(2)
    d = create_durably(
        f"sqlite:///{space.directory / 'd.db'}", jobs={"j": define_job("j", run=one_step)}
    )
    try:
        await d.migrate()
        await d.jobs.j.trigger({})
        await space.fill(executor_of(d))
        with pytest.raises(StorageFullError, match="the disk is full"):
            await trigger_until_full(d, 100_000, 100)
        acknowledged = len(await d.get_runs())
        await space.free(executor_of(d))
        await d.jobs.j.trigger({})
        assert len(await d.get_runs()) == acknowledged + 1
    finally:
        await d.close()


async def test_sqlite__after_a_full_disk_the_wal_is_truncated_before_the_next_write(
    disk: Any,
) -> None:
    """Before: the WAL kept its megabytes after space came back (passive checkpoints
    never shrink it), and new writes went on filling the space it left."""
    space = disk(12)
    database = space.directory / "wal.db"
    executor = SqliteExecutor(database, synchronous="FULL")
    try:
        await executor.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, pad TEXT)")
        pad = "x" * 10_000
        await executor.batch([("INSERT INTO t (pad) VALUES (?)", (pad,))] * 200)
        big = wal_size(database)
        assert big > MIB
        await space.fill(executor)
        with pytest.raises(StorageFullError):
            await executor.batch([("INSERT INTO t (pad) VALUES (?)", (pad,))] * 600)
        await space.free(executor)
        await executor.execute("INSERT INTO t (pad) VALUES ('small')")
        assert wal_size(database) < 256 * 1024 < big
        assert await executor.fetch("SELECT count(*) FROM t") == [(201,)]
    finally:
        await executor.close()


async def test_worker__retries_within_seconds_of_space_returning(
    disk: Any, clock: ManualClock
) -> None:
    """Every claim on the full disk fails; each retry comes at most ``FULL_BACKOFF``
    seconds (of the manual clock) after the last, however many failed before (it used
    to double up to 30 s). Once space is back, the run completes at the next retry."""
    space = disk(4)
    database = space.directory / "d.db"
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
        await space.fill(executor_of(d))
        await retries_within_full_backoff_until_freed(
            d, clock, run_id, lambda: space.free(executor_of(d))
        )
    finally:
        await d.close()


class FullOnFire(MemoryStorage):
    """Firing a schedule fails with ``StorageFullError`` while ``full``."""

    full = False

    async def fire_schedule(self, fire: ScheduleFire) -> list[EnqueueResult] | None:
        if self.full:
            raise StorageFullError("Storage full: the disk is full (test)")
        return await super().fire_schedule(fire)


async def test_scheduler__retries_within_seconds_of_space_returning(clock: ManualClock) -> None:
    """The scheduler's loop backs off like the worker's: at most ``FULL_BACKOFF``
    between two attempts to fire a slot on a full disk (it used to double up to
    30 s), so the slot fires within seconds of space returning."""

    async def nothing(step: Step, payload: Any) -> None:
        return None

    storage = FullOnFire()
    hourly = define_job("h", run=nothing, schedule=Schedule("@hourly"))
    d = create_durably(storage, jobs={"h": hourly}, clock=clock, polling_interval=1.0)
    errors = recorder(d, "worker:error")
    try:
        await d.init()
        await eventually(lambda: d.schedules.list(), "the declared schedule stored")
        storage.full = True
        await settle()
        await clock.advance(3600)  # the slot is due; firing it fails
        await eventually(lambda: len(errors) >= 1, "the first fire failing")
        for _ in range(8):
            seen = len(errors)
            await settle()
            await clock.advance(FULL_BACKOFF)
            await eventually(more_than(errors, seen), "a retry within FULL_BACKOFF")
        assert {e.context for e in errors} == {"schedule"}
        storage.full = False
        await settle()
        await clock.advance(FULL_BACKOFF)
        await eventually(lambda: d.get_runs(), "the slot fired once space is back")
    finally:
        await d.stop()


async def test_libsql_remote__full_disk_is_a_storage_full_error(disk: Any, tursodb: Path) -> None:
    """A tursodb server whose database is on a full tmpfs answers "no storage space"
    (under a page cap: "database or disk is full")."""
    space = disk(1)
    server = TursoServer(tursodb, space.directory / "remote.db").start()
    d = create_durably(server.url, jobs={"j": define_job("j", run=one_step)})
    try:
        await d.migrate()
        await space.fill(server.url)
        with pytest.raises(StorageFullError, match="is full"):
            await trigger_until_full(d, 50_000, 200)
    finally:
        await d.storage.close()
        server.stop()


async def test_libsql_remote__after_a_full_disk_the_wal_is_emptied_before_the_next_write(
    disk: Any, tursodb: Path
) -> None:
    """tursodb never checkpoints by itself: the pipeline of the first write after a
    full disk starts with a WAL checkpoint (TRUNCATE), so the space that came back
    goes to the database. Before: the WAL kept its megabytes and took more."""
    space = disk(8)
    database = space.directory / "remote.db"
    server = TursoServer(tursodb, database).start()
    d = create_durably(server.url, jobs={"j": define_job("j", run=one_step)})
    try:
        await d.migrate()
        for _ in range(30):
            await d.jobs.j.trigger({"pad": "x" * 50_000})
        big = wal_size(database)
        assert big > MIB
        await space.fill(server.url)
        with pytest.raises(StorageFullError):
            await trigger_until_full(d, 50_000, 200)
        acknowledged = len(await d.get_runs())
        await space.free(server.url)
        await d.jobs.j.trigger({})
        assert wal_size(database) < 256 * 1024 < big
        assert len(await d.get_runs()) == acknowledged + 1
    finally:
        await d.storage.close()
        server.stop()


class Tablespace:
    """A PostgreSQL tablespace on a size-limited tmpfs of its own: a schema's tables
    and indexes moved there meet a full disk (SQLSTATE 53100) when the tmpfs is
    filled, while the server's WAL, on its own disk, never does."""

    def __init__(self, server: PostgresServer, megabytes: int) -> None:
        self.server = server
        # the server's user must reach it: not under the test's private tmp_path
        self.directory = Path(tempfile.mkdtemp(prefix="durably-ts-"))
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(self.directory)],
            capture_output=True,
            check=False,
        )
        if done.returncode != 0:
            self.directory.rmdir()
            unavailable(
                "A full disk on PostgreSQL needs a tmpfs mounted for a tablespace: run the "
                f"tests as root (mount said: {done.stderr.decode().strip()})"
            )
        if server.user is not None:
            shutil.chown(self.directory, server.user)
        self.name = self.directory.name.replace("-", "_")
        server.psql(f"CREATE TABLESPACE {self.name} LOCATION '{self.directory}'")
        self._filler: Path | None = None

    def take(self, schema: str) -> None:
        """Move the tables and indexes of ``schema`` here."""
        self.server.psql(
            "DO $$ DECLARE r record; BEGIN "
            f"FOR r IN SELECT tablename FROM pg_tables WHERE schemaname = '{schema}' LOOP "
            f"EXECUTE format('ALTER TABLE %I.%I SET TABLESPACE {self.name}', "
            f"'{schema}', r.tablename); END LOOP; "
            f"FOR r IN SELECT indexname FROM pg_indexes WHERE schemaname = '{schema}' LOOP "
            f"EXECUTE format('ALTER INDEX %I.%I SET TABLESPACE {self.name}', "
            f"'{schema}', r.indexname); END LOOP; END $$"
        )

    def fill(self) -> None:
        self._filler = fill(self.directory)

    def free(self) -> None:
        assert self._filler is not None
        self._filler.unlink()

    def remove(self, schema: str) -> None:
        with contextlib.suppress(RuntimeError):
            self.server.psql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            self.server.psql(f"DROP TABLESPACE IF EXISTS {self.name}")
        subprocess.run(["umount", "-l", str(self.directory)], check=False)
        with contextlib.suppress(OSError):
            self.directory.rmdir()


@pytest.fixture
def pg_space(postgres: PostgresServer) -> Iterator[Callable[[int], tuple[Tablespace, str]]]:
    """``pg_space(megabytes)``: a :class:`Tablespace` of that size and the name of a
    fresh schema on the session's server (both removed after)."""
    made: list[tuple[Tablespace, str]] = []

    def make(megabytes: int) -> tuple[Tablespace, str]:
        made.append((Tablespace(postgres, megabytes), fresh_schema(postgres, "full")))
        return made[-1]

    yield make
    for space, schema in made:
        space.remove(schema)


async def test_postgres__full_disk_is_a_storage_full_error_and_nothing_is_acknowledged(
    pg_space: Any, postgres: PostgresServer
) -> None:
    """The server refuses with SQLSTATE 53100 (disk_full): a StorageFullError, the
    transaction rolled back; once space is back, writes go on. Before: a plain
    StorageError, and the worker backed off to 30 s."""
    space, schema = pg_space(4)
    d = create_durably(postgres.url_for(schema=schema), jobs={"j": define_job("j", run=one_step)})
    try:
        await d.migrate()
        space.take(schema)
        await d.jobs.j.trigger({})
        space.fill()
        with pytest.raises(StorageFullError, match="the disk is full"):
            await trigger_until_full(d, 100_000, 100)
        acknowledged = len(await d.get_runs())
        space.free()
        await d.jobs.j.trigger({})
        assert len(await d.get_runs()) == acknowledged + 1
    finally:
        await d.close()


async def test_postgres__worker_retries_within_seconds_of_space_returning(
    pg_space: Any, postgres: PostgresServer, clock: ManualClock
) -> None:
    """As on SQLite: every claim on the full disk fails (a trigger makes each update
    of a run need a new page, as the claim of a run on a full page does), each retry
    comes at most ``FULL_BACKOFF`` after the last, and the run completes once space
    is back."""
    space, schema = pg_space(4)
    d = create_durably(
        postgres.url_for(schema=schema),
        jobs={"j": define_job("j", run=one_step)},
        clock=clock,
        polling_interval=1.0,
    )
    try:
        await d.migrate()
        space.take(schema)
        postgres.psql(
            f"CREATE TABLE {schema}.test_pad (b text) TABLESPACE {space.name}; "
            f"CREATE FUNCTION {schema}.test_grow() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN INSERT INTO {schema}.test_pad "
            "SELECT string_agg(md5(i::text), '') FROM generate_series(1, 300) i; "
            "RETURN NEW; END $$; "
            f"CREATE TRIGGER test_grow BEFORE UPDATE ON {schema}.durably_runs "
            f"FOR EACH ROW EXECUTE FUNCTION {schema}.test_grow()"
        )
        run_id = (await d.jobs.j.trigger({})).id
        space.fill()
        await retries_within_full_backoff_until_freed(d, clock, run_id, space.free)
    finally:
        await d.close()


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
