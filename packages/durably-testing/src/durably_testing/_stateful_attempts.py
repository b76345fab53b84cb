"""The retry rules of :class:`~durably_testing.stateful.StorageStateMachine`.

Attempt records are written (``started`` ones, failed ones with or without a next
attempt) and settled (a ``started`` record's id written again with its outcome),
alone or with a step row; a failed attempt sometimes sends the run waiting, on no
wait, until its next attempt; a whole run is sometimes retried later
(``schedule_retry``). Stale and future generations are tried too. The lifecycle
model predicts every answer and every record; claims, cancels, retries, deletes
and purges of those runs are the machine's other rules.

Part of :mod:`durably_testing.stateful`; import from there.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import initialize, precondition, rule

from durably import AttemptStatus, NewAttempt, StepStatus

if TYPE_CHECKING:
    from .stateful import StorageStateMachine

#: Seconds until a failed attempt's next one (``None``: it was the last).
NEXT_IN = st.sampled_from([None, 5, 30])
SKEW = st.sampled_from([0, 0, 0, 0, 0, -1, 1])


def _has_runs(machine: AttemptRules) -> bool:
    return bool(machine._m.known)


class AttemptRules:
    """Mixed into ``StorageStateMachine``: the retry operations."""

    @property
    def _m(self) -> StorageStateMachine:
        return self  # type: ignore[return-value]

    @staticmethod
    def attempt_view(new: NewAttempt, generation: int) -> tuple[Any, ...]:
        """``new`` as ``observe_attempt`` gives it once written with ``generation``."""
        return (
            new.id,
            new.step_name,
            new.step_index,
            new.attempt,
            new.started_at,
            generation,
            new.status.value,
            new.error,
            new.completed_at,
            new.next_attempt_at,
        )

    def _started_attempt(self, run_id: str, step_name: str) -> tuple[Any, ...] | None:
        """A ``started`` record of the run's step in the model, to settle."""
        run = self._m.model.runs.get(run_id)
        if run is None:
            return None
        found = [v for v in run.attempts.values() if v[1] == step_name and v[6] == "started"]
        return found[-1] if found else None

    def _new_attempt(
        self,
        data: st.DataObject,
        run_id: str,
        step_name: str,
        index: int,
        status: AttemptStatus,
        next_in: int | None,
    ) -> NewAttempt:
        m = self._m
        now = m.now
        started = self._started_attempt(run_id, step_name)
        settle = (
            started is not None
            and status is not AttemptStatus.STARTED
            and data.draw(st.booleans(), label="settle the started record")
        )
        if settle:
            assert started is not None
            event("attempt: a started record settled")
            attempt_id, number, started_at = started[0], started[3], started[4]
        else:
            attempt_id = m._new_id()
            number = data.draw(st.integers(min_value=1, max_value=3), label="attempt")
            started_at = now
        failed = status is AttemptStatus.FAILED
        return NewAttempt(
            id=attempt_id,
            step_name=step_name,
            step_index=index,
            attempt=number,
            status=status,
            error=f"boom {number}" if failed else None,
            started_at=started_at,
            completed_at=None if status is AttemptStatus.STARTED else now,
            next_attempt_at=None
            if not failed or next_in is None
            else now + timedelta(seconds=next_in),
        )

    @initialize(job=st.sampled_from(("job-a", "job-b")), next_in=st.sampled_from([0, 5, 30]))
    def start_with_a_retry(self, job: str, next_in: int) -> None:
        """A run of its own, claimed, whose step failed and waits for its next attempt,
        and another one leased (so that every example meets both)."""
        m = self._m
        self._waiting_for_a_retry(job, next_in)
        m.enqueue(job, None, None, False, {})
        m.claim_next("worker-1", 30, (job,))

    def _waiting_for_a_retry(self, job: str, next_in: int) -> None:
        m = self._m
        m.enqueue(job, None, None, False, {})
        run_id = m.known[-1]
        m.claim_next("worker-2", 30, (job,))
        run = m.model.runs[run_id]
        if run.status != "leased":  # another run of the job was older
            return
        m.now = now = m._at(1)
        new = NewAttempt(
            id=m._new_id(),
            step_name="s1",
            step_index=run.current_step_index,
            attempt=1,
            status=AttemptStatus.FAILED,
            error="boom 1",
            started_at=now,
            completed_at=now,
            next_attempt_at=now + timedelta(seconds=next_in),
        )
        self.apply_record_attempt(run_id, run.lease_generation, new, new.next_attempt_at)

    def _lease_one(self, data: st.DataObject) -> None:
        """When no run is leased, mostly claim one first: retries happen to leased runs."""
        m = self._m
        if any(r.status == "leased" for r in m.model.runs.values()):
            return
        if data.draw(st.integers(0, 3), label="claim first") != 0:
            m.claim_next("worker-1", 30, None)

    def attempt_for(
        self,
        data: st.DataObject,
        run_id: str,
        step_name: str,
        index: int,
        step_status: StepStatus,
        generation: int,
    ) -> NewAttempt | None:
        """For a step row: mostly no attempt record, else the attempt's outcome."""
        if data.draw(st.integers(0, 3), label="with an attempt") != 0:
            return None
        status = (
            AttemptStatus.COMPLETED if step_status is StepStatus.COMPLETED else AttemptStatus.FAILED
        )
        return self._new_attempt(data, run_id, step_name, index, status, None)

    @precondition(_has_runs)
    @rule(
        data=st.data(),
        skew=SKEW,
        name=st.sampled_from(("s1", "s2", "s3")),
        status=st.sampled_from([AttemptStatus.FAILED, AttemptStatus.STARTED]),
        next_in=NEXT_IN,
        wake=st.sampled_from([True, True, False]),
    )
    def record_attempt(
        self,
        data: st.DataObject,
        skew: int,
        name: str,
        status: AttemptStatus,
        next_in: int | None,
        wake: bool,
    ) -> None:
        m = self._m
        self._lease_one(data)
        run_id = m._pick_run(data, prefer="leased")
        gen = m._generation(run_id, skew)
        m.now = m._at(1)  # attempts start at distinct times
        model_run = m.model.runs.get(run_id)
        index = 0 if model_run is None else model_run.current_step_index
        new = self._new_attempt(data, run_id, name, index, status, next_in)
        self.apply_record_attempt(run_id, gen, new, new.next_attempt_at if wake else None)

    def apply_record_attempt(
        self, run_id: str, gen: int, new: NewAttempt, wake_at: datetime | None
    ) -> None:
        """``record_attempt`` on every storage, checked."""
        m = self._m
        now = m.now
        got = m._agree(
            "record_attempt",
            m._on_all(lambda s: s.record_attempt(run_id, gen, new, now, wake_at=wake_at)),
            bool,
        )
        m._dirty.add(run_id)
        if got == ("ok", True) and wake_at is not None:
            event("record_attempt: the run waits for the next attempt")
        m._expect(
            "record_attempt",
            got,
            lambda: m.model.record_attempt(run_id, gen, self.attempt_view(new, gen), wake_at),
        )

    @precondition(_has_runs)
    @rule(data=st.data(), skew=SKEW, delay=st.sampled_from([0, 5, 30]))
    def schedule_retry(self, data: st.DataObject, skew: int, delay: int) -> None:
        m = self._m
        self._lease_one(data)
        run_id = m._pick_run(data, prefer="leased")
        gen = m._generation(run_id, skew)
        now = m.now
        wake_at = now + timedelta(seconds=delay)
        outcomes = m._on_all(lambda s: s.schedule_retry(run_id, gen, "retry me", wake_at, now))
        m._agree("schedule_retry", outcomes, m._whole)
        got = m._agree("schedule_retry", outcomes, m._id_of)
        m._dirty.add(run_id)
        if got[1] is not None:
            event("schedule_retry: the run waits for its next attempt")
        m._expect(
            "schedule_retry", got, lambda: m.model.schedule_retry(run_id, gen, "retry me", wake_at)
        )
