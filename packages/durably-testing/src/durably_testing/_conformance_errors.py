"""Conformance cases for error mapping: no driver exception escapes.

Whatever the database or its driver refuses reaches the caller as a
:class:`durably.DurablyError` — :class:`durably.ValidationError` for a value that
cannot be stored, a :class:`durably.StorageError` subclass for a database
failure — never as ``UnicodeEncodeError``, ``sqlite3.ProgrammingError`` or an
HTTP client's exception. Two sources the suite can provoke on any backend:

- text that is not valid Unicode (a lone surrogate, as ``os.fsdecode`` makes of
  undecodable file names): refused with nothing written, and the storage keeps
  working;
- text holding U+0000 (NUL): SQLite stores it, PostgreSQL's text type cannot; either
  it is stored and read back exactly, or refused with ``ValidationError`` and nothing
  written — never a driver's error or a ``StorageError``;
- a storage used after ``close()``: each operation either works (the adapter
  reopens, with its data) or raises a ``StorageError``; ``close()`` itself may
  be called again.

Part of :mod:`durably_testing.conformance`; import from there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from durably import (
    NewSchedule,
    Progress,
    Run,
    RunFilter,
    RunStatus,
    ScheduleFire,
    StepStatus,
    Storage,
    StorageError,
    ValidationError,
)

from ._conformance_base import ConformanceBase, js
from .faults import STORAGE_OPERATIONS

#: A lone surrogate: a ``str`` Python allows but UTF-8 (and so every database) refuses.
LONE_SURROGATE = "\ud800"
BAD_TEXT = f"bad {LONE_SURROGATE} text"
#: Text with U+0000, which some databases' text types cannot hold.
NUL_TEXT = "nul \x00 text"

#: Where user-supplied text reaches storage when a run is triggered.
ENQUEUE_TEXT = ("job_name", "idempotency_key", "concurrency_key", "label_key", "label_value")
#: Where user-supplied text reaches storage while a run executes (fenced writes).
EXECUTION_TEXT = (
    "step_name",
    "step_error",
    "log_message",
    "progress_message",
    "run_error",
    "attempt_error",
    "retry_error",
)

#: Every operation of the protocol, as called on a closed storage.
OPERATIONS_AFTER_CLOSE = STORAGE_OPERATIONS


def _named(exc: BaseException) -> str:
    return f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}"


async def raises_durably_error(call: Awaitable[Any], what: str) -> ValidationError | StorageError:
    """Await ``call``; it must raise ``ValidationError`` or a ``StorageError``."""
    try:
        result = await call
    except (ValidationError, StorageError) as exc:
        return exc
    except Exception as exc:
        raise AssertionError(
            f"{what} raised {_named(exc)}; an adapter raises durably.ValidationError for a "
            "value it cannot store (or a durably.StorageError subclass), chaining the "
            "driver's exception with `raise … from exc`"
        ) from exc
    raise AssertionError(
        f"{what} was accepted (returned {result!r}); text that is not valid Unicode "
        "cannot be stored: raise durably.ValidationError"
    )


class ErrorMappingCases(ConformanceBase):
    """Errors are durably's own (see the module docstring)."""

    @pytest.mark.parametrize("field", ENQUEUE_TEXT)
    async def test_text__lone_surrogate_in_enqueue_refused_with_a_durably_error(
        self, storage: Storage, field: str
    ) -> None:
        by_field: dict[str, dict[str, Any]] = {
            "job_name": {"job_name": BAD_TEXT},
            "idempotency_key": {"idempotency_key": BAD_TEXT},
            "concurrency_key": {"concurrency_key": BAD_TEXT},
            "label_key": {"labels": {BAD_TEXT: "v"}},
            "label_value": {"labels": {"k": BAD_TEXT}},
        }
        kwargs = by_field[field]
        new = self.new_run(**kwargs)
        what = f"enqueue with a lone surrogate in {field}"
        await raises_durably_error(storage.enqueue(new), what)
        many = [(self.new_run(), False), (self.new_run(**kwargs), False)]
        await raises_durably_error(
            storage.enqueue_many(many), f"enqueue_many with a lone surrogate in {field}"
        )
        assert await self.ids(storage) == [], "a refused enqueue writes nothing"
        assert await storage.get_run(many[0][0].id) is None, "enqueue_many is all or nothing"
        await self.create(storage)  # and the storage still works

    @pytest.mark.parametrize("field", EXECUTION_TEXT)
    async def test_text__lone_surrogate_in_fenced_write_refused_with_a_durably_error(
        self, storage: Storage, field: str
    ) -> None:
        run = await self.lease(storage)
        assert await storage.persist_step(run.id, 1, self.new_step("ok", 0), self.at(1))
        before = await self.snapshot(storage, run.id)
        write = self._write_with_text(field, storage, run)
        await raises_durably_error(write(BAD_TEXT), f"a lone surrogate in {field}")
        assert await self.snapshot(storage, run.id) == before, "a refused write writes nothing"
        assert await write("fine text"), "the storage keeps working after the refusal"

    @pytest.mark.parametrize("field", ENQUEUE_TEXT)
    async def test_text__nul_in_enqueue_stored_exactly_or_refused(
        self, storage: Storage, field: str
    ) -> None:
        by_field: dict[str, dict[str, Any]] = {
            "job_name": {"job_name": NUL_TEXT},
            "idempotency_key": {"idempotency_key": NUL_TEXT},
            "concurrency_key": {"concurrency_key": NUL_TEXT},
            "label_key": {"labels": {NUL_TEXT: "v"}},
            "label_value": {"labels": {"k": NUL_TEXT}},
        }
        new = self.new_run(**by_field[field])
        try:
            result = await storage.enqueue(new)
        except ValidationError:
            assert await self.ids(storage) == [], "a refused enqueue writes nothing"
            await self.create(storage)  # and the storage still works
            return
        except Exception as exc:
            raise AssertionError(
                f"enqueue with U+0000 in {field} raised {_named(exc)}; store it exactly, or "
                "raise durably.ValidationError (chaining the driver's exception)"
            ) from exc
        stored = await storage.get_run(result.run.id)
        assert stored is not None
        expected = (new.job_name, new.idempotency_key, new.concurrency_key, new.labels)
        got = (stored.job_name, stored.idempotency_key, stored.concurrency_key, stored.labels)
        assert got == expected, f"U+0000 in {field} was stored, but not exactly"

    @pytest.mark.parametrize("field", EXECUTION_TEXT)
    async def test_text__nul_in_fenced_write_stored_exactly_or_refused(
        self, storage: Storage, field: str
    ) -> None:
        run = await self.lease(storage)
        before = await self.snapshot(storage, run.id)
        write = self._write_with_text(field, storage, run)
        try:
            assert await write(NUL_TEXT)
        except ValidationError:
            assert await self.snapshot(storage, run.id) == before, "a refused write writes nothing"
            assert await write("fine text"), "the storage keeps working after the refusal"
            return
        except Exception as exc:
            raise AssertionError(
                f"U+0000 in {field} raised {_named(exc)}; store it exactly, or raise "
                "durably.ValidationError (chaining the driver's exception)"
            ) from exc
        stored, steps, logs, attempts = await self.snapshot(storage, run.id)
        assert stored is not None
        texts: dict[str, list[str | None]] = {
            "step_name": [s.name for s in steps],
            "step_error": [s.error for s in steps],
            "log_message": [entry.message for entry in logs],
            "progress_message": [stored.progress.message if stored.progress else None],
            "run_error": [stored.error],
            "attempt_error": [a.error for a in attempts],
            "retry_error": [stored.error],
        }
        found = texts[field]
        assert NUL_TEXT in found, f"U+0000 in {field} was stored, but not exactly: {found!r}"

    def _write_with_text(
        self, field: str, storage: Storage, run: Run
    ) -> Callable[[str], Awaitable[bool]]:
        def write(text: str) -> Awaitable[bool]:
            now = self.at(2)
            if field == "step_name":
                return storage.persist_step(run.id, 1, self.new_step(text, 1), now)
            if field == "step_error":
                step = self.new_step("s", 1, status=StepStatus.FAILED, error=text)
                return storage.persist_step(run.id, 1, step, now)
            if field == "log_message":
                return storage.append_logs(run.id, 1, [self.new_log(text)], now)
            if field == "progress_message":
                return storage.update_progress(run.id, 1, Progress(1, 2, text), now)
            if field == "run_error":
                return storage.fail_run(run.id, 1, text, now)
            if field == "attempt_error":
                return storage.record_attempt(run.id, 1, self.new_attempt(error=text), now)
            if field == "retry_error":
                return self._retried(storage.schedule_retry(run.id, 1, text, self.at(9), now))
            raise AssertionError(field)

        return write

    @staticmethod
    async def _retried(call: Awaitable[Run | None]) -> bool:
        return await call is not None

    async def test_text__lone_surrogate_lookups_find_nothing_or_raise_a_durably_error(
        self, storage: Storage
    ) -> None:
        run = await self.create(storage, labels={"k": "v"})
        lookups: dict[str, Callable[[], Awaitable[Any]]] = {
            "get_run": lambda: storage.get_run(BAD_TEXT),
            "get_runs(job_names=…)": lambda: storage.get_runs(RunFilter(job_names=(BAD_TEXT,))),
            "get_runs(labels=…)": lambda: storage.get_runs(RunFilter(labels={"k": BAD_TEXT})),
            "count_runs(labels=…)": lambda: storage.count_runs(RunFilter(labels={"k": BAD_TEXT})),
            "get_steps": lambda: storage.get_steps(BAD_TEXT),
            "cancel_run": lambda: storage.cancel_run(BAD_TEXT, self.at(1)),
        }
        for what, lookup in lookups.items():
            try:
                found = await lookup()
            except (ValidationError, StorageError):
                continue
            except Exception as exc:
                raise AssertionError(
                    f"{what} with a lone surrogate raised {_named(exc)}; return nothing, "
                    "or raise durably.ValidationError"
                ) from exc
            assert not any(found.values()) if isinstance(found, dict) else found in (None, []), (
                f"{what} with a lone surrogate found {found!r}"
            )
        assert await self.ids(storage) == [run.id]

    @pytest.mark.parametrize("operation", OPERATIONS_AFTER_CLOSE)
    async def test_closed__operation_works_or_raises_storage_error(
        self, storage: Storage, operation: str
    ) -> None:
        run = await self.lease(storage)
        wait = await self.prepared(storage, run, "w")
        await storage.close()
        call = self._call_after_close(operation, storage, run, wait.id)
        try:
            result = await call()
        except StorageError as exc:
            if operation == "close":
                raise AssertionError(
                    f"close() after close() raised {_named(exc)}; a second close does nothing"
                ) from exc
            return
        except Exception as exc:
            raise AssertionError(
                f"{operation} after close() raised {_named(exc)}; after close() an operation "
                "either reopens the storage and works, or raises a durably.StorageError "
                "(chain the driver's exception with `raise … from exc`)"
            ) from exc
        if operation == "get_run":  # it worked: then it sees the data, not an empty database
            assert result == run, "get_run after close() reopened, but without the data"
        if operation == "get_runs":
            assert [r.id for r in result] == [run.id]
        if operation == "count_runs":
            assert {s: n for s, n in result.items() if n} == {RunStatus.LEASED: 1}

    def _call_after_close(
        self, operation: str, storage: Storage, run: Run, wait_id: str
    ) -> Callable[[], Awaitable[Any]]:
        now, later = self.at(1), self.at(31)
        schedule = NewSchedule(
            name="s",
            job_name="job-a",
            cron="* * * * *",
            timezone="UTC",
            input_json="{}",
            next_fire_at=later,
            created_at=now,
        )
        fire = ScheduleFire(
            token=self.new_id(),
            name="s",
            revision=1,
            next_fire_at=later,
            last_fired_at=None,
            now=now,
        )
        calls: dict[str, Callable[[], Awaitable[Any]]] = {
            "migrate": storage.migrate,
            "close": storage.close,
            "enqueue": lambda: storage.enqueue(self.new_run("job-b")),
            "enqueue_many": lambda: storage.enqueue_many([(self.new_run("job-b"), False)]),
            "get_run": lambda: storage.get_run(run.id),
            "get_runs": lambda: storage.get_runs(RunFilter()),
            "count_runs": lambda: storage.count_runs(RunFilter()),
            "get_steps": lambda: storage.get_steps(run.id),
            "get_completed_steps": lambda: storage.get_completed_steps(run.id),
            "get_logs": lambda: storage.get_logs(run.id),
            "claim_next": lambda: storage.claim_next("w2", now, later),
            "renew_lease": lambda: storage.renew_lease(run.id, 1, now, later),
            "release_expired_leases": lambda: storage.release_expired_leases(now),
            "persist_step": lambda: storage.persist_step(run.id, 1, self.new_step("s", 0), now),
            "update_progress": lambda: storage.update_progress(run.id, 1, Progress(1), now),
            "append_logs": lambda: storage.append_logs(run.id, 1, [self.new_log("x")], now),
            "complete_run": lambda: storage.complete_run(run.id, 1, js(1), now, delete_steps=False),
            "fail_run": lambda: storage.fail_run(run.id, 1, "boom", now),
            "cancel_run": lambda: storage.cancel_run(run.id, now),
            "retry_run": lambda: storage.retry_run(run.id, now),
            "delete_run": lambda: storage.delete_run(run.id),
            "purge_runs": lambda: storage.purge_runs(later, 10),
            "prepare_wait": lambda: storage.prepare_wait(run.id, 1, self.new_wait("w2"), now),
            "wait_result": lambda: storage.wait_result(run.id, 1, wait_id, now, now),
            "suspend_run": lambda: storage.suspend_run(run.id, 1, wait_id, now),
            "signal_wait": lambda: storage.signal_wait(run.id, "w", self.new_signal(1), now),
            "get_waits": lambda: storage.get_waits(run.id),
            "get_wait": lambda: storage.get_wait(run.id, "w"),
            "next_wake_at": lambda: storage.next_wake_at(now),
            "record_attempt": lambda: storage.record_attempt(run.id, 1, self.new_attempt(), now),
            "schedule_retry": lambda: storage.schedule_retry(run.id, 1, "boom", later, now),
            "get_attempts": lambda: storage.get_attempts(run.id),
            "create_schedule": lambda: storage.create_schedule(schedule),
            "update_schedule": lambda: storage.update_schedule(schedule, 1, now),
            "delete_schedule": lambda: storage.delete_schedule("s"),
            "get_schedule": lambda: storage.get_schedule("s"),
            "get_schedules": lambda: storage.get_schedules(),
            "upcoming_schedules": lambda: storage.upcoming_schedules(["job-a"], 10),
            "fire_schedule": lambda: storage.fire_schedule(fire),
        }
        return calls[operation]
