"""A job that waits for a human: an expense report asks for approval, the run waits
(without holding a worker) until someone answers from the command line, or gives up
after a deadline.

    uv run python examples/approval.py request 120 "team dinner"   # prints the run id
    uv run python examples/approval.py worker                      # runs it until it waits
    uv run python examples/approval.py approve RUN_ID ann          # (or: reject RUN_ID ann)
    uv run python examples/approval.py worker                      # resumes it: paid
    uv run python examples/approval.py status RUN_ID
    uv run python examples/approval.py worker --until RUN_ID       # a worker until it is done

Each command is its own process on one database (``DURABLY_DATABASE_URL``, by
default ``sqlite:///approval.db``): the wait survives them all. The job prepares the
wait *before* it notifies the approver, so even an instant answer finds its address;
``step.wait_for`` then returns the decision, or suspends the run until it comes.
Over HTTP the same answer is ``POST /signal?runId=…`` with ``{"name": "decision",
"payload": {...}}`` (``durably.http.create_handler``). Past the deadline
(``APPROVAL_TIMEOUT`` seconds, default a day) the wait times out and the job
escalates instead.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from pydantic import BaseModel

from durably import (
    NotFoundError,
    SignalRejectedError,
    Step,
    create_durably,
    define_job,
)

TIMEOUT = float(os.environ.get("APPROVAL_TIMEOUT", str(24 * 3600)))
URL = os.environ.get("DURABLY_DATABASE_URL", "sqlite:///approval.db")


class Expense(BaseModel):
    amount: int
    what: str


class Decision(BaseModel):
    approved: bool
    by: str


class Outcome(BaseModel):
    status: str
    by: str | None = None


def notify_approver(run_id: str, expense: Expense) -> str:
    # a real job sends a mail or a chat message with a link carrying the address
    print(
        f"  asking for approval of {expense.amount} for {expense.what!r}: "
        f"answer with `approval.py approve {run_id} <name>`",
        flush=True,
    )
    return "notified"


def pay(expense: Expense) -> str:
    print(f"  paying {expense.amount} for {expense.what!r}", flush=True)
    return "paid"


@define_job("expense-approval", input=Expense, output=Outcome)
async def expense_approval(step: Step, expense: Expense) -> Outcome:
    # prepare the address first, then do what leads someone to use it
    wait = await step.prepare_wait(
        "decision", timeout=TIMEOUT, payload=Decision, metadata=expense.model_dump()
    )
    await step.run("notify", notify_approver, step.run_id, expense)
    answer = await step.wait_for(wait)
    if answer.timed_out:
        await step.run("escalate", print, "  nobody answered in time: escalated")
        return Outcome(status="escalated")
    decision = answer.payload
    assert decision is not None
    if not decision.approved:
        return Outcome(status="rejected", by=decision.by)
    await step.run("pay", pay, expense)
    return Outcome(status="paid", by=decision.by)


async def request(amount: int, what: str) -> None:
    # no worker here (not `async with`, which starts one): a worker process runs it
    d = create_durably(URL, jobs={"expense": expense_approval})
    try:
        await d.migrate()
        result = await d.jobs.expense.trigger({"amount": amount, "what": what})
        print(f"requested: run {result.id}", flush=True)
    finally:
        await d.close()


async def worker(until: str | None) -> None:
    """Runs every run that is ready, until none is (a run that waits is not ready);
    with ``until``, a worker that keeps going until that run has finished."""
    d = create_durably(URL, jobs={"expense": expense_approval}, polling_interval=0.2)
    try:
        if until is None:
            count = await d.process_until_idle()
            print(f"worker: processed {count} run(s)", flush=True)
            return
        d.start()
        run = await d.wait_for_run(until)
        print(f"worker: run {until} finished: {run.output}", flush=True)
    finally:
        await d.close()


async def answer(run_id: str, by: str, approved: bool) -> int:
    d = create_durably(URL, jobs={"expense": expense_approval})
    try:
        receipt = await d.signal(
            run_id, "decision", {"approved": approved, "by": by}, signal_id=f"{by}-{run_id}"
        )
        print(f"answer: {receipt.disposition}", flush=True)
        return 0
    except (NotFoundError, SignalRejectedError) as exc:
        print(f"answer refused: {exc}", flush=True)
        return 1
    finally:
        await d.close()


async def status(run_id: str) -> int:
    d = create_durably(URL, jobs={"expense": expense_approval})
    try:
        run = await d.get_run(run_id)
        if run is None:
            print(f"no run {run_id}", flush=True)
            return 1
        waits = {w.name: w for w in await d.get_waits(run_id)}
        wait = waits.get("decision")
        where = "" if wait is None else f"; decision: {wait.status.value} ({wait.outcome})"
        print(f"status: {run.status.value}; output: {run.output}{where}", flush=True)
        return 0
    finally:
        await d.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    req = commands.add_parser("request")
    req.add_argument("amount", type=int)
    req.add_argument("what")
    work = commands.add_parser("worker")
    work.add_argument("--until", metavar="RUN_ID", help="keep working until this run finished")
    for name in ("approve", "reject"):
        cmd = commands.add_parser(name)
        cmd.add_argument("run_id")
        cmd.add_argument("by")
    st = commands.add_parser("status")
    st.add_argument("run_id")
    args = parser.parse_args()
    if args.command == "request":
        asyncio.run(request(args.amount, args.what))
        return 0
    if args.command == "worker":
        asyncio.run(worker(args.until))
        return 0
    if args.command in ("approve", "reject"):
        return asyncio.run(answer(args.run_id, args.by, args.command == "approve"))
    return asyncio.run(status(args.run_id))


if __name__ == "__main__":
    sys.exit(main())
