"""Per-run throttling of ``run:progress`` frames, as the reference does it.

The first progress event of a run goes out at once; later ones within the
interval are held, the latest replacing the earlier, and sent when the interval
has passed. A terminal event of the run first sends the held one. Time is the
event loop's monotonic clock: throttling is about the transport, not run time.
"""

from __future__ import annotations

from collections.abc import Callable

from .. import Event
from ._serialize import TERMINAL_TYPES


class ProgressThrottle:
    def __init__(self, interval: float, now: Callable[[], float]) -> None:
        self.interval = interval
        self._now = now
        self._last_sent: dict[str, float] = {}
        self._held: dict[str, tuple[float, Event]] = {}

    def offer(self, event: Event) -> list[Event]:
        """Take one event; return what should be sent now, in order."""
        run_id: str | None = getattr(event, "run_id", None)
        if self.interval <= 0 or run_id is None:
            return [event]
        out: list[Event] = []
        if event.type in TERMINAL_TYPES:
            self._last_sent.pop(run_id, None)
            held = self._held.pop(run_id, None)
            if held is not None:
                out.append(held[1])
        if event.type != "run:progress":
            out.append(event)
            return out
        now = self._now()
        last = self._last_sent.get(run_id)
        if last is None or now - last >= self.interval:
            self._last_sent[run_id] = now
            self._held.pop(run_id, None)
            out.append(event)
        else:
            self._held[run_id] = (last + self.interval, event)
        return out

    def next_due(self) -> float | None:
        """When the earliest held event is due (loop time), if any."""
        if not self._held:
            return None
        return min(due for due, _ in self._held.values())

    def take_due(self) -> list[Event]:
        """Held events whose time has come."""
        now = self._now()
        ready = [(due, run_id) for run_id, (due, _) in self._held.items() if due <= now]
        out: list[Event] = []
        for _, run_id in sorted(ready):
            _, event = self._held.pop(run_id)
            self._last_sent[run_id] = now
            out.append(event)
        return out

    def flush(self) -> list[Event]:
        """Everything held (the stream is closing)."""
        out = [event for _, event in sorted(self._held.values(), key=lambda x: x[0])]
        self._held.clear()
        self._last_sent.clear()
        return out
