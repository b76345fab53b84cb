"""SqlStorage after a lost answer (``StorageOutcomeUnknownError``): each write that
can be checked is checked, and sent once more only when it did not land — so the
result is what one delivery would have given, and the state is one application.

Driven on a real SQLite file through an executor that loses the answer to the
first copy of each write: after applying it, or before (dropped)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest

from durably import (
    AttemptStatus,
    NewAttempt,
    NewLog,
    NewRun,
    NewStep,
    Progress,
    RunStatus,
    StepStatus,
    StorageOutcomeUnknownError,
)
from durably.sql import Params, Row, SqlStorage, Statement
from durably_sqlite import SqliteExecutor

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
LEASE = T0 + timedelta(seconds=30)


def rid(n: int) -> str:
    return f"01J{n:023d}"


class LosingExecutor:
    """A SqliteExecutor whose next write (``lose(when)``) loses its answer."""

    def __init__(self, inner: SqliteExecutor) -> None:
        self.inner = inner
        self.when: str | None = None
        self.lost = 0
        self.lost_batch = 0  # statements in the last batch whose answer was lost

    def lose(self, when: str) -> None:
        self.when = when

    async def _maybe_lose(self, write: Callable[[], Awaitable[Any]]) -> Any:
        when, self.when = self.when, None
        if when is None:
            return await write()
        self.lost += 1
        if when == "after":
            await write()
        raise StorageOutcomeUnknownError("answer lost (test)")

    async def fetch(self, sql: str, params: Params = ()) -> list[Row]:
        if sql.lstrip().upper().startswith("SELECT") and "RETURNING" not in sql.upper():
            return await self.inner.fetch(sql, params)
        rows: list[Row] = await self._maybe_lose(lambda: self.inner.fetch(sql, params))
        return rows

    async def execute(self, sql: str, params: Params = ()) -> int:
        count: int = await self._maybe_lose(lambda: self.inner.execute(sql, params))
        return count

    async def batch(self, statements: Sequence[Statement]) -> list[list[Row]]:
        if self.when is not None:
            self.lost_batch = len(statements)
        out: list[list[Row]] = await self._maybe_lose(lambda: self.inner.batch(statements))
        return out

    async def close(self) -> None:
        await self.inner.close()


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[tuple[SqlStorage, LosingExecutor]]:
    executor = LosingExecutor(SqliteExecutor(tmp_path / "d.db"))
    s = SqlStorage(executor)
    await s.migrate()
    yield s, executor
    await s.close()


async def leased(s: SqlStorage, n: int = 1) -> str:
    await s.enqueue(NewRun(id=rid(n), job_name="j", input_json="{}", created_at=T0))
    run = await s.claim_next("w", T0, LEASE)
    assert run is not None
    return run.id


WHEN = pytest.mark.parametrize("when", ["after", "before"])


@WHEN
async def test_enqueue__created_once(storage: Any, when: str) -> None:
    from durably import RunFilter

    s, ex = storage
    ex.lose(when)
    result = await s.enqueue(
        NewRun(
            id=rid(1),
            job_name="j",
            input_json="{}",
            idempotency_key="k",
            concurrency_key="c",
            labels={"a": "b"},
            created_at=T0,
        )
    )
    assert ex.lost == 1
    assert (result.disposition, result.run.id) == ("created", rid(1))
    assert [r.id for r in await s.get_runs(RunFilter(labels={"a": "b"}))] == [rid(1)]


@WHEN
async def test_enqueue_many__all_created_once(storage: Any, when: str) -> None:
    from durably import RunFilter

    s, ex = storage
    runs = [
        (NewRun(id=rid(n), job_name="j", input_json="{}", concurrency_key="c", created_at=T0), True)
        for n in (1, 2)
    ]
    ex.lose(when)
    results = await s.enqueue_many(runs)
    assert [(r.disposition, r.run.id) for r in results] == [
        ("created", rid(1)),
        ("coalesced", rid(1)),
    ]
    assert [r.id for r in await s.get_runs(RunFilter())] == [rid(1)]


@WHEN
async def test_persist_step__written_once(storage: Any, when: str) -> None:
    s, ex = storage
    run_id = await leased(s)
    step = NewStep(
        id=rid(9),
        name="s",
        index=0,
        status=StepStatus.COMPLETED,
        output_json="1",
        started_at=T0,
        completed_at=T0,
    )
    ex.lose(when)
    assert await s.persist_step(run_id, 1, step, T0)
    assert [x.name for x in await s.get_steps(run_id)] == ["s"]
    run = await s.get_run(run_id)
    assert (run.completed_step_count, run.current_step_index) == (1, 1)


@WHEN
async def test_complete_and_fail__group_commit_resolved_per_run(storage: Any, when: str) -> None:
    # runs finishing at once share one batch; its answer is lost: each run finds out
    # for itself (written once), and the one whose lease is lost is refused
    s, ex = storage
    runs = [await leased(s, n) for n in range(1, 4)]
    ex.lose(when)
    results = await asyncio.gather(
        s.complete_run(runs[0], 1, '"a"', T0, delete_steps=True),
        s.complete_run(runs[1], 2, '"b"', T0, delete_steps=True),
        s.fail_run(runs[2], 1, "boom", T0),
    )
    assert (ex.lost, ex.lost_batch) == (1, 4 + 4 + 2)  # one group of three
    assert list(results) == [True, False, True]
    stored = [await s.get_run(run_id) for run_id in runs]
    assert [(r.status, r.output, r.error) for r in stored if r is not None] == [
        (RunStatus.COMPLETED, "a", None),
        (RunStatus.LEASED, None, None),
        (RunStatus.FAILED, None, "boom"),
    ]


@WHEN
async def test_persist_step__group_commit_resolved_per_run(storage: Any, when: str) -> None:
    # checkpoints of several runs made at once are written in one batch; its answer is
    # lost: each run finds out for itself, and the one whose lease is lost is refused
    s, ex = storage
    runs = [await leased(s, n) for n in range(1, 5)]
    steps = [
        NewStep(
            id=rid(10 + n),
            name="s",
            index=0,
            status=StepStatus.COMPLETED,
            output_json=str(n),
            started_at=T0,
            completed_at=T0,
        )
        for n in range(4)
    ]
    ex.lose(when)
    results = await asyncio.gather(
        *(
            s.persist_step(run_id, 2 if n == 2 else 1, step, T0)
            for n, (run_id, step) in enumerate(zip(runs, steps, strict=True))
        )
    )
    assert (ex.lost, ex.lost_batch) == (1, 3 * 4)  # one group of four checkpoints
    assert results == [True, True, False, True]
    for n, run_id in enumerate(runs):
        run = await s.get_run(run_id)
        stored = [x.id for x in await s.get_steps(run_id)]
        if n == 2:
            assert (stored, run.completed_step_count) == ([], 0)
        else:
            assert (stored, run.completed_step_count, run.current_step_index) == (
                [steps[n].id],
                1,
                1,
            )


@WHEN
async def test_complete_run__true_once(storage: Any, when: str) -> None:
    s, ex = storage
    run_id = await leased(s)
    ex.lose(when)
    assert await s.complete_run(run_id, 1, '"ok"', T0, delete_steps=True)
    run = await s.get_run(run_id)
    assert (run.status, run.output) == (RunStatus.COMPLETED, "ok")


@WHEN
async def test_fail_run__true_once(storage: Any, when: str) -> None:
    s, ex = storage
    run_id = await leased(s)
    ex.lose(when)
    assert await s.fail_run(run_id, 1, "boom", T0)
    run = await s.get_run(run_id)
    assert (run.status, run.error) == (RunStatus.FAILED, "boom")


@WHEN
async def test_renew_progress_logs__true_once(storage: Any, when: str) -> None:
    s, ex = storage
    run_id = await leased(s)
    later = LEASE + timedelta(seconds=5)
    ex.lose(when)
    assert await s.renew_lease(run_id, 1, T0, later)
    ex.lose(when)
    assert await s.update_progress(run_id, 1, Progress(1, 2, "half"), T0)
    ex.lose(when)
    log = NewLog(id=rid(7), step_name=None, level="info", message="m", created_at=T0)
    assert await s.append_logs(run_id, 1, [log], T0)
    run = await s.get_run(run_id)
    assert (run.lease_expires_at, run.progress) == (later, Progress(1, 2, "half"))
    assert [x.message for x in await s.get_logs(run_id)] == ["m"]


@WHEN
async def test_fenced_write__lost_answer_after_the_lease_moved_on_is_refused(
    storage: Any, when: str
) -> None:
    s, ex = storage
    run_id = await leased(s)
    assert await s.cancel_run(run_id, T0) is not None
    ex.lose(when)
    assert not await s.complete_run(run_id, 1, '"late"', T0, delete_steps=False)
    assert (await s.get_run(run_id)).status == RunStatus.CANCELLED


def attempt(n: int, status: AttemptStatus = AttemptStatus.FAILED) -> NewAttempt:
    return NewAttempt(
        id=rid(n),
        step_name="s",
        step_index=0,
        attempt=1,
        status=status,
        error="boom" if status is AttemptStatus.FAILED else None,
        started_at=T0,
        completed_at=None if status is AttemptStatus.STARTED else T0,
        next_attempt_at=T0 + timedelta(seconds=9) if status is AttemptStatus.FAILED else None,
    )


@WHEN
async def test_record_attempt__written_once(storage: Any, when: str) -> None:
    s, ex = storage
    run_id = await leased(s)
    ex.lose(when)
    assert await s.record_attempt(run_id, 1, attempt(5, AttemptStatus.STARTED), T0)
    ex.lose(when)
    assert await s.record_attempt(run_id, 1, attempt(5), T0)  # settled
    [record] = await s.get_attempts(run_id)
    assert (record.id, record.status, record.error) == (rid(5), AttemptStatus.FAILED, "boom")


@WHEN
async def test_record_attempt__back_off_applied_once(storage: Any, when: str) -> None:
    s, ex = storage
    run_id = await leased(s)
    wake = T0 + timedelta(seconds=9)
    ex.lose(when)
    assert await s.record_attempt(run_id, 1, attempt(5), T0, wake_at=wake)
    run = await s.get_run(run_id)
    assert (run.status, run.wake_at, run.lease_generation) == (RunStatus.WAITING, wake, 1)
    assert [a.id for a in await s.get_attempts(run_id)] == [rid(5)]


@WHEN
async def test_persist_step__with_its_attempt_written_once(storage: Any, when: str) -> None:
    s, ex = storage
    run_id = await leased(s)
    step = NewStep(
        id=rid(9),
        name="s",
        index=0,
        status=StepStatus.FAILED,
        error="boom",
        started_at=T0,
        completed_at=T0,
    )
    final = msgspec.structs.replace(attempt(5), next_attempt_at=None)
    ex.lose(when)
    assert await s.persist_step(run_id, 1, step, T0, attempt=final)
    assert [x.status for x in await s.get_steps(run_id)] == [StepStatus.FAILED]
    assert [a.id for a in await s.get_attempts(run_id)] == [rid(5)]


@WHEN
async def test_schedule_retry__applied_once(storage: Any, when: str) -> None:
    s, ex = storage
    run_id = await leased(s)
    wake = T0 + timedelta(seconds=9)
    ex.lose(when)
    waiting = await s.schedule_retry(run_id, 1, "boom", wake, T0)
    assert waiting is not None
    assert (waiting.status, waiting.attempt, waiting.wake_at) == (RunStatus.WAITING, 2, wake)
    assert await s.get_run(run_id) == waiting


async def test_claim__lost_answer_is_raised(storage: Any) -> None:
    s, ex = storage
    await s.enqueue(NewRun(id=rid(1), job_name="j", input_json="{}", created_at=T0))
    ex.lose("before")
    with pytest.raises(StorageOutcomeUnknownError):
        await s.claim_next("w", T0, LEASE)


async def test_public_helpers__what_route_2_adapters_use() -> None:
    from datetime import UTC, datetime

    from durably import StorageOutcomeUnknownError
    from durably.sql import format_timestamp, parse_timestamp, resolve_lost_answer

    t = datetime(2026, 11, 22, 3, 4, 5, 123999, tzinfo=UTC)
    assert format_timestamp(t) == "2026-11-22T03:04:05.123Z"  # truncated, not rounded
    assert parse_timestamp("2026-11-22T03:04:05.123Z") == t.replace(microsecond=123000)
    sent: list[int] = []

    async def write() -> bool:
        sent.append(1)
        if len(sent) == 1:
            raise StorageOutcomeUnknownError("answer lost")
        return True

    async def not_landed() -> bool | None:
        return None

    assert await resolve_lost_answer(write, not_landed) is True
    assert len(sent) == 2  # checked, then sent once more

    async def landed() -> bool | None:
        return True

    sent.clear()
    assert await resolve_lost_answer(write, landed) is True
    assert len(sent) == 1  # it had landed: not sent again


# -- schedules --


async def scheduled(s: SqlStorage) -> Any:
    from durably import NewSchedule

    record = await s.create_schedule(
        NewSchedule(
            name="n",
            job_name="j",
            cron="* * * * *",
            timezone="UTC",
            input_json="{}",
            next_fire_at=T0,
            created_at=T0,
        )
    )
    assert record is not None
    return record


def fire_of(record: Any, token: int, *runs: NewRun) -> Any:
    from durably import ScheduleFire

    return ScheduleFire(
        token=rid(token),
        name=record.name,
        revision=record.revision,
        next_fire_at=T0 + timedelta(minutes=1),
        last_fired_at=T0,
        runs=runs,
        now=T0,
    )


def slot_run(n: int) -> NewRun:
    return NewRun(
        id=rid(n), job_name="j", input_json="{}", idempotency_key="schedule:n:0", created_at=T0
    )


@WHEN
async def test_fire_schedule__applied_once(storage: Any, when: str) -> None:
    from durably import RunFilter

    s, ex = storage
    record = await scheduled(s)
    ex.lose(when)
    results = await s.fire_schedule(fire_of(record, 50, slot_run(1)))
    assert ex.lost == 1
    assert results is not None
    assert [(r.disposition, r.run.id) for r in results] == [("created", rid(1))]
    assert [r.id for r in await s.get_runs(RunFilter())] == [rid(1)]
    moved = await s.get_schedule("n")
    assert (moved.revision, moved.last_fired_at) == (2, T0)


async def test_fire_schedule__a_lost_answer_when_another_fire_won(storage: Any) -> None:
    from durably import RunFilter

    s, ex = storage
    record = await scheduled(s)
    assert await s.fire_schedule(fire_of(record, 50, slot_run(1))) is not None
    ex.lose("before")  # the stale fire's answer is lost: the token says it did not apply
    assert await s.fire_schedule(fire_of(record, 51, slot_run(2))) is None
    assert [r.id for r in await s.get_runs(RunFilter())] == [rid(1)]
