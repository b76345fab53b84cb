"""A step against a flaky API: retried with growing delays, durably.

    uv run python examples/flaky_api.py        # uses DURABLY_DATABASE_URL or sqlite:///durably.db

The pretend exchange-rate API answers ``503`` to its first two calls (it keeps
count in a file beside the database, so it stays flaky across restarts of this
program). ``step.run(..., retry=Retry(...))`` tries the call again after 1 s,
then 2 s; the third attempt gets the rate. Each failed attempt is recorded in the
database before the wait, and a wait this long lets the run wait without a
worker slot (status ``waiting``) until the next attempt is due.

Kill the program while it waits (Ctrl-C, or kill -9) and run it again: the same
run (same idempotency key) resumes with the attempt it was at — not attempt 1
again — and not before that attempt's time.

Then a request the API refuses for good (``400``) raises ``NonRetryableError``:
the run fails at once, after one attempt.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel

from durably import (
    NonRetryableError,
    Retry,
    RunFailedError,
    Step,
    StepRetryEvent,
    create_durably,
    define_job,
)

#: The first backoff in seconds (then twice as long each time).
INITIAL = float(os.environ.get("FLAKY_INITIAL", "1.0"))
#: Where the pretend API keeps its call log (it must outlive this process).
CALLS = Path(os.environ.get("FLAKY_CALLS", "flaky-api-calls.json"))


class QuoteIn(BaseModel):
    pair: str


class Quote(BaseModel):
    pair: str
    rate: float


def exchange_api(pair: str) -> dict[str, object]:
    """The flaky upstream: a sync call (durably runs it in a worker thread)."""
    calls: list[float] = json.loads(CALLS.read_text()) if CALLS.exists() else []
    calls.append(time.time())
    CALLS.write_text(json.dumps(calls))
    print(f"  API call #{len(calls)} for {pair}", flush=True)
    if pair == "XXX/YYY":
        raise NonRetryableError("HTTP 400: unknown currency pair XXX/YYY")
    if len(calls) <= 2:
        raise ConnectionError("HTTP 503: service unavailable")
    return {"pair": pair, "rate": 1.0842}


@define_job("fetch-quote", input=QuoteIn, output=Quote)
async def fetch_quote(step: Step, job: QuoteIn) -> Quote:
    quote = await step.run(
        "call-api",
        exchange_api,
        job.pair,
        retry=Retry(max_attempts=5, initial=INITIAL, factor=2, jitter=0),
        timeout=10,
    )
    return Quote.model_validate(quote)


def on_retry(event: StepRetryEvent) -> None:
    at = datetime.fromtimestamp(event.next_attempt_at.timestamp()).strftime("%H:%M:%S.%f")[:-3]
    print(
        f"step:retry attempt {event.attempt} failed ({event.error}); "
        f"next in {event.delay:.1f}s at {at}",
        flush=True,
    )


async def main() -> None:
    async with create_durably(
        jobs={"fetch_quote": fetch_quote},
        # a short lease: after a kill, the next start resumes within seconds; a
        # backoff of at least lease_renew_interval waits without a worker slot
        lease_duration=3.0,
        lease_renew_interval=0.5,
        polling_interval=0.2,
    ) as durably:
        durably.on("step:retry", on_retry)
        result = await durably.jobs.fetch_quote.trigger_and_wait(
            {"pair": "EUR/USD"}, idempotency_key="EUR/USD"
        )
        print(f"run {result.id} ({result.disposition}) -> {result.output.model_dump_json()}")
        for attempt in await durably.get_attempts(result.id):
            print(f"  recorded: attempt {attempt.attempt} {attempt.status.value}: {attempt.error}")

        try:
            await durably.jobs.fetch_quote.trigger_and_wait(
                {"pair": "XXX/YYY"}, idempotency_key="XXX/YYY"
            )
        except RunFailedError as exc:
            print(f"bad request: {exc}")


if __name__ == "__main__":
    asyncio.run(main())
