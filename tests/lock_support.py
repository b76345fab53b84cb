"""Another connection holding a SQLite file's write lock, and a ticker that shows
whether the event loop turns meanwhile (imported as ``lock_support``)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from pathlib import Path
from typing import Any


class LockHolder:
    """Another connection (as another process would) holding the write lock until
    ``release()`` or the end of the ``with`` block (or, with ``hold``, that many
    seconds)."""

    def __init__(self, path: Path, hold: float | None = None) -> None:
        self.path, self.hold = path, hold
        self.locked = threading.Event()
        self.released = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        self.locked.set()
        self.released.wait(self.hold)
        conn.execute("COMMIT")
        conn.close()

    def release(self) -> None:
        self.released.set()

    def __enter__(self) -> LockHolder:
        self.thread.start()
        assert self.locked.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        self.thread.join()


class Ticker:
    """Counts turns of a task that sleeps 5 ms at a time: it advances only while
    nothing blocks the event loop."""

    def __init__(self) -> None:
        self.ticks = 0
        self._task = asyncio.create_task(self._tick())

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.005)
            self.ticks += 1

    async def ticks_while(self, pending: asyncio.Future[Any], ticks: int) -> None:
        """Wait for ``ticks`` more turns, failing if ``pending`` finishes first."""
        target = self.ticks + ticks
        while self.ticks < target:
            assert not pending.done(), "finished while the lock was held"
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
