"""durably-sqlite's executor: URLs and options, error mapping, and the busy fallback
that keeps the event loop responsive while another connection holds the lock."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from lock_support import LockHolder, Ticker

from durably import (
    DurablyError,
    NewRun,
    SchemaVersionError,
    StorageBusyError,
    StorageCorruptError,
    StorageError,
    StorageReadOnlyError,
    ValidationError,
)
from durably.plugins import BackendRegistry
from durably.sql import ConstraintViolation, SqlStorage
from durably_sqlite import SqliteExecutor, _executor, open_sqlite
from durably_sqlite._open import check_sqlite_version
from durably_sqlite._url import config_from, parse_url

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def new_run(n: int, **kw: object) -> NewRun:
    return NewRun(id=f"01J{n:023d}", job_name="job", input_json="{}", created_at=T0, **kw)  # type: ignore[arg-type]


# -- URLs and options --


@pytest.mark.parametrize(
    ("url", "database"),
    [
        ("sqlite:///durably.db", "durably.db"),
        ("sqlite:///data/x.db", "data/x.db"),
        ("sqlite:////tmp/x.db", "/tmp/x.db"),
        ("sqlite:///:memory:", ":memory:"),
        ("sqlite://", ":memory:"),
        ("sqlite:///with%20space.db", "with space.db"),
        ("SQLITE:///x.db", "x.db"),
    ],
)
def test_url__paths(url: str, database: str) -> None:
    assert parse_url(url)[0] == database


@pytest.mark.parametrize("url", ["sqlite:x.db", "sqlite://host/x.db", "postgres:///x", "x.db"])
def test_url__invalid(url: str) -> None:
    with pytest.raises(ValidationError):
        parse_url(url)


def test_options__defaults_query_and_keywords() -> None:
    cfg = config_from("sqlite:///x.db", {})
    assert (cfg.synchronous, cfg.busy_timeout, cfg.mode) == ("NORMAL", 5.0, "rwc")
    cfg = config_from("sqlite:///x.db?synchronous=full&busy_timeout=0.5", {})
    assert (cfg.synchronous, cfg.busy_timeout) == ("FULL", 0.5)
    cfg = config_from("sqlite:///x.db?synchronous=full", {"synchronous": "off"})
    assert cfg.synchronous == "OFF"


@pytest.mark.parametrize(
    "options",
    [
        {"synchronous": "SOMETIMES"},
        {"synchronous": 2},
        {"busy_timeout": -1},
        {"busy_timeout": "soon"},
        {"busy_timeout": True},
        {"busy_timeout": float("nan")},
        {"mode": "rwx"},
        {"journal": "wal"},
    ],
)
def test_options__invalid_rejected(options: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        BackendRegistry().open("sqlite:///x.db", **options)


def test_sqlite_version__too_old_is_a_clear_error() -> None:
    check_sqlite_version((3, 35, 0))
    with pytest.raises(StorageError, match=r"3\.35\.0 or newer.*3\.34\.1"):
        check_sqlite_version((3, 34, 1))


def test_plugin__module_does_not_import_the_driver() -> None:
    code = (
        "import sys; import durably_sqlite.plugin as p; "
        "assert 'sqlite3' not in sys.modules, 'sqlite3 imported'; "
        "assert 'durably_sqlite._executor' not in sys.modules; "
        "[b] = p.durably_storage_backends(); assert b.schemes == ('sqlite',)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("synchronous", ["OFF", "NORMAL", "FULL", "EXTRA"])
async def test_connection__wal_and_synchronous(tmp_path: Path, synchronous: str) -> None:
    ex = SqliteExecutor(tmp_path / "d.db", synchronous=synchronous)
    try:
        assert await ex.fetch("PRAGMA journal_mode") == [("wal",)]
        level = {"OFF": 0, "NORMAL": 1, "FULL": 2, "EXTRA": 3}[synchronous]
        assert await ex.fetch("PRAGMA synchronous") == [(level,)]
    finally:
        await ex.close()


async def test_memory__separate_databases_and_closed_for_good() -> None:
    a, b = open_sqlite("sqlite:///:memory:"), open_sqlite("sqlite:///:memory:")
    await a.migrate()
    await b.migrate()
    await a.enqueue(new_run(1))
    assert await b.get_run(new_run(1).id) is None
    await a.close()
    await a.close()
    with pytest.raises(StorageError, match="cannot be reopened"):
        await a.get_run(new_run(1).id)
    await b.close()


async def test_file__reopens_after_close(tmp_path: Path) -> None:
    s = open_sqlite(f"sqlite:///{tmp_path / 'd.db'}")
    await s.migrate()
    await s.enqueue(new_run(1))
    await s.close()
    assert await s.get_run(new_run(1).id) is not None
    await s.close()


# -- error mapping: no sqlite3 exception escapes, files are left untouched --


async def test_error__not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    junk = b"this is certainly not a SQLite database\n" * 200
    path.write_bytes(junk)
    storage = open_sqlite(f"sqlite:///{path}")
    with pytest.raises(StorageCorruptError, match="not a SQLite database") as info:
        await storage.migrate()
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)
    await storage.close()
    assert path.read_bytes() == junk
    assert sorted(os.listdir(tmp_path)) == ["junk.db"]


async def test_error__directory(tmp_path: Path) -> None:
    storage = open_sqlite(f"sqlite:///{tmp_path}")
    with pytest.raises(StorageReadOnlyError, match="is a directory") as info:
        await storage.migrate()
    assert isinstance(info.value.__cause__, sqlite3.Error)
    await storage.close()


async def test_error__missing_directory(tmp_path: Path) -> None:
    storage = open_sqlite(f"sqlite:///{tmp_path / 'nope' / 'd.db'}")
    with pytest.raises(StorageError, match="does not exist"):
        await storage.migrate()
    await storage.close()
    assert not (tmp_path / "nope").exists()


async def test_error__read_only_mode(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    rw = open_sqlite(f"sqlite:///{path}")
    await rw.migrate()
    await rw.enqueue(new_run(1))
    await rw.close()
    ro = open_sqlite(f"sqlite:///{path}?mode=ro")
    try:
        assert await ro.get_run(new_run(1).id) is not None
        with pytest.raises(StorageReadOnlyError, match="cannot be written") as info:
            await ro.enqueue(new_run(2))
        assert isinstance(info.value.__cause__, sqlite3.OperationalError)
    finally:
        await ro.close()


def set_modes(path: Path, file_mode: int, dir_mode: int) -> None:
    path.chmod(file_mode)
    path.parent.chmod(dir_mode)


READ_ONLY_SCRIPT = """
import asyncio, sys
from durably import DurablyError
from durably.plugins import BackendRegistry

