"""The conformance suite every :class:`durably.Storage` adapter runs.

Subclass :class:`StorageConformance` in a module pytest collects, name the
subclass ``Test…``, and say where your backend's database is, as a URL the
installed plugin opens (pytest-asyncio in auto mode)::

    import pytest
    from durably_testing.conformance import StorageConformance

    class TestMyStorage(StorageConformance):
        supports_reopen = True          # data survives close() and a new open
        entry_point_name = "mine"       # optional: the entry point in group "durably"

        @pytest.fixture
        def storage_url(self, tmp_path):
            return f"mine:///{tmp_path / 'test.db'}"

A fixed URL can be the class attribute ``url`` instead (``url = "mine:///:memory:"``).
From that one URL the suite builds its fixtures: ``storage`` opens the URL through
``durably.plugins.BackendRegistry``, migrates it and closes it after the test (a
fresh database per test: use a new file, or an in-process database); ``reopen``
closes a storage and opens the same URL again. An adapter that cannot be opened by
URL overrides the ``storage`` fixture instead (an async fixture yielding an opened,
migrated storage), and ``reopen`` when it supports reopening.

Optional capabilities are switched on with class attributes:

- ``supports_reopen = True``: the close-and-reopen durability test runs (file-backed
  stores). ``reopen(old) -> new`` closes ``old`` and returns a new, migrated storage
  over the same data; the test closes the new one and the ``storage`` fixture's
  teardown closes the old one again, so ``close()`` must tolerate a second call.
- ``url`` or a ``storage_url`` fixture, with ``entry_point_name``: the backend is
  found through ``BackendRegistry().backend_for(url)``, opens a working storage and
  rejects an unknown option.
- The optional capabilities of the storage itself (:class:`durably.SupportsIdentityCheck`,
  :class:`durably.SupportsDatabaseTime`) are found with ``isinstance``; their cases
  check what a storage offering one must keep, and pass for one that does not.

Besides one case per rule of each operation, the suite runs operations at the
same time (``asyncio.gather`` on one storage: claims, enqueues of one key, one
step persisted twice, finishing writes of one lease, a claim racing a cancel) and
requires an outcome of running them one after another — what a "read, await,
write" implementation gets wrong; and it checks that errors are durably's own:
text that is not valid Unicode is refused with a ``ValidationError`` (or a
``StorageError``), and a closed storage works or raises a ``StorageError``, never
a driver exception.

The suite relies on the :class:`durably.Storage` protocol only. All times are
explicit arguments at millisecond precision (what the database stores); ids are
26-character ULID-like strings that sort in creation order.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar

import pytest

from durably import (
    AttemptStatus,
    ConflictError,
    LogRecord,
    NewRun,
    Progress,
    Run,
    RunFilter,
    RunStatus,
    StepRecord,
    StepStatus,
    Storage,
    ValidationError,
)
from durably.plugins import BackendRegistry

from ._conformance_attempts import AttemptCases
from ._conformance_base import ConformanceBase, js
from ._conformance_capabilities import CapabilityCases
from ._conformance_concurrency import ConcurrencyCases
from ._conformance_errors import ErrorMappingCases
from ._conformance_schedules import ScheduleCases
from ._conformance_waits import WaitCases

__all__ = ["Reopen", "StorageConformance"]

Reopen = Callable[[Storage], Awaitable[Storage]]
"""``reopen(old)`` closes ``old`` and returns a fresh, migrated storage over the same data."""

FENCED_WRITES = (
    "persist_step",
    "update_progress",
    "append_logs",
    "complete_run",
    "fail_run",
    "record_attempt",
    "record_attempt_and_back_off",
    "persist_step_with_attempt",
    "schedule_retry",
)
LOST_LEASE_SCENARIOS = ("reclaimed", "cancelled", "released", "finished", "wrong_generation")

NESTED: dict[str, Any] = {
    "list": [1, 2.5, -3, {"deep": [None, True, False, "x"]}],
    "empty_obj": {},
    "empty_list": [],
    "big": 2**53,
    "float": 0.1,
    "null": None,
    "text": '日本語 ✓ émoji 🎉 "quoted" \\ back\nslash',
}


class StorageConformance(
    CapabilityCases,
    WaitCases,
    AttemptCases,
    ScheduleCases,
    ConcurrencyCases,
    ErrorMappingCases,
    ConformanceBase,
):
    """Base class of the adapter conformance suite (see the module docstring).

    The cases of single operations are here; those of durable waits come from
    ``WaitCases``, those of retries (attempt records, runs waiting for their next
    attempt) from ``AttemptCases``, those of schedules (compare-and-set, fires that apply once) from
    ``ScheduleCases``, those of operations run at the same time (atomicity) from
    ``ConcurrencyCases``, and those of errors that must be durably's own (no driver
    exception escapes) from ``ErrorMappingCases``."""

    #: The adapter keeps its data across ``close()`` and a new open (file-backed stores).
    supports_reopen: ClassVar[bool] = False
    #: A URL the installed plugin opens; with ``None`` (and no ``storage_url`` fixture)
    #: the discovery tests are left out.
    url: ClassVar[str | None] = None
    #: The entry-point name (group ``durably``) expected to provide ``url``'s backend.
    entry_point_name: ClassVar[str | None] = None

    #: The tests of each optional capability, left out of a subclass that lacks it.
    _REOPEN_TESTS: ClassVar[tuple[str, ...]] = ("test_reopen__data_and_leases_survive",)
    _URL_TESTS: ClassVar[tuple[str, ...]] = (
        "test_url__backend_found_through_entry_point",
        "test_url__unknown_option_rejected",
    )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # A capability the adapter does not have is not collected at all (rather than
        # reported as a skip on every run): pytest ignores a test name bound to None.
        super().__init_subclass__(**kwargs)
        if not cls.supports_reopen:
            for name in cls._REOPEN_TESTS:
                setattr(cls, name, None)
        own_url_fixture = any(
            "storage_url" in vars(k) for k in cls.__mro__ if k is not StorageConformance
        )
        if cls.url is None and not own_url_fixture:
            for name in cls._URL_TESTS:
                setattr(cls, name, None)

    # -- fixtures an adapter may override --

    @pytest.fixture
    def storage_url(self) -> str | None:
        """The URL of the database under test; defaults to the ``url`` class attribute."""
        return self.url

    @pytest.fixture
    async def storage(self, storage_url: str | None) -> AsyncIterator[Storage]:
        """A migrated storage opened from ``storage_url``, closed after the test."""
        opened = self._open_url(storage_url)
        await opened.migrate()
        yield opened
        await opened.close()

    @pytest.fixture
    def reopen(self, storage_url: str | None) -> Reopen | None:
        """``reopen(old)``: close ``old``, open ``storage_url`` again (when
        ``supports_reopen``)."""
        if not self.supports_reopen:
            return None

        async def reopen(old: Storage) -> Storage:
            await old.close()
            fresh = self._open_url(storage_url)
            await fresh.migrate()
            return fresh

        return reopen

    def _open_url(self, storage_url: str | None) -> Storage:
        if storage_url is None:
            pytest.fail(
                f"{type(self).__name__}: set url = '...' or a storage_url fixture (a URL "
                "the installed plugin opens), or override the storage fixture"
            )
        return BackendRegistry().open(storage_url)

    # -- helpers of the cases below --

    async def fenced_write(
        self, kind: str, storage: Storage, run_id: str, generation: int, now: datetime
    ) -> bool:
        """Make the fenced write ``kind`` (one of ``FENCED_WRITES``) with ``generation``;
        whether the storage accepted it."""
        if kind == "persist_step":
            step = self.new_step("late", 5, output={"late": True})
            return await storage.persist_step(run_id, generation, step, now)
        if kind == "update_progress":
            return await storage.update_progress(run_id, generation, Progress(9, 9, "late"), now)
        if kind == "append_logs":
            return await storage.append_logs(run_id, generation, [self.new_log("late")], now)
        if kind == "complete_run":
            return await storage.complete_run(
                run_id, generation, js("late"), now, delete_steps=True
            )
        if kind == "fail_run":
            return await storage.fail_run(run_id, generation, "late failure", now)
        if kind == "record_attempt":
            return await storage.record_attempt(run_id, generation, self.new_attempt(), now)
        if kind == "record_attempt_and_back_off":
            attempt = self.new_attempt(next_at=100)
            return await storage.record_attempt(
                run_id, generation, attempt, now, wake_at=self.at(100)
            )
        if kind == "persist_step_with_attempt":
            step = self.new_step("late", 5, output={"late": True})
            attempt = self.new_attempt("late", 2, index=5, status=AttemptStatus.COMPLETED)
            return await storage.persist_step(run_id, generation, step, now, attempt=attempt)
        if kind == "schedule_retry":
            run = await storage.schedule_retry(run_id, generation, "late", self.at(100), now)
            return run is not None
        raise AssertionError(kind)

    # -- basics --

    async def test_storage__satisfies_protocol(self, storage: Storage) -> None:
        assert isinstance(storage, Storage)

    async def test_migrate__is_idempotent_and_keeps_data(self, storage: Storage) -> None:
        run = await self.create(storage)
        await storage.migrate()
        await storage.migrate()
        assert await storage.get_run(run.id) == run

    async def test_get_run__unknown_id_returns_none(self, storage: Storage) -> None:
        assert await storage.get_run(self.new_id()) is None

    async def test_timestamps__returned_as_aware_utc_instants(self, storage: Storage) -> None:
        tokyo = timezone(timedelta(hours=9))
        created = datetime(2026, 3, 1, 21, 0, 0, 123000, tzinfo=tokyo)
        result = await storage.enqueue(self.new_run(created_at=created))
        for run in (result.run, await storage.get_run(result.run.id)):
            assert run is not None
            assert run.created_at == created
            assert run.created_at.utcoffset() == timedelta(0)

    async def test_records__fields_have_their_declared_types(self, storage: Storage) -> None:
        run = await self.lease(storage, labels={"k": "v"})
        assert await storage.persist_step(run.id, 1, self.new_step("s", 0), self.at(1))
        assert await storage.append_logs(run.id, 1, [self.new_log("x")], self.at(1))
        assert await storage.update_progress(run.id, 1, Progress(1, 2, "m"), self.at(1))
        got = await storage.get_run(run.id)
        assert isinstance(got, Run)
        assert type(got.status) is RunStatus  # the lifecycle rules compare with `is`
        assert isinstance(got.progress, Progress)
        for t in (got.created_at, got.updated_at, got.started_at, got.lease_expires_at):
            assert isinstance(t, datetime)
        [step] = await storage.get_steps(run.id)
        assert isinstance(step, StepRecord)
        assert type(step.status) is StepStatus
        assert isinstance(step.started_at, datetime)
        assert isinstance(step.completed_at, datetime)
        [log] = await storage.get_logs(run.id)
        assert isinstance(log, LogRecord)
        assert isinstance(log.created_at, datetime)

    # -- enqueue --

    async def test_enqueue__created_pending_run_with_defaults(self, storage: Storage) -> None:
        new = self.new_run(
            "job-a",
            input={"file": "a.csv"},
            idempotency_key="idem-1",
            concurrency_key="ck-1",
            labels={"tenant": "t1", "env": "prod"},
        )
        result = await storage.enqueue(new)
        run = result.run
        assert result.disposition == "created"
        assert (run.id, run.job_name, run.input) == (new.id, "job-a", {"file": "a.csv"})
        assert run.status == RunStatus.PENDING
        assert (run.idempotency_key, run.concurrency_key) == ("idem-1", "ck-1")
        assert run.labels == {"tenant": "t1", "env": "prod"}
        assert (run.current_step_index, run.completed_step_count, run.lease_generation) == (0, 0, 0)
        assert (run.progress, run.output, run.error) == (None, None, None)
        assert (run.lease_owner, run.lease_expires_at) == (None, None)
        assert (run.started_at, run.completed_at) == (None, None)
        assert run.created_at == run.updated_at == new.created_at
        assert await storage.get_run(new.id) == run

    async def test_enqueue__idempotent_returns_existing_and_ignores_new_input(
        self, storage: Storage
    ) -> None:
        first = await self.create(storage, input={"v": 1}, idempotency_key="k")
        again = self.new_run(input={"v": 2}, idempotency_key="k", labels={"x": "y"})
        result = await storage.enqueue(again)
        assert result.disposition == "idempotent"
        assert result.run == first
        assert await storage.get_run(again.id) is None
        assert await self.ids(storage) == [first.id]

    async def test_enqueue__idempotent_whatever_the_status(self, storage: Storage) -> None:
        run = await self.lease(storage, idempotency_key="k")
        assert await storage.fail_run(run.id, 1, "boom", self.at(5))
        result = await storage.enqueue(self.new_run(idempotency_key="k"))
        assert result.disposition == "idempotent"
        assert result.run.id == run.id
        assert result.run.status == RunStatus.FAILED

    async def test_enqueue__idempotency_key_is_scoped_to_job(self, storage: Storage) -> None:
        a = await self.create(storage, job_name="job-a", idempotency_key="k")
        b = await self.create(storage, job_name="job-b", idempotency_key="k")
        assert a.id != b.id

    async def test_enqueue__idempotency_checked_before_pending_conflict(
        self, storage: Storage
    ) -> None:
        first = await self.create(storage, idempotency_key="k", concurrency_key="c")
        result = await storage.enqueue(self.new_run(idempotency_key="k", concurrency_key="c"))
        assert result.disposition == "idempotent"
        assert result.run.id == first.id

    async def test_enqueue__second_pending_run_of_key_conflicts(self, storage: Storage) -> None:
        first = await self.create(storage, concurrency_key="c")
        second = self.new_run(concurrency_key="c")
        with pytest.raises(ConflictError):
            await storage.enqueue(second)
        assert await storage.get_run(second.id) is None
        assert await self.ids(storage) == [first.id]

    async def test_enqueue__coalesce_returns_the_pending_run(self, storage: Storage) -> None:
        first = await self.create(storage, input={"v": 1}, concurrency_key="c")
        second = self.new_run(input={"v": 2}, concurrency_key="c")
        result = await storage.enqueue(second, coalesce=True)
        assert result.disposition == "coalesced"
        assert result.run == first
        assert await storage.get_run(second.id) is None

    async def test_enqueue__coalesce_without_pending_run_creates(self, storage: Storage) -> None:
        result = await storage.enqueue(self.new_run(concurrency_key="c"), coalesce=True)
        assert result.disposition == "created"

    async def test_enqueue__same_key_in_other_job_is_created(self, storage: Storage) -> None:
        await self.create(storage, job_name="job-a", concurrency_key="c")
        result = await storage.enqueue(self.new_run("job-b", concurrency_key="c"))
        assert result.disposition == "created"

    async def test_enqueue__same_key_as_non_pending_run_is_created(self, storage: Storage) -> None:
        leased = await self.lease(storage, concurrency_key="c")
        second = await self.create(storage, concurrency_key="c")
        assert second.id != leased.id
        assert await storage.cancel_run(second.id, self.at(1)) is not None
        third = await self.create(storage, concurrency_key="c")  # only a cancelled one left
        assert third.status == RunStatus.PENDING

    async def test_enqueue__without_concurrency_key_never_conflicts(self, storage: Storage) -> None:
        for _ in range(3):
            result = await storage.enqueue(self.new_run(), coalesce=True)
            assert result.disposition == "created"
        assert len(await self.ids(storage)) == 3

    # -- enqueue_many --

    async def test_enqueue_many__results_in_order(self, storage: Storage) -> None:
        existing = await self.create(storage, idempotency_key="old")
        items = [self.new_run(input={"i": i}) for i in range(3)]
        dup = self.new_run(idempotency_key="old")
        results = await storage.enqueue_many(
            [(items[0], False), (dup, False), *[(r, False) for r in items[1:]]]
        )
        assert [r.disposition for r in results] == ["created", "idempotent", "created", "created"]
        assert [r.run.id for r in results] == [items[0].id, existing.id, items[1].id, items[2].id]
        assert [r.run.input for r in results] == [{"i": 0}, existing.input, {"i": 1}, {"i": 2}]
        assert sorted(await self.ids(storage)) == sorted([existing.id, *(r.id for r in items)])

    async def test_enqueue_many__conflict_in_third_item_inserts_nothing(
        self, storage: Storage
    ) -> None:
        existing = await self.create(storage, concurrency_key="other")
        batch = [
            self.new_run(concurrency_key="c"),
            self.new_run(idempotency_key="new-key"),
            self.new_run(concurrency_key="c"),  # a second pending run of job-a / "c"
        ]
        with pytest.raises(ConflictError):
            await storage.enqueue_many([(r, False) for r in batch])
        assert await self.ids(storage) == [existing.id]
        for r in batch:
            assert await storage.get_run(r.id) is None
        result = await storage.enqueue(self.new_run(idempotency_key="new-key"))
        assert result.disposition == "created"  # the failed batch reserved nothing

    async def test_enqueue_many__earlier_items_count_for_idempotency(
        self, storage: Storage
    ) -> None:
        first = self.new_run(input={"v": 1}, idempotency_key="k")
        second = self.new_run(input={"v": 2}, idempotency_key="k")
        results = await storage.enqueue_many([(first, False), (second, False)])
        assert [r.disposition for r in results] == ["created", "idempotent"]
        assert results[1].run.id == first.id
        assert results[1].run.input == {"v": 1}
        assert await self.ids(storage) == [first.id]

    async def test_enqueue_many__earlier_items_count_for_coalesce(self, storage: Storage) -> None:
        first = self.new_run(concurrency_key="c")
        second = self.new_run(concurrency_key="c")
        results = await storage.enqueue_many([(first, False), (second, True)])
        assert [r.disposition for r in results] == ["created", "coalesced"]
        assert results[1].run.id == first.id
        assert await self.ids(storage) == [first.id]

    async def test_enqueue_many__empty_batch(self, storage: Storage) -> None:
        assert await storage.enqueue_many([]) == []
        assert await self.ids(storage) == []

    # -- get_runs --

    async def test_get_runs__newest_first_ties_by_id_desc(self, storage: Storage) -> None:
        r1 = await self.create(storage, created_at=self.at(1))
        r2 = await self.create(storage, created_at=self.at(2))
        r3 = await self.create(storage, created_at=self.at(2))
        r4 = await self.create(storage, created_at=self.at(0))  # largest id, oldest
        assert await self.ids(storage) == [r3.id, r2.id, r1.id, r4.id]

    async def test_get_runs__limit_and_offset_paginate_stably(self, storage: Storage) -> None:
        runs = [await self.create(storage, created_at=self.at(i // 2)) for i in range(5)]
        expected = [r.id for r in sorted(runs, key=lambda r: (r.created_at, r.id), reverse=True)]
        pages = [await self.ids(storage, RunFilter(limit=2, offset=offset)) for offset in (0, 2, 4)]
        assert [len(p) for p in pages] == [2, 2, 1]
        assert [i for page in pages for i in page] == expected
        assert await self.ids(storage, RunFilter(offset=1)) == expected[1:]
        assert await self.ids(storage, RunFilter(limit=0)) == []
        assert await self.ids(storage, RunFilter(limit=2, offset=10)) == []

    async def test_get_runs__status_filter(self, storage: Storage) -> None:
        pending = await self.create(storage, job_name="j-pending")
        leased = await self.lease(storage, job_name="j-leased")
        done = await self.lease(storage, job_name="j-done")
        assert await storage.complete_run(done.id, 1, js(1), self.at(5), delete_steps=False)
        failed = await self.lease(storage, job_name="j-failed")
        assert await storage.fail_run(failed.id, 1, "x", self.at(5))
        cancelled = await self.create(storage, job_name="j-cancelled")
        assert await storage.cancel_run(cancelled.id, self.at(5)) is not None

        async def by(*statuses: RunStatus) -> set[str]:
            return set(await self.ids(storage, RunFilter(statuses=statuses)))

        assert await by(RunStatus.PENDING) == {pending.id}
        assert await by(RunStatus.LEASED) == {leased.id}
        assert await by(RunStatus.COMPLETED, RunStatus.FAILED) == {done.id, failed.id}
        assert await by(RunStatus.CANCELLED) == {cancelled.id}
        assert len(await self.ids(storage)) == 5

    async def test_get_runs__job_name_filter(self, storage: Storage) -> None:
        a1 = await self.create(storage, job_name="job-a")
        b1 = await self.create(storage, job_name="job-b")
        a2 = await self.create(storage, job_name="job-a")
        await self.create(storage, job_name="job-c")
        assert await self.ids(storage, RunFilter(job_names=("job-a",))) == [a2.id, a1.id]
        assert set(await self.ids(storage, RunFilter(job_names=("job-a", "job-b")))) == {
            a1.id,
            a2.id,
            b1.id,
        }
        assert await self.ids(storage, RunFilter(job_names=("nope",))) == []

    async def test_get_runs__labels_filter_is_an_and(self, storage: Storage) -> None:
        r1 = await self.create(storage, labels={"a": "1", "b": "2"})
        r2 = await self.create(storage, labels={"a": "1"})
        r3 = await self.create(storage, job_name="job-b", labels={"a": "2", "b": "2"})
        r4 = await self.create(storage)

        async def by(**kw: Any) -> set[str]:
            return set(await self.ids(storage, RunFilter(**kw)))

        assert await by(labels={"a": "1"}) == {r1.id, r2.id}
        assert await by(labels={"a": "1", "b": "2"}) == {r1.id}
        assert await by(labels={"b": "2"}) == {r1.id, r3.id}
        assert await by(labels={"a": "3"}) == set()
        assert await by(labels={"a": "1", "zzz": "1"}) == set()
        assert await by(labels={}) == {r1.id, r2.id, r3.id, r4.id}
        assert await by(labels={"b": "2"}, job_names=("job-b",)) == {r3.id}
        assert await by(labels={"b": "2"}, statuses=(RunStatus.LEASED,)) == set()

    async def test_get_runs__two_hundred_labels_in_one_filter(self, storage: Storage) -> None:
        """A filter's size must not be bounded by the SQL it makes: one subquery per
        label failed at ~60 labels on a libSQL server (tables per statement) and
        ~500 on SQLite (expression depth). Each label is a key *and* its value."""
        labels = {f"k{i}": f"v{i}" for i in range(200)}
        every = await self.create(storage, labels=labels)
        more = await self.create(storage, labels={**labels, "extra": "x"})
        await self.create(storage, labels={**labels, "k199": "other"})  # one value differs
        await self.create(storage, labels={k: labels[k] for k in list(labels)[:199]})
        # the same keys and the same values, paired otherwise
        await self.create(storage, labels={f"k{i}": f"v{(i + 1) % 200}" for i in range(200)})
        found = set(await self.ids(storage, RunFilter(labels=labels)))
        assert found == {every.id, more.id}, "200 labels did not match the runs having them"
        counted = await storage.count_runs(RunFilter(labels=labels))
        assert sum(counted.values()) == 2

    # -- count_runs --

    async def test_count_runs__by_status_with_the_filters_of_get_runs(
        self, storage: Storage
    ) -> None:
        async def counts(**kw: Any) -> dict[RunStatus, int]:
            found = await storage.count_runs(RunFilter(**kw))
            return {status: n for status, n in found.items() if n}

        assert await counts() == {}
        leased = await self.lease(storage, job_name="job-b", labels={"team": "x"})
        failed = await self.lease(storage, job_name="job-a", labels={"team": "x"})
        assert await storage.fail_run(failed.id, 1, "boom", self.at(5))
        await self.create(storage, job_name="job-a", labels={"team": "x"})
        await self.create(storage, job_name="job-a", labels={"team": "y"})
        pending, leased_, failed_ = RunStatus.PENDING, RunStatus.LEASED, RunStatus.FAILED
        assert await counts() == {pending: 2, leased_: 1, failed_: 1}
        assert await counts(job_names=("job-a",)) == {pending: 2, failed_: 1}
        assert await counts(labels={"team": "x"}) == {pending: 1, leased_: 1, failed_: 1}
        assert await counts(statuses=(pending, failed_), labels={"team": "x"}) == {
            pending: 1,
            failed_: 1,
        }
        assert await counts(job_names=("job-b",), statuses=(pending,)) == {}
        assert await counts(job_names=()) == {}
        # limit and offset are ignored: a count is of every matching run
        assert await counts(limit=1, offset=1) == {pending: 2, leased_: 1, failed_: 1}
        assert leased.status is RunStatus.LEASED

    async def test_labels__round_trip(self, storage: Storage) -> None:
        labels = {"tenant": "acme", "org/team.name": "a-b_c", "region": "東京"}
        run = await self.create(storage, labels=labels)
        stored = await storage.get_run(run.id)
        assert stored is not None
        assert stored.labels == labels
        assert await self.ids(storage, RunFilter(labels={"region": "東京"})) == [run.id]

    # -- claim_next --

    async def test_claim_next__nothing_to_claim(self, storage: Storage) -> None:
        assert await storage.claim_next("w", self.at(0), self.at(30)) is None

    async def test_claim_next__oldest_created_first(self, storage: Storage) -> None:
        newer = await self.create(storage, created_at=self.at(-5))
        older = await self.create(storage, created_at=self.at(-10))  # larger id, but older
        first = await storage.claim_next("w", self.at(0), self.at(30))
        second = await storage.claim_next("w", self.at(0), self.at(30))
        assert first is not None
        assert second is not None
        assert (first.id, second.id) == (older.id, newer.id)

    async def test_claim_next__ties_broken_by_id(self, storage: Storage) -> None:
        runs = [await self.create(storage, created_at=self.at(-1)) for _ in range(3)]
        claimed = [await storage.claim_next("w", self.at(0), self.at(30)) for _ in runs]
        assert [c.id if c else None for c in claimed] == [r.id for r in runs]

    async def test_claim_next__sets_lease_fields(self, storage: Storage) -> None:
        run = await self.create(storage)
        claimed = await storage.claim_next("worker-1", self.at(10), self.at(40))
        assert claimed is not None
        assert claimed.id == run.id
        assert claimed.status == RunStatus.LEASED
        assert claimed.lease_owner == "worker-1"
        assert claimed.lease_expires_at == self.at(40)
        assert claimed.lease_generation == 1
        assert claimed.started_at == self.at(10)
        assert claimed.updated_at == self.at(10)
        assert claimed.created_at == run.created_at
        assert claimed.input == run.input
        assert await storage.get_run(run.id) == claimed

    async def test_claim_next__live_lease_is_not_claimable(self, storage: Storage) -> None:
        await self.lease(storage, now=0, lease_for=30)
        assert await storage.claim_next("w2", self.at(29.999), self.at(60)) is None

    async def test_claim_next__expired_lease_is_reclaimed(self, storage: Storage) -> None:
        run = await self.lease(storage, owner="worker-1", now=10, lease_for=30)
        assert await storage.claim_next("worker-2", self.at(39.999), self.at(70)) is None
        again = await storage.claim_next("worker-2", self.at(40), self.at(70))
        assert again is not None
        assert again.id == run.id
        assert again.lease_owner == "worker-2"
        assert again.lease_expires_at == self.at(70)
        assert again.lease_generation == 2
        assert again.started_at == self.at(10)  # kept from the first claim
        assert again.updated_at == self.at(40)

    async def test_claim_next__skips_terminal_runs(self, storage: Storage) -> None:
        done = await self.lease(storage)
        assert await storage.complete_run(done.id, 1, js(None), self.at(1), delete_steps=False)
        cancelled = await self.create(storage)
        assert await storage.cancel_run(cancelled.id, self.at(1)) is not None
        assert await storage.claim_next("w", self.at(1000), self.at(1030)) is None

    async def test_claim_next__job_names_restriction(self, storage: Storage) -> None:
        a = await self.create(storage, job_name="job-a")
        b = await self.create(storage, job_name="job-b")
        assert await storage.claim_next("w", self.at(0), self.at(30), ["job-c"]) is None
        assert await storage.claim_next("w", self.at(0), self.at(30), []) is None
        got_b = await storage.claim_next("w", self.at(0), self.at(30), ["job-b", "job-c"])
        assert got_b is not None
        assert got_b.id == b.id
        got_a = await storage.claim_next("w", self.at(0), self.at(30), None)
        assert got_a is not None
        assert got_a.id == a.id

    async def test_claim_next__one_live_lease_per_concurrency_key_across_jobs(
        self, storage: Storage
    ) -> None:
        a = await self.create(storage, job_name="job-a", concurrency_key="k")
        b = await self.create(storage, job_name="job-b", concurrency_key="k")
        first = await storage.claim_next("w1", self.at(0), self.at(30))
        assert first is not None
        assert first.id == a.id
        assert await storage.claim_next("w2", self.at(1), self.at(31)) is None
        assert await storage.complete_run(a.id, 1, js(None), self.at(2), delete_steps=False)
        second = await storage.claim_next("w2", self.at(3), self.at(33))
        assert second is not None
        assert second.id == b.id

    async def test_claim_next__expired_lease_frees_concurrency_key(self, storage: Storage) -> None:
        a = await self.create(storage, job_name="job-a", concurrency_key="k")
        b = await self.create(storage, job_name="job-b", concurrency_key="k")
        assert await storage.claim_next("w1", self.at(0), self.at(30), ["job-a"]) is not None
        assert await storage.claim_next("w2", self.at(29), self.at(59), ["job-b"]) is None
        got_b = await storage.claim_next("w2", self.at(30), self.at(60), ["job-b"])
        assert got_b is not None
        assert got_b.id == b.id
        # a's lease expired, but b now holds the key's live lease: a must wait
        assert await storage.claim_next("w3", self.at(31), self.at(61)) is None
        stored_a = await storage.get_run(a.id)
        assert stored_a is not None
        assert stored_a.lease_owner == "w1"

    async def test_claim_next__expired_run_not_blocked_by_its_own_key(
        self, storage: Storage
    ) -> None:
        run = await self.lease(storage, concurrency_key="k", now=0, lease_for=30)
        again = await storage.claim_next("w2", self.at(31), self.at(61))
        assert again is not None
        assert again.id == run.id
        assert again.lease_generation == 2

    async def test_claim_next__blocked_run_skipped_for_next(self, storage: Storage) -> None:
        await self.lease(storage, job_name="job-a", concurrency_key="k")
        await self.create(storage, job_name="job-b", concurrency_key="k")
        free = await self.create(storage, job_name="job-c")
        got = await storage.claim_next("w", self.at(1), self.at(31))
        assert got is not None
        assert got.id == free.id

    async def test_claim_next__cancel_frees_concurrency_key(self, storage: Storage) -> None:
        a = await self.lease(storage, job_name="job-a", concurrency_key="k")
        b = await self.create(storage, job_name="job-b", concurrency_key="k")
        assert await storage.claim_next("w", self.at(1), self.at(31)) is None
        assert await storage.cancel_run(a.id, self.at(2)) is not None
        got = await storage.claim_next("w", self.at(3), self.at(33))
        assert got is not None
        assert got.id == b.id

    # -- renew_lease --

    async def test_renew_lease__extends_a_live_lease(self, storage: Storage) -> None:
        run = await self.lease(storage, now=10, lease_for=30)
        assert await storage.renew_lease(run.id, 1, self.at(20), self.at(50))
        stored = await storage.get_run(run.id)
        assert stored is not None
        assert stored.lease_expires_at == self.at(50)
        assert stored.updated_at == self.at(20)
        assert (stored.status, stored.lease_owner, stored.lease_generation) == (
            RunStatus.LEASED,
            "worker-1",
            1,
        )
        assert await storage.claim_next("w2", self.at(45), self.at(75)) is None

    async def test_renew_lease__refused_once_expired(self, storage: Storage) -> None:
        run = await self.lease(storage, now=10, lease_for=30)
        assert not await storage.renew_lease(run.id, 1, self.at(40), self.at(70))
        stored = await storage.get_run(run.id)
        assert stored is not None
        assert stored.lease_expires_at == self.at(40)

    async def test_renew_lease__refused_with_wrong_generation(self, storage: Storage) -> None:
        run = await self.lease(storage, now=10, lease_for=30)
        assert not await storage.renew_lease(run.id, 2, self.at(20), self.at(50))
        assert not await storage.renew_lease(run.id, 0, self.at(20), self.at(50))
        assert await storage.get_run(run.id) == run

    async def test_renew_lease__refused_after_reclaim(self, storage: Storage) -> None:
        run = await self.lease(storage, now=0, lease_for=30)
        again = await storage.claim_next("worker-2", self.at(31), self.at(61))
        assert again is not None
        assert again.lease_generation == 2
        assert not await storage.renew_lease(run.id, 1, self.at(32), self.at(90))
        assert await storage.get_run(run.id) == again

    async def test_renew_lease__refused_after_cancel(self, storage: Storage) -> None:
        run = await self.lease(storage, now=10, lease_for=30)
        cancelled = await storage.cancel_run(run.id, self.at(15))
        assert not await storage.renew_lease(run.id, 1, self.at(20), self.at(50))
        assert await storage.get_run(run.id) == cancelled

    async def test_renew_lease__unknown_run(self, storage: Storage) -> None:
        assert not await storage.renew_lease(self.new_id(), 1, self.at(0), self.at(30))

    # -- fencing --

    @pytest.mark.parametrize("write", FENCED_WRITES)
    @pytest.mark.parametrize("scenario", LOST_LEASE_SCENARIOS)
    async def test_fenced_write__refused_without_the_lease(
        self, storage: Storage, scenario: str, write: str
    ) -> None:
        run = await self.lease(storage, owner="worker-1", now=0, lease_for=30)
        assert await storage.persist_step(run.id, 1, self.new_step("s0", 0, output=0), self.at(1))
        assert await storage.update_progress(run.id, 1, Progress(1, 2, "half"), self.at(1))
        assert await storage.append_logs(run.id, 1, [self.new_log("hello")], self.at(1))
        generation = 1
        if scenario == "reclaimed":
            again = await storage.claim_next("worker-2", self.at(31), self.at(61))
            assert again is not None
            assert again.lease_generation == 2
        elif scenario == "cancelled":
            assert await storage.cancel_run(run.id, self.at(5)) is not None
        elif scenario == "released":
            assert await storage.release_expired_leases(self.at(31)) == 1
        elif scenario == "finished":
            assert await storage.fail_run(run.id, 1, "first failure", self.at(5))
        else:
            generation = 2
        before = await self.snapshot(storage, run.id)
        assert not await self.fenced_write(write, storage, run.id, generation, self.at(40))
        assert await self.snapshot(storage, run.id) == before

    @pytest.mark.parametrize("write", FENCED_WRITES)
    async def test_fenced_write__unknown_run_returns_false(
        self, storage: Storage, write: str
    ) -> None:
        other = await self.lease(storage)
        before = await self.snapshot(storage, other.id)
        missing = self.new_id()
        assert not await self.fenced_write(write, storage, missing, 1, self.at(5))
        assert await storage.get_run(missing) is None
        assert await storage.get_steps(missing) == []
        assert await storage.get_logs(missing) == []
        assert await self.snapshot(storage, other.id) == before

    @pytest.mark.parametrize("write", FENCED_WRITES)
    async def test_fenced_write__accepted_after_expiry_until_reclaimed(
        self, storage: Storage, write: str
    ) -> None:
        run = await self.lease(storage, now=0, lease_for=30)
        assert await self.fenced_write(write, storage, run.id, 1, self.at(45))

    # -- persist_step and replay reads --

    async def test_persist_step__completed_rows_advance_the_run(self, storage: Storage) -> None:
        run = await self.lease(storage)
        s0 = self.new_step("fetch", 0, output={"rows": [1, 2]})
        s1 = self.new_step("insert", 1, output=2)
        assert await storage.persist_step(run.id, 1, s0, self.at(3))
        mid = await storage.get_run(run.id)
        assert mid is not None
        assert (mid.current_step_index, mid.completed_step_count) == (1, 1)
        assert mid.updated_at == self.at(3)
        assert await storage.persist_step(run.id, 1, s1, self.at(4))
        after = await storage.get_run(run.id)
        assert after is not None
        assert (after.current_step_index, after.completed_step_count) == (2, 2)
        assert after.status == RunStatus.LEASED
        steps = await storage.get_steps(run.id)
        assert [(s.id, s.run_id, s.name, s.index, s.status) for s in steps] == [
            (s0.id, run.id, "fetch", 0, StepStatus.COMPLETED),
            (s1.id, run.id, "insert", 1, StepStatus.COMPLETED),
        ]
        assert [s.output for s in steps] == [{"rows": [1, 2]}, 2]
        assert [(s.started_at, s.completed_at, s.error) for s in steps] == [
            (s0.started_at, s0.completed_at, None),
            (s1.started_at, s1.completed_at, None),
        ]

    async def test_persist_step__failed_and_cancelled_rows_do_not_advance(
        self, storage: Storage
    ) -> None:
        run = await self.lease(storage)
        bad = self.new_step("fetch", 0, status=StepStatus.FAILED, error="boom")
        stopped = self.new_step("other", 1, status=StepStatus.CANCELLED)
        assert await storage.persist_step(run.id, 1, bad, self.at(3))
        assert await storage.persist_step(run.id, 1, stopped, self.at(4))
        stored = await storage.get_run(run.id)
        assert stored is not None
        assert (stored.current_step_index, stored.completed_step_count) == (0, 0)
        steps = await storage.get_steps(run.id)
        assert [(s.name, s.status, s.error, s.output) for s in steps] == [
            ("fetch", StepStatus.FAILED, "boom", None),
            ("other", StepStatus.CANCELLED, None, None),
        ]
        assert await storage.get_completed_steps(run.id) == []

    async def test_persist_step__duplicate_completed_name_conflicts(self, storage: Storage) -> None:
        run = await self.lease(storage)
        assert await storage.persist_step(run.id, 1, self.new_step("s", 0, output=1), self.at(3))
        before = await self.snapshot(storage, run.id)
        with pytest.raises(ConflictError):
            await storage.persist_step(run.id, 1, self.new_step("s", 1, output=2), self.at(4))
        assert await self.snapshot(storage, run.id) == before

    async def test_persist_step__completed_after_failed_same_name(self, storage: Storage) -> None:
        run = await self.lease(storage)
        failed = self.new_step("s", 0, status=StepStatus.FAILED, error="try 1")
        ok = self.new_step("s", 0, output="try 2", started_at=self.at(5))
        assert await storage.persist_step(run.id, 1, failed, self.at(3))
        assert await storage.persist_step(run.id, 1, ok, self.at(6))
        steps = await storage.get_steps(run.id)
        assert [(s.status, s.output) for s in steps] == [
            (StepStatus.FAILED, None),
            (StepStatus.COMPLETED, "try 2"),
        ]
        stored = await storage.get_run(run.id)
        assert stored is not None
        assert stored.completed_step_count == 1

    async def test_get_steps__execution_order(self, storage: Storage) -> None:
        run = await self.lease(storage)
        rows = [
            self.new_step("c", 2, output="c"),
            self.new_step("b-ok", 1, output="b", started_at=self.at(9)),
            self.new_step("a", 0, output="a"),
            self.new_step("b-fail", 1, status=StepStatus.FAILED, error="x", started_at=self.at(8)),
        ]
        for row in rows:
            assert await storage.persist_step(run.id, 1, row, self.at(10))
        steps = await storage.get_steps(run.id)
        assert [s.name for s in steps] == ["a", "b-fail", "b-ok", "c"]

    async def test_get_completed_steps__only_completed_rows_decoded(self, storage: Storage) -> None:
        run = await self.lease(storage)
        rows = [
            self.new_step("one", 0, output={"nested": [1, {"two": None}]}),
            self.new_step("two", 1, status=StepStatus.FAILED, error="nope"),
            self.new_step("two", 1, output=None, started_at=self.at(20)),
            self.new_step("three", 2, output=[True, "3"]),
        ]
        for row in rows:
            assert await storage.persist_step(run.id, 1, row, self.at(21))
        done = await storage.get_completed_steps(run.id)
        assert [(s.name, s.index, s.output) for s in done] == [
            ("one", 0, {"nested": [1, {"two": None}]}),
            ("two", 1, None),
            ("three", 2, [True, "3"]),
        ]
        assert all(s.status == StepStatus.COMPLETED for s in done)
        assert len(await storage.get_steps(run.id)) == 4

    async def test_get_steps__scoped_to_the_run(self, storage: Storage) -> None:
        a = await self.lease(storage, job_name="job-a")
        b = await self.lease(storage, job_name="job-b")
        assert await storage.persist_step(a.id, 1, self.new_step("s", 0, output="a"), self.at(2))
        assert await storage.persist_step(b.id, 1, self.new_step("s", 0, output="b"), self.at(2))
        assert [s.output for s in await storage.get_steps(a.id)] == ["a"]
        assert [s.output for s in await storage.get_completed_steps(b.id)] == ["b"]
        assert await storage.get_steps(self.new_id()) == []
        assert await storage.get_completed_steps(self.new_id()) == []

    # -- progress and logs --

    async def test_update_progress__stored_and_replaced(self, storage: Storage) -> None:
        run = await self.lease(storage)
        assert await storage.update_progress(run.id, 1, Progress(1, 10, "first"), self.at(3))
        stored = await storage.get_run(run.id)
        assert stored is not None
        assert stored.progress == Progress(1, 10, "first")
        assert stored.updated_at == self.at(3)
        assert await storage.update_progress(run.id, 1, Progress(2.5), self.at(4))
        stored = await storage.get_run(run.id)
        assert stored is not None
        assert stored.progress is not None
        assert (stored.progress.current, stored.progress.total, stored.progress.message) == (
            2.5,
            None,
            None,
        )

    async def test_append_logs__kept_in_order_with_data_decoded(self, storage: Storage) -> None:
        run = await self.lease(storage)
        first = self.new_log("start", created_at=self.at(3))
        later = self.new_log(
            "rows", step_name="fetch", level="warn", data={"n": [1, 2]}, created_at=self.at(5)
        )
        tie_a = self.new_log("tie a", level="error", created_at=self.at(4))
        tie_b = self.new_log("tie b", created_at=self.at(4))  # same time, larger id
        assert await storage.append_logs(run.id, 1, [first, later], self.at(5))
        assert await storage.append_logs(run.id, 1, [tie_b, tie_a], self.at(6))
        assert await storage.append_logs(run.id, 1, [], self.at(7))
        logs = await storage.get_logs(run.id)
        assert [log.id for log in logs] == [first.id, tie_a.id, tie_b.id, later.id]
        got = logs[-1]
        assert (got.run_id, got.step_name, got.level, got.message, got.data) == (
            run.id,
            "fetch",
            "warn",
            "rows",
            {"n": [1, 2]},
        )
        assert got.created_at == self.at(5)
        assert (logs[0].step_name, logs[0].data, logs[1].level) == (None, None, "error")
        assert await storage.get_logs(self.new_id()) == []

    # -- complete_run / fail_run --

    async def test_complete_run__stores_output_and_clears_lease(self, storage: Storage) -> None:
        run = await self.lease(storage, now=10)
        assert await storage.update_progress(run.id, 1, Progress(3, 3), self.at(11))
        assert await storage.complete_run(
            run.id, 1, js({"count": 3}), self.at(20), delete_steps=False
        )
        done = await storage.get_run(run.id)
        assert done is not None
        assert done.status == RunStatus.COMPLETED
        assert done.output == {"count": 3}
        assert (done.error, done.lease_owner, done.lease_expires_at) == (None, None, None)
        assert done.completed_at == done.updated_at == self.at(20)
        assert done.started_at == self.at(10)
        assert done.lease_generation == 1
        assert done.progress == Progress(3, 3)

    async def test_complete_run__keeps_steps_and_logs(self, storage: Storage) -> None:
        run = await self.lease(storage)
        assert await storage.persist_step(run.id, 1, self.new_step("s", 0, output=1), self.at(2))
        assert await storage.append_logs(run.id, 1, [self.new_log("x")], self.at(2))
        assert await storage.complete_run(run.id, 1, js(None), self.at(3), delete_steps=False)
        assert [s.name for s in await storage.get_steps(run.id)] == ["s"]
        assert [log.message for log in await storage.get_logs(run.id)] == ["x"]

    async def test_complete_run__delete_steps_removes_steps_and_logs(
        self, storage: Storage
    ) -> None:
        run = await self.lease(storage, job_name="job-a")
        other = await self.lease(storage, job_name="job-b")
        for r in (run, other):
            assert await storage.persist_step(r.id, 1, self.new_step("s", 0), self.at(2))
            assert await storage.append_logs(r.id, 1, [self.new_log("x")], self.at(2))
        assert await storage.complete_run(run.id, 1, js("out"), self.at(3), delete_steps=True)
        assert await storage.get_steps(run.id) == []
        assert await storage.get_logs(run.id) == []
        done = await storage.get_run(run.id)
        assert done is not None
        assert done.output == "out"
        assert done.completed_step_count == 1
        assert len(await storage.get_steps(other.id)) == 1
        assert len(await storage.get_logs(other.id)) == 1

    async def test_fail_run__stores_error_and_keeps_steps(self, storage: Storage) -> None:
        run = await self.lease(storage, now=10)
        assert await storage.persist_step(run.id, 1, self.new_step("s", 0, output=1), self.at(11))
        assert await storage.fail_run(run.id, 1, "Unknown job: job-a", self.at(12))
        failed = await storage.get_run(run.id)
        assert failed is not None
        assert failed.status == RunStatus.FAILED
        assert failed.error == "Unknown job: job-a"
        assert failed.output is None
        assert (failed.lease_owner, failed.lease_expires_at) == (None, None)
        assert failed.completed_at == failed.updated_at == self.at(12)
        assert [s.name for s in await storage.get_completed_steps(run.id)] == ["s"]

    # -- cancel_run --

    async def test_cancel_run__pending(self, storage: Storage) -> None:
        run = await self.create(storage)
        cancelled = await storage.cancel_run(run.id, self.at(5))
        assert cancelled is not None
        assert cancelled.status == RunStatus.CANCELLED
        assert cancelled.completed_at == cancelled.updated_at == self.at(5)
        assert await storage.get_run(run.id) == cancelled

    async def test_cancel_run__leased_clears_the_lease(self, storage: Storage) -> None:
        run = await self.lease(storage)
        assert await storage.persist_step(run.id, 1, self.new_step("s", 0), self.at(1))
        cancelled = await storage.cancel_run(run.id, self.at(5))
        assert cancelled is not None
        assert cancelled.status == RunStatus.CANCELLED
        assert (cancelled.lease_owner, cancelled.lease_expires_at) == (None, None)
        assert await storage.get_run(run.id) == cancelled
        assert len(await storage.get_steps(run.id)) == 1

    async def test_cancel_run__terminal_run_unchanged(self, storage: Storage) -> None:
        done = await self.lease(storage, job_name="job-done")
        assert await storage.complete_run(done.id, 1, js(1), self.at(2), delete_steps=False)
        failed = await self.lease(storage, job_name="job-failed")
        assert await storage.fail_run(failed.id, 1, "x", self.at(2))
        cancelled = await self.create(storage)
        assert await storage.cancel_run(cancelled.id, self.at(2)) is not None
        for run_id in (done.id, failed.id, cancelled.id):
            before = await storage.get_run(run_id)
            assert await storage.cancel_run(run_id, self.at(9)) is None
            assert await storage.get_run(run_id) == before

    async def test_cancel_run__unknown_run(self, storage: Storage) -> None:
        assert await storage.cancel_run(self.new_id(), self.at(1)) is None

    # -- retry_run --

    async def test_retry_run__failed_back_to_pending_keeping_steps(self, storage: Storage) -> None:
        run = await self.lease(storage, input={"file": "x"}, now=10)
        assert await storage.persist_step(run.id, 1, self.new_step("a", 0, output=1), self.at(11))
        failing = self.new_step("b", 1, status=StepStatus.FAILED, error="boom")
        assert await storage.persist_step(run.id, 1, failing, self.at(12))
        assert await storage.fail_run(run.id, 1, "boom", self.at(13))
        retried = await storage.retry_run(run.id, self.at(20))
        assert retried is not None
        assert (retried.id, retried.input, retried.status) == (
            run.id,
            {"file": "x"},
            RunStatus.PENDING,
        )
        assert (retried.error, retried.output, retried.completed_at) == (None, None, None)
        assert (retried.lease_owner, retried.lease_expires_at) == (None, None)
        assert retried.updated_at == self.at(20)
        assert retried.completed_step_count == 1
        assert await storage.get_run(run.id) == retried
        assert [s.name for s in await storage.get_completed_steps(run.id)] == ["a"]
        assert (retried.started_at, retried.attempt) == (None, 1)
        again = await storage.claim_next("w2", self.at(21), self.at(51))
        assert again is not None
        assert again.id == run.id
        assert again.lease_generation == 2
        assert again.started_at == self.at(21), "a retried run starts anew at its next claim"

    async def test_retry_run__cancelled_back_to_pending(self, storage: Storage) -> None:
        run = await self.lease(storage)
        assert await storage.cancel_run(run.id, self.at(5)) is not None
        retried = await storage.retry_run(run.id, self.at(6))
        assert retried is not None
        assert retried.status == RunStatus.PENDING
        assert retried.completed_at is None

    async def test_retry_run__other_statuses_unchanged(self, storage: Storage) -> None:
        pending = await self.create(storage, job_name="job-p")
        leased = await self.lease(storage, job_name="job-l")
        done = await self.lease(storage, job_name="job-d")
        assert await storage.complete_run(done.id, 1, js(1), self.at(2), delete_steps=False)
        for run_id in (pending.id, leased.id, done.id):
            before = await storage.get_run(run_id)
            assert await storage.retry_run(run_id, self.at(9)) is None
            assert await storage.get_run(run_id) == before
        assert await storage.retry_run(self.new_id(), self.at(9)) is None

    async def test_retry_run__conflicts_with_pending_run_of_same_key(
        self, storage: Storage
    ) -> None:
        run = await self.lease(storage, concurrency_key="k")
        assert await storage.fail_run(run.id, 1, "boom", self.at(2))
        blocker = await self.create(storage, concurrency_key="k")
        await self.create(storage, job_name="job-b", concurrency_key="k")  # other job: no clash
        before = await storage.get_run(run.id)
        with pytest.raises(ConflictError):
            await storage.retry_run(run.id, self.at(3))
        assert await storage.get_run(run.id) == before
        assert await storage.cancel_run(blocker.id, self.at(4)) is not None
        retried = await storage.retry_run(run.id, self.at(5))
        assert retried is not None
        assert retried.status == RunStatus.PENDING

    # -- delete_run --

    async def test_delete_run__terminal_run_with_steps_and_logs(self, storage: Storage) -> None:
        run = await self.lease(storage, idempotency_key="k", labels={"t": "1"})
        assert await storage.persist_step(run.id, 1, self.new_step("s", 0), self.at(1))
        assert await storage.append_logs(run.id, 1, [self.new_log("x")], self.at(1))
        assert await storage.fail_run(run.id, 1, "boom", self.at(2))
        failed = await storage.get_run(run.id)
        deleted = await storage.delete_run(run.id)
        assert deleted is not None
        assert deleted == failed
        assert await self.snapshot(storage, run.id) == (None, [], [], [])
        assert await self.ids(storage, RunFilter(labels={"t": "1"})) == []
        again = await storage.enqueue(self.new_run(idempotency_key="k"))
        assert again.disposition == "created"  # the key is free again

    async def test_delete_run__completed_and_cancelled(self, storage: Storage) -> None:
        done = await self.lease(storage)
        assert await storage.complete_run(done.id, 1, js(1), self.at(2), delete_steps=False)
        cancelled = await self.create(storage)
        assert await storage.cancel_run(cancelled.id, self.at(2)) is not None
        for run_id in (done.id, cancelled.id):
            deleted = await storage.delete_run(run_id)
            assert deleted is not None
            assert deleted.id == run_id
        assert await self.ids(storage) == []

    async def test_delete_run__non_terminal_run_untouched(self, storage: Storage) -> None:
        pending = await self.create(storage, job_name="job-p")
        leased = await self.lease(storage, job_name="job-l")
        assert await storage.persist_step(leased.id, 1, self.new_step("s", 0), self.at(1))
        for run_id in (pending.id, leased.id):
            before = await self.snapshot(storage, run_id)
            assert await storage.delete_run(run_id) is None
            assert await self.snapshot(storage, run_id) == before
        assert await storage.delete_run(self.new_id()) is None

    # -- purge_runs --

    async def test_purge_runs__oldest_completed_first_within_limit(self, storage: Storage) -> None:
        late = await self.lease(storage, job_name="j1")  # created first, completed later
        assert await storage.complete_run(late.id, 1, js(1), self.at(200), delete_steps=False)
        early = await self.lease(storage, job_name="j2")
        assert await storage.fail_run(early.id, 1, "x", self.at(100))
        last = await self.create(storage, job_name="j3")
        assert await storage.cancel_run(last.id, self.at(300)) is not None
        assert await storage.purge_runs(self.at(250), 1) == 1
        assert set(await self.ids(storage)) == {late.id, last.id}
        assert await storage.purge_runs(self.at(250), 10) == 1
        assert await self.ids(storage) == [last.id]
        assert await storage.purge_runs(self.at(300), 10) == 0  # strictly before the cutoff
        assert await storage.purge_runs(self.at(300.001), 10) == 1
        assert await self.ids(storage) == []

    async def test_purge_runs__only_terminal_runs(self, storage: Storage) -> None:
        pending = await self.create(storage, job_name="job-p")
        leased = await self.lease(storage, job_name="job-l")
        assert await storage.purge_runs(self.at(10_000), 100) == 0
        assert set(await self.ids(storage)) == {pending.id, leased.id}

    async def test_purge_runs__removes_steps_and_logs(self, storage: Storage) -> None:
        run = await self.lease(storage, idempotency_key="k")
        assert await storage.persist_step(run.id, 1, self.new_step("s", 0), self.at(1))
        assert await storage.append_logs(run.id, 1, [self.new_log("x")], self.at(1))
        assert await storage.fail_run(run.id, 1, "boom", self.at(2))
        assert await storage.purge_runs(self.at(3), 10) == 1
        assert await self.snapshot(storage, run.id) == (None, [], [], [])
        again = await storage.enqueue(self.new_run(idempotency_key="k"))
        assert again.disposition == "created"

    # -- release_expired_leases --

    async def test_release_expired_leases__back_to_pending(self, storage: Storage) -> None:
        run = await self.lease(storage, now=0, lease_for=30)
        assert await storage.release_expired_leases(self.at(29.999)) == 0
        assert await storage.release_expired_leases(self.at(30)) == 1
        released = await storage.get_run(run.id)
        assert released is not None
        assert released.status == RunStatus.PENDING
        assert (released.lease_owner, released.lease_expires_at) == (None, None)
        assert released.lease_generation == 1
        assert released.started_at == self.at(0)
        assert released.updated_at == self.at(30)
        assert await storage.release_expired_leases(self.at(40)) == 0
        again = await storage.claim_next("w2", self.at(41), self.at(71))
        assert again is not None
        assert again.lease_generation == 2

    async def test_release_expired_leases__leaves_others_alone(self, storage: Storage) -> None:
        live = await self.lease(storage, job_name="job-live", now=0, lease_for=100)
        pending = await self.create(storage, job_name="job-p")
        done = await self.lease(storage, job_name="job-d", now=0, lease_for=10)
        assert await storage.complete_run(done.id, 1, js(1), self.at(5), delete_steps=False)
        before = [await storage.get_run(r.id) for r in (live, pending, done)]
        assert await storage.release_expired_leases(self.at(50)) == 0
        assert [await storage.get_run(r.id) for r in (live, pending, done)] == before

    async def test_release_expired_leases__skips_when_same_key_pending(
        self, storage: Storage
    ) -> None:
        expired = await self.lease(storage, concurrency_key="k", now=0, lease_for=30)
        await self.create(storage, concurrency_key="k")
        other_job = await self.lease(storage, job_name="job-b", concurrency_key="k2", now=0)
        await self.create(storage, job_name="job-c", concurrency_key="k2")  # other job
        assert await storage.release_expired_leases(self.at(31)) == 1
        kept = await storage.get_run(expired.id)
        assert kept is not None
        assert kept.status == RunStatus.LEASED
        moved = await storage.get_run(other_job.id)
        assert moved is not None
        assert moved.status == RunStatus.PENDING

    async def test_release_expired_leases__two_expired_of_one_key_release_one(
        self, storage: Storage
    ) -> None:
        a = await self.lease(storage, concurrency_key="k", now=0, lease_for=30)
        # created earlier than a, so it is the one claimed once a's lease has expired
        b = await self.create(storage, concurrency_key="k", created_at=self.at(-7200))
        got = await storage.claim_next("w2", self.at(31), self.at(61))
        assert got is not None
        assert got.id == b.id
        assert await storage.release_expired_leases(self.at(100)) == 1
        statuses = sorted([(await self.status_of(storage, r.id)) for r in (a, b)])
        assert statuses == [RunStatus.LEASED, RunStatus.PENDING]

    # -- JSON and unicode --

    async def test_json__nested_values_round_trip(self, storage: Storage) -> None:
        run = await self.lease(storage, input=NESTED)
        assert run.input == NESTED
        assert await storage.persist_step(
            run.id, 1, self.new_step("s", 0, output=NESTED), self.at(1)
        )
        assert await storage.append_logs(run.id, 1, [self.new_log("x", data=NESTED)], self.at(1))
        [step] = await storage.get_completed_steps(run.id)
        [log] = await storage.get_logs(run.id)
        assert step.output == NESTED
        assert log.data == NESTED
        assert await storage.complete_run(run.id, 1, js(NESTED), self.at(2), delete_steps=False)
        done = await storage.get_run(run.id)
        assert done is not None
        assert done.output == NESTED
        assert done.input == NESTED

    async def test_json__top_level_scalars_round_trip(self, storage: Storage) -> None:
        values: list[Any] = ["text", 0, -1.5, True, False, [1, "2"], {}]
        runs = [await self.create(storage, input=v) for v in values]
        stored = [await storage.get_run(r.id) for r in runs]
        assert [r.input if r else "missing" for r in stored] == values
        null = NewRun(id=self.new_id(), job_name="job-n", input_json="null", created_at=self.at(0))
        assert (await storage.enqueue(null)).run.input is None
        stored_null = await storage.get_run(null.id)
        assert stored_null is not None
        assert stored_null.input is None

    async def test_unicode__names_labels_messages(self, storage: Storage) -> None:
        job = "インポート-✓"
        run = await self.lease(
            storage,
            job_name=job,
            idempotency_key="鍵-🔑",
            concurrency_key="並行-🔒",
            labels={"région": "東京 🗼"},
        )
        step = self.new_step("ステップ ①", 0, output="値 ✓")
        assert await storage.persist_step(run.id, 1, step, self.at(1))
        assert await storage.append_logs(run.id, 1, [self.new_log("ログ 🎉", data="é")], self.at(1))
        assert await storage.fail_run(run.id, 1, "失敗しました: ñ", self.at(2))
        got = await storage.get_run(run.id)
        assert got is not None
        assert (got.job_name, got.idempotency_key, got.concurrency_key) == (
            job,
            "鍵-🔑",
            "並行-🔒",
        )
        assert got.labels == {"région": "東京 🗼"}
        assert got.error == "失敗しました: ñ"
        [s] = await storage.get_steps(run.id)
        assert (s.name, s.output) == ("ステップ ①", "値 ✓")
        [log] = await storage.get_logs(run.id)
        assert (log.message, log.data) == ("ログ 🎉", "é")
        query = RunFilter(job_names=(job,), labels={"région": "東京 🗼"})
        assert await self.ids(storage, query) == [run.id]
        dup = await storage.enqueue(self.new_run(job, idempotency_key="鍵-🔑"))
        assert dup.disposition == "idempotent"

    # -- optional capabilities --

    async def test_reopen__data_and_leases_survive(
        self, storage: Storage, reopen: Reopen | None
    ) -> None:
        if reopen is None:
            pytest.fail(
                f"{type(self).__name__} sets supports_reopen = True but its reopen fixture "
                "returns None: return an async callable reopen(old) -> new storage"
            )
        leased = await self.lease(
            storage, idempotency_key="k", concurrency_key="c", labels={"a": "b"}
        )
        pending = await self.create(storage, job_name="job-b", concurrency_key="c2")
        assert await storage.persist_step(
            leased.id, 1, self.new_step("s", 0, output=NESTED), self.at(1)
        )
        assert await storage.update_progress(leased.id, 1, Progress(1, 2, "m"), self.at(1))
        assert await storage.append_logs(leased.id, 1, [self.new_log("x", data=[1])], self.at(1))
        before = [await self.snapshot(storage, r.id) for r in (leased, pending)]
        fresh = await reopen(storage)
        try:
            assert [await self.snapshot(fresh, r.id) for r in (leased, pending)] == before
            dup = await fresh.enqueue(self.new_run(idempotency_key="k"))
            assert dup.disposition == "idempotent"
            with pytest.raises(ConflictError):
                await fresh.enqueue(self.new_run("job-b", concurrency_key="c2"))
            assert await fresh.renew_lease(leased.id, 1, self.at(2), self.at(40))
            step = self.new_step("t", 1, output=2)
            assert await fresh.persist_step(leased.id, 1, step, self.at(3))
            assert await fresh.complete_run(leased.id, 1, js("ok"), self.at(4), delete_steps=False)
            got = await fresh.claim_next("w", self.at(5), self.at(35))
            assert got is not None
            assert got.id == pending.id
        finally:
            await fresh.close()

    async def test_url__backend_found_through_entry_point(self, storage_url: str | None) -> None:
        if storage_url is None:
            pytest.fail(f"{type(self).__name__}: its storage_url fixture returned None")
        backend = BackendRegistry().backend_for(storage_url)
        if self.entry_point_name is not None:
            assert backend.plugin == self.entry_point_name
        opened = backend.open(storage_url)
        assert isinstance(opened, Storage)
        try:
            await opened.migrate()
            run = self.new_run()
            result = await opened.enqueue(run)
            assert result.disposition == "created"
            assert await opened.get_run(run.id) == result.run
        finally:
            await opened.close()

    async def test_url__unknown_option_rejected(self, storage_url: str | None) -> None:
        if storage_url is None:
            pytest.fail(f"{type(self).__name__}: its storage_url fixture returned None")
        registry = BackendRegistry()

        async def open_with_unknown_option() -> None:  # raising at open or at migrate is fine
            opened = registry.open(storage_url, no_such_option_for_durably=1)
            try:
                await opened.migrate()
            finally:
                await opened.close()

        with pytest.raises(ValidationError):
            await open_with_unknown_option()
