"""Per-run throttling of ``run:progress`` frames, as the reference does it.

The first progress event of a run goes out at once; later ones within the
interval are held, the latest replacing the earlier, and sent when the interval
has passed. A terminal event of the run first sends the held one. Time is the
event loop's monotonic clock: throttling is about the transport, not run time.
"""

from __future__ import annotations

from collections.abc import Callable

from .._events import TERMINAL_EVENT_TYPES
from ._serialize import Outgoing


class ProgressThrottle:
    def __init__(self, interval: float, now: Callable[[], float]) -> None:
        self.interval = interval
        self._now = now
        self._last_sent: dict[str, float] = {}
        self._held: dict[str, tuple[float, Outgoing]] = {}

    def offer(self, out: Outgoing) -> list[Outgoing]:
        """Take one event; return what should be sent now, in order."""
        run_id = out.run_id
        if self.interval <= 0 or run_id is None:
            return [out]
        kind = out.type
        if kind != "run:progress":
            if kind in TERMINAL_EVENT_TYPES:
                self._last_sent.pop(run_id, None)
                held = self._held.pop(run_id, None)
                if held is not None:
                    return [held[1], out]
            return [out]
        now = self._now()
        last = self._last_sent.get(run_id)
        if last is None or now - last >= self.interval:
            self._last_sent[run_id] = now
            self._held.pop(run_id, None)
            return [out]
        self._held[run_id] = (last + self.interval, out)
        return []

    def next_due(self) -> float | None:
        """When the earliest held event is due (loop time), if any."""
        if not self._held:
            return None
        return min(due for due, _ in self._held.values())

    def take_due(self) -> list[Outgoing]:
        """Held events whose time has come."""
        if not self._held:
            return []
        now = self._now()
        ready = [(due, run_id) for run_id, (due, _) in self._held.items() if due <= now]
        out: list[Outgoing] = []
        for _, run_id in sorted(ready):
            _, held = self._held.pop(run_id)
            self._last_sent[run_id] = now
            out.append(held)
        return out

    def prune(self) -> None:
        """Forget send times older than the interval: they hold nothing back any
        more, and a long-lived throttle would otherwise keep one per run it ever
        saw (runs finished by another process never send their terminal event here)."""
        now = self._now()
        stale = [run_id for run_id, t in self._last_sent.items() if now - t >= self.interval]
        for run_id in stale:
            if run_id not in self._held:
                del self._last_sent[run_id]

    def __len__(self) -> int:
        return len(self._last_sent)

    def flush(self) -> list[Outgoing]:
        """Everything held (the stream is closing)."""
        out = [held for _, held in sorted(self._held.values(), key=lambda x: x[0])]
        self._held.clear()
        self._last_sent.clear()
        return out
