"""Listen to what the engine does: triggers, leases, finished steps, finished runs.

    uv run python examples/events.py

`durably.on(type, listener)` calls the listener in this process for every event
of that type (sync or async listeners both work) and returns a function that
unsubscribes it. Use it for logging, metrics or pushing updates to a UI.
"""

from __future__ import annotations

import asyncio
import logging

from pydantic import BaseModel

from durably import (
    RunCompleteEvent,
    RunFailedError,
    RunFailEvent,
    RunLeasedEvent,
    RunTriggerEvent,
    Step,
    StepCompleteEvent,
    create_durably,
    define_job,
)

log = logging.getLogger("events-example")


class OrderIn(BaseModel):
    order_id: str
    amount: int


class OrderOut(BaseModel):
    receipt: str


def charge(amount: int) -> str:
    if amount <= 0:
        raise ValueError(f"cannot charge {amount}")
    return f"ch_{amount}"


@define_job("checkout", input=OrderIn, output=OrderOut)
async def checkout(step: Step, order: OrderIn) -> OrderOut:
    charge_id = await step.run("charge", charge, order.amount)
    receipt = await step.run("receipt", lambda: f"receipt-{order.order_id}-{charge_id}")
    return OrderOut(receipt=receipt)


# One listener per event type; each receives a typed event (a frozen struct).
def on_trigger(event: RunTriggerEvent) -> None:
    log.info("run:trigger   %s %s input=%s", event.job_name, event.run_id, event.input)


def on_leased(event: RunLeasedEvent) -> None:
    log.info("run:leased    %s by %s", event.run_id, event.lease_owner)


def on_step_complete(event: StepCompleteEvent) -> None:
    log.info(
        "step:complete %s #%d %s -> %r (%.1f ms)",
        event.run_id,
        event.step_index,
        event.step_name,
        event.output,
        event.duration,
    )


def on_complete(event: RunCompleteEvent) -> None:
    log.info("run:complete  %s in %.1f ms output=%s", event.run_id, event.duration, event.output)


async def on_fail(event: RunFailEvent) -> None:
    # Async listeners are fine too: the engine runs them as tasks and never waits
    # for them on the hot path (stop() waits for the ones still running).
    log.info("run:fail      %s step=%s error=%s", event.run_id, event.failed_step_name, event.error)


async def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    async with create_durably(jobs={"checkout": checkout}, polling_interval=0.2) as durably:
        durably.on("run:trigger", on_trigger)
        durably.on("run:leased", on_leased)
        durably.on("step:complete", on_step_complete)
        durably.on("run:complete", on_complete)
        durably.on("run:fail", on_fail)

        ok = await durably.jobs.checkout.trigger_and_wait({"order_id": "A-1", "amount": 42})
        log.info("result: %s", ok.output.receipt)

        try:
            await durably.jobs.checkout.trigger_and_wait({"order_id": "A-2", "amount": 0})
        except RunFailedError as exc:
            # The run's error and the failing step travel with the exception.
            log.info("failed: step %s: %s", exc.failed_step_name, exc.error)


if __name__ == "__main__":
    asyncio.run(main())
