"""A server's memory with 10,000 queued runs and 200 SSE clients: is it bounded?

    uv run python bench/memory_bound.py [--runs 10000] [--clients 200] [--full 10]

One server process (uvicorn + durably.http + the worker, ``max_concurrent_runs=2``,
on a fresh SQLite file: ``bench/sse_load.py``'s server, its 3-step job with a
progress report per step). ``--clients`` SSE clients connect to
``/runs/subscribe`` and read everything they are sent: ``--full`` of them receive
every event (dashboards), the others are filtered to another job. Then this
process enqueues ``--runs`` runs in one ``batch_trigger`` on the same file and the
worker works through them. The server's resident set (VmRSS) is sampled every
0.5 s; printed: idle, with the clients connected, once the runs are queued, its
peak (VmHWM) while they run, when the last one completed, and after the clients
hung up. Nothing the server holds grows with the number of queued runs (it claims
one at a time); what grows with the clients is their buffers.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import shutil
import socket
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from _bench import emit, header, sqlite_url
from pydantic import BaseModel
from sse_load import _request, serve

from durably import Step, create_durably, define_job


class In(BaseModel):
    n: int


@define_job("bench", input=In)
async def bench(step: Step, payload: In) -> int:  # the server's job; here only triggered
    return payload.n


async def reader(
    port: int, path: str, stop: asyncio.Event, opened: list[int], all_open: asyncio.Event
) -> None:
    """One SSE client reading everything until ``stop``. ``opened[0]``: how many
    clients are still to connect; the last one sets ``all_open``."""
    reader, writer = await _request(port, path, keep=True)
    opened[0] -= 1
    if opened[0] == 0:
        all_open.set()
    while not stop.is_set():
        try:
            chunk = await asyncio.wait_for(reader.read(65536), 0.5)
        except TimeoutError:
            continue
        if not chunk:
            break
    writer.close()


async def stats(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/bench/stats")
    data: dict[str, Any] = response.json()
    return data


async def measure(port: int, url: str, runs: int, clients: int, full: int) -> dict[str, float]:
    out: dict[str, float] = {}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        while True:
            try:
                s = await stats(client)
                break
            except httpx.TransportError:
                await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # settle: the worker's first polls, the first requests
        out["idle_mb"] = (await stats(client))["rss_mb"]
        print(f"server up, RSS {out['idle_mb']:.0f} MB; connecting {clients} clients", flush=True)
        stop = asyncio.Event()
        opened = [clients]  # clients still to connect
        all_open = asyncio.Event()
        paths = ["/api/runs/subscribe"] * full
        paths += ["/api/runs/subscribe?jobName=other"] * (clients - full)
        tasks = [asyncio.create_task(reader(port, p, stop, opened, all_open)) for p in paths]
        await all_open.wait()
        await asyncio.sleep(1.0)  # the connection burst is over
        out["clients_mb"] = (await stats(client))["rss_mb"]
        await client.post("/bench/reset")
        async with create_durably(url, jobs={"bench": bench}) as durably:
            t0 = time.perf_counter()
            await durably.jobs.bench.batch_trigger([{"n": i} for i in range(runs)])
            out["enqueue_s"] = time.perf_counter() - t0
        out["queued_mb"] = (await stats(client))["rss_mb"]
        print(f"{runs} runs queued in {out['enqueue_s']:.1f} s", flush=True)
        samples = []
        t0 = time.perf_counter()
        db = sqlite3.connect(url.removeprefix("sqlite:///"))
        while True:
            s = await stats(client)
            samples.append(s["rss_mb"])
            counts = dict(db.execute("SELECT status, COUNT(*) FROM durably_runs GROUP BY status"))
            if counts.get("pending", 0) + counts.get("leased", 0) == 0:
                break
            print(f"  runs {counts}, RSS {s['rss_mb']:.0f} MB", flush=True)
            await asyncio.sleep(0.5)
        out["run_s"] = time.perf_counter() - t0
        db.close()
        out["done_mb"] = s["rss_mb"]
        out["peak_mb"] = s["peak_rss_mb"]
        out["max_sampled_mb"] = max(samples)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(1.0)
        out["hung_up_mb"] = (await stats(client))["rss_mb"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--full", type=int, default=10, help="clients receiving every event")
    args = parser.parse_args()
    header(f"memory: {args.runs} queued runs, {args.clients} SSE clients ({args.full} full)")
    tmp = tempfile.mkdtemp(prefix="durably-memory-")
    url = sqlite_url(Path(tmp) / "memory.db")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = mp.Process(target=serve, args=(port, url))
    server.start()
    try:
        r = asyncio.run(measure(port, url, args.runs, args.clients, args.full))
    finally:
        server.terminate()
        server.join(10)
        shutil.rmtree(tmp, ignore_errors=True)
    emit(
        "memory",
        f"server peak RSS, {args.runs} queued runs, {args.clients} SSE clients",
        r["peak_mb"],
        "MB",
        idle_mb=r["idle_mb"],
        clients_mb=r["clients_mb"],
        queued_mb=r["queued_mb"],
        done_mb=r["done_mb"],
        hung_up_mb=r["hung_up_mb"],
        runs_per_s=args.runs / r["run_s"],
        note=(
            f"RSS idle {r['idle_mb']:.0f} MB, {args.clients} clients connected "
            f"{r['clients_mb']:.0f}, {args.runs} runs queued {r['queued_mb']:.0f}, peak "
            f"{r['peak_mb']:.0f} while they ran ({args.runs / r['run_s']:.0f} runs/s), "
            f"{r['done_mb']:.0f} at the end, {r['hung_up_mb']:.0f} after the clients hung up"
        ),
    )


if __name__ == "__main__":
    main()
