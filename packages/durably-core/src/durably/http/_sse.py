"""The two SSE streams: one run (``/subscribe``) and all matching runs
(``/runs/subscribe``).

Frames are exactly ``data: <one-line JSON>\\n\\n``. A run's stream first replays
the run's current state (leased: ``run:leased`` then ``run:progress`` if any;
finished: its terminal event alone, then the stream closes; pending: nothing),
then forwards live events until a terminal one. Live events come from this
process's event bus; runs executed by other processes are noticed by re-reading
the run every ``poll_interval`` seconds of silence, and the changes sent as
synthesized events (``sequence`` 0, as the reference's replay does).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from sse_starlette import EventSourceResponse
from starlette.types import Message, Receive, Scope, Send

from .. import (
    Durably,
    Event,
    Progress,
    Run,
    RunCancelEvent,
    RunCompleteEvent,
    RunDeleteEvent,
    RunFailEvent,
    RunLeasedEvent,
    RunProgressEvent,
    RunStatus,
)
from .._events import TERMINAL_EVENT_TYPES
from .._watch import synthetic_event
from ._backlog import Backlog
from ._fanout import RunsStream
from ._serialize import Outgoing
from ._throttle import ProgressThrottle

logger = logging.getLogger("durably.http")

#: What a run's stream forwards (the reference's list, and **(py)** the retry events).
RUN_STREAM_TYPES = frozenset(
    {
        "run:leased",
        "run:complete",
        "run:fail",
        "run:cancel",
        "run:delete",
        "run:waiting",
        "run:progress",
        "run:retry",
        "step:start",
        "step:complete",
        "step:fail",
        "step:retry",
        "log:write",
    }
)


class EventQueue:
    """Events pushed by the hub, read back through the progress throttle; what
    queues up while the stream waits for its client is bounded by ``backlog``."""

    def __init__(
        self, throttle: float, accept: Callable[[Outgoing], bool], backlog: Backlog
    ) -> None:
        self._queue: asyncio.Queue[Outgoing] = asyncio.Queue()
        self._accept = accept
        self.backlog = backlog
        loop = asyncio.get_running_loop()
        self.throttle = ProgressThrottle(throttle, loop.time)
        self._loop = loop

    def push(self, out: Outgoing) -> None:
        if not self._accept(out):
            return
        if self.backlog.counting and not self.backlog.add(len(out.full)):
            while not self._queue.empty():  # cut: nothing more is sent
                self._queue.get_nowait()
            return
        self._queue.put_nowait(out)

    def drain(self) -> list[Outgoing]:
        """Events already queued, without waiting (and without throttling)."""
        out = []
        while not self._queue.empty():
            out.append(self._queue.get_nowait())
        self.backlog.taken()
        return out

    async def next(self, idle: float | None) -> list[Outgoing] | None:
        """The next events to send (all that are ready, so they go out in one write);
        ``None`` after ``idle`` seconds with nothing to send."""
        out = await self._next(idle)
        self.backlog.taken()  # the queue is empty now
        return out

    async def _next(self, idle: float | None) -> list[Outgoing] | None:
        idle_deadline = None if idle is None else self._loop.time() + idle
        while True:
            if not self._queue.empty():
                out: list[Outgoing] = []
                while not self._queue.empty():
                    out.extend(self.throttle.offer(self._queue.get_nowait()))
                if out:
                    return out
                continue
            due = self.throttle.next_due()
            deadlines = [d for d in (due, idle_deadline) if d is not None]
            try:
                async with asyncio.timeout_at(min(deadlines) if deadlines else None):
                    event = await self._queue.get()
            except TimeoutError:
                ready = self.throttle.take_due()
                if ready:
                    return ready
                if idle_deadline is not None and self._loop.time() >= idle_deadline:
                    return None
                continue
            out = self.throttle.offer(event)
            while not self._queue.empty():
                out.extend(self.throttle.offer(self._queue.get_nowait()))
            if out:
                return out


class SSEResponse(EventSourceResponse):
    """An ``EventSourceResponse`` that runs ``on_close`` however the stream ends
    (finished, client gone, server shutting down, cut, or never started), and is
    cut when its ``backlog`` overflows: the response ends unfinished, which makes
    the ASGI server close the connection."""

    def __init__(
        self, content: AsyncIterator[bytes], on_close: Callable[[], None], backlog: Backlog
    ) -> None:
        super().__init__(content, sep="\n", headers={"Cache-Control": "no-cache"})
        self._on_close = on_close
        self._backlog = backlog

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        backlog = self._backlog

        async def watched_send(message: Message) -> None:
            # the server returns at once unless it waits for the client to read
            backlog.sending += 1
            try:
                await send(message)
            finally:
                backlog.sending -= 1

        try:
            with anyio.CancelScope() as scope_:
                backlog.on_cut = scope_.cancel
                await super().__call__(scope, receive, watched_send)
        finally:
            backlog.on_cut = None
            self._on_close()
        if backlog.cut:
            logger.warning(
                "durably.http: %s: the client fell more than %d bytes behind; its stream "
                "is cut (it reconnects and gets the replay)",
                scope.get("path", "?"),
                backlog.limit,
            )


def _synthetic(durably: Durably, cls: type[Event], run: Run, **fields: Any) -> Event:
    return synthetic_event(cls, run, durably.clock.now(), **fields)


def replay(durably: Durably, run: Run) -> list[Event]:
    """The reference's replay of a run's current state."""
    if run.status is RunStatus.LEASED:
        out = [
            _synthetic(
                durably,
                RunLeasedEvent,
                run,
                input=run.input,
                lease_owner=run.lease_owner or "",
                lease_expires_at=run.lease_expires_at or run.updated_at,
            )
        ]
        if run.progress is not None:
            out.append(_synthetic(durably, RunProgressEvent, run, progress=run.progress))
        return out
    if run.status is RunStatus.COMPLETED:
        return [_synthetic(durably, RunCompleteEvent, run, output=run.output, duration=0)]
    if run.status is RunStatus.FAILED:
        # the reference's replay does not know the failed step: it sends ""
        error = run.error or "Unknown error"
        return [_synthetic(durably, RunFailEvent, run, error=error, failed_step_name="")]
    if run.status is RunStatus.CANCELLED:
        return [_synthetic(durably, RunCancelEvent, run)]
    return []


class _RunState:
    """What the client has been told about the run, to send only changes after a poll."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.leased = run.status is RunStatus.LEASED
        self.progress: Progress | None = run.progress

    def saw(self, out: Outgoing) -> None:
        if out.type == "run:leased":
            self.leased = True
        elif isinstance(out.event, RunProgressEvent):
            self.progress = out.event.progress

    def changes(self, durably: Durably, current: Run | None) -> list[Event]:
        if current is None:
            return [_synthetic(durably, RunDeleteEvent, self.run)]
        self.run = current
        if current.is_terminal:
            return replay(durably, current)
        out: list[Event] = []
        if current.status is RunStatus.LEASED and not self.leased:
            out.extend(replay(durably, current)[:1])
        if current.progress is not None and current.progress != self.progress:
            out.append(_synthetic(durably, RunProgressEvent, current, progress=current.progress))
        return out


