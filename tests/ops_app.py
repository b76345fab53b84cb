"""The app the operators' tools are tried on (``durably worker ops_app:durably``):
one job whose pace and failures the test controls through files, so no test waits
on a timer.

- ``gate``: before step ``i`` the job waits until ``$OPS_DIR/<gate>-<i>`` exists.
- ``fail_until_fixed``: the step ``check`` raises until ``$OPS_DIR/fixed`` exists, so
  a failed run succeeds when retried after the "fix".

``create_durably()`` reads ``DURABLY_DATABASE_URL`` (the CLI's ``--url`` sets it).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from pydantic import BaseModel

from durably import Step, create_durably, define_job


def _dir() -> Path:
    return Path(os.environ.get("OPS_DIR", "."))


class ImportIn(BaseModel):
    rows: int = 3
    gate: str | None = None
    fail_until_fixed: bool = False


class ImportOut(BaseModel):
    imported: int


async def _gate(name: str) -> None:
    path = _dir() / name
    # the test creates the file in another process: no asyncio.Event can carry it
    while not path.exists():  # noqa: ASYNC110
        await asyncio.sleep(0.01)


def _check() -> str:
    if not (_dir() / "fixed").exists():
        raise RuntimeError("row 2: price is not a number ('12,50')")
    return "ok"


@define_job("import-csv", input=ImportIn, output=ImportOut)
async def import_csv(step: Step, payload: ImportIn) -> ImportOut:
    for i in range(payload.rows):
        if payload.gate is not None:
            await _gate(f"{payload.gate}-{i}")
        await step.run(f"row-{i}", lambda i=i: {"row": i, "ok": True})
        step.log.info("imported row", row=i)
        if payload.fail_until_fixed and i == 1:
            await step.run("check", _check)
        step.progress(i + 1, payload.rows, f"row {i + 1} of {payload.rows}")
    return ImportOut(imported=payload.rows)


durably = create_durably(
    jobs={"import_csv": import_csv},
    polling_interval=0.05,
    lease_renew_interval=0.2,
    lease_duration=30,
)
