"""An event loop running in a thread of its own, for the blocking API (``durably.sync``).

The engine is asyncio code bound to one loop; blocking callers (request handlers,
scripts, threads) hand it coroutines through ``run_coroutine_threadsafe`` and wait
for the answer in their own thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    """An asyncio loop running forever in a daemon thread, until :meth:`stop`.

    Daemon, because the interpreter joins every non-daemon thread *before* it runs
    ``atexit`` callbacks: a loop thread the user forgot to close would hang the exit
    instead of being closed cleanly by the callback (``durably.sync`` registers one).
    """

    def __init__(self, name: str) -> None:
        #: The process that started the thread: after a ``fork`` the child has the
        #: object but not the thread.
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            # what asyncio.run does on the way out: nothing is left half-finished
            try:
                tasks = asyncio.all_tasks(loop)
                for task in tasks:
                    task.cancel()
                if tasks:
                    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                # at interpreter exit a thread to wait for the executor may be refused
                with contextlib.suppress(RuntimeError):
                    loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    @property
    def alive(self) -> bool:
        """Is the thread running in this process?"""
        return self.pid == os.getpid() and self._thread.is_alive()

    def in_thread(self) -> bool:
        """Is the caller the loop's own thread?"""
        return threading.current_thread() is self._thread

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop, in a copy of the caller's context (its
        context variables — the current trace span, for one — as an ``await`` in the
        caller would see them); its result comes back through the future."""
        return asyncio.run_coroutine_threadsafe(
            _in_context(contextvars.copy_context(), coro), self.loop
        )

    def stop(self) -> None:
        """Stop the loop, let its last tasks and the default executor finish, and join
        the thread (idempotent)."""
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join()


async def _in_context(context: contextvars.Context, coro: Coroutine[Any, Any, T]) -> T:
    # a task of its own runs in the given context; cancelling this one cancels it
    return await asyncio.get_running_loop().create_task(coro, context=context)
