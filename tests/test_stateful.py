"""Stateful property tests: each backend against the lifecycle model, and all
backends side by side (``durably_testing.stateful``)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime

import pytest
from conftest import BACKENDS
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test
from libsql_support import fresh_shared_database
from postgres_support import fresh_schema_url

from durably import Storage
from durably.plugins import BackendRegistry
from durably_testing.stateful import StorageStateMachine

pytestmark = pytest.mark.slow

#: Modest for the default run, and derandomized so the suite is deterministic; to
#: explore further, raise max_examples and drop derandomize in a local profile.
SETTINGS = settings(
    max_examples=50,
    stateful_step_count=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


def url_for(backend: str, machine: StorageStateMachine) -> str:
    """A URL of a fresh, empty database of ``backend`` (cf. the ``db_url`` fixture)."""
    urls = {
        "memory": lambda: "memory://",
        "sqlite-memory": lambda: "sqlite:///:memory:",
        "sqlite-file": lambda: f"sqlite:///{machine.tmp_path / 'durably.db'}",
        # one tursodb server for the session, its tables emptied for each example
        "libsql-remote": fresh_shared_database,
        # one PostgreSQL server for the session, a new schema for each example
        "postgres": fresh_schema_url,
    }
    if backend not in urls:
        raise AssertionError(f"tests/test_stateful.py: add a URL for backend {backend!r}")
    return urls[backend]()


#: Backends on a server: slower per operation, so fewer examples and not side by side.
SERVERS = frozenset({"libsql-remote", "postgres"})

#: The URL scheme whose plugin opens each backend.
SCHEMES = {
    "memory": "memory",
    "sqlite-memory": "sqlite",
    "sqlite-file": "sqlite",
    "libsql-remote": "http",
    "postgres": "postgresql",
}


def machine_for(backends: list[str], *, check_model: bool) -> type[StorageStateMachine]:
    class Machine(StorageStateMachine):
        async def open_storages(self) -> Mapping[str, Storage]:
            registry = BackendRegistry()
            return {
                f"{i}:{backend}": registry.open(url_for(backend, self))
                for i, backend in enumerate(backends)
            }

    Machine.check_model = check_model
    Machine.__name__ = f"Machine[{','.join(backends)}]"
    return Machine


def side_by_side_backends(installed_schemes: Collection[str]) -> list[str]:
    """Every backend the engine tests run on (conftest.BACKENDS) but the servers (the
    model test checks each of them). Each must be installed, or the test fails."""
    wanted = [b for b in dict.fromkeys([*BACKENDS, "sqlite-memory"]) if b not in SERVERS]
    unknown = [b for b in wanted if b not in SCHEMES]
    if unknown:
        raise AssertionError(f"tests/test_stateful.py: add the URL scheme of {unknown}")
    missing = [b for b in wanted if SCHEMES[b] not in installed_schemes]
    if missing:
        pytest.fail(
            f"backends {missing} are not installed (no plugin for their URL schemes); "
            "every backend of conftest.BACKENDS runs: uv sync --frozen --all-packages",
            pytrace=False,
        )
    return wanted


#: A server answers each request over a socket and every step reads the state back (the
#: remote libSQL server ~100 requests/s), so the servers get fewer examples (~1.5 s each)
#: and are left out of the side-by-side test: their model tests check them against the
#: same model.
REMOTE_SETTINGS = settings(SETTINGS, max_examples=10)


def test_storage__matches_the_lifecycle_model(backend: str) -> None:
    chosen = REMOTE_SETTINGS if backend in SERVERS else SETTINGS
    run_state_machine_as_test(machine_for([backend], check_model=True), settings=chosen)


def test_backends__agree_side_by_side() -> None:
    backends = side_by_side_backends(BackendRegistry().schemes)
    run_state_machine_as_test(machine_for(backends, check_model=False), settings=SETTINGS)


def test_side_by_side__every_installed_backend_takes_part() -> None:
    # the workspace installs every in-tree plugin (uv sync --all-packages)
    everything = ["memory", "sqlite-file", "sqlite-memory"]
    assert side_by_side_backends(BackendRegistry().schemes) == everything


def test_side_by_side__a_missing_backend_fails() -> None:
    with pytest.raises(pytest.fail.Exception, match=r"\['sqlite-file', 'sqlite-memory'\]"):
        side_by_side_backends({"memory"})


def test_machine__catches_a_storage_that_breaks_the_contract() -> None:
    """A memory store that forgets to fence ``complete_run`` must be caught."""
    from durably_testing.memory import MemoryStorage

    class Unfenced(MemoryStorage):
        async def complete_run(
            self,
            run_id: str,
            generation: int,
            output_json: str,
            now: datetime,
            *,
            delete_steps: bool,
        ) -> bool:
            run = self._runs.get(run_id)
            if run is None:
                return False
            return await super().complete_run(
                run_id, run.lease_generation, output_json, now, delete_steps=delete_steps
            )

    class Machine(StorageStateMachine):
        async def open_storages(self) -> Mapping[str, Storage]:
            return {"unfenced": Unfenced()}

    # the scenario the search finds, replayed step by step: a worker whose lease
    # expired and was taken over completes the run anyway
    machine = Machine()
    try:
        machine.enqueue("job-a", None, None, False, {})
        machine.claim_next("worker-1", 5, None)
        machine.claim_next("worker-2", 30, None, elapsed_ms=6_000)
        machine.storages_agree_and_keep_the_invariants()
        run_id = machine.known[0]
        stale = machine.model.runs[run_id].lease_generation - 1
        with pytest.raises(AssertionError, match="complete_run: storage gave"):
            machine.apply_complete_run(run_id, stale, output=1)
    finally:
        machine.teardown()
