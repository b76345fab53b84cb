"""What durably-postgres does beyond the conformance suite, on a real server: URLs and
options, the password kept out of every repr, log and error, wake-ups across
connections by ``LISTEN``/``NOTIFY``, claims of one concurrency key racing on warm
connections, and errors that are durably's."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from postgres_support import SECRET, SECRET_ROLE, PostgresServer

from durably import (
    ClaimableSubscription,
    StorageAuthError,
    StorageConnectionError,
    ValidationError,
    create_durably,
    define_job,
)
from durably.plugins import BackendRegistry
from durably.sql import PostgresStorage
from durably.sql._rows import RUN_COLUMNS, to_run
from durably_postgres._url import parse_config, redact
from durably_testing.clock import ManualClock
from durably_testing.conformance import StorageConformance


def secret_url(server: PostgresServer, password: str | None = SECRET, **query: str) -> str:
    auth = SECRET_ROLE if password is None else f"{SECRET_ROLE}:{password}"
    url = f"postgresql://{auth}@127.0.0.1:{server.port}/postgres"
    if query:
        url += "?" + "&".join(f"{k}={v}" for k, v in query.items())
    return url


# -- URLs, options, the password --


def test_url__both_schemes_open_postgres() -> None:
    registry = BackendRegistry()
    for url in ("postgresql://u@h/db", "postgres://u@h:5433/db", "POSTGRESQL://u@h/db"):
        assert registry.backend_for(url).package == "durably-postgres"
        assert isinstance(registry.open(url), PostgresStorage)


def test_url__options_and_query_parameters() -> None:
    config = parse_config(
        "postgresql://u:pw@db.example:6543/app?schema=jobs&pool_size=3&sslmode=require",
        {"statement_timeout": 2.5, "pool_size": 4},
    )
    assert config.pool_size == 4  # the keyword wins
    assert config.schema == "jobs"
    assert config.statement_timeout == 2.5
    assert config.dsn == "postgresql://u@db.example:6543/app?sslmode=require"
    assert config.server_settings()["search_path"] == '"jobs"'
    assert config.server_settings()["statement_timeout"] == "2500"
    assert config.channel == "durably_claimable_jobs"
    assert parse_config("postgres://u@h/db", {"ssl": "verify-full"}).ssl == "verify-full"


@pytest.mark.parametrize(
    ("url", "options", "match"),
    [
        ("postgresql://u@h/db", {"pool": 3}, "Unknown option"),
        ("postgresql://u@h/db?colour=red", {}, "Unknown parameter"),
        ("postgresql://u@h/db", {"pool_size": 0}, "pool_size"),
        ("postgresql://u@h/db", {"schema": "a;drop"}, "schema"),
        ("postgresql://u@h/db", {"ssl": "sometimes"}, "ssl"),
        ("postgresql://u@h/db?sslmode=require", {"ssl": True}, "either"),
        ("postgresql://u@h:99999/db", {}, "Invalid PostgreSQL URL"),
        ("postgresql://u@h/db", {"min_pool_size": 5, "pool_size": 2}, "min_pool_size"),
    ],
)
def test_url__bad_options_are_validation_errors(
    url: str, options: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValidationError, match=match):
        BackendRegistry().open(url, **options)


def test_password__never_in_a_repr_or_a_message() -> None:
    url = "postgresql://alice:hunter2-secret@db.example:5432/app?schema=s"
    config = parse_config(url, {})
    assert config.password == "hunter2-secret"
    storage = BackendRegistry().open(url)
    for text in (repr(config), str(config), repr(storage.executor), redact(url), config.dsn):  # type: ignore[attr-defined]
        assert "hunter2" not in text, text
    assert redact(url) == "postgresql://alice@db.example:5432/app"
    with pytest.raises(ValidationError) as info:
        BackendRegistry().open(url, pool_size="many")
    assert "hunter2" not in str(info.value)
    keyword = parse_config("postgresql://alice@db.example/app", {"password": "kw-secret"})
    assert keyword.password == "kw-secret"
    assert "kw-secret" not in repr(keyword)


async def test_password__from_the_url_pgpassword_or_the_option(
    postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PGPASSWORD", raising=False)
    for url, options in (
        (secret_url(postgres), {}),
        (secret_url(postgres, None), {"password": SECRET}),
    ):
        storage = BackendRegistry().open(url, **options)
        try:
            await storage.migrate()
            assert await storage.get_run("nope") is None
        finally:
            await storage.close()
    monkeypatch.setenv("PGPASSWORD", SECRET)
    storage = BackendRegistry().open(secret_url(postgres, None))
    try:
        await storage.migrate()
    finally:
        await storage.close()


async def test_password__a_refused_one_is_a_storage_auth_error_without_it(
    postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("PGPASSWORD", raising=False)
    wrong = "Wr0ng-Pa55word-xyz"
    storage = BackendRegistry().open(secret_url(postgres, wrong))
    with pytest.raises(StorageAuthError) as info:
        await storage.migrate()
    await storage.close()
    chain: list[BaseException] = []
    exc: BaseException | None = info.value
    while exc is not None:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    for error in chain:
        assert wrong not in str(error)
        assert wrong not in repr(error)
    assert "refused the credentials" in str(info.value)
    # a worker that cannot connect reports it (logged when nobody listens), never the password
    caplog.set_level(logging.WARNING, "durably")
    d = create_durably(secret_url(postgres, wrong), polling_interval=0.05)
    d.start()
    try:
        for _ in range(200):
            if "refused the credentials" in caplog.text:
                break
            await asyncio.sleep(0.02)
    finally:
        await d.close()
    assert "refused the credentials" in caplog.text
    assert wrong not in caplog.text


async def test_database_url_from_the_environment(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DURABLY_DATABASE_URL", postgres_url)
    d = create_durably(jobs={"j": define_job("env-job", run=_echo)})
    assert isinstance(d.storage, PostgresStorage)
    try:
        await d.migrate()
        run = (await d.jobs.j.trigger({"x": 1})).run
        assert await d.process_one()
        assert (await d.get_run(run.id)).output == {"x": 1}  # type: ignore[union-attr]
    finally:
        await d.close()


async def _echo(step: Any, payload: Any) -> Any:
    return await step.run("echo", lambda: payload)


async def test_unreachable_server__storage_connection_error(postgres: PostgresServer) -> None:
    from postgres_support import free_port

    url = f"postgresql://durably@127.0.0.1:{free_port()}/postgres"
    storage = BackendRegistry().open(url, connect_timeout=0.5)
    with pytest.raises(StorageConnectionError, match="Cannot reach PostgreSQL"):
        await storage.migrate()
    await storage.close()


def test_package__importing_it_or_its_plugin_does_not_import_the_driver() -> None:
    import subprocess
    import sys

    code = (
        "import sys, durably_postgres, durably_postgres.plugin; "
        "from durably.plugins import BackendRegistry; BackendRegistry(); "
        "assert 'asyncpg' not in sys.modules, 'asyncpg imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- wake-ups --


async def completed(d: Any, run_id: str, timeout: float = 30.0) -> Any:
    """The run once completed, read from the database in real time (the instances'
    clocks are manual)."""
    async with asyncio.timeout(timeout):
        while True:
            run = await d.get_run(run_id)
            if run is not None and run.status == "completed":
                return run
            await asyncio.sleep(0.02)


async def test_wakeup__a_trigger_on_another_connection_wakes_an_idle_worker(
    postgres_url: str,
) -> None:
    """The worker's clock is manual and never moves, so it can never poll again: only
    the notification can wake it."""
    job = define_job("woken", run=_echo)
    worker = create_durably(postgres_url, jobs={"j": job}, clock=ManualClock())
    other = create_durably(postgres_url, jobs={"j": job}, clock=ManualClock())
    assert isinstance(worker.storage, ClaimableSubscription)
    claims: list[object] = []
    claim_next = worker.storage.claim_next

    async def counted(*args: Any, **kwargs: Any) -> Any:
        run = await claim_next(*args, **kwargs)
        claims.append(run)
        return run

    worker.storage.claim_next = counted  # type: ignore[method-assign]
    try:
        await worker.init()
        async with asyncio.timeout(30):  # its first round found nothing: it waits now
            while not claims or worker._worker._unsubscribe is None:  # noqa: ASYNC110 - nothing to await but the state
                await asyncio.sleep(0.01)
        assert claims == [None]
        await other.migrate()
        run = (await other.jobs.j.trigger({"n": 1})).run
        done = await completed(other, run.id)
        assert done.output == {"n": 1}
        assert claims[1] is not None
        assert claims[1].id == run.id  # type: ignore[attr-defined]
    finally:
        await worker.close()
        await other.close()


# -- the conformance suite catches a claim without a lock per key --

_SKIP_LOCKED_ONLY = (
    "UPDATE durably_runs SET status = 'leased', lease_owner = ?, lease_expires_at = ?, "
    "lease_generation = lease_generation + 1, started_at = COALESCE(started_at, ?), "
    "updated_at = ? WHERE id = (SELECT c.id FROM durably_runs AS c "
    "WHERE (c.status = 'pending' OR (c.status = 'leased' AND c.lease_expires_at <= ?)) "
    "AND (c.concurrency_key IS NULL OR NOT EXISTS (SELECT 1 FROM durably_runs AS a "
    "WHERE a.concurrency_key = c.concurrency_key AND a.id <> c.id AND a.status = 'leased' "
    "AND a.lease_expires_at > ?)) ORDER BY c.created_at, c.id LIMIT 1 FOR UPDATE SKIP LOCKED) "
    f"RETURNING {RUN_COLUMNS}"
)


class SkipLockedOnly(PostgresStorage):
    """The claim a third party wrote from the old guide: ``FOR UPDATE SKIP LOCKED``
    alone, no lock per concurrency key (the issue's 286 failures in 300 rounds)."""

    async def claim_next(
        self, owner: str, now: Any, lease_expires_at: Any, job_names: Any = None
    ) -> Any:
        from durably._timefmt import format_ts

        now_s = format_ts(now)
        params = (owner, format_ts(lease_expires_at), now_s, now_s, now_s, now_s)
        rows = await self.executor.fetch(_SKIP_LOCKED_ONLY, params)
        return to_run(rows[0]) if rows else None


async def test_conformance__catches_a_claim_without_a_lock_per_key(postgres_url: str) -> None:
    from durably_postgres._open import open_postgres

    good = open_postgres(postgres_url)
    broken = SkipLockedOnly(good.executor, channel=good.channel, schema=good.schema)
    await broken.migrate()
    suite = StorageConformance()
    # search long enough that luck cannot hide it (it is usually caught in a few rounds)
    suite.race_rounds, suite.race_seconds = 1000, 120.0
    try:
        with pytest.raises(AssertionError, match="more than one run of concurrency key"):
            await suite.test_concurrent__claims_lease_one_run_per_concurrency_key(broken)
    finally:
        await broken.close()


async def test_database_time__the_servers_clock(postgres_url: str) -> None:
    from datetime import UTC, datetime

    storage = BackendRegistry().open(postgres_url)
    try:
        await storage.migrate()
        before = datetime.now(UTC).replace(microsecond=0)
        server = await storage.database_time()  # type: ignore[attr-defined]
        after = datetime.now(UTC)
    finally:
        await storage.close()
    assert server.tzinfo is not None
    assert server.microsecond % 1000 == 0
    assert before <= server <= after  # the same machine's clock here
