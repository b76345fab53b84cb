"""Shared fixtures: every backend the engine tests run on, a manual clock, and a
factory of ``Durably`` instances that are closed after the test; the suite's rules:
a skipped test is a failure, and what is not in the quick tier is marked ``slow``."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable, Generator
from pathlib import Path
from typing import Any

import pytest

from durably import Durably, Storage, create_durably
from durably_testing.clock import ManualClock

#: Backends the engine tests are parametrized over (one pytest invocation covers all).
#: Not libsql-file: durably-libsql opens a ``file:`` URL with durably-sqlite's executor,
#: so it would run sqlite-file's code again; the libSQL conformance class on a
#: ``file:`` URL (tests/test_conformance_libsql.py) checks that path end to end.
BACKENDS = ["memory", "sqlite-file", "sqlite-memory", "libsql-remote", "postgres"]
#: The quick tier (``-m "not slow"``) runs the engine tests on the model and on the
#: embedded default; the other backends are in the whole run only.
QUICK_BACKENDS = frozenset({"memory", "sqlite-file"})
#: Backends whose ``same_db_as`` is a new connection to the same database (the others
#: live only in this process, so a second instance shares the storage object).
SEPARATE_CONNECTIONS = frozenset({"sqlite-file", "libsql-remote", "postgres"})


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(
    params=[b if b in QUICK_BACKENDS else pytest.param(b, marks=pytest.mark.slow) for b in BACKENDS]
)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "libsql-remote":  # a fresh tursodb server (libsql_support.py)
        return str(request.getfixturevalue("libsql_server").url)
    if backend == "postgres":  # a fresh schema on the session's server (postgres_support.py)
        return str(request.getfixturevalue("postgres_url"))
    return {
        "memory": "memory://",
        "sqlite-file": f"sqlite:///{tmp_path / 'durably.db'}",
        "sqlite-memory": "sqlite:///:memory:",
    }[backend]


if os.environ.get("PYTEST_XDIST_WORKER"):
    # this worker measures its coverage since it started (nox -s tests); the processes
    # its tests start are not measured (pyproject.toml, [tool.coverage.run])
    os.environ.pop("COVERAGE_PROCESS_START", None)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """A worker's coverage is saved when its tests are done, not at its exit: xdist
    kills a worker that has not exited 10 s after the run (execnet's terminate), and
    the exit first stops this worker's PostgreSQL and tursodb servers (atexit, which
    runs coverage's own save last): on a loaded machine the kill came first and the
    whole run reported 11 % (only the controller's data)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    import coverage  # the test environment has it (nox -s tests measures with it)

    current = coverage.Coverage.current()
    if current is not None:
        current.stop()
        current.save()


MakeDurably = Callable[..., Durably]


@pytest.fixture
async def make_durably(backend: str, db_url: str, clock: ManualClock) -> AsyncIterator[MakeDurably]:
    """``make_durably(jobs=..., same_db_as=other, **options)``.

    ``same_db_as`` gives a second instance on the same database, as another
    process would have: a new connection to the same file, or the same storage
    object where a database lives only in this process (memory, ``:memory:``).
    """
    made: list[Durably] = []

    def make(
        jobs: dict[str, Any] | None = None, *, same_db_as: Durably | None = None, **options: Any
    ) -> Durably:
        options.setdefault("clock", clock)
        target: str | Storage = db_url
        if same_db_as is not None and backend not in SEPARATE_CONNECTIONS:
            target = same_db_as.storage
        d = create_durably(target, jobs=jobs, **options)
        made.append(d)
        return d

    yield make
    for d in reversed(made):
        await d.stop(timeout=0)
    for d in reversed(made):
        # closing a shared storage twice is fine; a broken one must not hide the test result
        with contextlib.suppress(Exception):
            await d.storage.close()


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C is Ctrl-C in every test process, however the run was started.

    A command started in the background by a script (``cmd &`` without job control,
    so also ``nohup``, cron-like wrappers) inherits SIGINT *ignored*; Python then
    installs no KeyboardInterrupt handler, and every process the tests start inherits
    the ignored SIGINT too: the tests of Ctrl-C (the blocking API's, the command line's,
    the Django and Flask examples') waited for an interruption that never came (4
    failures in each of 2 whole runs started that way, none otherwise). Runs in this
    process and in each xdist worker (main thread)."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


#: pytester drives the durably pytest plugin in tests/test_pytest_plugin.py
pytest_plugins = ["pytester", "libsql_support", "postgres_support"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that starts a server of its own (libSQL, PostgreSQL) is not in the quick
    tier."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if {"libsql_server", "postgres", "postgres_server"} & set(fixtures):
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A skipped test fails: a skip would hide that a server, a package or a browser
    the test needs is missing (``scripts/setup-*.sh`` install them; ``uv run nox -s
    tests`` runs those scripts first)."""
    report: pytest.TestReport = yield
    if report.skipped and not hasattr(report, "wasxfail"):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped, and this suite skips nothing: {reason}"
    return report
