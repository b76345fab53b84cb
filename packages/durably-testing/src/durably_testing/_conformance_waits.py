"""Conformance cases for durable waits: preparation, suspension, signals, deadlines,
resumption, and what the run's own transitions do to its waits.

The rules are those of :mod:`durably.lifecycle` (``suspended``, ``wake_time``,
``woken``, ``signal_decision``, ``timed_out``); every time is an argument.

Part of :mod:`durably_testing.conformance`; import from there.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import pytest

from durably import (
    NewSignal,
    NewWait,
    NotFoundError,
    Run,
    RunFilter,
    RunStatus,
    Storage,
    Wait,
    WaitKind,
    WaitStatus,
)

from ._conformance_base import ConformanceBase, js


class WaitCases(ConformanceBase):
    """Durable waits (see the module docstring)."""

    async def leased_waiting(
        self,
        storage: Storage,
        *,
        name: str = "approval",
        kind: WaitKind = "signal",
        deadline: float | None = None,
        suspend_at: float = 2,
        **kwargs: Any,
    ) -> tuple[Run, Wait]:
        """A run claimed at 0 (lease 30 s), a wait prepared at 1, suspended on at
        ``suspend_at``. Returns the suspended run and the wait as prepared."""
        run = await self.lease(storage, **kwargs)
        wait = await self.prepared(storage, run, name, kind=kind, deadline=deadline)
        waiting = await storage.suspend_run(run.id, 1, wait.id, self.at(suspend_at))
        assert waiting is not None, "suspend_run by the lease holder returned None"
        return waiting, wait

    async def wait_of(self, storage: Storage, run_id: str, name: str = "approval") -> Wait:
        wait = await storage.get_wait(run_id, name)
        assert wait is not None
        return wait

    # -- prepare_wait --

    async def test_prepare_wait__creates_a_pending_wait(self, storage: Storage) -> None:
        run = await self.lease(storage)
        new = self.new_wait("approval", deadline=3600, metadata={"pr": 7, "title": "日本語"})
        wait = await storage.prepare_wait(run.id, 1, new, self.at(1))
        assert wait is not None
        assert (wait.id, wait.run_id, wait.name) == (new.id, run.id, "approval")
        assert wait.kind == "signal"
        assert wait.status is WaitStatus.PENDING
        assert (wait.outcome, wait.payload, wait.signal_id) == (None, None, None)
        assert wait.metadata == {"pr": 7, "title": "日本語"}
        assert wait.deadline_at == self.at(3600)
        assert wait.created_at == self.at(1)
        assert (wait.suspended_at, wait.resolved_at, wait.first_resumed_at) == (None, None, None)
        assert await storage.get_wait(run.id, "approval") == wait
        assert await storage.get_waits(run.id) == [wait]
        # preparing a wait does not change the run
        stored = await self.run_of(storage, run.id)
        assert stored.status is RunStatus.LEASED
        assert (stored.waiting_on_wait_id, stored.wake_at) == (None, None)

    async def test_prepare_wait__again_returns_the_first_preparation(
        self, storage: Storage
    ) -> None:
        run = await self.lease(storage)
        first = await self.prepared(storage, run, deadline=60, metadata={"v": 1})
        again = await storage.prepare_wait(
            run.id, 1, self.new_wait("approval", deadline=9999, kind="timer"), self.at(50)
        )
        assert again == first, "the deadline (and kind, metadata) of the first preparation stay"
        assert await storage.get_waits(run.id) == [first]

    async def test_prepare_wait__without_a_deadline_or_metadata(self, storage: Storage) -> None:
        run = await self.lease(storage)
        wait = await self.prepared(storage, run, "forever", kind="timer")
        assert (wait.deadline_at, wait.metadata, wait.kind) == (None, None, "timer")

    @pytest.mark.parametrize("scenario", ["wrong_generation", "reclaimed", "cancelled", "done"])
    async def test_prepare_wait__refused_without_the_lease(
        self, storage: Storage, scenario: str
    ) -> None:
        run = await self.lease(storage, lease_for=30)
        generation = 1
        if scenario == "wrong_generation":
            generation = 2
        elif scenario == "reclaimed":
            assert await storage.claim_next("w2", self.at(31), self.at(61)) is not None
        elif scenario == "cancelled":
            assert await storage.cancel_run(run.id, self.at(1)) is not None
        else:
            assert await storage.complete_run(run.id, 1, js(1), self.at(1), delete_steps=False)
        new = self.new_wait("approval")
        assert await storage.prepare_wait(run.id, generation, new, self.at(32)) is None
        assert await storage.get_waits(run.id) == []
        assert await storage.prepare_wait(self.new_id(), 1, new, self.at(1)) is None

    async def test_prepare_wait__names_are_scoped_to_the_run(self, storage: Storage) -> None:
        a = await self.lease(storage, job_name="job-a")
        b = await self.lease(storage, job_name="job-b")
        wa = await self.prepared(storage, a)
        wb = await self.prepared(storage, b)
        assert wa.id != wb.id
        assert await storage.get_waits(a.id) == [wa]
        assert await storage.get_waits(b.id) == [wb]

    async def test_get_waits__oldest_first_and_unknown_reads(self, storage: Storage) -> None:
        run = await self.lease(storage)
        later = await self.prepared(storage, run, "b", created_at=self.at(5))
        earlier = await self.prepared(storage, run, "a", created_at=self.at(3))
        same_time = await self.prepared(storage, run, "c", created_at=self.at(5))
        assert await storage.get_waits(run.id) == [earlier, later, same_time]
        assert await storage.get_wait(run.id, "nope") is None
        assert await storage.get_waits(self.new_id()) == []
        assert await storage.get_wait(self.new_id(), "a") is None

    # -- suspend_run and resumption --

    async def test_suspend_run__releases_the_lease_until_a_signal(self, storage: Storage) -> None:
        run = await self.lease(storage, now=0, lease_for=30)
        wait = await self.prepared(storage, run)
        waiting = await storage.suspend_run(run.id, 1, wait.id, self.at(2))
        assert waiting is not None
        assert waiting.status is RunStatus.WAITING
        assert waiting.is_waiting
        assert (waiting.lease_owner, waiting.lease_expires_at) == (None, None)
        assert waiting.lease_generation == 1
        assert (waiting.waiting_on_wait_id, waiting.wake_at) == (wait.id, None)
        assert waiting.updated_at == self.at(2)
        assert waiting.started_at == run.started_at
        assert await self.run_of(storage, run.id) == waiting
        assert (await self.wait_of(storage, run.id)).suspended_at == self.at(2)
        # no deadline: no time makes it claimable
        assert await storage.claim_next("w", self.at(10**6), self.at(10**6 + 30)) is None
        # the lease is gone: fenced writes are refused
        assert not await storage.persist_step(run.id, 1, self.new_step("s", 0), self.at(3))
        assert not await storage.renew_lease(run.id, 1, self.at(3), self.at(33))

    async def test_suspend_run__signal_makes_the_run_claimable_at_once(
        self, storage: Storage
    ) -> None:
        run, _ = await self.leased_waiting(storage)
        outcome = await storage.signal_wait(
            run.id, "approval", self.new_signal({"ok": 1}), self.at(9)
        )
        assert outcome.disposition == "accepted"
        woken = await self.run_of(storage, run.id)
        assert woken.status is RunStatus.WAITING
        assert woken.wake_at == self.at(9)
        assert await storage.claim_next("w2", self.at(8.999), self.at(38)) is None
        claimed = await storage.claim_next("w2", self.at(9), self.at(39))
        assert claimed is not None
        assert claimed.id == run.id
        assert claimed.status is RunStatus.LEASED
        assert (claimed.lease_owner, claimed.lease_generation) == ("w2", 2)
        assert (claimed.waiting_on_wait_id, claimed.wake_at) == (None, None)
        assert claimed.started_at == run.started_at, "a resumed run keeps its start"
        assert await storage.claim_next("w3", self.at(10), self.at(40)) is None, "resumed once"

    async def test_suspend_run__deadline_makes_the_run_claimable(self, storage: Storage) -> None:
        run, wait = await self.leased_waiting(storage, deadline=100)
        assert run.wake_at == self.at(100)
        assert await storage.claim_next("w", self.at(99.999), self.at(130)) is None
        claimed = await storage.claim_next("w", self.at(100), self.at(130))
        assert claimed is not None
        assert claimed.id == run.id
        # resumed, the job reads the wait: timed out at its deadline
        result = await storage.wait_result(run.id, 2, wait.id, self.at(101), self.at(100))
        assert result is not None
        assert result.status is WaitStatus.RESOLVED
        assert (result.outcome, result.payload) == ("timeout", None)
        assert result.resolved_at == self.at(100)
        assert result.first_resumed_at == self.at(100)
        assert await self.wait_of(storage, run.id) == result

    async def test_suspend_run__on_a_wait_with_its_result_wakes_at_once(
        self, storage: Storage
    ) -> None:
        # a signal that arrives before the job suspends is kept, and the suspension
        # hands the run straight back to the queue
        run = await self.lease(storage)
        wait = await self.prepared(storage, run)
        outcome = await storage.signal_wait(run.id, "approval", self.new_signal("yes"), self.at(2))
        assert outcome.disposition == "accepted"
        leased = await self.run_of(storage, run.id)
        assert (leased.status, leased.wake_at) == (RunStatus.LEASED, None)
        waiting = await storage.suspend_run(run.id, 1, wait.id, self.at(3))
        assert waiting is not None
        assert (waiting.status, waiting.wake_at) == (RunStatus.WAITING, self.at(3))
        claimed = await storage.claim_next("w", self.at(3), self.at(33))
        assert claimed is not None
        assert claimed.id == run.id

    async def test_suspend_run__on_a_due_wait_wakes_at_its_deadline(self, storage: Storage) -> None:
        run = await self.lease(storage)
        wait = await self.prepared(storage, run, deadline=5)
        waiting = await storage.suspend_run(run.id, 1, wait.id, self.at(8))
        assert waiting is not None
        assert waiting.wake_at == self.at(5)
        assert await storage.claim_next("w", self.at(8), self.at(38)) is not None

    @pytest.mark.parametrize("scenario", ["wrong_generation", "reclaimed", "cancelled", "no_wait"])
    async def test_suspend_run__refused_without_the_lease_or_the_wait(
        self, storage: Storage, scenario: str
    ) -> None:
        run = await self.lease(storage, lease_for=30)
        wait = await self.prepared(storage, run)
        other = await self.lease(storage, job_name="job-b")
        foreign = await self.prepared(storage, other, "foreign")
        generation, wait_id = 1, wait.id
        if scenario == "wrong_generation":
            generation = 2
        elif scenario == "reclaimed":
            assert await storage.claim_next("w2", self.at(31), self.at(61), ["job-a"]) is not None
        elif scenario == "cancelled":
            assert await storage.cancel_run(run.id, self.at(1)) is not None
        else:
            wait_id = foreign.id  # another run's wait
        before = await self.run_of(storage, run.id)
        before_waits = await storage.get_waits(run.id)
        assert await storage.suspend_run(run.id, generation, wait_id, self.at(32)) is None
        assert await self.run_of(storage, run.id) == before
        assert await storage.get_waits(run.id) == before_waits
        assert await storage.get_waits(other.id) == [foreign]

    async def test_suspend_run__suspended_at_is_the_first_suspension(
        self, storage: Storage
    ) -> None:
        run, wait = await self.leased_waiting(storage, deadline=10, suspend_at=2)
        claimed = await storage.claim_next("w", self.at(10), self.at(40))
        assert claimed is not None
        # resumed before reading the wait, it suspends on it again
        again = await storage.suspend_run(run.id, 2, wait.id, self.at(11))
        assert again is not None
        assert again.wake_at == self.at(10)  # due: claimable again at once
        assert (await self.wait_of(storage, run.id)).suspended_at == self.at(2)

    async def test_signal_to_another_wait_does_not_wake_the_run(self, storage: Storage) -> None:
        run = await self.lease(storage)
        await self.prepared(storage, run, "first")
        awaited = await self.prepared(storage, run, "second")
        assert await storage.suspend_run(run.id, 1, awaited.id, self.at(2)) is not None
        outcome = await storage.signal_wait(run.id, "first", self.new_signal(1), self.at(3))
        assert outcome.disposition == "accepted"
        stored = await self.run_of(storage, run.id)
        assert (stored.status, stored.wake_at) == (RunStatus.WAITING, None)
        assert await storage.claim_next("w", self.at(4), self.at(34)) is None
        outcome = await storage.signal_wait(run.id, "second", self.new_signal(2), self.at(5))
        assert outcome.disposition == "accepted"
        assert await storage.claim_next("w", self.at(5), self.at(35)) is not None

    # -- wait_result --

    async def test_wait_result__pending_before_the_deadline(self, storage: Storage) -> None:
        run = await self.lease(storage)
        wait = await self.prepared(storage, run, deadline=10)
        got = await storage.wait_result(run.id, 1, wait.id, self.at(9.999), self.at(0))
        assert got == wait

    async def test_wait_result__times_out_at_the_deadline(self, storage: Storage) -> None:
        run = await self.lease(storage)
        wait = await self.prepared(storage, run, deadline=10)
        got = await storage.wait_result(run.id, 1, wait.id, self.at(10), self.at(0))
        assert got is not None
        assert (got.status, got.outcome, got.resolved_at) == (
            WaitStatus.RESOLVED,
            "timeout",
            self.at(10),
        )
        # never suspended on it: no resumption time
        assert got.first_resumed_at is None
        # and a signal after that is refused: the wait stays timed out
        late = await storage.signal_wait(run.id, "approval", self.new_signal(1), self.at(11))
        assert late.disposition == "expired"
        assert late.wait == got

    async def test_wait_result__signal_result_and_first_resumption_kept(
        self, storage: Storage
    ) -> None:
        run, wait = await self.leased_waiting(storage)
        await storage.signal_wait(run.id, "approval", self.new_signal({"a": [1]}, "s1"), self.at(5))
        assert await storage.claim_next("w", self.at(6), self.at(36)) is not None
        got = await storage.wait_result(run.id, 2, wait.id, self.at(7), self.at(6))
        assert got is not None
        assert (got.outcome, got.payload, got.signal_id) == ("signal", {"a": [1]}, "s1")
        assert (got.resolved_at, got.first_resumed_at) == (self.at(5), self.at(6))
        # read again (a later resumption): the first one stays
        assert await storage.claim_next("w", self.at(37), self.at(67)) is not None
        again = await storage.wait_result(run.id, 3, wait.id, self.at(38), self.at(37))
        assert again == got

    async def test_wait_result__refused_without_the_lease(self, storage: Storage) -> None:
        run = await self.lease(storage)
        wait = await self.prepared(storage, run, deadline=10)
        assert await storage.wait_result(run.id, 2, wait.id, self.at(20), self.at(0)) is None
        assert await self.wait_of(storage, run.id) == wait, "nothing written"

    async def test_wait_result__unknown_wait_is_not_found(self, storage: Storage) -> None:
        run = await self.lease(storage)
        other = await self.lease(storage, job_name="job-b")
        foreign = await self.prepared(storage, other)
        for wait_id in (self.new_id(), foreign.id):
            with pytest.raises(NotFoundError):
                await storage.wait_result(run.id, 1, wait_id, self.at(1), self.at(0))

    # -- signal_wait --

    async def test_signal_wait__accepted_records_the_result(self, storage: Storage) -> None:
        run = await self.lease(storage)
        await self.prepared(storage, run, deadline=100)
        payload = {"approved": True, "by": "ゆき", "n": [1, 2.5, None]}
        outcome = await storage.signal_wait(
            run.id, "approval", self.new_signal(payload, "sig-1"), self.at(50)
        )
        assert outcome.disposition == "accepted"
        wait = outcome.wait
        assert wait is not None
        assert wait.status is WaitStatus.RESOLVED
        assert (wait.outcome, wait.payload, wait.signal_id) == ("signal", payload, "sig-1")
        assert wait.resolved_at == self.at(50)
        assert await self.wait_of(storage, run.id) == wait

    @pytest.mark.parametrize("signal_id", ["sig-1", None])
    async def test_signal_wait__same_signal_again_is_a_duplicate(
        self, storage: Storage, signal_id: str | None
    ) -> None:
        run = await self.lease(storage)
        await self.prepared(storage, run)
        first = await storage.signal_wait(
            run.id, "approval", self.new_signal({"b": 2, "a": 1}, signal_id), self.at(2)
        )
        again = await storage.signal_wait(
            run.id, "approval", self.new_signal({"a": 1, "b": 2}, signal_id), self.at(3)
        )
        assert (first.disposition, again.disposition) == ("accepted", "duplicate")
        assert again.wait == first.wait

    @pytest.mark.parametrize(
        ("signal_id", "payload"), [("sig-1", "no"), ("sig-2", "yes"), (None, "yes")]
    )
    async def test_signal_wait__another_signal_conflicts(
        self, storage: Storage, signal_id: str | None, payload: str
    ) -> None:
        run = await self.lease(storage)
        await self.prepared(storage, run)
        first = await storage.signal_wait(
            run.id, "approval", self.new_signal("yes", "sig-1"), self.at(2)
        )
        other = await storage.signal_wait(
            run.id, "approval", self.new_signal(payload, signal_id), self.at(3)
        )
        assert other.disposition == "conflict"
        assert other.wait == first.wait, "the first result stays"

    async def test_signal_wait__at_the_deadline_expires_the_wait(self, storage: Storage) -> None:
        run, _ = await self.leased_waiting(storage, deadline=10)
        just_before = await self.lease(storage, job_name="job-b")
        await self.prepared(storage, just_before, deadline=10)
        ok = await storage.signal_wait(
            just_before.id, "approval", self.new_signal(1), self.at(9.999)
        )
        assert ok.disposition == "accepted"
        late = await storage.signal_wait(run.id, "approval", self.new_signal(1), self.at(10))
        assert late.disposition == "expired"
        wait = await self.wait_of(storage, run.id)
        assert late.wait == wait
        assert (wait.status, wait.outcome, wait.payload) == (WaitStatus.RESOLVED, "timeout", None)
        assert wait.resolved_at == self.at(10)
        # the run wakes at its deadline, as before
        assert (await self.run_of(storage, run.id)).wake_at == self.at(10)

    async def test_signal_wait__duplicate_after_the_deadline_and_cancel(
        self, storage: Storage
    ) -> None:
        run, _ = await self.leased_waiting(storage, deadline=10)
        accepted = await storage.signal_wait(
            run.id, "approval", self.new_signal(1, "s"), self.at(5)
        )
        assert accepted.disposition == "accepted"
        assert await storage.cancel_run(run.id, self.at(6)) is not None
        again = await storage.signal_wait(run.id, "approval", self.new_signal(1, "s"), self.at(20))
        assert again.disposition == "duplicate"
        assert again.wait == accepted.wait
        other = await storage.signal_wait(run.id, "approval", self.new_signal(2, "t"), self.at(20))
        assert other.disposition == "conflict"

    @pytest.mark.parametrize("end", ["cancel", "complete", "fail"])
    async def test_signal_wait__closed_when_the_run_ended(self, storage: Storage, end: str) -> None:
        run = await self.lease(storage)
        await self.prepared(storage, run, deadline=10)
        if end == "cancel":
            assert await storage.cancel_run(run.id, self.at(3)) is not None
        elif end == "complete":
            assert await storage.complete_run(run.id, 1, js(1), self.at(3), delete_steps=True)
        else:
            assert await storage.fail_run(run.id, 1, "boom", self.at(3))
        ended = await self.wait_of(storage, run.id)
        expected = WaitStatus.CANCELLED if end == "cancel" else WaitStatus.CLOSED
        assert (ended.status, ended.resolved_at, ended.outcome) == (expected, self.at(3), None)
        for at in (4, 20):  # before and after the deadline
            late = await storage.signal_wait(run.id, "approval", self.new_signal(1), self.at(at))
            assert late.disposition == "closed"
            assert late.wait == ended

    async def test_signal_wait__a_timer_takes_no_signal(self, storage: Storage) -> None:
        run, _ = await self.leased_waiting(storage, name="cool-down", kind="timer", deadline=60)
        before = await storage.get_waits(run.id)
        outcome = await storage.signal_wait(run.id, "cool-down", self.new_signal(1), self.at(5))
        assert outcome.disposition == "timer"
        assert await storage.get_waits(run.id) == before
        assert (await self.run_of(storage, run.id)).wake_at == self.at(60)

    async def test_signal_wait__unknown_address_is_not_found(self, storage: Storage) -> None:
        run = await self.lease(storage)
        await self.prepared(storage, run)
        for run_id, name in ((run.id, "other"), (self.new_id(), "approval")):
            outcome = await storage.signal_wait(run_id, name, self.new_signal(1), self.at(2))
            assert (outcome.disposition, outcome.wait) == ("not-found", None)

    async def test_signal_wait__payload_json_round_trips(self, storage: Storage) -> None:
        payloads: list[Any] = [None, 0, "", [], {}, {"deep": [{"x": None}]}, 2**53]
        for i, payload in enumerate(payloads):
            run = await self.lease(storage, job_name=f"job-{i}")
            await self.prepared(storage, run)
            outcome = await storage.signal_wait(
                run.id, "approval", self.new_signal(payload), self.at(2)
            )
            assert outcome.wait is not None
            assert outcome.wait.payload == payload
            assert (await self.wait_of(storage, run.id)).payload == payload

    # -- the run's own transitions --

    async def test_cancel_run__a_waiting_run_never_resumes(self, storage: Storage) -> None:
        run = await self.lease(storage)
        await self.prepared(storage, run, "done")
        answered = await storage.signal_wait(run.id, "done", self.new_signal(1), self.at(1))
        wait = await self.prepared(storage, run, deadline=10)
        assert await storage.suspend_run(run.id, 1, wait.id, self.at(2)) is not None
        cancelled = await storage.cancel_run(run.id, self.at(5))
        assert cancelled is not None
        assert cancelled.status is RunStatus.CANCELLED
        assert (cancelled.waiting_on_wait_id, cancelled.wake_at) == (None, None)
        assert cancelled.completed_at == self.at(5)
        assert await storage.claim_next("w", self.at(100), self.at(130)) is None
        waits = {w.name: w for w in await storage.get_waits(run.id)}
        assert waits["approval"].status is WaitStatus.CANCELLED
        assert waits["approval"].resolved_at == self.at(5)
        assert waits["done"] == answered.wait, "a wait with its result keeps it"

    async def test_complete_run__closes_pending_waits_keeps_resolved(
        self, storage: Storage
    ) -> None:
        run = await self.lease(storage)
        await self.prepared(storage, run, "open")
        await self.prepared(storage, run, "answered")
        answered = await storage.signal_wait(run.id, "answered", self.new_signal(1), self.at(2))
        assert await storage.complete_run(run.id, 1, js("ok"), self.at(3), delete_steps=True)
        waits = {w.name: w for w in await storage.get_waits(run.id)}
        assert waits["open"].status is WaitStatus.CLOSED
        assert waits["answered"] == answered.wait
        stored = await self.run_of(storage, run.id)
        assert (stored.waiting_on_wait_id, stored.wake_at) == (None, None)

    async def test_retry_run__reopens_the_waits_that_ended_with_the_run(
        self, storage: Storage
    ) -> None:
        run = await self.lease(storage)
        pending = await self.prepared(storage, run, "open", deadline=100)
        await self.prepared(storage, run, "answered")
        answered = await storage.signal_wait(run.id, "answered", self.new_signal(1), self.at(2))
        assert await storage.fail_run(run.id, 1, "boom", self.at(3))
        assert await storage.retry_run(run.id, self.at(4)) is not None
        waits = {w.name: w for w in await storage.get_waits(run.id)}
        assert waits["open"] == pending, "pending again, with its first deadline"
        assert waits["answered"] == answered.wait
        # and the resumed run can be signalled again
        assert await storage.claim_next("w", self.at(5), self.at(35)) is not None
        again = await storage.signal_wait(run.id, "open", self.new_signal(2), self.at(6))
        assert again.disposition == "accepted"

    async def test_retry_run__of_a_cancelled_waiting_run(self, storage: Storage) -> None:
        run, wait = await self.leased_waiting(storage)
        assert await storage.cancel_run(run.id, self.at(3)) is not None
        retried = await storage.retry_run(run.id, self.at(4))
        assert retried is not None
        assert retried.status is RunStatus.PENDING
        assert (retried.waiting_on_wait_id, retried.wake_at) == (None, None)
        reopened = await self.wait_of(storage, run.id)
        assert (reopened.status, reopened.resolved_at) == (WaitStatus.PENDING, None)
        assert (reopened.id, reopened.suspended_at) == (wait.id, self.at(2))

    @pytest.mark.parametrize("how", ["delete", "purge"])
    async def test_waits_go_with_their_run(self, storage: Storage, how: str) -> None:
        run = await self.lease(storage)
        await self.prepared(storage, run)
        keep = await self.lease(storage, job_name="job-b")
        kept = await self.prepared(storage, keep)
        assert await storage.complete_run(run.id, 1, js(1), self.at(3), delete_steps=False)
        if how == "delete":
            assert await storage.delete_run(run.id) is not None
        else:
            assert await storage.purge_runs(self.at(10), 10) == 1
        assert await storage.get_waits(run.id) == []
        assert await storage.get_wait(run.id, "approval") is None
        assert await storage.get_waits(keep.id) == [kept]

    async def test_release_expired_leases__leaves_waiting_runs_alone(
        self, storage: Storage
    ) -> None:
        run, _ = await self.leased_waiting(storage, deadline=10)
        assert await storage.release_expired_leases(self.at(1000)) == 0
        assert await self.run_of(storage, run.id) == run

    # -- claiming waiting runs --

    async def test_claim_next__waiting_runs_in_creation_order_with_the_others(
        self, storage: Storage
    ) -> None:
        older, _ = await self.leased_waiting(
            storage, job_name="job-a", deadline=10, created_at=self.at(-100)
        )
        newer = await self.create(storage, job_name="job-b", created_at=self.at(-50))
        first = await storage.claim_next("w", self.at(10), self.at(40))
        second = await storage.claim_next("w", self.at(10), self.at(40))
        assert (first and first.id, second and second.id) == (older.id, newer.id)

    async def test_claim_next__job_names_apply_to_waiting_runs(self, storage: Storage) -> None:
        run, _ = await self.leased_waiting(storage, job_name="job-a", deadline=10)
        assert await storage.claim_next("w", self.at(10), self.at(40), ["job-b"]) is None
        got = await storage.claim_next("w", self.at(10), self.at(40), ["job-a"])
        assert got is not None
        assert got.id == run.id

    async def test_waiting_run__frees_its_concurrency_key(self, storage: Storage) -> None:
        run, _ = await self.leased_waiting(storage, job_name="job-a", concurrency_key="k")
        # another run of the key may start, and may be pending (waiting is not pending)
        other = await self.create(storage, job_name="job-a", concurrency_key="k")
        got = await storage.claim_next("w2", self.at(3), self.at(33))
        assert got is not None
        assert got.id == other.id
        # the waiting run, woken, waits for the key's live lease to end
        await storage.signal_wait(run.id, "approval", self.new_signal(1), self.at(4))
        assert await storage.claim_next("w3", self.at(5), self.at(35)) is None
        assert await storage.complete_run(other.id, 1, js(1), self.at(6), delete_steps=False)
        resumed = await storage.claim_next("w3", self.at(7), self.at(37))
        assert resumed is not None
        assert resumed.id == run.id

    async def test_get_runs__waiting_status_filter(self, storage: Storage) -> None:
        run, _ = await self.leased_waiting(storage)
        await self.create(storage, job_name="job-b")
        assert await self.ids(storage, RunFilter(statuses=(RunStatus.WAITING,))) == [run.id]

    async def test_next_wake_at__earliest_future_wake_up(self, storage: Storage) -> None:
        assert await storage.next_wake_at(self.at(0)) is None
        await self.leased_waiting(storage, job_name="job-a", deadline=50)
        await self.leased_waiting(storage, job_name="job-b", deadline=20)
        await self.leased_waiting(storage, job_name="job-c")  # no deadline
        leased = await self.lease(storage, job_name="job-d")  # a lease is not a wake-up
        assert leased.lease_expires_at is not None
        assert await storage.next_wake_at(self.at(3)) == self.at(20)
        assert await storage.next_wake_at(self.at(20)) == self.at(50), "due ones are claimable"
        assert await storage.next_wake_at(self.at(50)) is None

    # -- at once --

    async def test_concurrent__signals_one_accepted_the_others_conflict(
        self, storage: Storage
    ) -> None:
        run, _ = await self.leased_waiting(storage)
        outcomes = await asyncio.gather(
            *(
                storage.signal_wait(run.id, "approval", self.new_signal(i, f"s{i}"), self.at(5))
                for i in range(6)
            )
        )
        dispositions = sorted(o.disposition for o in outcomes)
        assert dispositions == ["accepted"] + ["conflict"] * 5, dispositions
        winner = next(o for o in outcomes if o.disposition == "accepted")
        assert await self.wait_of(storage, run.id) == winner.wait

    @pytest.mark.parametrize("first", ["signal", "cancel"])
    async def test_concurrent__cancel_wins_over_a_signal_for_good(
        self, storage: Storage, first: str
    ) -> None:
        run, _ = await self.leased_waiting(storage)
        signal = storage.signal_wait(run.id, "approval", self.new_signal(1), self.at(5))
        cancel = storage.cancel_run(run.id, self.at(5))
        if first == "signal":
            outcome, _ = await asyncio.gather(signal, cancel)
        else:
            _, outcome = await asyncio.gather(cancel, signal)
        assert outcome.disposition in ("accepted", "closed")
        stored = await self.run_of(storage, run.id)
        assert stored.status is RunStatus.CANCELLED
        assert await storage.claim_next("w", self.at(6), self.at(36)) is None

    @pytest.mark.parametrize("first", ["signal", "suspend"])
    async def test_concurrent__signal_racing_the_suspension_is_not_lost(
        self, storage: Storage, first: str
    ) -> None:
        run = await self.lease(storage)
        wait = await self.prepared(storage, run)
        signal = storage.signal_wait(run.id, "approval", self.new_signal(1), self.at(5))
        suspend = storage.suspend_run(run.id, 1, wait.id, self.at(5))
        calls = [signal, suspend] if first == "signal" else [suspend, signal]
        await asyncio.gather(*calls)
        claimed = await storage.claim_next("w", self.at(5), self.at(35))
        assert claimed is not None, "the signalled run must be claimable, in either order"
        assert claimed.id == run.id

    async def test_text__lone_surrogate_in_waits_refused(self, storage: Storage) -> None:
        from ._conformance_errors import BAD_TEXT, raises_durably_error

        run = await self.lease(storage)
        quoted = f'"{BAD_TEXT}"'  # JSON text with a lone surrogate, as no encoder makes it
        bad_waits = {
            "wait name": self.new_wait(BAD_TEXT),
            "wait metadata": NewWait(
                id=self.new_id(), name="w", metadata_json=quoted, created_at=self.at(1)
            ),
        }
        for what, new in bad_waits.items():
            await raises_durably_error(storage.prepare_wait(run.id, 1, new, self.at(1)), what)
        assert await storage.get_waits(run.id) == []
        await self.prepared(storage, run, "w")
        bad_signals = {
            "signal payload": NewSignal(payload_json=quoted),
            "signal id": NewSignal(signal_id=BAD_TEXT, payload_json="1"),
        }
        for what, signal in bad_signals.items():
            await raises_durably_error(storage.signal_wait(run.id, "w", signal, self.at(2)), what)
        wait = await self.wait_of(storage, run.id, "w")
        assert wait.status is WaitStatus.PENDING, "a refused signal writes nothing"
        ok = await storage.signal_wait(run.id, "w", self.new_signal("fine"), self.at(3))
        assert ok.disposition == "accepted"

    async def test_records__wait_fields_have_their_declared_types(self, storage: Storage) -> None:
        run, wait = await self.leased_waiting(storage, deadline=10)
        stored = await self.wait_of(storage, run.id)
        assert isinstance(stored, Wait)
        assert type(stored.status) is WaitStatus  # the lifecycle rules compare with `is`
        for t in (stored.created_at, stored.deadline_at, stored.suspended_at):
            assert isinstance(t, datetime)
        waiting = await self.run_of(storage, run.id)
        assert type(waiting.status) is RunStatus
        assert isinstance(waiting.wake_at, datetime)
        assert waiting.waiting_on_wait_id == wait.id
