"""The bound on what a stream holds for a client that does not read.

An SSE stream writes to its client through the ASGI server, which stops taking
writes while the client's socket buffers are full. Events keep coming meanwhile
and queue up in the stream: without a bound a client that never reads (a
stalled tab, a hostile script) makes the server hold every event for it until
it hangs up (10 such clients on a 40,000-step run: +170 MB). So each stream
counts the bytes queued while it is waiting for its client; past the limit the
client has fallen behind, and the stream is cut instead — the server drops the
connection and the client reconnects and gets the replay, as an EventSource
does. Bytes queued while the stream is not waiting are not counted: it takes
them all as soon as it runs, so they say nothing about the client.
"""

from __future__ import annotations

from collections.abc import Callable

#: Default of ``create_handler(sse_max_backlog=...)``: 1 MiB per stream.
DEFAULT_MAX_BACKLOG = 1 << 20


class Backlog:
    """One stream's count of bytes queued while it waits for its client."""

    __slots__ = ("cut", "limit", "on_cut", "sending", "size")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        #: sends in progress; a send that has not returned waits for the client
        self.sending = 0
        self.cut = False
        #: ends the stream's response (set by the response when it starts)
        self.on_cut: Callable[[], None] | None = None

    @property
    def counting(self) -> bool:
        """Whether queued items must be counted (``add``): the stream is waiting
        for its client, or has been cut."""
        return self.cut or self.sending > 0

    def add(self, size: int) -> bool:
        """Count ``size`` more bytes queued while ``counting``; ``False`` once the
        stream is cut (the item should be dropped)."""
        if self.cut:
            return False
        self.size += size
        if self.size <= self.limit:
            return True
        self.cut = True
        self.size = 0
        if self.on_cut is not None:
            self.on_cut()
        return False

    def taken(self) -> None:
        """The stream took everything queued."""
        self.size = 0
