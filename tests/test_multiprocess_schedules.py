"""Four worker processes fire one schedule: 1,000 slots, each fired once, none missed.

The processes share a SQLite file and a simulated clock running 6,000 times faster
than real time (``tests/workers/schedule_worker.py``): a per-minute schedule has a
slot every 10 real milliseconds, so all four wake for every slot and race for it.
Each ``schedule:fire`` a process makes is recorded outside the database. Checked:
the 1,000 slots after the schedule was created were each fired exactly once, by
one process, as a new run (never twice, never answered by an existing run's key);
the database holds one run per slot; no worker reported an error.

``catch_up="all"`` with a cap of 1,000: a process that wakes late (the machine is
shared) fires every slot it finds due, so none may be skipped.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from process_support import Workers, query, read_records, wait_for
from workers.schedule_worker import JOBS

from durably import create_durably
from durably._timefmt import format_ts
from durably_testing import ManualClock

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

WORKERS = 4
SLOTS = 1000
SPEED = 6000.0
T0 = datetime(2026, 1, 1, tzinfo=UTC)
SCRIPT = Path(__file__).parent / "workers" / "schedule_worker.py"


async def test_four_processes_fire_each_of_1000_slots_once(tmp_path: Path) -> None:
    db = tmp_path / "schedules.db"
    records = tmp_path / "records"
    logs = tmp_path / "logs"
    records.mkdir()
    logs.mkdir()
    setup = create_durably(f"sqlite:///{db}", jobs=JOBS, clock=ManualClock(T0))
    await setup.schedules.create(
        "every-minute", "tick", cron="* * * * *", catch_up="all", max_catch_up=1000
    )
    await setup.close()
    expected = [T0 + timedelta(minutes=n) for n in range(1, SLOTS + 1)]
    last = format_ts(expected[-1])
    epoch = time.time()
    started = time.monotonic()
    with Workers(db, records, logs, script=SCRIPT) as workers:
        for _ in range(WORKERS):
            workers.start("--epoch", repr(epoch), "--origin", T0.isoformat(), "--speed", str(SPEED))

        def fired_all() -> bool:
            rows = query(db, "SELECT last_fired_at FROM durably_schedules")
            return bool(rows and rows[0][0] is not None and rows[0][0] >= last)

        wait_for(fired_all, "slot 1,000 fired", timeout=300, check=workers.check_alive)
        elapsed = time.monotonic() - started
        workers.stop_all(timeout=60)

    entries = read_records(records)
    errors = [e for e in entries if e["ev"] == "error"]
    assert errors == [], errors
    fires = [e for e in entries if e["ev"] == "fire"]
    by_slot = Counter(datetime.fromisoformat(e["slot"]) for e in fires)
    twice = {slot: n for slot, n in by_slot.items() if n > 1}
    assert twice == {}, f"slots fired more than once: {twice}"
    missed = [slot for slot in expected if slot not in by_slot]
    assert missed == [], f"{len(missed)} slots never fired, first {missed[:5]}"
    assert {e["how"] for e in fires} == {"created"}
    rows = query(
        db,
        "SELECT COUNT(*), COUNT(DISTINCT idempotency_key) FROM durably_runs "
        "WHERE job_name = 'tick' AND idempotency_key <= ?",
        f"schedule:every-minute:{last}",
    )
    assert rows == [(SLOTS, SLOTS)]
    winners = Counter(e["pid"] for e in fires)
    assert len(winners) >= 2, f"the processes did not race: {winners}"
    print(f"{SLOTS} slots fired once each in {elapsed:.1f} s real, by process: {winners}")
