"""The helpers every conformance case uses: the suite's clock origin, ids that
sort in creation order, record builders and short reads.

Part of :mod:`durably_testing.conformance`; import from there.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from durably import (
    Attempt,
    AttemptStatus,
    LogLevel,
    LogRecord,
    NewAttempt,
    NewLog,
    NewRun,
    NewSignal,
    NewStep,
    NewWait,
    Run,
    RunFilter,
    RunStatus,
    StepRecord,
    StepStatus,
    Storage,
    Wait,
    WaitKind,
)

#: The suite's fixed origin of time: aware UTC, millisecond precision.
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)

Snapshot = tuple[Run | None, list[StepRecord], list[LogRecord], list[Attempt]]


def js(value: Any) -> str:
    """Compact JSON text, as the core encodes it."""
    return msgspec.json.encode(value).decode()


class ConformanceBase:
    """Builders and reads shared by the case classes of the suite."""

    _seq: int = 0

    def at(self, seconds: float) -> datetime:
        """``T0`` plus ``seconds`` (millisecond precision)."""
        return T0 + timedelta(milliseconds=round(seconds * 1000))

    def new_id(self) -> str:
        """A 26-character ULID-like id; later ids sort after earlier ones."""
        self._seq += 1
        return f"01J{self._seq:023d}"

    def new_run(
        self,
        job_name: str = "job-a",
        *,
        input: Any = None,
        idempotency_key: str | None = None,
        concurrency_key: str | None = None,
        labels: dict[str, str] | None = None,
        created_at: datetime | None = None,
    ) -> NewRun:
        run_id = self.new_id()
        if created_at is None:  # an hour before T0, in creation order
            created_at = self.at(-3600 + self._seq / 1000)
        return NewRun(
            id=run_id,
            job_name=job_name,
            input_json=js({"n": self._seq} if input is None else input),
            idempotency_key=idempotency_key,
            concurrency_key=concurrency_key,
            labels=labels or {},
            created_at=created_at,
        )

    def new_step(
        self,
        name: str,
        index: int,
        *,
        status: StepStatus = StepStatus.COMPLETED,
        output: Any = None,
        error: str | None = None,
        started_at: datetime | None = None,
        completed_at: datetime | None = None,
    ) -> NewStep:
        started = started_at or self.at(1 + index)
        return NewStep(
            id=self.new_id(),
            name=name,
            index=index,
            status=status,
            output_json=js(output) if status is StepStatus.COMPLETED else None,
            error=error,
            started_at=started,
            completed_at=completed_at or started + timedelta(milliseconds=500),
        )

    def new_log(
        self,
        message: str,
        *,
        step_name: str | None = None,
        level: LogLevel = "info",
        data: Any = None,
        created_at: datetime | None = None,
    ) -> NewLog:
        return NewLog(
            id=self.new_id(),
            step_name=step_name,
            level=level,
            message=message,
            data_json=None if data is None else js(data),
            created_at=created_at or self.at(2),
        )

    def new_attempt(
        self,
        step_name: str = "fetch",
        attempt: int = 1,
        *,
        index: int = 0,
        status: AttemptStatus = AttemptStatus.FAILED,
        error: str | None = "boom",
        started: float = 1,
        next_at: float | None = None,
    ) -> NewAttempt:
        """An attempt record; times in seconds from ``T0`` (a failed or completed one
        ends half a second after it started)."""
        started_at = self.at(started)
        return NewAttempt(
            id=self.new_id(),
            step_name=step_name,
            step_index=index,
            attempt=attempt,
            status=status,
            error=error if status is AttemptStatus.FAILED else None,
            started_at=started_at,
            completed_at=None
            if status is AttemptStatus.STARTED
            else started_at + timedelta(milliseconds=500),
            next_attempt_at=None if next_at is None else self.at(next_at),
        )

    def new_wait(
        self,
        name: str,
        *,
        kind: WaitKind = "signal",
        deadline: float | None = None,
        metadata: Any = None,
        created_at: datetime | None = None,
    ) -> NewWait:
        """A wait to prepare; ``deadline`` in seconds from ``T0``."""
        return NewWait(
            id=self.new_id(),
            name=name,
            kind=kind,
            deadline_at=None if deadline is None else self.at(deadline),
            metadata_json=None if metadata is None else js(metadata),
            created_at=created_at or self.at(1),
        )

    def new_signal(self, payload: Any, signal_id: str | None = None) -> NewSignal:
        """A signal; its payload as canonical JSON (keys sorted), as the core encodes it."""
        text = msgspec.json.encode(payload, order="sorted").decode()
        return NewSignal(signal_id=signal_id, payload_json=text)

    async def prepared(
        self, storage: Storage, run: Run, name: str = "approval", **kwargs: Any
    ) -> Wait:
        """Prepare a wait of the leased ``run`` (it must hold generation ``run``'s)."""
        wait = await storage.prepare_wait(
            run.id, run.lease_generation, self.new_wait(name, **kwargs), self.at(1)
        )
        assert wait is not None, "prepare_wait by the lease holder returned None"
        return wait

    async def create(self, storage: Storage, **kwargs: Any) -> Run:
        """Enqueue a new run (``new_run(**kwargs)``) and check that it was created."""
        result = await storage.enqueue(self.new_run(**kwargs))
        assert result.disposition == "created"
        return result.run

    async def lease(
        self,
        storage: Storage,
        *,
        owner: str = "worker-1",
        now: float = 0,
        lease_for: float = 30,
        **kwargs: Any,
    ) -> Run:
        """Create a run and claim it (restricted to its job; it must be the one claimed)."""
        run = await self.create(storage, **kwargs)
        claimed = await storage.claim_next(
            owner, self.at(now), self.at(now + lease_for), [run.job_name]
        )
        assert claimed is not None
        assert claimed.id == run.id
        return claimed

    async def snapshot(self, storage: Storage, run_id: str) -> Snapshot:
        return (
            await storage.get_run(run_id),
            await storage.get_steps(run_id),
            await storage.get_logs(run_id),
            await storage.get_attempts(run_id),
        )

    async def ids(self, storage: Storage, query: RunFilter | None = None) -> list[str]:
        return [r.id for r in await storage.get_runs(query or RunFilter())]

    async def run_of(self, storage: Storage, run_id: str) -> Run:
        """The stored run (it must exist)."""
        run = await storage.get_run(run_id)
        assert run is not None
        return run

    async def status_of(self, storage: Storage, run_id: str) -> RunStatus:
        run = await storage.get_run(run_id)
        assert run is not None
        return run.status