async def main() -> None:
    storage = BackendRegistry().open("sqlite:///" + sys.argv[1])
    stage = "migrate"
    try:
        await storage.migrate()
        stage = "first write"
        await storage.executor.execute("CREATE TABLE probe (a)")
        print("NO ERROR")
    except DurablyError as exc:
        print(stage, "|", type(exc).__name__, "|", exc)
    finally:
        try:
            await storage.close()
        except DurablyError:
            pass

asyncio.run(main())
"""


def unprivileged() -> list[str]:
    """A command prefix under which file modes apply, also when the tests run as root
    (root's CAP_DAC_OVERRIDE ignores them): drop that capability with setpriv."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("running as root needs setpriv (util-linux) to test a read-only file")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search"]


async def _write_one(path: Path) -> None:
    rw = open_sqlite(f"sqlite:///{path}")
    await rw.migrate()
    await rw.enqueue(new_run(1))
    await rw.close()


@pytest.mark.parametrize("dir_mode", [0o555, 0o755], ids=["read-only-dir", "writable-dir"])
def test_error__read_only_file(tmp_path: Path, dir_mode: int) -> None:
    path = tmp_path / "d.db"
    asyncio.run(_write_one(path))
    for leftover in ("d.db-wal", "d.db-shm"):
        (tmp_path / leftover).unlink(missing_ok=True)
    before = path.read_bytes()
    set_modes(path, 0o444, dir_mode)
    try:
        proc = subprocess.run(
            [*unprivileged(), sys.executable, "-c", READ_ONLY_SCRIPT, str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        set_modes(path, 0o644, 0o755)
    assert proc.returncode == 0, proc.stderr
    stage, kind, message = proc.stdout.strip().split(" | ", 2)
    # refused when opened, not at the first write (a worker must not start on it)
    assert (stage, kind) == ("migrate", "StorageReadOnlyError"), proc.stdout
    assert str(path) in message
    assert "check the permissions" in message
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.db"]


async def test_error__newer_python_schema_refused_and_file_untouched(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    storage = open_sqlite(f"sqlite:///{path}")
    await storage.migrate()
    await storage.executor.execute(
        "INSERT INTO durably_py_schema_versions (version, applied_at) VALUES (999, 'x')"
    )
    await storage.close()
    # from a file in rollback-journal mode too, which opening must not switch to WAL
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA journal_mode = DELETE").fetchone() == ("delete",)
    before = path.read_bytes()
    again = open_sqlite(f"sqlite:///{path}")
    with pytest.raises(SchemaVersionError, match=r"version 999.*Upgrade durably"):
        await again.migrate()
    await again.close()
    assert path.read_bytes() == before


async def test_error__bad_sql_and_constraints_are_storage_errors(tmp_path: Path) -> None:
    ex = SqliteExecutor(tmp_path / "d.db")
    try:
        with pytest.raises(StorageError) as info:
            await ex.fetch("SELEC nonsense")
        assert isinstance(info.value.__cause__, sqlite3.OperationalError)
        await ex.execute("CREATE TABLE t (a TEXT PRIMARY KEY, b TEXT NOT NULL)")
        await ex.execute("INSERT INTO t VALUES ('x', 'y')")
        with pytest.raises(ConstraintViolation) as unique:
            await ex.execute("INSERT INTO t VALUES ('x', 'z')")
        assert (unique.value.kind, unique.value.table, unique.value.columns) == (
            "unique",
            "t",
            ("a",),
        )
        with pytest.raises(ConstraintViolation) as notnull:
            await ex.batch(
                [("INSERT INTO t VALUES ('q', 'r')", ()), ("INSERT INTO t (a) VALUES ('w')", ())]
            )
        assert notnull.value.kind == "notnull"
        # the batch was all or nothing
        assert await ex.fetch("SELECT a FROM t ORDER BY a") == [("x",)]
    finally:
        await ex.close()


# -- the busy fallback --


async def test_busy__write_waits_off_the_loop_and_succeeds(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    storage = open_sqlite(f"sqlite:///{path}", busy_timeout=60)
    await storage.migrate()
    ticker = Ticker()
    try:
        with LockHolder(path) as holder:
            write = asyncio.ensure_future(storage.enqueue(new_run(1)))
            # the loop keeps turning while the write waits for the lock (a write waiting
            # on the loop's thread would stop the ticker until it gave up)
            await ticker.ticks_while(write, 20)
            holder.release()
            result = await write
        assert result.disposition == "created"
    finally:
        await ticker.stop()
        await storage.close()


async def test_busy__reads_and_batches_fall_back_too(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    storage = open_sqlite(f"sqlite:///{path}", busy_timeout=5)
    await storage.migrate()
    await storage.enqueue(new_run(1))
    claimed = await storage.claim_next("w", T0, T0.replace(year=2027))
    assert claimed is not None
    try:
        with LockHolder(path, hold=0.3):
            assert await storage.get_run(claimed.id) == claimed  # WAL: readers not blocked
            deleted, cancelled = await asyncio.gather(
                storage.delete_run(claimed.id),  # a batch: not terminal, deletes nothing
                storage.cancel_run(claimed.id, T0),  # one statement
            )
        assert deleted is None  # ran first (FIFO): the run was still leased
        assert cancelled is not None
        assert await storage.get_run(claimed.id) == cancelled
    finally:
        await storage.close()


async def test_busy__gives_up_after_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    storage = open_sqlite(f"sqlite:///{path}", busy_timeout=0.2)
    await storage.migrate()
    ticker = Ticker()
    loop = asyncio.get_running_loop()
    try:
        with LockHolder(path):  # held until the end of the block
            started, before = loop.time(), ticker.ticks
            with pytest.raises(StorageBusyError, match="busy timeout") as info:
                await storage.enqueue(new_run(1))
            # it waited its busy timeout (never less), off the loop, and gave up while
            # the lock was still held
            assert loop.time() - started >= 0.2
            assert ticker.ticks > before
            assert isinstance(info.value.__cause__, sqlite3.OperationalError)
        assert await storage.get_run(new_run(1).id) is None
        assert (await storage.enqueue(new_run(1))).disposition == "created"  # lock gone
    finally:
        await ticker.stop()
        await storage.close()


async def test_busy__slow_path_retries_from_a_millisecond_up_to_ten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While another process holds the lock, the thread retries after 0.5–1 ms, then
    after delays doubling (each jittered down by at most half) up to 10 ms. Finer
    retries mostly found the lock taken again, with the CPU of the process holding it
    (docs/performance.md, W5)."""
    path = tmp_path / "d.db"
    storage = open_sqlite(f"sqlite:///{path}", busy_timeout=60)
    await storage.migrate()
    delays: list[float] = []
    enough = threading.Event()

    def sleep(seconds: float) -> None:  # only the slow path's thread sleeps here
        delays.append(seconds)
        if len(delays) >= 8:
            enough.set()
        time.sleep(seconds)

    monkeypatch.setattr(_executor, "time", SimpleNamespace(monotonic=time.monotonic, sleep=sleep))
    try:
        with LockHolder(path) as holder:
            write = asyncio.ensure_future(storage.enqueue(new_run(1)))
            assert await asyncio.to_thread(enough.wait, 30)
            holder.release()
            assert (await write).disposition == "created"
        for i, delay in enumerate(delays):
            bound = min(0.001 * 2**i, 0.01)
            assert bound / 2 <= delay <= bound, (i, delays)
        assert delays[-1] >= 0.005  # reached the cap's range
    finally:
        await storage.close()


async def test_busy__many_concurrent_writers_all_succeed(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    storages: list[SqlStorage] = [open_sqlite(f"sqlite:///{path}") for _ in range(3)]
    for s in storages:
        await s.migrate()
    try:
        with LockHolder(path, hold=0.2):
            results = await asyncio.gather(
                *(storages[i % 3].enqueue(new_run(i)) for i in range(30))
            )
        assert {r.disposition for r in results} == {"created"}
        assert len({r.run.id for r in results}) == 30
    finally:
        for s in storages:
            await s.close()


def test_errors__every_mapped_error_is_a_durably_error() -> None:
    for cls in (StorageBusyError, StorageCorruptError, StorageReadOnlyError, ConstraintViolation):
        assert issubclass(cls, DurablyError)


async def test_wal__checkpointed_in_the_background_and_bounded(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    ex = SqliteExecutor(path)
    wal = path.with_name("d.db-wal")
    insert = [("INSERT INTO t (pad) VALUES (?)", ("x" * 2000,))]
    try:
        await ex.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, pad TEXT)")
        # the loop's own automatic checkpoint is only a far safety net
        assert await ex.fetch("PRAGMA wal_autocheckpoint") == [(4000,)]
        sizes, checkpoints = [], 0
        for i in range(1, 1601):
            await ex.batch(insert)
            running = ex._checkpointing
            if running is not None and not running.done():
                await running  # the background checkpoint this write started
                checkpoints += 1
            if i % 100 == 0:
                sizes.append(wal.stat().st_size)
        # one per 400 changed rows; each lets the next write restart the WAL, so it
        # stays at ~3 MB (400 inserts) instead of growing to ~13 MB
        assert checkpoints == 4
        assert max(sizes) < 5_000_000
        # when background checkpoints cannot run (their thread is busy), the loop's
        # own automatic checkpoint at 4000 pages still bounds the WAL
        pool = ex._pool
        assert pool is not None
        unblock = threading.Event()
        pool.submit(unblock.wait)
        try:
            for _ in range(12_000):
                await ex.batch(insert)
            assert wal.stat().st_size < 40_000_000  # unbounded it would be > 48 MB
        finally:
            unblock.set()
        assert await ex.fetch("SELECT COUNT(*) FROM t") == [(13_600,)]
    finally:
        await ex.close()
