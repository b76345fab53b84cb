"""Testing tools for durably: a memory backend, a manual clock, fault injection,
the adapter conformance suite, stateful model tests and a pytest plugin.

``StorageConformance`` and ``FaultInjectionSuite`` (need pytest) and
``StorageStateMachine`` (needs hypothesis) are imported on first use, so
importing this package needs neither.
"""

from typing import TYPE_CHECKING, Any

from .clock import ManualClock
from .faults import (
    Fault,
    FaultKind,
    FaultPlan,
    FaultyStorage,
    FiredFault,
    InjectedStorageError,
    SimulatedCrash,
)
from .helpers import advance_past_lease, run_to_completion
from .memory import MemoryStorage

if TYPE_CHECKING:
    from .conformance import StorageConformance
    from .fault_suite import FaultInjectionSuite
    from .stateful import StorageStateMachine

#: The package version: the one place it is written (its pyproject.toml reads it).
__version__ = "0.1.0"

__all__ = [
    "Fault",
    "FaultInjectionSuite",
    "FaultKind",
    "FaultPlan",
    "FaultyStorage",
    "FiredFault",
    "InjectedStorageError",
    "ManualClock",
    "MemoryStorage",
    "SimulatedCrash",
    "StorageConformance",
    "StorageStateMachine",
    "advance_past_lease",
    "run_to_completion",
]

_LAZY = {
    "FaultInjectionSuite": "durably_testing.fault_suite",
    "StorageConformance": "durably_testing.conformance",
    "StorageStateMachine": "durably_testing.stateful",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'durably_testing' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
