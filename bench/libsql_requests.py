"""Remote libSQL: HTTP requests per checkpoint and per run (and µs per step on loopback).

Starts ``tursodb <file> --sync-server 127.0.0.1:<port>`` (installed by
``scripts/setup-tursodb.sh`` into ``.cache/tursodb``, or ``DURABLY_TURSODB``) and
counts the requests durably-libsql sends, through a counting ``httpx`` transport:
one run of N trivial steps (per checkpoint: the requests made while the steps
run, divided by N) and runs of S steps from trigger to completion (per run). The
raw baseline in the same run: one ``INSERT`` as one Hrana pipeline request
(autocommit) against the same server, in µs. Skipped (a note, exit 0) when
tursodb is not installed.

    uv run python bench/libsql_requests.py [--steps N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from _bench import emit, header, print_table

from durably import Step, create_durably, define_job

ROOT = Path(__file__).resolve().parent.parent
BINARY = ROOT / ".cache/tursodb/node_modules/@tursodatabase/cli-linux-x64-gnu/tursodb"


class Counting(httpx.AsyncBaseTransport):
    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.count = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.count += 1
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def trivial() -> int:
    return 1


@define_job("remote")
async def remote_job(step: Step, payload: dict[str, Any]) -> list[float]:
    counter: Counting = COUNTERS[0]
    before, t0 = counter.count, time.perf_counter()
    for i in range(payload["steps"]):
        await step.run(f"s{i}", trivial)
    return [counter.count - before, time.perf_counter() - t0]


COUNTERS: list[Counting] = []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(binary: Path, db: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [str(binary), str(db), "--sync-server", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            r = httpx.post(f"http://127.0.0.1:{port}/v2/pipeline", json={"requests": []})
            if r.status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.02)
    proc.kill()
    raise RuntimeError("tursodb did not start")


async def raw_insert_us(url: str, n: int) -> float:
    """µs per one-statement INSERT pipeline request (autocommit), the floor."""

    def stmt(sql: str, *args: str) -> dict[str, Any]:
        values = [{"type": "text", "value": a} for a in args]
        return {"type": "execute", "stmt": {"sql": sql, "args": values}}

    async with httpx.AsyncClient(base_url=url) as client:
        create = "CREATE TABLE IF NOT EXISTS t (id TEXT PRIMARY KEY, v TEXT)"
        await client.post("/v2/pipeline", json={"requests": [stmt(create)]})
        times = []
        for i in range(n):
            body = {"requests": [stmt("INSERT INTO t VALUES (?, ?)", f"k{i}", "x")]}
            t0 = time.perf_counter()
            r = await client.post("/v2/pipeline", json=body)
            times.append(time.perf_counter() - t0)
            r.raise_for_status()
    return statistics.median(times) * 1e6


async def main(steps: int, runs: int, run_steps: int, binary: Path) -> None:
    header("Remote libSQL (tursodb --sync-server on loopback): requests")
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        server = start_server(binary, Path(tmp) / "remote.db", port)
        url = f"http://127.0.0.1:{port}"
        try:
            raw = await raw_insert_us(url, 200)
            counter = Counting()
            COUNTERS.append(counter)
            async with create_durably(
                url, jobs={"remote": remote_job}, transport=counter
            ) as durably:
                result = await durably.jobs.remote.trigger_and_wait({"steps": steps})
                requests, seconds = result.output
                per_run = []
                for _ in range(runs):
                    before = counter.count
                    await durably.jobs.remote.trigger_and_wait({"steps": run_steps})
                    per_run.append(counter.count - before)
        finally:
            server.kill()
            server.wait()
    us = seconds / steps * 1e6
    emit(
        "libSQL",
        "requests per checkpoint",
        requests / steps,
        "requests",
        steps=steps,
        note="one batch request per step",
    )
    emit(
        "libSQL",
        "µs per step on loopback",
        us,
        "µs",
        raw=raw,
        raw_unit="µs",
        ratio=us / raw,
        note="raw = one INSERT pipeline request",
    )
    emit(
        "libSQL",
        f"requests per run of {run_steps} steps (trigger_and_wait)",
        statistics.median(per_run),
        "requests",
        note="trigger, wait reads, claim, replay read, steps, completion",
    )
    print_table()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--run-steps", type=int, default=10)
    args = parser.parse_args()
    tursodb = Path(os.environ.get("DURABLY_TURSODB", BINARY))
    if not tursodb.is_file():
        print(f"libsql_requests: skipped, tursodb not installed ({tursodb})", file=sys.stderr)
        sys.exit(0)
    asyncio.run(main(args.steps, args.runs, args.run_steps, tursodb))
