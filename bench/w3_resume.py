"""W3 — resume after a crash: a worker SIGKILLed mid-run, a new one started.

One run of S steps (each appends ``pid index time`` to a log file as it starts,
then sleeps 5 ms). Worker A (a separate process; lease 2 s, renewed every
0.5 s, polling 0.5 s) runs it until K steps were executed; it is SIGKILLed. The
checkpointed steps are read from the database; worker B is started at once.
Figures: seconds from B's start to its first resumed step and to the run's
completion, and the number of checkpointed steps B executed again (must be 0).
Expected bound: resumed within lease + polling interval of the restart.

Raw baseline in the same run: a fresh Python process that opens the same kind
of WAL file and commits one INSERT (the floor of any restart).

    uv run python bench/w3_resume.py [--steps S] [--kill-after K] [--lease SECONDS]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _bench import emit, header, print_table, sqlite_url

from durably import Step, create_durably, define_job

POLL = 0.5
RENEW = 0.5


async def work(i: int, log_path: str) -> int:
    with open(log_path, "a") as f:  # noqa: ASYNC230 - a short append is the measurement
        f.write(f"{os.getpid()} {i} {time.time()}\n")
    await asyncio.sleep(0.005)
    return i


@define_job("w3")
async def w3_job(step: Step, payload: dict[str, Any]) -> int:
    total = 0
    for i in range(payload["steps"]):
        total += await step.run(f"s{i}", work, i, payload["log"])
    return total


async def worker(db: str, lease: float) -> None:
    async with create_durably(
        sqlite_url(Path(db)),
        jobs={"w3": w3_job},
        lease_duration=lease,
        lease_renew_interval=RENEW,
        polling_interval=POLL,
        preserve_steps=True,
    ):
        await asyncio.Event().wait()


def executed(log: Path) -> list[tuple[int, int, float]]:
    if not log.exists():
        return []
    out = []
    for line in log.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            out.append((int(parts[0]), int(parts[1]), float(parts[2])))
    return out


def spawn(db: Path, lease: float) -> subprocess.Popen[bytes]:
    """A worker process (started from a plain function: the bench awaits nothing here)."""
    return subprocess.Popen([sys.executable, __file__, "--worker", str(db), str(lease)])


def raw_restart(d: Path) -> float:
    """Seconds for a fresh Python process to open a WAL file and commit one INSERT."""
    path = d / "raw_restart.db"
    code = (
        f"import sqlite3; c = sqlite3.connect({str(path)!r}, isolation_level=None); "
        "c.execute('PRAGMA journal_mode=WAL'); c.execute('PRAGMA synchronous=NORMAL'); "
        "c.execute('CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)'); "
        "c.execute('BEGIN'); c.execute(\"INSERT INTO t (v) VALUES ('x')\"); c.execute('COMMIT')"
    )
    times = []
    for _ in range(3):
        t0 = time.time()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.time() - t0)
    return sorted(times)[1]


async def main(steps: int, kill_after: int, lease: float) -> None:
    header(f"W3 resume: {steps} steps, SIGKILL after {kill_after}, lease {lease:g} s")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        db, log = d / "w3.db", d / "exec.log"
        floor = raw_restart(d)
        durably = create_durably(sqlite_url(db), jobs={"w3": w3_job})
        await durably.migrate()
        run = await durably.jobs.w3.trigger({"steps": steps, "log": str(log)})
        a = spawn(db, lease)
        while True:  # polling another process
            if len(executed(log)) >= kill_after:
                break
            await asyncio.sleep(0.005)
        os.kill(a.pid, signal.SIGKILL)
        a.wait()
        killed_at = time.time()
        conn = sqlite3.connect(db)
        checkpointed = {
            int(name[1:])
            for (name,) in conn.execute(
                "SELECT name FROM durably_steps WHERE run_id = ? AND status = 'completed'",
                (run.id,),
            )
        }
        restart = time.time()
        b = spawn(db, lease)
        try:
            while True:
                row = conn.execute(
                    "SELECT status FROM durably_runs WHERE id = ?", (run.id,)
                ).fetchone()
                if row[0] in ("completed", "failed", "cancelled"):
                    break
                await asyncio.sleep(0.002)
            done = time.time()
            status = row[0]
        finally:
            b.terminate()
            b.wait()
            conn.close()
            await durably.close()
        b_steps = [(i, t) for pid, i, t in executed(log) if pid == b.pid]
        first = min(t for _, t in b_steps)
        again = sorted({i for i, _ in b_steps} & checkpointed)
        assert status == "completed", status
    emit(
        "W3",
        "restart → first resumed step",
        first - restart,
        "s",
        raw=floor,
        raw_unit="s",
        ratio=(first - restart) / floor,
        bound_s=lease + POLL,
        since_kill=first - killed_at,
        note=f"bound: lease {lease:g} s + polling {POLL:g} s; raw = fresh process + 1 INSERT",
    )
    emit(
        "W3",
        "restart → run completed",
        done - restart,
        "s",
        remaining_steps=steps - len(checkpointed),
        note=f"{steps - len(checkpointed)} steps left after the kill (5 ms each)",
    )
    emit(
        "W3",
        "checkpointed steps executed again",
        len(again),
        "steps",
        checkpointed=len(checkpointed),
        note=f"of {len(checkpointed)} checkpointed; must be 0",
    )
    print_table()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        asyncio.run(worker(sys.argv[2], float(sys.argv[3])))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--kill-after", type=int, default=100)
    parser.add_argument("--lease", type=float, default=2.0)
    args = parser.parse_args()
    asyncio.run(main(args.steps, args.kill_after, args.lease))
