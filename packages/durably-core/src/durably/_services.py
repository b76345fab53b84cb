"""What every part of one ``Durably`` shares: storage, clock, codec, bus, ids, settings."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from ._clock import Clock, now_ms_reader
from ._events import EventBus, WorkerErrorEvent
from ._logging import log_worker_error
from ._storage import Storage
from ._ulid import UlidGenerator
from .codec import Codec

if TYPE_CHECKING:
    from ._execution import Execution
    from ._job import JobDefinition
    from ._observe import Observer


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Settings:
    polling_interval: float = 1.0
    lease_duration: float = 30.0
    lease_renew_interval: float = 5.0
    max_concurrent_runs: int = 1
    preserve_steps: bool = False
    persist_logs: bool = True
    retain_runs: timedelta | None = None
    purge_batch: int = 500


@dataclass
class Services:
    storage: Storage
    clock: Clock
    bus: EventBus
    settings: Settings
    codec: Codec = field(default_factory=Codec)
    ids: UlidGenerator = field(default_factory=UlidGenerator)
    owner: str = field(default_factory=default_owner)
    jobs: dict[str, JobDefinition[Any, Any]] = field(default_factory=dict)
    #: Runs executing in this process, by id (for in-process cancel).
    active: dict[str, Execution] = field(default_factory=dict)
    #: Instrumentation (``durably.otel``), if any: see ``_observe``.
    observer: Observer | None = None
    #: Told when a run of this process becomes claimable at a time (it suspended on a
    #: wait): the worker wakes then instead of at its next poll.
    wake_listener: Callable[[datetime | None], None] | None = None

    #: The clock's time at the database's precision (milliseconds): a function bound
    #: once (the system clock's own ``now_ms``), not a method around it, because the
    #: per-step path reads it twice.
    now: Callable[[], datetime] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.now = now_ms_reader(self.clock)

    def new_id(self, at: datetime | None = None) -> str:
        t = at or self.clock.now()
        return self.ids.new(int(t.timestamp() * 1000))

    def wake_at(self, when: datetime | None) -> None:
        """A run becomes claimable at ``when`` (``None``: not by itself)."""
        if self.wake_listener is not None:
            self.wake_listener(when)

    def lease_expiry(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self.settings.lease_duration)

    def report_error(self, exc: BaseException, context: str, run_id: str | None = None) -> None:
        """A ``worker:error`` event and a warning on the ``durably.worker`` logger."""
        log_worker_error(exc, context, run_id)
        self.bus.emit(
            WorkerErrorEvent, error=str(exc) or type(exc).__name__, context=context, run_id=run_id
        )
