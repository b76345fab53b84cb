"""Run the W1–W5 benchmarks (and the remote libSQL request counts, and the SSE
load) one after another and print one combined table.

Each script runs in its own process and prints its JSON lines (passed through
here) and its own table; at the end comes the machine and every figure in one
markdown table (what the README's performance section shows).

    uv run python bench/run_all.py [w1 w2 w3 w4 w5 libsql sse postgres waits overhead memory]
    # or: uv run nox -s bench
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from _bench import machine, print_table

HERE = Path(__file__).parent
SCRIPTS = {
    "w1": "w1_throughput.py",
    "w2": "w2_checkpoint.py",
    "w3": "w3_resume.py",
    "w4": "w4_latency.py",
    "w5": "w5_scaling.py",
    "libsql": "libsql_requests.py",  # skipped when tursodb is not installed
    "sse": "sse_load.py",  # HTTP/SSE handler under many streams and reconnects
    "postgres": "pg_workloads.py",  # W1/W2/W4/W5 on a PostgreSQL server started for it
    "waits": "waits.py",  # durable waits: slots, resume after a signal, restart
    "overhead": "step_overhead.py",  # the engine's CPU per step and each unused hook's
    "memory": "memory_bound.py",  # RSS with 10,000 queued runs and 200 SSE clients
}


def main(names: list[str]) -> int:
    unknown = [n for n in names if n not in SCRIPTS]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {sorted(SCRIPTS)}", file=sys.stderr)
        return 2
    figures: list[dict[str, Any]] = []
    failed = []
    for name in names or list(SCRIPTS):
        proc = subprocess.Popen(
            [sys.executable, str(HERE / SCRIPTS[name])], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            print(line, end="", flush=True)
            if line.startswith("{"):
                figures.append(json.loads(line))
        if proc.wait() != 0:
            failed.append(name)
    m = machine()
    print(
        f"\nMachine: {m['nproc']} CPUs ({m['cpu']}), Python {m['python']}, "
        f"SQLite {m['sqlite']}, {m['platform']}; file database in WAL mode."
    )
    print_table(figures)
    if failed:
        print(f"failed: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
