"""The worker: claims runs into free slots and executes them.

One loop per ``Durably``: it migrates the database first if this instance has
not (``start()`` without ``init()``), then fills every free slot at once, then waits for a
wake-up (a run triggered or finished in this process) or the polling interval
— a single idle poll shared by all slots. When a round claims nothing (idle,
or every slot busy) it does maintenance, at most once per polling interval:
releasing expired leases and purging old runs when ``retain_runs`` is set. No
failure of the storage (whatever it raises) stops the loop: it is reported as
``worker:error`` and retried with backoff (:mod:`durably._backoff`: up to 30 s,
but only up to 2 s after a full disk, which usually clears at once).

Once a minute it also re-measures the database clock's offset (see
:mod:`durably._services`). One failure does stop it: the database is gone. A storage that can tell
(:class:`durably.SupportsIdentityCheck`: a SQLite file deleted or replaced) is
asked at most once per polling interval; a ``StorageLostError`` is reported
(context ``storage-lost``) and the loop ends, so nothing more is claimed from a
database nobody else sees.

A storage with the :class:`~durably.ClaimableSubscription` capability (PostgreSQL's
``LISTEN``) also wakes the loop when another process makes a run claimable; the
polling interval stays the safety net.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import datetime

from ._backoff import jittered, next_backoff
from ._clock import sleep_or_wake
from ._errors import StorageError, StorageLostError
from ._execution import Execution
from ._records import Run
from ._services import Services
from ._storage import ClaimableSubscription, SupportsIdentityCheck


async def claim(services: Services) -> Run | None:
    now = services.now()
    return await services.storage.claim_next(services.owner, now, services.lease_expiry(now))


class Worker:
    def __init__(self, services: Services, ready: Callable[[], Awaitable[None]]) -> None:
        self._services = services
        #: migrates the database once (``Durably._ready``): ``start()`` without
        #: ``init()`` on a new database must claim, not report a missing table
        self._ready = ready
        self._wake = asyncio.Event()
        self._stopping = False
        self._loop_task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        #: each running task's (run id, lease generation), to hand back if it is cut off
        self._leases: dict[asyncio.Task[None], tuple[str, int]] = {}
        self._last_maintenance: datetime | None = None
        #: When a waiting run becomes claimable next (its wait's deadline), if sooner
        #: than the next poll: the loop sleeps until then.
        self._next_wake: datetime | None = None
        services.wake_listener = self.wake_at
        self._unsubscribe: Callable[[], Awaitable[None]] | None = None
        self._last_identity_check: datetime | None = None
        storage = services.storage
        self._check_identity = (
            storage.check_identity if isinstance(storage, SupportsIdentityCheck) else None
        )

    @property
    def running(self) -> bool:
        return self._loop_task is not None and not self._loop_task.done()

    def start(self) -> None:
        if self.running:
            return
        self._stopping = False
        self._loop_task = asyncio.create_task(self._loop(), name="durably-worker")

    def wake_at(self, when: datetime | None) -> None:
        """A run becomes claimable at ``when`` (a wait's deadline, or now): claim it
        then rather than at the next poll."""
        if when is None:
            return
        if self._next_wake is None or when < self._next_wake:
            self._next_wake = when
            self._wake.set()  # the loop plans its sleep again

    def notify(self) -> None:
        """Wake the loop now (a run was triggered, or a slot freed up)."""
        self._wake.set()

    async def stop(self, timeout: float | None = None) -> None:
        """Stop claiming; wait for in-flight runs (cancel them after ``timeout``)."""
        self._stopping = True
        self._wake.set()
        if self._loop_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        unsubscribe, self._unsubscribe = self._unsubscribe, None
        if unsubscribe is not None:
            try:
                await unsubscribe()
            except Exception as exc:  # the subscription is gone either way
                self._services.report_error(exc, "subscribe")
        if not self._running:
            return
        _, pending = await asyncio.wait(set(self._running), timeout=timeout)
        if not pending:
            return
        # the runs cut off: cancelled without writing more, then handed back
        cut = [self._leases[task] for task in pending if task in self._leases]
        for task in pending:
            task.cancel()
        await asyncio.wait(pending)
        await self._hand_back(cut)

    async def _hand_back(self, leases: list[tuple[str, int]]) -> None:
        """Give up the leases of runs stopped before their end: their expiry is set to
        now (a fenced renewal), so any worker may claim them at once instead of after
        ``lease_duration``. One that cannot be handed back simply expires."""
        services = self._services
        for run_id, generation in leases:
            now = services.now()
            try:
                await services.storage.renew_lease(run_id, generation, now, now)
            except Exception as exc:  # reported; the lease expires as it would have
                services.report_error(exc, "lease-renewal", run_id)

    async def _loop(self) -> None:
        services = self._services
        settings = services.settings
        backoff = 0.0
        await self._subscribe()
        while not self._stopping:
            self._wake.clear()
            reached = self._next_wake is not None and self._next_wake <= services.now()
            if reached:
                # the claims below take what is due; the next wake-up is read again
                # after them (never one in the past: a due run whose concurrency key
                # is busy would make the loop spin)
                self._next_wake = None
            try:
                await self._ready()
                await self._periodic_checks()
                claimed = await self._fill_slots()
                backoff = 0.0
                if reached:
                    self.wake_at(await services.storage.next_wake_at(services.now()))
            except StorageLostError as exc:  # nothing to claim from a database nobody sees
                services.report_error(exc, "storage-lost")
                break
            except Exception as exc:  # any adapter failure: report, back off, keep going
                services.report_error(exc, "claim")
                backoff = next_backoff(backoff, exc, settings.polling_interval)
                await self._wait(jittered(backoff))
                continue
            if not claimed:  # idle, or every slot busy: maintenance (rate-limited)
                await self._maintain()
            if self._stopping:
                break
            # the delay is read when the sleep starts, not now (sleep_or_wake)
            await self._wait(self._poll_delay)

    async def _subscribe(self) -> None:
        storage = self._services.storage
        if self._unsubscribe is not None or not isinstance(storage, ClaimableSubscription):
            return
        try:
            self._unsubscribe = await storage.subscribe_claimable(self.notify)
        except NotImplementedError:
            pass
        except Exception as exc:  # polling still finds every run
            self._services.report_error(exc, "subscribe")

    async def _fill_slots(self) -> bool:
        services = self._services
        claimed = False
        while not self._stopping and len(self._running) < services.settings.max_concurrent_runs:
            run = await claim(services)
            if run is None:
                break
            claimed = True
            task = asyncio.create_task(Execution(services, run).execute(), name=f"durably-{run.id}")
            self._running.add(task)
            self._leases[task] = (run.id, run.lease_generation)
            task.add_done_callback(self._finished)
        return claimed

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._leases.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            assert exc is not None
            self._services.report_error(exc, "run-execution")
        self._wake.set()

    def _poll_delay(self) -> float:
        """The polling interval, or less when a waiting run's deadline comes first."""
        delay = self._services.settings.polling_interval
        if self._next_wake is not None:
            until = (self._next_wake - self._services.now()).total_seconds()
            delay = min(delay, max(until, 0.0))
        return delay

    async def _wait(self, seconds: float | Callable[[], float]) -> None:
        if self._wake.is_set() or self._stopping:
            return
        await sleep_or_wake(self._services.clock, self._wake, seconds)

    async def _periodic_checks(self) -> None:
        """Is the database still the one we opened (at most once per polling
        interval)? And the database clock's offset, once a minute. A
        ``StorageLostError`` goes to the loop; another failure is only reported."""
        services = self._services
        try:
            await services.sync_clock(force=False)
        except StorageError as exc:
            services.report_error(exc, "clock")
        check = self._check_identity
        if check is None:
            return
        now = services.now()
        if not _due(self._last_identity_check, now, services.settings.polling_interval):
            return
        self._last_identity_check = now
        try:
            await check()
        except StorageLostError:
            raise
        except StorageError as exc:
            services.report_error(exc, "storage-check")

    async def _maintain(self) -> None:
        services = self._services
        now = services.now()
        if not _due(self._last_maintenance, now, services.settings.polling_interval):
            return
        self._last_maintenance = now
        try:
            await services.storage.release_expired_leases(now)
            # waiting runs suspended by any process: wake at the earliest deadline
            self.wake_at(await services.storage.next_wake_at(now))
            retain = services.settings.retain_runs
            if retain is not None:
                await services.storage.purge_runs(now - retain, services.settings.purge_batch)
        except Exception as exc:  # reported like a claim failure; retried next time
            services.report_error(exc, "maintenance")


def _due(last: datetime | None, now: datetime, every: float) -> bool:
    """Is something done at most every ``every`` seconds, last at ``last``, due?"""
    return last is None or (now - last).total_seconds() >= every
