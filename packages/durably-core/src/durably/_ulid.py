"""ULIDs: 26 characters of Crockford base32, time-ordered, monotonic per generator."""

from __future__ import annotations

import os
import threading
from datetime import datetime

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


#: Every 10-bit value as its two base32 characters: one lookup per two characters.
_PAIRS = tuple(a + b for a in _ALPHABET for b in _ALPHABET)


def _encode_ulid(ms: int, rand: int) -> str:
    """48-bit time + 80-bit randomness as 26 characters (unrolled: ids are made per step)."""
    p = _PAIRS
    return (
        p[ms >> 40 & 1023]
        + p[ms >> 30 & 1023]
        + p[ms >> 20 & 1023]
        + p[ms >> 10 & 1023]
        + p[ms & 1023]
        + p[rand >> 70 & 1023]
        + p[rand >> 60 & 1023]
        + p[rand >> 50 & 1023]
        + p[rand >> 40 & 1023]
        + p[rand >> 30 & 1023]
        + p[rand >> 20 & 1023]
        + p[rand >> 10 & 1023]
        + p[rand & 1023]
    )


class UlidGenerator:
    """Monotonic within a millisecond: a second id in the same ms increments the random part.

    One per ``Durably`` (no module-level state); thread-safe because sync step
    code may log from worker threads.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = -1
        self._last_rand = 0
        #: The last id's first 22 characters (its time and the random part's top 60
        #: bits) and those 60 bits: an id is made per step, and the next one in the
        #: same millisecond (the random part + 1) changes only the last 4 characters,
        #: so 2 lookups instead of 13 (~1.8 → ~0.6 µs).
        self._head = ""
        self._high = -1
        #: The last datetime given to :meth:`at` and its milliseconds (one tuple,
        #: replaced whole: a thread sees either): the clock hands out one datetime per
        #: millisecond, and ``timestamp()`` costs more than the identity check.
        self._last_at: tuple[datetime | None, int] = (None, -1)

    def at(self, t: datetime) -> str:
        """A new id for the instant ``t`` (an aware datetime)."""
        last = self._last_at
        if last[0] is t:
            return self.new(last[1])
        ms = int(t.timestamp() * 1000)
        self._last_at = (t, ms)
        return self.new(ms)

    def new(self, ms: int) -> str:
        with self._lock:
            if ms <= self._last_ms:
                ms = self._last_ms
                rand = self._last_rand + 1
                if rand >= 1 << 80:
                    ms += 1
                    rand = int.from_bytes(os.urandom(10), "big") >> 1
                    self._high = -1  # a new millisecond: the head is made again below
            else:
                rand = int.from_bytes(os.urandom(10), "big") >> 1
                self._high = -1
            self._last_ms, self._last_rand = ms, rand
            high = rand >> 20
            if high != self._high:
                self._head = _encode_ulid(ms, rand)[:22]
                self._high = high
            p = _PAIRS
            return self._head + p[rand >> 10 & 1023] + p[rand & 1023]
