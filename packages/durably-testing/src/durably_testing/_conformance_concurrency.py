"""Conformance cases for atomicity: operations started at the same moment.

Each case starts several operations on one storage with ``asyncio.gather`` and
requires the outcome of *some* order of running them one at a time. An adapter
that reads, awaits, then writes (chooses a run, then updates it; looks for an
idempotency key, then inserts) lets the operations interleave in the gap, and
fails here: one run handed to two workers, two runs for one key, a step
checkpointed twice, a cancel overwritten by a claim.

On a server database the operations of one storage run on several connections, and
the race is between those connections inside the database: two claims of
different runs of one concurrency key that each check "no live lease on the key"
in a snapshot taken before the other committed (PostgreSQL's READ COMMITTED) both
succeed. Such a race shows only when the statements really overlap, so the cases
first open the storage's connections (:meth:`ConcurrencyCases.warm`; connections
opened one by one during the race serialise it) and the key case repeats its round
(up to ``race_rounds`` times, for about ``race_seconds``; at least ten rounds).

Part of :mod:`durably_testing.conformance`; import from there.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest

from durably import ConflictError, EnqueueResult, Run, RunStatus, Storage

from ._conformance_base import ConformanceBase, js

#: How many operations each case starts at once.
AT_ONCE = 6
#: The concurrency-key case races at least this many rounds.
MIN_ROUNDS = 10


def _outcomes(results: Sequence[Any], allowed: tuple[type[BaseException], ...] = ()) -> list[Any]:
    """``results`` of ``gather(..., return_exceptions=True)``; an exception of a type
    not in ``allowed`` fails the case with its type and message."""
    unexpected = [r for r in results if isinstance(r, BaseException) and not isinstance(r, allowed)]
    if unexpected:
        shown = "; ".join(f"{type(r).__qualname__}: {r}" for r in unexpected)
        raise AssertionError(f"operations run at once raised {shown}") from unexpected[0]
    return list(results)


def _given_twice(claims: Sequence[Run | None]) -> dict[str, int]:
    counts = Counter(c.id for c in claims if c is not None)
    return {run_id: n for run_id, n in counts.items() if n > 1}


class ConcurrencyCases(ConformanceBase):
    """Operations run at once behave as if run one after another (see the module
    docstring)."""

    #: Racing rounds of the concurrency-key case: at most this many, for about
    #: ``race_seconds`` (a lost race comes out right by luck in some rounds: a claim
    #: without a lock per key on PostgreSQL was caught in 7-27% of single rounds, on a
    #: loaded two-core machine). Raise both to search harder.
    race_rounds: int = 100
    race_seconds: float = 3.0

    async def warm(self, storage: Storage) -> None:
        """Make a pooled storage open :data:`AT_ONCE` connections before a race (reads
        at once, twice), so the racing operations meet in the database."""
        for _ in range(2):
            await asyncio.gather(*(storage.get_run("warm-up") for _ in range(AT_ONCE)))

    async def test_concurrent__claims_get_distinct_runs_and_leases(self, storage: Storage) -> None:
        await self.warm(storage)
        runs = [await self.create(storage) for _ in range(AT_ONCE - 2)]
        owners = [f"worker-{i}" for i in range(AT_ONCE)]
        claims = _outcomes(
            await asyncio.gather(
                *(storage.claim_next(o, self.at(0), self.at(30)) for o in owners),
                return_exceptions=True,
            )
        )
        assert not _given_twice(claims), (
            f"one run was given to several workers at once: {_given_twice(claims)} "
            "(claim_next must choose and lease the run in one atomic step)"
        )
        got = {c.id: (owner, c) for owner, c in zip(owners, claims, strict=True) if c is not None}
        assert sorted(got) == sorted(r.id for r in runs), "every pending run is claimed once"
        for run_id, (owner, claimed) in got.items():
            stored = await storage.get_run(run_id)
            assert stored is not None
            assert (claimed.lease_owner, claimed.lease_generation) == (owner, 1)
            assert (stored.status, stored.lease_owner, stored.lease_generation) == (
                RunStatus.LEASED,
                owner,
                1,
            )
        assert await storage.claim_next("late", self.at(1), self.at(31)) is None

    async def test_concurrent__claims_lease_one_run_per_concurrency_key(
        self, storage: Storage
    ) -> None:
        await self.warm(storage)
        loop = asyncio.get_running_loop()
        until = loop.time() + self.race_seconds
        for round in range(self.race_rounds):
            if round >= MIN_ROUNDS and loop.time() > until:
                break
            # a key of its own per round; the runs of earlier rounds stay blocked
            key = f"k{round}"
            new = [self.new_run(f"job-{i}", concurrency_key=key) for i in range(3)]
            new.append(self.new_run("job-free"))
            created = await storage.enqueue_many([(run, False) for run in new])
            assert [r.disposition for r in created] == ["created"] * 4
            keyed, free = [r.run for r in created[:3]], created[3].run
            claims = _outcomes(
                await asyncio.gather(
                    *(
                        storage.claim_next(f"w{i}", self.at(round), self.at(3600))
                        for i in range(AT_ONCE)
                    ),
                    return_exceptions=True,
                )
            )
            claimed = sorted(c.id for c in claims if c is not None)
            assert claimed == sorted([keyed[0].id, free.id]), (
                f"round {round + 1}: claims run at once leased more than one run "
                f"of concurrency key {key!r}, not its oldest, or gave a run twice: "
                f"{claimed} (expected {sorted([keyed[0].id, free.id])}). On a server "
                "database, each claim of a keyed run needs a lock per key (PostgreSQL: "
                "pg_advisory_xact_lock(hashtext(key))) and a check of the key after it"
            )
            if round:
                continue
            statuses = [await self.status_of(storage, r.id) for r in keyed]
            assert statuses == [RunStatus.LEASED, RunStatus.PENDING, RunStatus.PENDING]

    @pytest.mark.parametrize("cancel_first", [False, True], ids=["claim-first", "cancel-first"])
    async def test_concurrent__cancel_is_never_undone_by_a_claim(
        self, storage: Storage, cancel_first: bool
    ) -> None:
        run = await self.create(storage)
        claim = storage.claim_next("w", self.at(0), self.at(30))
        cancel = storage.cancel_run(run.id, self.at(0))
        ops = [cancel, claim] if cancel_first else [claim, cancel]
        results = _outcomes(await asyncio.gather(*ops, return_exceptions=True))
        cancelled, claimed = results if cancel_first else results[::-1]
        assert cancelled is not None, "a pending or leased run can always be cancelled"
        stored = await storage.get_run(run.id)
        assert stored is not None
        assert stored.status is RunStatus.CANCELLED, (
            f"cancel_run returned the cancelled run, but the run is {stored.status.value}: "
            "a claim run at the same time overwrote the cancel"
        )
        assert (stored.lease_owner, stored.lease_expires_at) == (None, None)
        # claimed first → generation 1 kept by the cancel; cancelled first → never leased
        assert stored.lease_generation == (0 if claimed is None else 1), (
            f"the claim {'failed' if claimed is None else 'took generation 1'}, but the "
            f"cancelled run has generation {stored.lease_generation}: the cancel wrote a "
            "copy of the run it read before the claim (generations never go back)"
        )
        assert await storage.claim_next("w2", self.at(100), self.at(130)) is None

    async def test_concurrent__enqueue_one_idempotency_key_creates_one_run(
        self, storage: Storage
    ) -> None:
        news = [self.new_run(input={"attempt": i}, idempotency_key="same") for i in range(AT_ONCE)]
        results: list[EnqueueResult] = _outcomes(
            await asyncio.gather(*(storage.enqueue(n) for n in news), return_exceptions=True)
        )
        dispositions = Counter(r.disposition for r in results)
        assert dispositions == {"created": 1, "idempotent": AT_ONCE - 1}, (
            f"enqueues of one idempotency key run at once gave {dict(dispositions)}"
        )
        [created] = [r.run for r in results if r.disposition == "created"]
        assert {r.run.id for r in results} == {created.id}
        attempt = next(i for i, n in enumerate(news) if n.id == created.id)
        assert all(r.run.input == {"attempt": attempt} for r in results)
        assert await self.ids(storage) == [created.id]

    @pytest.mark.parametrize("coalesce", [False, True], ids=["conflict", "coalesce"])
    async def test_concurrent__enqueue_one_pending_concurrency_key_creates_one_run(
        self, storage: Storage, coalesce: bool
    ) -> None:
        news = [self.new_run(input={"attempt": i}, concurrency_key="c") for i in range(AT_ONCE)]
        results = _outcomes(
            await asyncio.gather(
                *(storage.enqueue(n, coalesce=coalesce) for n in news), return_exceptions=True
            ),
            allowed=() if coalesce else (ConflictError,),
        )
        made = [r for r in results if isinstance(r, EnqueueResult)]
        created = [r.run for r in made if r.disposition == "created"]
        assert len(created) == 1, (
            f"enqueues of one pending concurrency key run at once created {len(created)} runs"
        )
        if coalesce:
            assert Counter(r.disposition for r in made) == {"created": 1, "coalesced": AT_ONCE - 1}
            assert {r.run.id for r in made} == {created[0].id}
        else:
            conflicts = [r for r in results if isinstance(r, ConflictError)]
            assert (len(made), len(conflicts)) == (1, AT_ONCE - 1)
        assert await self.ids(storage) == [created[0].id]

    async def test_concurrent__persist_same_completed_step_exactly_one_wins(
        self, storage: Storage
    ) -> None:
        run = await self.lease(storage)
        steps = [self.new_step("s", 0, output={"attempt": i}) for i in range(AT_ONCE)]
        results = _outcomes(
            await asyncio.gather(
                *(storage.persist_step(run.id, 1, s, self.at(2)) for s in steps),
                return_exceptions=True,
            ),
            allowed=(ConflictError,),
        )
        won = [s for s, r in zip(steps, results, strict=True) if r is True]
        conflicts = [r for r in results if isinstance(r, ConflictError)]
        assert (len(won), len(conflicts)) == (1, AT_ONCE - 1), (
            f"persist_step of one completed step run at once: {len(won)} accepted, "
            f"{len(conflicts)} ConflictError (expected 1 and {AT_ONCE - 1}); results {results}"
        )
        stored = await storage.get_steps(run.id)
        assert [(s.id, s.output) for s in stored] == [(won[0].id, {"attempt": steps.index(won[0])})]
        after = await storage.get_run(run.id)
        assert after is not None
        assert (after.current_step_index, after.completed_step_count) == (1, 1)

    async def test_concurrent__checkpoints_of_several_runs_each_fenced_by_its_own_lease(
        self, storage: Storage
    ) -> None:
        # An adapter may write checkpoints made at the same moment together (group
        # commit): each is still fenced by its own run's lease, and one that is refused
        # or conflicts fails alone.
        runs = [await self.lease(storage) for _ in range(AT_ONCE)]
        lost = runs[1]  # its lease is generation 1: a write of generation 2 is fenced out

        async def at_once(names: Sequence[str]) -> tuple[list[Any], list[Any]]:
            steps = [self.new_step(name, 1 if name == "t" else 0) for name in names]
            results = _outcomes(
                await asyncio.gather(
                    *(
                        storage.persist_step(run.id, 2 if run is lost else 1, step, self.at(2))
                        for run, step in zip(runs, steps, strict=True)
                    ),
                    return_exceptions=True,
                ),
                allowed=(ConflictError,),
            )
            return steps, [type(r) if isinstance(r, BaseException) else r for r in results]

        first, got = await at_once(["s"] * AT_ONCE)
        assert got == [True, False] + [True] * (AT_ONCE - 2), (
            f"checkpoints of {AT_ONCE} runs at once, the second one's lease lost: {got} "
            "(each must get its own answer)"
        )
        # the fourth run's step is named like its stored one: it conflicts, alone
        second, got = await at_once(["t", "t", "t", "s", "t", "t"][:AT_ONCE])
        assert got == [True, False, True, ConflictError] + [True] * (AT_ONCE - 4), (
            f"checkpoints of {AT_ONCE} runs at once, the second one's lease lost and the "
            f"fourth one's name taken: {got} (each must get its own answer)"
        )
        for i, run in enumerate(runs):
            stored = [s.id for s in await storage.get_steps(run.id)]
            after = await storage.get_run(run.id)
            assert after is not None
            if run is lost:
                assert (stored, after.completed_step_count) == ([], 0)
            elif i == 3:
                assert (stored, after.completed_step_count) == ([first[i].id], 1)
            else:
                assert (stored, after.completed_step_count) == ([first[i].id, second[i].id], 2)
                assert after.current_step_index == 2

    async def test_concurrent__finishing_writes_of_one_lease_exactly_one_wins(
        self, storage: Storage
    ) -> None:
        run = await self.lease(storage)
        finishes = [
            storage.complete_run(run.id, 1, js("first"), self.at(2), delete_steps=False),
            storage.fail_run(run.id, 1, "second", self.at(2)),
            storage.complete_run(run.id, 1, js("third"), self.at(2), delete_steps=False),
            storage.fail_run(run.id, 1, "fourth", self.at(2)),
        ]
        results = _outcomes(await asyncio.gather(*finishes, return_exceptions=True))
        assert results.count(True) == 1, (
            f"complete_run/fail_run of one lease run at once: {results.count(True)} accepted "
            "(after the first, the run is no longer leased: the others must return False)"
        )
        winner = results.index(True)
        stored = await storage.get_run(run.id)
        assert stored is not None
        expected = [
            (RunStatus.COMPLETED, "first", None),
            (RunStatus.FAILED, None, "second"),
            (RunStatus.COMPLETED, "third", None),
            (RunStatus.FAILED, None, "fourth"),
        ][winner]
        assert (stored.status, stored.output, stored.error) == expected
