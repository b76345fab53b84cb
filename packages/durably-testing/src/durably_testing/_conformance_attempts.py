"""Conformance cases for retries: attempt records, a run waiting for a step's next
attempt, a retry of the whole run, and what the run's other transitions do to them.

The rules are those of :mod:`durably.lifecycle` (``backed_off``,
``retry_scheduled``, ``retried``); every time is an argument. The fencing of
``record_attempt``, ``schedule_retry`` and ``persist_step(attempt=…)`` is checked
with the other fenced writes (``test_fenced_write__…``), their text with the other
text cases (``test_text__…``).

Part of :mod:`durably_testing.conformance`; import from there.
"""

from __future__ import annotations

import asyncio

import msgspec

from durably import (
    Attempt,
    AttemptStatus,
    ConflictError,
    NewAttempt,
    RunStatus,
    StepStatus,
    Storage,
)

from ._conformance_base import ConformanceBase, js


class AttemptCases(ConformanceBase):
    """Retries (see the module docstring)."""

    def record_of(self, new: NewAttempt, run_id: str, generation: int = 1) -> Attempt:
        """The record ``new`` is expected to be read back as."""
        return Attempt(
            id=new.id,
            run_id=run_id,
            step_name=new.step_name,
            step_index=new.step_index,
            attempt=new.attempt,
            status=new.status,
            lease_generation=generation,
            error=new.error,
            started_at=new.started_at,
            completed_at=new.completed_at,
            next_attempt_at=new.next_attempt_at,
        )

    # -- record_attempt --

    async def test_enqueue__a_new_run_is_at_attempt_1(self, storage: Storage) -> None:
        run = await self.create(storage)
        assert run.attempt == 1
        assert (await self.run_of(storage, run.id)).attempt == 1

    async def test_get_attempts__unknown_run_is_empty(self, storage: Storage) -> None:
        assert await storage.get_attempts(self.new_id()) == []

    async def test_record_attempt__stores_a_failed_attempt_and_leaves_the_run(
        self, storage: Storage
    ) -> None:
        run = await self.lease(storage)
        before = await self.run_of(storage, run.id)
        new = self.new_attempt("fetch", 1, index=3, error="HTTP 503", next_at=10)
        assert await storage.record_attempt(run.id, 1, new, self.at(2))
        assert await storage.get_attempts(run.id) == [self.record_of(new, run.id)]
        assert await self.run_of(storage, run.id) == before, "the run itself is unchanged"
        assert await storage.get_steps(run.id) == [], "an attempt is not a step row"

    async def test_record_attempt__settles_the_started_record_of_the_same_id(
        self, storage: Storage
    ) -> None:
        run = await self.lease(storage)
        started = self.new_attempt("fetch", 2, status=AttemptStatus.STARTED, started=3)
        assert await storage.record_attempt(run.id, 1, started, self.at(3))
        assert await storage.get_attempts(run.id) == [self.record_of(started, run.id)]
        failed = msgspec.structs.replace(
            started,
            status=AttemptStatus.FAILED,
            error="timeout",
            completed_at=self.at(4),
            next_attempt_at=self.at(8),
        )
        assert await storage.record_attempt(run.id, 1, failed, self.at(4))
        [record] = await storage.get_attempts(run.id)
        assert record == self.record_of(failed, run.id)
        assert (record.attempt, record.started_at) == (2, self.at(3))

    async def test_record_attempt__keeps_the_generation_that_wrote_it(
        self, storage: Storage
    ) -> None:
        run = await self.lease(storage, now=0, lease_for=30)
        first = self.new_attempt("fetch", 1, next_at=5)
        assert await storage.record_attempt(run.id, 1, first, self.at(2))
        again = await storage.claim_next("worker-2", self.at(31), self.at(61))
        assert again is not None
        assert again.lease_generation == 2
        second = self.new_attempt("fetch", 2, started=32)
        assert await storage.record_attempt(run.id, 2, second, self.at(33))
        assert [(a.id, a.lease_generation) for a in await storage.get_attempts(run.id)] == [
            (first.id, 1),
            (second.id, 2),
        ]

    async def test_get_attempts__oldest_first_ties_by_id(self, storage: Storage) -> None:
        run = await self.lease(storage)
        late = self.new_attempt("b", 1, started=5)
        tie_1 = self.new_attempt("a", 1, started=2, next_at=3)
        tie_2 = self.new_attempt("a", 2, started=2)
        for new in (late, tie_2, tie_1):
            assert await storage.record_attempt(run.id, 1, new, self.at(6))
        assert [a.id for a in await storage.get_attempts(run.id)] == [tie_1.id, tie_2.id, late.id]

    async def test_record_attempt__with_wake_at_releases_the_lease_until_then(
        self, storage: Storage
    ) -> None:
        run = await self.lease(storage, now=0, lease_for=30)
        new = self.new_attempt("fetch", 1, next_at=120)
        assert await storage.record_attempt(run.id, 1, new, self.at(2), wake_at=self.at(120))
        waiting = await self.run_of(storage, run.id)
        assert waiting.status is RunStatus.WAITING
        assert (waiting.lease_owner, waiting.lease_expires_at) == (None, None)
        assert (waiting.waiting_on_wait_id, waiting.wake_at) == (None, self.at(120))
        assert (waiting.lease_generation, waiting.attempt, waiting.error) == (1, 1, None)
        assert waiting.updated_at == self.at(2)
        assert await storage.get_attempts(run.id) == [self.record_of(new, run.id)]
        assert await storage.next_wake_at(self.at(3)) == self.at(120)
        assert await storage.claim_next("worker-2", self.at(119.999), self.at(150)) is None
        claimed = await storage.claim_next("worker-2", self.at(120), self.at(150))
        assert claimed is not None
        assert (claimed.id, claimed.status, claimed.lease_generation) == (
            run.id,
            RunStatus.LEASED,
            2,
        )
        assert (claimed.waiting_on_wait_id, claimed.wake_at) == (None, None)
        assert claimed.started_at == run.started_at, "the run goes on: it keeps its start"
        assert await storage.get_attempts(run.id) == [self.record_of(new, run.id)]

    async def test_record_attempt__a_backing_off_run_is_cancelled_then_retried(
        self, storage: Storage
    ) -> None:
        run = await self.lease(storage)
        new = self.new_attempt("fetch", 1, next_at=120)
        assert await storage.record_attempt(run.id, 1, new, self.at(2), wake_at=self.at(120))
        cancelled = await storage.cancel_run(run.id, self.at(3))
        assert cancelled is not None
        assert cancelled.status is RunStatus.CANCELLED
        assert (cancelled.wake_at, cancelled.completed_at) == (None, self.at(3))
        assert await storage.claim_next("worker-2", self.at(120), self.at(150)) is None
        retried = await storage.retry_run(run.id, self.at(4))
        assert retried is not None
        assert (retried.status, retried.attempt) == (RunStatus.PENDING, 1)
        assert await storage.get_attempts(run.id) == [self.record_of(new, run.id)], (
            "a retried run keeps its attempt records"
        )

    # -- persist_step with an attempt --

    async def test_persist_step__with_attempt_writes_both(self, storage: Storage) -> None:
        run = await self.lease(storage)
        started = self.new_attempt("fetch", 2, status=AttemptStatus.STARTED, started=3)
        assert await storage.record_attempt(run.id, 1, started, self.at(3))
        done = msgspec.structs.replace(
            started, status=AttemptStatus.COMPLETED, completed_at=self.at(4)
        )
        step = self.new_step("fetch", 0, output={"rows": 3}, started_at=self.at(3))
        assert await storage.persist_step(run.id, 1, step, self.at(4), attempt=done)
        assert await storage.get_attempts(run.id) == [self.record_of(done, run.id)]
        [row] = await storage.get_completed_steps(run.id)
        assert (row.id, row.output) == (step.id, {"rows": 3})
        advanced = await self.run_of(storage, run.id)
        assert (advanced.current_step_index, advanced.completed_step_count) == (1, 1)

    async def test_persist_step__a_failed_step_with_its_last_attempt(
        self, storage: Storage
    ) -> None:
        run = await self.lease(storage)
        last = self.new_attempt("fetch", 3, error="HTTP 500", started=5)
        step = self.new_step("fetch", 0, status=StepStatus.FAILED, error="HTTP 500")
        assert await storage.persist_step(run.id, 1, step, self.at(6), attempt=last)
        assert await storage.get_attempts(run.id) == [self.record_of(last, run.id)]
        assert [(s.name, s.status, s.error) for s in await storage.get_steps(run.id)] == [
            ("fetch", StepStatus.FAILED, "HTTP 500")
        ]
        stored = await self.run_of(storage, run.id)
        assert (stored.current_step_index, stored.completed_step_count) == (0, 0)

    async def test_persist_step__refused_duplicate_writes_no_attempt(
        self, storage: Storage
    ) -> None:
        run = await self.lease(storage)
        assert await storage.persist_step(run.id, 1, self.new_step("s", 0, output=1), self.at(3))
        before = await self.snapshot(storage, run.id)
        attempt = self.new_attempt("s", 1, status=AttemptStatus.COMPLETED)
        try:
            await storage.persist_step(
                run.id, 1, self.new_step("s", 1, output=2), self.at(4), attempt=attempt
            )
        except ConflictError:
            pass
        else:
            raise AssertionError("a second completed step of one name must be a ConflictError")
        assert await self.snapshot(storage, run.id) == before, "all or nothing"

    # -- schedule_retry --

    async def test_schedule_retry__the_run_waits_for_its_next_attempt(
        self, storage: Storage
    ) -> None:
        run = await self.lease(storage, now=10, lease_for=30)
        assert await storage.persist_step(run.id, 1, self.new_step("a", 0, output=1), self.at(11))
        waiting = await storage.schedule_retry(run.id, 1, "HTTP 503", self.at(70), self.at(12))
        assert waiting is not None
        assert await self.run_of(storage, run.id) == waiting
        assert (waiting.status, waiting.attempt, waiting.error) == (
            RunStatus.WAITING,
            2,
            "HTTP 503",
        )
        assert (waiting.lease_owner, waiting.lease_expires_at) == (None, None)
        assert (waiting.waiting_on_wait_id, waiting.wake_at) == (None, self.at(70))
        assert (waiting.started_at, waiting.completed_at) == (self.at(10), None)
        assert (waiting.updated_at, waiting.completed_step_count) == (self.at(12), 1)
        assert await storage.next_wake_at(self.at(12)) == self.at(70)
        assert await storage.claim_next("w2", self.at(69), self.at(99)) is None
        again = await storage.claim_next("w2", self.at(70), self.at(100))
        assert again is not None
        assert (again.id, again.lease_generation, again.attempt) == (run.id, 2, 2)
        assert again.started_at == self.at(10), "a run deadline counts from the first start"
        assert [s.name for s in await storage.get_completed_steps(run.id)] == ["a"]
        third = await storage.schedule_retry(run.id, 2, "HTTP 500", self.at(200), self.at(71))
        assert third is not None
        assert third.attempt == 3
        again = await storage.claim_next("w3", self.at(200), self.at(230))
        assert again is not None
        assert await storage.fail_run(run.id, 3, "HTTP 500", self.at(201))
        failed = await self.run_of(storage, run.id)
        assert (failed.status, failed.attempt, failed.error) == (
            RunStatus.FAILED,
            3,
            "HTTP 500",
        )
        retried = await storage.retry_run(run.id, self.at(300))
        assert retried is not None
        assert (retried.attempt, retried.started_at, retried.error) == (1, None, None)
        fresh = await storage.claim_next("w4", self.at(301), self.at(331))
        assert fresh is not None
        assert (fresh.attempt, fresh.started_at) == (1, self.at(301))

    async def test_schedule_retry__a_waiting_run_can_be_cancelled(self, storage: Storage) -> None:
        run = await self.lease(storage)
        assert await storage.schedule_retry(run.id, 1, "boom", self.at(60), self.at(2))
        cancelled = await storage.cancel_run(run.id, self.at(3))
        assert cancelled is not None
        assert (cancelled.status, cancelled.wake_at) == (RunStatus.CANCELLED, None)
        assert await storage.claim_next("w2", self.at(60), self.at(90)) is None

    # -- what the run's other transitions do to its attempt records --

    async def test_attempts__survive_a_completion_that_deletes_the_steps(
        self, storage: Storage
    ) -> None:
        run = await self.lease(storage)
        new = self.new_attempt("fetch", 1, next_at=3)
        assert await storage.record_attempt(run.id, 1, new, self.at(2))
        assert await storage.complete_run(run.id, 1, js("ok"), self.at(4), delete_steps=True)
        assert await storage.get_attempts(run.id) == [self.record_of(new, run.id)]

    async def test_attempts__go_with_the_run(self, storage: Storage) -> None:
        deleted = await self.lease(storage)
        purged = await self.lease(storage)
        kept = await self.lease(storage)
        for run in (deleted, purged, kept):
            assert await storage.record_attempt(run.id, 1, self.new_attempt(), self.at(2))
        assert await storage.fail_run(deleted.id, 1, "x", self.at(3))
        assert await storage.fail_run(purged.id, 1, "x", self.at(3))
        assert await storage.delete_run(deleted.id) is not None
        assert await storage.get_attempts(deleted.id) == []
        assert await storage.purge_runs(self.at(4), 10) == 1
        assert await storage.get_attempts(purged.id) == []
        assert len(await storage.get_attempts(kept.id)) == 1

    # -- at the same time --

    async def test_concurrent__back_off_racing_a_cancel(self, storage: Storage) -> None:
        run = await self.lease(storage)
        new = self.new_attempt("fetch", 1, next_at=60)
        backed_off, cancelled = await asyncio.gather(
            storage.record_attempt(run.id, 1, new, self.at(2), wake_at=self.at(60)),
            storage.cancel_run(run.id, self.at(2)),
        )
        assert cancelled is not None, "a running or waiting run can be cancelled"
        final = await self.run_of(storage, run.id)
        assert final.status is RunStatus.CANCELLED
        attempts = await storage.get_attempts(run.id)
        if backed_off:  # the back-off came first, then the cancel
            assert cancelled.status is RunStatus.CANCELLED
            assert attempts == [self.record_of(new, run.id)]
        else:  # the cancel came first: the refused back-off wrote nothing
            assert attempts == []

    async def test_concurrent__retry_racing_the_completion_of_one_lease(
        self, storage: Storage
    ) -> None:
        run = await self.lease(storage)
        retried, completed = await asyncio.gather(
            storage.schedule_retry(run.id, 1, "boom", self.at(60), self.at(2)),
            storage.complete_run(run.id, 1, js(1), self.at(2), delete_steps=False),
        )
        assert (retried is not None) != completed, "exactly one of them applies"
        final = await self.run_of(storage, run.id)
        expected = RunStatus.WAITING if retried is not None else RunStatus.COMPLETED
        assert final.status is expected
        assert final.attempt == (2 if retried is not None else 1)
