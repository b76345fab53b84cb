"""The ULID generator: every id is the 26-character Crockford encoding of its
millisecond and random part, monotonic within a millisecond (the random part + 1,
its top 60 bits' text reused while unchanged)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from durably._ulid import _ALPHABET, UlidGenerator


def decode(ulid: str) -> tuple[int, int]:
    """(milliseconds, random part) of an id, by the ULID spec's own arithmetic."""
    value = 0
    for char in ulid:
        value = value * 32 + _ALPHABET.index(char)
    return value >> 80, value & ((1 << 80) - 1)


def made(gen: UlidGenerator, ms: int) -> tuple[str, int, int]:
    ulid = gen.new(ms)
    return ulid, gen._last_ms, gen._last_rand


def test_every_id_encodes_its_millisecond_and_random_part() -> None:
    gen = UlidGenerator()
    previous = ""
    for i in range(5000):
        # a few ids per millisecond, and a clock that steps back now and then
        ms = 1_764_870_000_000 + i // 3 - (5 if i % 700 == 0 else 0)
        ulid, used_ms, rand = made(gen, ms)
        assert len(ulid) == 26
        assert decode(ulid) == (used_ms, rand)
        assert ulid > previous  # monotonic, also when the clock steps back
        previous = ulid


def test_the_random_part_carries_into_its_top_bits_and_into_the_next_millisecond() -> None:
    gen = UlidGenerator()
    gen.new(1_000)
    # the low 20 bits roll over: the cached top 60 bits' text must be made again
    gen._last_rand = (7 << 20) - 2
    ids = [made(gen, 1_000) for _ in range(3)]
    assert [decode(u) for u, _, _ in ids] == [
        (1_000, (7 << 20) - 1),
        (1_000, 7 << 20),
        (1_000, (7 << 20) + 1),
    ]
    # the random part is exhausted: the next id takes the next millisecond
    gen._last_rand = (1 << 80) - 1
    ulid, ms, rand = made(gen, 1_000)
    assert ms == 1_001
    assert decode(ulid) == (1_001, rand)
    assert ulid > ids[-1][0]


def test_at_uses_the_instants_millisecond() -> None:
    gen = UlidGenerator()
    t = datetime(2026, 12, 4, 19, 30, 1, 123_456, tzinfo=UTC)
    first = gen.at(t)
    again = gen.at(t)  # the same datetime: its milliseconds remembered
    later = gen.at(t + timedelta(milliseconds=5))
    ms = int(t.timestamp() * 1000)
    assert decode(first)[0] == decode(again)[0] == ms
    assert decode(later)[0] == ms + 5
    assert first < again < later
