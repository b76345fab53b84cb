"""Helpers shared by the engine tests (imported as ``engine_support``)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from durably_testing.clock import ManualClock

T = TypeVar("T")
R = TypeVar("R")

#: Real-time safety bound for ``eventually``: a backend doing I/O in threads needs the
#: loop to spin a little longer than ``settle()``; a hang fails instead of blocking.
#: Generous, because the machine may be loaded.
EVENTUALLY_LIMIT = 60.0


async def eventually(
    predicate: Callable[[], Any | Awaitable[Any]], what: str = "the condition"
) -> None:
    """Let the event loop run (``sleep(0)``, no clock time passes) until
    ``predicate()`` (sync or async) is true."""
    deadline = time.monotonic() + EVENTUALLY_LIMIT
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not become true")
        await asyncio.sleep(0)


async def status_is(d: Any, run_id: str, status: Any) -> None:
    """Wait until run ``run_id`` has ``status``."""

    async def check() -> bool:
        run = await d.get_run(run_id)
        return run is not None and run.status == status

    await eventually(check, f"run {run_id} being {status}")


def recorder(d: Any, event_type: str = "*") -> list[Any]:
    """Every event of ``event_type`` emitted by ``d``, in order."""
    events: list[Any] = []
    d.on(event_type, events.append)
    return events


def at_once(call: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``call(item)`` for every item, each in a thread of its own, all started before
    any is waited for (many callers at once); the results in the items' order, the
    first error raised."""
    items = list(items)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(items))) as pool:
        futures = [pool.submit(call, item) for item in items]
        return [f.result() for f in futures]


class HeldOnce:
    """A storage mixin: the read a subclass guards with ``await self.hold()`` waits for
    ``release`` once, while ``armed``; ``held`` is set when it does. The tests of a
    clock moved while a loop plans its sleep stop the loop at its last read with it.
    Put it before the storage class: ``class Held(HeldOnce, MemoryStorage)``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.armed = False
        self.held = asyncio.Event()
        self.release: asyncio.Future[None] | None = None

    async def hold(self) -> None:
        if not self.armed:
            return
        self.armed = False
        self.release = asyncio.get_running_loop().create_future()
        self.held.set()
        await self.release

    async def release_then_advance(
        self, clock: ManualClock, seconds: float, turns: int, what: str
    ) -> None:
        """Once the held read is reached (``what`` names it), let it return — the loop
        then plans its sleep from it — and move ``clock`` by ``seconds`` after
        ``turns`` loop turns: each ``turns`` puts the move at another point between the
        read and the sleep's start."""
        await eventually(self.held.is_set, what)
        assert self.release is not None
        self.release.set_result(None)
        for _ in range(turns):
            await asyncio.sleep(0)
        await clock.advance(seconds)