async def run_frames(
    durably: Durably, queue: EventQueue, run: Run, poll_interval: float | None
) -> AsyncIterator[bytes]:
    """``/subscribe``: replay, then live events until a terminal one."""
    queued = queue.drain()
    if run.is_terminal:
        # a live terminal event that raced the read is better than a synthesized one
        ends = [o for o in queued if o.type in TERMINAL_EVENT_TYPES]
        if ends:
            outs = queued[: queued.index(ends[0]) + 1]
            for out in outs[:-1]:
                queue.throttle.offer(out)  # only the latest progress, if any, goes out
            outs = queue.throttle.offer(outs[-1])
        else:
            outs = [Outgoing(e) for e in replay(durably, run)]
        yield b"".join([out.full for out in outs])
        return
    state = _RunState(run)
    chunk = []
    for pending in [*(Outgoing(e) for e in replay(durably, run)), *queued]:
        for out in queue.throttle.offer(pending):
            state.saw(out)
            chunk.append(out.full)
            if out.type in TERMINAL_EVENT_TYPES:
                yield b"".join(chunk)
                return
    if chunk:
        yield b"".join(chunk)
    while True:
        live = await queue.next(poll_interval)
        if live is None:  # silence: has the run moved on elsewhere?
            live = []
            for event in state.changes(durably, await durably.get_run(run.id)):
                live.extend(queue.throttle.offer(Outgoing(event)))
        chunk = []
        for out in live:
            state.saw(out)
            chunk.append(out.full)
            if out.type in TERMINAL_EVENT_TYPES:
                chunk.extend(held.full for held in queue.throttle.flush())
                yield b"".join(chunk)
                return
        if chunk:
            yield b"".join(chunk)


async def runs_frames(stream: RunsStream) -> AsyncIterator[bytes]:
    """``/runs/subscribe``: the fan-out's batches of trimmed frames; never ends by itself."""
    while True:
        yield await stream.next()


def run_filter(out: Outgoing) -> bool:
    return out.type in RUN_STREAM_TYPES
