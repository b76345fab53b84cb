"""Group commit: checkpoints and completions of concurrent runs in one transaction.

A checkpoint is one short transaction, and on a file database its commit (at
``synchronous=FULL`` an fsync; at ``NORMAL`` still the WAL frames of every page it
changed) costs more than the statements in it. When several runs of one process
checkpoint, complete or fail in the same turn of the event loop, their batches
are written as ONE batch (one ``BEGIN IMMEDIATE`` … ``COMMIT``; one request to a
remote libSQL server) and each caller gets the results of its own statements:

- Each member's statements keep their own fence (``status = 'leased' AND
  lease_generation = ?`` of their own run) and end with their own ``changes()``
  read (a completion: its own ``RETURNING``): a member whose lease was lost writes
  nothing and is told so, the others are written. Members of one run (parallel
  branches) are applied in order, as they would be one after the other.
- A batch is all or nothing. When the group's batch fails with an error that one
  member's statements may have caused (a constraint, text that cannot be stored),
  nothing was written: each member is written again on its own and gets its own
  answer. A busy database and a lost answer are the group's: every member gets the
  error (a lost answer is then resolved per run, by what each one wrote).
- A caller returns only once the group's commit is done (its checkpoint durable).
- No timer: a checkpoint waits for the end of the current loop turn at most, and
  not even that when nothing else is ready to run in this turn (a lone run writes at
  once, exactly as without grouping).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from .._errors import StorageBusyError, StorageOutcomeUnknownError
from .executor import Executor, Row, Statement

__all__ = ["GroupCommit"]

_Member = tuple[Sequence[Statement], "asyncio.Future[list[list[Row]]]"]


def _others_ready(loop: asyncio.AbstractEventLoop) -> bool:
    """Will other callbacks run before this loop next waits for I/O? Only then can
    another checkpoint join this one in this turn. asyncio's own loops keep them in
    ``_ready`` (no public API says it); on another loop (uvloop) assume yes: the cost
    of being wrong is one loop turn, never correctness."""
    ready = getattr(loop, "_ready", None)
    return ready is None or len(ready) > 0


async def _run(executor: Executor, statements: Sequence[Statement]) -> list[list[Row]]:
    """One member's statements on their own, as it would write them without grouping."""
    if len(statements) == 1:
        sql, params = statements[0]
        return [await executor.fetch(sql, params)]
    return await executor.batch(statements)


class GroupCommit:
    """Writes the batches given to :meth:`write` in the same loop turn as one batch."""

    def __init__(self, executor: Executor) -> None:
        self._executor = executor
        self._queue: list[_Member] = []
        #: the drains in flight (the loop keeps only weak references to tasks)
        self._draining: set[asyncio.Task[None]] = set()
        #: the drain that will take the queue, not started yet
        self._pending: asyncio.Task[None] | None = None

    async def write(self, statements: Sequence[Statement]) -> list[list[Row]]:
        """Each statement's rows, as ``executor.batch(statements)`` returns them, once
        the transaction they were written in has committed."""
        loop = asyncio.get_running_loop()
        if not self._queue and not _others_ready(loop):
            return await _run(self._executor, statements)
        future: asyncio.Future[list[list[Row]]] = loop.create_future()
        self._queue.append((statements, future))
        pending = self._pending
        if pending is None or pending.done():
            # runs after what is ready now: every checkpoint of this turn joins first.
            # (A drain cancelled before it ran, as a loop shut down, is replaced: the
            # queue it left behind holds only its cancelled callers.)
            task = loop.create_task(self._drain())
            self._pending = task
            self._draining.add(task)
            task.add_done_callback(self._draining.discard)
        return await future

    async def _drain(self) -> None:
        self._pending = None  # what is queued from now on needs the next drain
        # a caller cancelled before its turn came is not written: it was told it was not
        group = [member for member in self._queue if not member[1].done()]
        self._queue = []
        if not group:
            return
        try:
            if len(group) == 1:
                await self._alone(group[0])
                return
            try:
                results = await self._executor.batch(
                    [statement for statements, _ in group for statement in statements]
                )
            except (StorageBusyError, StorageOutcomeUnknownError) as exc:
                for _, future in group:
                    if not future.done():
                        future.set_exception(exc)
                return
            except Exception:
                # all or nothing, so nothing was written: who caused it? Each alone.
                for member in group:
                    if not member[1].done():
                        await self._alone(member)
                return
            start = 0
            for statements, future in group:
                end = start + len(statements)
                if not future.done():
                    future.set_result(results[start:end])
                start = end
        except BaseException:
            # the drain itself was cancelled (the loop is shutting down): so are they
            for _, future in group:
                future.cancel()
            raise

    async def _alone(self, member: _Member) -> None:
        statements, future = member
        try:
            result = await _run(self._executor, statements)
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
        else:
            if not future.done():
                future.set_result(result)
