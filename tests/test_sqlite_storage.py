"""Direct tests of SqlStorage on SQLite: the stored formats (the reference's), the
label rows, and atomicity across connections. The behaviour contract itself is
the conformance suite (test_conformance_sqlite.py)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from durably import NewLog, NewRun, NewStep, Progress, RunStatus, StepStatus
from durably.sql import SqlStorage, progress_json
from durably_sqlite import open_sqlite

T0 = datetime(2026, 3, 1, 12, 0, 0, 123000, tzinfo=UTC)


def rid(n: int) -> str:
    return f"01J{n:023d}"


def new_run(n: int, **kw: Any) -> NewRun:
    kw.setdefault("created_at", T0)
    return NewRun(id=rid(n), job_name=kw.pop("job_name", "job"), input_json='{"n":1}', **kw)


def step(n: int, name: str, index: int, **kw: Any) -> NewStep:
    kw.setdefault("status", StepStatus.COMPLETED)
    kw.setdefault("output_json", "1" if kw["status"] is StepStatus.COMPLETED else None)
    return NewStep(id=rid(n), name=name, index=index, started_at=T0, completed_at=T0, **kw)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "d.db"


@pytest.fixture
async def storage(db: Path) -> AsyncIterator[SqlStorage]:
    s = open_sqlite(f"sqlite:///{db}")
    await s.migrate()
    yield s
    await s.close()


def rows(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


async def leased(storage: SqlStorage, n: int = 1, **kw: Any) -> str:
    await storage.enqueue(new_run(n, **kw))
    run = await storage.claim_next("w", T0, T0 + timedelta(seconds=30), [kw.get("job_name", "job")])
    assert run is not None
    return run.id


def test_progress_json__reference_format() -> None:
    assert progress_json(Progress(2)) == '{"current":2}'
    assert progress_json(Progress(2.0, 10.0)) == '{"current":2,"total":10}'
    assert progress_json(Progress(1.5, 3, "m")) == '{"current":1.5,"total":3,"message":"m"}'
    assert progress_json(Progress(0, None, "only")) == '{"current":0,"message":"only"}'


async def test_progress__reads_both_forms(storage: SqlStorage, db: Path) -> None:
    run_id = await leased(storage)
    assert await storage.update_progress(run_id, 1, Progress(3, 4, "x"), T0)
    assert rows(db, "SELECT progress FROM durably_runs") == [
        ('{"current":3,"total":4,"message":"x"}',)
    ]
    await storage.executor.execute(
        "UPDATE durably_runs SET progress = ?",
        ('{"current":1,"total":null,"message":null}',),
    )
    got = await storage.get_run(run_id)
    assert got is not None
    assert got.progress == Progress(1)


async def test_formats__timestamps_json_labels_as_the_reference(
    storage: SqlStorage, db: Path
) -> None:
    tokyo = timezone(timedelta(hours=9))
    await storage.enqueue(
        new_run(1, created_at=T0.astimezone(tokyo), labels={"team": "a", "env/x": "b"})
    )
    [(created, updated, labels, status, gen, csi)] = rows(
        db,
        "SELECT created_at, updated_at, labels, status, lease_generation, current_step_index "
        "FROM durably_runs",
    )
    assert created == updated == "2026-03-01T12:00:00.123Z"
    assert labels == '{"team":"a","env/x":"b"}'
    assert (status, gen, csi) == ("pending", 0, 0)
    assert rows(db, "SELECT run_id, key, value FROM durably_run_labels ORDER BY key") == [
        (rid(1), "env/x", "b"),
        (rid(1), "team", "a"),
    ]


async def test_labels__rows_only_for_a_created_run(storage: SqlStorage, db: Path) -> None:
    await storage.enqueue(new_run(1, idempotency_key="k", labels={"a": "1"}))
    again = await storage.enqueue(new_run(2, idempotency_key="k", labels={"b": "2"}))
    assert again.disposition == "idempotent"
    assert rows(db, "SELECT run_id, key FROM durably_run_labels") == [(rid(1), "a")]


async def test_persist_step__index_advances_to_the_max(storage: SqlStorage) -> None:
    run_id = await leased(storage)
    assert await storage.persist_step(run_id, 1, step(10, "c", 3), T0)
    assert await storage.persist_step(run_id, 1, step(11, "a", 1), T0)
    run = await storage.get_run(run_id)
    assert run is not None
    assert (run.current_step_index, run.completed_step_count) == (4, 2)


async def test_persist_step__refused_writes_nothing(storage: SqlStorage, db: Path) -> None:
    run_id = await leased(storage)
    assert not await storage.persist_step(run_id, 2, step(10, "a", 0), T0)
    assert rows(db, "SELECT COUNT(*) FROM durably_steps") == [(0,)]
    assert rows(db, "SELECT completed_step_count FROM durably_runs") == [(0,)]


async def test_logs__many_in_chunks_are_all_or_nothing(storage: SqlStorage, db: Path) -> None:
    run_id = await leased(storage)
    logs = [
        NewLog(id=rid(100 + i), step_name=None, level="info", message=f"m{i}", created_at=T0)
        for i in range(250)
    ]
    assert await storage.append_logs(run_id, 1, logs, T0)
    assert rows(db, "SELECT COUNT(*) FROM durably_logs") == [(250,)]
    assert not await storage.append_logs(run_id, 7, logs, T0)
    dup = [*logs[:150], logs[0]]  # the duplicate id is in the second chunk
    with pytest.raises(Exception):  # noqa: B017, PT011 - a constraint error of some kind
        await storage.append_logs(run_id, 1, dup, T0)
    assert rows(db, "SELECT COUNT(*) FROM durably_logs") == [(250,)]


async def test_concurrency__idempotent_triggers_from_two_connections(db: Path) -> None:
    a, b = open_sqlite(f"sqlite:///{db}"), open_sqlite(f"sqlite:///{db}")
    await a.migrate()
    await b.migrate()
    try:
        results = await asyncio.gather(
            *((a, b)[i % 2].enqueue(new_run(i, idempotency_key="same")) for i in range(20))
        )
        assert sorted(r.disposition for r in results) == ["created"] + ["idempotent"] * 19
        assert len({r.run.id for r in results}) == 1
    finally:
        await a.close()
        await b.close()


async def test_concurrency__each_run_claimed_once(db: Path) -> None:
    storages = [open_sqlite(f"sqlite:///{db}") for _ in range(3)]
    for s in storages:
        await s.migrate()
    try:
        await storages[0].enqueue_many([(new_run(i), False) for i in range(30)])
        claims = await asyncio.gather(
            *(
                storages[i % 3].claim_next(f"w{i}", T0, T0 + timedelta(seconds=30))
                for i in range(40)
            )
        )
        got = [c.id for c in claims if c is not None]
        assert sorted(got) == sorted(rid(i) for i in range(30))
        statuses = {r[0] for r in rows(db, "SELECT status FROM durably_runs")}
        assert statuses == {RunStatus.LEASED.value}
    finally:
        for s in storages:
            await s.close()


def test_progress_json__http_sends_the_stored_shape() -> None:
    # one rule for numbers: integral values as integers while exact, as JSON.stringify
    from durably.http._serialize import encode, progress

    for p in (Progress(2.0, 10.0), Progress(1.5, 3, "m"), Progress(2.0**53, 1e300)):
        assert encode(progress(p)).decode() == progress_json(p)
    assert progress_json(Progress(2.0**53, 1e300)) == '{"current":9007199254740992.0,"total":1e300}'
