"""Conformance cases of the optional capabilities a storage may offer:
:class:`durably.SupportsIdentityCheck` and :class:`durably.SupportsDatabaseTime`.

A storage that does not offer one passes its cases as they are (there is nothing
to check); one that does must keep what the protocol's docstrings say.

Part of :mod:`durably_testing.conformance`; import from there.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from durably import (
    Storage,
    StorageError,
    SupportsDatabaseTime,
    SupportsIdentityCheck,
)

from ._conformance_base import ConformanceBase


class CapabilityCases(ConformanceBase):
    """The optional capabilities, where the storage offers them."""

    async def test_capability__identity_check_passes_while_the_database_is_in_place(
        self, storage: Storage
    ) -> None:
        if not isinstance(storage, SupportsIdentityCheck):
            return  # not offered: the worker does without
        await storage.check_identity()
        run = await self.lease(storage)
        await storage.check_identity()
        assert await storage.get_run(run.id) == run, "the storage stopped working after a check"

    async def test_capability__database_time_is_none_or_aware_utc_at_milliseconds(
        self, storage: Storage
    ) -> None:
        if not isinstance(storage, SupportsDatabaseTime):
            return  # not offered: the worker's own clock is used
        first = await storage.database_time()
        if first is None:
            assert await storage.database_time() is None, "database_time() changed its mind"
            return
        assert first.utcoffset() == timedelta(0), f"database_time() {first!r} is not aware UTC"
        assert first.microsecond % 1000 == 0, f"database_time() {first!r} is finer than ms"
        await asyncio.sleep(0.02)
        second = await storage.database_time()
        assert second is not None
        assert second >= first - timedelta(seconds=1), "the database clock went back"
        # the clock at the call, not a cached value or the transaction's start
        # (PostgreSQL's now()); a slow machine only makes the difference larger
        assert second - first >= timedelta(milliseconds=10), (
            f"database_time() did not advance over 20 ms ({first} then {second}): it must "
            "read the clock at the moment of the call (PostgreSQL: clock_timestamp())"
        )

    async def test_capability__after_close_works_or_raises_storage_error(
        self, storage: Storage
    ) -> None:
        await storage.close()
        for offered, call in (
            (isinstance(storage, SupportsIdentityCheck), "check_identity"),
            (isinstance(storage, SupportsDatabaseTime), "database_time"),
        ):
            if not offered:
                continue
            try:
                await getattr(storage, call)()
            except StorageError:
                pass
            except Exception as exc:
                raise AssertionError(
                    f"{call}() after close() raised {type(exc).__name__}; it either works or "
                    "raises a durably.StorageError"
                ) from exc
