"""Group commit (durably/sql/_group.py) on a real SQLite file: what is grouped, what
is not, and that a loop ending with checkpoints queued strands nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from durably import NewRun, NewStep, StepStatus
from durably.sql import Params, Row, SqlStorage, Statement
from durably_sqlite import SqliteExecutor

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


class CountingExecutor:
    """A SqliteExecutor that records the size of each batch."""

    def __init__(self, inner: SqliteExecutor) -> None:
        self.inner = inner
        self.batches: list[int] = []

    async def fetch(self, sql: str, params: Params = ()) -> list[Row]:
        return await self.inner.fetch(sql, params)

    async def execute(self, sql: str, params: Params = ()) -> int:
        return await self.inner.execute(sql, params)

    async def batch(self, statements: Sequence[Statement]) -> list[list[Row]]:
        self.batches.append(len(statements))
        return await self.inner.batch(statements)

    async def close(self) -> None:
        await self.inner.close()


def step(n: int) -> NewStep:
    return NewStep(
        id=f"01S{n:023d}",
        name=f"s{n}",
        index=n,
        status=StepStatus.COMPLETED,
        output_json=str(n),
        started_at=T0,
        completed_at=T0,
    )


async def leased(s: SqlStorage, runs: int) -> list[str]:
    ids = []
    for n in range(runs):
        run_id = f"01R{n:023d}"
        await s.enqueue(NewRun(id=run_id, job_name="j", input_json="{}", created_at=T0))
        run = await s.claim_next("w", T0, T0 + timedelta(hours=1))
        assert run is not None
        ids.append(run.id)
    return ids


async def test_a_lone_checkpoint_is_written_at_once_and_concurrent_ones_together(
    tmp_path: Path,
) -> None:
    ex = CountingExecutor(SqliteExecutor(tmp_path / "g.db"))
    s = SqlStorage(ex)
    await s.migrate()
    runs = await leased(s, 4)
    ex.batches.clear()
    assert await s.persist_step(runs[0], 1, step(0), T0)
    assert ex.batches == [3]  # alone: its own batch, no waiting for a group
    ex.batches.clear()
    results = await asyncio.gather(
        *(s.persist_step(run_id, 1, step(n + 1), T0) for n, run_id in enumerate(runs))
    )
    assert results == [True] * 4
    assert ex.batches == [12]  # four checkpoints, one transaction
    for n, run_id in enumerate(runs):
        assert [x.id for x in await s.get_steps(run_id)][-1] == step(n + 1).id
    await s.close()


def test_a_loop_ending_with_checkpoints_queued_strands_nothing(tmp_path: Path) -> None:
    ex = CountingExecutor(SqliteExecutor(tmp_path / "g.db"))
    s = SqlStorage(ex)

    async def setup() -> list[str]:
        await s.migrate()
        return await leased(s, 2)

    runs = asyncio.run(setup())

    async def abandon() -> None:
        # two checkpoints queue; the loop ends with their callers cancelled
        for n, run_id in enumerate(runs):
            asyncio.get_running_loop().create_task(s.persist_step(run_id, 1, step(n), T0))
        await asyncio.sleep(0)  # they queue; the main task returns: asyncio.run cancels all

    asyncio.run(abandon())

    async def later() -> list[bool]:
        # the same storage on a new loop: its checkpoints must not wait for the old one
        return await asyncio.wait_for(
            asyncio.gather(*(s.persist_step(r, 1, step(10 + n), T0) for n, r in enumerate(runs))),
            10,
        )

    assert asyncio.run(later()) == [True, True]
    asyncio.run(s.close())


async def test_completions_and_failures_join_the_group_each_fenced(tmp_path: Path) -> None:
    # runs of a worker's slots often finish in the same loop turn: their final writes
    # share one transaction with each other and with checkpoints made in that turn
    ex = CountingExecutor(SqliteExecutor(tmp_path / "g.db"))
    s = SqlStorage(ex)
    await s.migrate()
    runs = await leased(s, 5)
    ex.batches.clear()
    assert await s.complete_run(runs[0], 1, '"a"', T0, delete_steps=True)
    assert ex.batches == [4]  # alone: waits closed, steps and logs deleted, the update
    ex.batches.clear()
    results = await asyncio.gather(
        s.complete_run(runs[1], 1, "1", T0, delete_steps=False),
        s.fail_run(runs[2], 1, "boom", T0),
        s.complete_run(runs[3], 2, "3", T0, delete_steps=True),  # not its lease
        s.persist_step(runs[4], 1, step(4), T0),
    )
    assert list(results) == [True, True, False, True]
    assert ex.batches == [2 + 2 + 4 + 3]  # one transaction
    stored = [await s.get_run(run_id) for run_id in runs]
    assert [(r.status.value, r.output, r.error) for r in stored if r is not None] == [
        ("completed", "a", None),
        ("completed", 1, None),
        ("failed", None, "boom"),
        ("leased", None, None),
        ("leased", None, None),
    ]
    assert [x.id for x in await s.get_steps(runs[4])] == [step(4).id]
    await s.close()
