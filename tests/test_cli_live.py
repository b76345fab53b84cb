"""``durably trigger --wait``'s note on a pending run: it suggests starting a worker
only once the run has stayed pending longer than a running worker would leave it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from durably import RunStatus, Step, create_durably, define_job
from durably.cli._live import follow_run, hint_patience

HINT = "pending waiting for a worker (start one with `durably worker APP`)"


def test_patience__two_polling_intervals_at_least_a_second() -> None:
    assert hint_patience(0.1) == 1.0
    assert hint_patience(2.0) == 4.0


async def test_follow_run__hint_only_after_the_patience(capsys: pytest.CaptureFixture[str]) -> None:
    async def run(step: Step, payload: Any) -> None:
        return None

    durably = create_durably(
        "memory://", jobs={"j": define_job("j", run=run)}, polling_interval=0.05
    )
    patience = hint_patience(0.05)
    await durably.migrate()  # no worker is started: the run stays pending
    try:
        run_id = (await durably.jobs.j.trigger({})).id
        began = time.monotonic()
        follower = asyncio.create_task(follow_run(durably, run_id, timeout=None))
        seen = ""
        while HINT not in seen and not follower.done():  # cancelled once the hint shows
            await asyncio.sleep(0.02)
            seen += capsys.readouterr().err
        hinted_after = time.monotonic() - began
        await durably.cancel(run_id)
        final = await asyncio.wait_for(follower, 60)
    finally:
        await durably.close()
    seen += capsys.readouterr().err
    assert final.status is RunStatus.CANCELLED
    assert seen.splitlines() == ["pending", HINT, "cancelled"]
    assert hinted_after >= patience
