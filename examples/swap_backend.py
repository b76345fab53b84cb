"""Swap backends by configuration: the program never names one.

    DURABLY_DATABASE_URL=sqlite:///local.db     uv run python examples/swap_backend.py
    DURABLY_DATABASE_URL=file:local.db          uv run python examples/swap_backend.py
    DURABLY_DATABASE_URL=postgresql://app@db.internal:5432/jobs PGPASSWORD=... \\
                                                uv run python examples/swap_backend.py
    DURABLY_DATABASE_URL=libsql://<db>-<org>.turso.io TURSO_AUTH_TOKEN=... \\
                                                uv run python examples/swap_backend.py

``create_durably()`` without a URL reads ``DURABLY_DATABASE_URL``; the scheme picks
the backend (``sqlite:``/``file:`` a local SQLite file, ``postgresql://`` a
PostgreSQL server, ``libsql://``/``https://``/``http://`` a libSQL server, reached
over Hrana HTTP). Everything else — the job, its steps, the checkpoints, resuming —
is the same. The output names the kind of database and then prints the same lines
on each.
"""

from __future__ import annotations

import asyncio
import os

from pydantic import BaseModel

from durably import Step, create_durably, define_job


class OrderIn(BaseModel):
    order_id: str
    items: list[int]


class OrderOut(BaseModel):
    order_id: str
    total: int
    receipt: str


@define_job("bill-order", input=OrderIn, output=OrderOut)
async def bill_order(step: Step, order: OrderIn) -> OrderOut:
    subtotal = await step.run("price", sum, order.items)
    total = await step.run("tax", lambda: round(subtotal * 1.1))
    receipt = await step.run("receipt", lambda: f"R-{order.order_id}-{total}")
    return OrderOut(order_id=order.order_id, total=total, receipt=receipt)


def where(url: str) -> str:
    scheme = url.partition(":")[0]
    if scheme in ("postgresql", "postgres"):
        return "a PostgreSQL server"
    return "a libSQL server" if scheme in ("libsql", "https", "http") else "a local file"


async def main() -> None:
    url = os.environ.get("DURABLY_DATABASE_URL", "sqlite:///durably.db")
    print(f"database: {where(url)}")
    async with create_durably(jobs={"bill_order": bill_order}, polling_interval=0.2) as durably:
        for order_id, items in (("A-1", [10, 20, 30]), ("A-2", [5, 5])):
            result = await durably.jobs.bill_order.trigger_and_wait(
                {"order_id": order_id, "items": items}, idempotency_key=order_id
            )
            out = result.output
            print(f"{out.order_id}: total={out.total} receipt={out.receipt} ({result.disposition})")
        done = await durably.get_runs(status="completed", job_name="bill-order")
        print(f"completed runs: {len(done)}")


if __name__ == "__main__":
    asyncio.run(main())
