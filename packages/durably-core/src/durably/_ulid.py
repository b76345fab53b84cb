"""ULIDs: 26 characters of Crockford base32, time-ordered, monotonic per generator."""

from __future__ import annotations

import os
import threading

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

    def new(self, ms: int) -> str:
        with self._lock:
            if ms <= self._last_ms:
                ms = self._last_ms
                rand = self._last_rand + 1
                if rand >= 1 << 80:
                    ms += 1
                    rand = int.from_bytes(os.urandom(10), "big") >> 1
            else:
                rand = int.from_bytes(os.urandom(10), "big") >> 1
            self._last_ms, self._last_rand = ms, rand
        return _encode_ulid(ms, rand)
