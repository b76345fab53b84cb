"""Exit codes of the ``durably`` command (no third-party import: ``main`` needs them
before it knows whether the extra is installed)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

EXIT_CODES: Mapping[str, int] = MappingProxyType(
    {
        "ok": 0,
        "failed": 1,
        "usage": 2,
        "not-found": 3,
        "conflict": 4,
        "database": 5,
        "timeout": 6,
        "interrupted": 130,
    }
)
"""What the ``durably`` command's exit status means: ``ok`` 0; ``failed`` 1 (the run
waited for failed or was cancelled; ``doctor`` found a problem); ``usage`` 2 (bad
arguments, invalid input, the extra or the app missing); ``not-found`` 3 (no such
run or job); ``conflict`` 4 (the run is in a status that does not allow it);
``database`` 5 (unreachable, not a durably database, a schema to migrate);
``timeout`` 6 (``--timeout`` passed while waiting); ``interrupted`` 130 (Ctrl-C)."""
