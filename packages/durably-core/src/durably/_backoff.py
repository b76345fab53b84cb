"""How long the worker's loops wait after a storage failure before trying again.

Both loops of a worker (claiming runs, firing schedules) double their wait from
the polling interval up to :data:`MAX_BACKOFF`, but only up to
:data:`FULL_BACKOFF` after a full disk, and wait a random half to whole of it
(so that many workers do not retry in step).
"""

from __future__ import annotations

import random

from ._errors import StorageFullError

MAX_BACKOFF = 30.0
"""The longest wait after a storage failure (seconds)."""
FULL_BACKOFF = 2.0
"""The longest wait after ``StorageFullError`` (unless the polling interval is
longer): space usually comes back at once (a file deleted, a log rotated), and a
retry costs one refused write."""


def next_backoff(previous: float, exc: BaseException, polling_interval: float) -> float:
    """The backoff after ``exc``, given the one before it (0 after a success)."""
    cap = max(polling_interval, FULL_BACKOFF) if isinstance(exc, StorageFullError) else MAX_BACKOFF
    return min(cap, max(polling_interval, previous * 2))


def jittered(backoff: float) -> float:
    """The wait to sleep for a backoff: a random half to whole of it."""
    return backoff * (0.5 + random.random() / 2)
