"""Concurrency keys: one run per key at a time, and what a second trigger gets.

    uv run python examples/concurrency.py

Typical use: "sync this user's account" must never run twice at once for the
same user, but different users may sync in parallel. With
``concurrency_key=user``:

- at most one run per key *executes* at a time (across slots, processes, machines);
- at most one run per key is *pending*: triggering another one raises
  ``ConflictError`` — or, with ``coalesce="skip"``, returns the pending run
  (``disposition="coalesced"``): the request is folded into the queued one.
"""

from __future__ import annotations

import asyncio
import os

from pydantic import BaseModel

from durably import ConflictError, RunLeasedEvent, Step, create_durably, define_job

SYNC_SECONDS = float(os.environ.get("CONCURRENCY_SYNC_SECONDS", "0.5"))


class SyncIn(BaseModel):
    user: str
    reason: str


async def pull_changes(user: str, reason: str) -> int:
    print(f"  sync {user} start ({reason})", flush=True)
    await asyncio.sleep(SYNC_SECONDS)
    print(f"  sync {user} done  ({reason})", flush=True)
    return 3


@define_job("sync-account", input=SyncIn, output=int)
async def sync_account(step: Step, job: SyncIn) -> int:
    changes: int = await step.run("pull", pull_changes, job.user, job.reason)
    return changes


async def main() -> None:
    # Two slots, so that runs with *different* keys can execute side by side.
    durably = create_durably(jobs={"sync": sync_account}, max_concurrent_runs=2)
    # No `async with` here: we want the runs queued *before* the worker starts,
    # so that they are all still pending when we trigger the duplicates.
    await durably.migrate()
    try:
        sync = durably.jobs.sync
        first = await sync.trigger({"user": "ada", "reason": "login"}, concurrency_key="ada")
        print(f"ada #1: {first.disposition} {first.id}")

        try:
            await sync.trigger({"user": "ada", "reason": "webhook"}, concurrency_key="ada")
        except ConflictError as exc:
            print(f"ada #2: ConflictError: {exc}")

        folded = await sync.trigger(
            {"user": "ada", "reason": "cron"}, concurrency_key="ada", coalesce="skip"
        )
        print(f"ada #3: {folded.disposition} {folded.id} (same as #1: {folded.id == first.id})")

        bob = await sync.trigger({"user": "bob", "reason": "login"}, concurrency_key="bob")
        print(f"bob #1: {bob.disposition} {bob.id}")

        # Once ada's run executes it is no longer *pending*, so a new trigger queues
        # behind it — and waits: the key lets only one of them execute at a time.
        ada_started = asyncio.Event()

        def on_leased(event: RunLeasedEvent) -> None:
            if event.run_id == first.id:
                ada_started.set()

        durably.on("run:leased", on_leased)
        print("starting the worker")
        durably.start()
        await ada_started.wait()
        again = await sync.trigger({"user": "ada", "reason": "edit"}, concurrency_key="ada")
        print(f"ada #4: {again.disposition} {again.id} (queued while #1 runs)")

        for run_id in (first.id, bob.id, again.id):
            await durably.wait_for_run(run_id)
        print("all done")
    finally:
        await durably.close()


if __name__ == "__main__":
    asyncio.run(main())
