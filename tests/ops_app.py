"""The app the operators' tools are tried on (``durably worker ops_app:durably``):
one job whose pace and failures the test controls through files, so no test waits
on a timer.

- ``gate``: before step ``i`` the job waits until ``$OPS_DIR/<gate>-<i>`` exists.
- ``fail_until_fixed``: the step ``check`` raises until ``$OPS_DIR/fixed`` exists, so
  a failed run succeeds when retried after the "fix".
- ``flaky``: a first step ``fetch`` fails its first call and is retried 0.3 s later
  (longer than the lease renewal: the run waits for it without a slot).

A second job, ``expense``, waits for a person: after its step ``submit`` it waits
(without a worker slot) for the signal ``approval`` — a :class:`Decision`, sent with
``durably signal`` or the dashboard's button — and reports who decided.

``create_durably()`` reads ``DURABLY_DATABASE_URL`` (the CLI's ``--url`` sets it).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from pydantic import BaseModel

from durably import Retry, Step, create_durably, define_job


def _dir() -> Path:
    return Path(os.environ.get("OPS_DIR", "."))


class ImportIn(BaseModel):
    rows: int = 3
    gate: str | None = None
    fail_until_fixed: bool = False
    flaky: bool = False


class ImportOut(BaseModel):
    imported: int


async def _gate(name: str) -> None:
    path = _dir() / name
    # the test creates the file in another process: no asyncio.Event can carry it
    while not path.exists():  # noqa: ASYNC110
        await asyncio.sleep(0.01)


def _fetch() -> str:
    calls = _dir() / "fetch-calls"
    calls.write_text(calls.read_text() + "x" if calls.exists() else "x")
    if calls.read_text() == "x":
        raise ConnectionError("HTTP 503")
    return "ok"


def _check() -> str:
    if not (_dir() / "fixed").exists():
        raise RuntimeError("row 2: price is not a number ('12,50')")
    return "ok"


@define_job("import-csv", input=ImportIn, output=ImportOut)
async def import_csv(step: Step, payload: ImportIn) -> ImportOut:
    if payload.flaky:
        await step.run("fetch", _fetch, retry=Retry(max_attempts=2, initial=0.3, jitter=0))
    for i in range(payload.rows):
        if payload.gate is not None:
            await _gate(f"{payload.gate}-{i}")
        await step.run(f"row-{i}", lambda i=i: {"row": i, "ok": True})
        step.log.info("imported row", row=i)
        if payload.fail_until_fixed and i == 1:
            await step.run("check", _check)
        step.progress(i + 1, payload.rows, f"row {i + 1} of {payload.rows}")
    return ImportOut(imported=payload.rows)


class Expense(BaseModel):
    amount: int


class Decision(BaseModel):
    approved: bool
    by: str


class Decided(BaseModel):
    status: str
    by: str


@define_job("expense", input=Expense, output=Decided)
async def expense(step: Step, payload: Expense) -> Decided:
    wait = await step.prepare_wait(
        "approval", payload=Decision, metadata={"amount": payload.amount}
    )
    await step.run("submit", lambda: {"amount": payload.amount})
    answer = await step.wait_for(wait)  # no answer yet: the run waits here, slot released
    assert answer.payload is not None
    return Decided(status="paid" if answer.payload.approved else "rejected", by=answer.payload.by)


durably = create_durably(
    jobs={"import_csv": import_csv, "expense": expense},
    polling_interval=0.05,
    lease_renew_interval=0.2,
    lease_duration=30,
)
