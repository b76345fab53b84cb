"""What every part of one ``Durably`` shares: storage, clock, codec, bus, ids, settings.

It also owns "now" (:meth:`Services.now`): the clock's time at millisecond precision
— corrected, when it runs on the system clock and the storage's database
has a clock of its own (:class:`durably.SupportsDatabaseTime`: a server), by the
offset measured between the two, so that workers on machines whose clocks
disagree still judge lease expiry alike: by the database's clock. The offset is
measured at ``migrate()`` and then every :data:`CLOCK_SYNC_EVERY` seconds, from
the midpoint of the round trip (two samples, the shorter round trip kept); an
offset within that round trip's uncertainty is taken as none. A manual clock is
never corrected: tests own their time.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from ._clock import Clock, SystemClock, now_ms_reader
from ._events import EventBus, WorkerErrorEvent
from ._logging import log_worker_error
from ._storage import Storage, SupportsDatabaseTime
from ._ulid import UlidGenerator
from .codec import Codec

if TYPE_CHECKING:
    from ._execution import Execution
    from ._job import JobDefinition
    from ._observe import Observer


CLOCK_SYNC_EVERY = 60.0
"""Seconds between two measurements of the database clock's offset."""
_MS = timedelta(milliseconds=1)


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

    #: The clock's time at the database's precision (milliseconds), corrected by
    #: ``clock_offset``: a function bound once (the system clock's own ``now_ms``, or
    #: a lambda adding a non-zero offset, rebound by ``sync_clock``), not a method
    #: around it, because the per-step path reads it twice.
    now: Callable[[], datetime] = field(init=False, repr=False)

    #: Database clock minus this process's clock, as last measured (zero: none, or not
    #: measured, or within the measurement's uncertainty).
    clock_offset: timedelta = timedelta(0)

    def __post_init__(self) -> None:
        self.now = self._read_clock = now_ms_reader(self.clock)
        storage = self.storage
        self._database_clock = (
            storage
            if isinstance(storage, SupportsDatabaseTime) and isinstance(self.clock, SystemClock)
            else None
        )
        self._clock_synced_at: datetime | None = None

    async def sync_clock(self, *, force: bool = True) -> None:
        """Measure the database clock's offset and correct :meth:`now` by it (see the
        module docstring); unless ``force``, only when the last measurement is
        :data:`CLOCK_SYNC_EVERY` seconds old. Nothing to do without a database clock
        or on a manual clock. May raise ``StorageError``."""
        source = self._database_clock
        if source is None:
            return
        read = self._read_clock
        last = self._clock_synced_at
        if not force and last is not None and (read() - last).total_seconds() < CLOCK_SYNC_EVERY:
            return
        best: tuple[timedelta, timedelta] | None = None  # (round trip, offset)
        for _ in range(2):  # the first may pay for a connection; keep the shorter
            before = read()
            at = await source.database_time()
            after = read()
            if at is None:  # no clock of its own: never ask again
                self._database_clock = None
                return
            sample = (after - before, at - (before + (after - before) / 2))
            if best is None or sample[0] < best[0]:
                best = sample
        assert best is not None
        round_trip, offset = best
        self._clock_synced_at = read()
        if abs(offset) <= round_trip / 2 + _MS:
            offset = timedelta(0)  # indistinguishable from none
        offset = round(offset / _MS) * _MS
        self.clock_offset = offset
        # rebound, not wrapped per call; an execution already running keeps the reader
        # it was made with (the offset moves by milliseconds between measurements)
        self.now = read if not offset else (lambda: read() + offset)

    def new_id(self, at: datetime | None = None) -> str:
        return self.ids.at(at or self.clock.now())

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
