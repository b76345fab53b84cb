"""Do many open SSE streams and a reconnect storm slow triggers or the worker?

    uv run python bench/sse_load.py [--runs 300] [--streams 200] [--full 10] [--storm 50]

Starts three processes: the server (uvicorn + durably.http + the worker, memory
backend unless DURABLY_DATABASE_URL is set), a load generator, and this one,
which triggers runs over HTTP. Each phase triggers ``--runs`` runs of a 3-step
job one after another and reports

- trigger latency (POST /trigger round trip, measured here): median, p95, max;
- worker throughput (runs completed per second, measured in the server from the
  first ``run:leased`` to the last ``run:complete`` of the phase);
- server event-loop lag (max extra delay of a 10 ms timer during the phase).

Phases: "idle" (no other clients); "typical" (``--streams`` open SSE streams, of
which ``--full`` are dashboards on ``/runs/subscribe`` receiving every event and
the rest filtered to another job, plus ``--streams`` clients reconnecting to a
finished run's ``/subscribe`` every 3 s like a browser's EventSource); "worst"
(``--streams`` streams all receiving every event, plus ``--storm`` clients
reconnecting back to back as fast as they can). A measurement, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import socket
import statistics
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

# -- the server --


def serve(port: int) -> None:
    import uvicorn
    from pydantic import BaseModel
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Mount, Route

    from durably import Step, create_durably, define_job
    from durably.http import create_handler

    class In(BaseModel):
        n: int

    @define_job("bench", input=In)
    async def bench(step: Step, payload: In) -> int:
        for i in range(3):
            await step.run(f"s{i}", lambda i=i: i)
            step.progress(i + 1, 3)
        return payload.n

    durably = create_durably(
        os.environ.get("DURABLY_DATABASE_URL") or "memory://",
        jobs={"bench": bench},
        max_concurrent_runs=2,
    )
    stats: dict[str, Any] = {}

    def reset() -> None:
        stats.update(first_leased=None, last_complete=None, completed=0, max_lag=0.0)

    def on_event(event: Any) -> None:
        now = time.perf_counter()
        if event.type == "run:leased" and stats["first_leased"] is None:
            stats["first_leased"] = now
        elif event.type == "run:complete":
            stats["last_complete"] = now
            stats["completed"] += 1

    async def lag_probe() -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.01)
            stats["max_lag"] = max(stats["max_lag"], time.perf_counter() - t - 0.01)

    async def get_stats(request: Request) -> JSONResponse:
        return JSONResponse(stats)

    async def post_reset(request: Request) -> JSONResponse:
        reset()
        return JSONResponse(stats)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        reset()
        durably.on("*", on_event)
        probe = asyncio.create_task(lag_probe())
        await durably.init()
        yield
        probe.cancel()
        await durably.close()

    app = Starlette(
        routes=[
            Route("/bench/stats", get_stats),
            Route("/bench/reset", post_reset, methods=["POST"]),
            Mount("/api", create_handler(durably)),
        ],
        lifespan=lifespan,
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", backlog=2048)


# -- the load generator (raw sockets: cheap on the client side) --


async def _request(port: int, path: str, keep: bool) -> tuple[asyncio.StreamReader, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = "keep-alive" if keep else "close"
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
        f"Connection: {conn}\r\n\r\n".encode()
    )
    await writer.drain()
    return reader, writer


def load(
    port: int,
    full: int,
    filtered: int,
    storm: int,
    interval: float,
    run_id: str,
    counters: Any,
    stop: Any,
) -> None:
    async def stream(path: str) -> None:
        reader, writer = await _request(port, path, keep=True)
        with counters.get_lock():
            counters[0] += 1
        while not stop.is_set():
            try:
                chunk = await asyncio.wait_for(reader.read(65536), 0.5)
            except TimeoutError:
                continue
            if not chunk:
                break
        writer.close()

    async def reconnect() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            reader, writer = await _request(port, f"/api/subscribe?runId={run_id}", keep=False)
            data = await reader.read()  # the replayed terminal frame, then the server closes
            writer.close()
            if b"run:complete" in data:
                with counters.get_lock():
                    counters[1] += 1
            if interval:  # EventSource's retry delay
                await asyncio.sleep(max(0.0, interval - (time.perf_counter() - t)))

    async def main() -> None:
        tasks = [asyncio.create_task(stream("/api/runs/subscribe")) for _ in range(full)]
        tasks += [
            asyncio.create_task(stream("/api/runs/subscribe?jobName=other"))
            for _ in range(filtered)
        ]
        tasks += [asyncio.create_task(reconnect()) for _ in range(storm)]
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())


# -- the measuring client --


async def phase(client: httpx.AsyncClient, runs: int) -> dict[str, float]:
    await client.post("/bench/reset")
    latencies = []
    for i in range(runs):
        t = time.perf_counter()
        r = await client.post("/api/trigger", json={"jobName": "bench", "input": {"n": i}})
        latencies.append(time.perf_counter() - t)
        r.raise_for_status()
    while True:
        stats = (await client.get("/bench/stats")).json()
        if stats["completed"] >= runs:
            break
        await asyncio.sleep(0.05)
    latencies.sort()
    elapsed = stats["last_complete"] - stats["first_leased"]
    return {
        "trigger_median_ms": statistics.median(latencies) * 1000,
        "trigger_p95_ms": latencies[int(len(latencies) * 0.95) - 1] * 1000,
        "trigger_max_ms": latencies[-1] * 1000,
        "runs_per_s": runs / elapsed,
        "loop_lag_max_ms": stats["max_lag"] * 1000,
    }


async def measure(port: int, args: argparse.Namespace) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        for _ in range(200):
            try:
                await client.get("/bench/stats")
                break
            except httpx.TransportError:
                await asyncio.sleep(0.05)
        r = await client.post("/api/trigger", json={"jobName": "bench", "input": {"n": -1}})
        finished = r.json()["runId"]  # for the reconnect storm
        await phase(client, 50)  # warm-up
        results = {"idle": await phase(client, args.runs)}
        scenarios = {
            "typical": (args.full, args.streams - args.full, args.streams, 3.0),
            "worst": (args.streams, 0, args.storm, 0.0),
        }
        reconnects = {}
        for name, (full, filtered, storm, interval) in scenarios.items():
            counters = mp.Array("l", 2)
            stop = mp.Event()
            loader = mp.Process(
                target=load,
                args=(port, full, filtered, storm, interval, finished, counters, stop),
            )
            loader.start()
            while counters[0] < full + filtered:  # noqa: ASYNC110 - another process counts
                await asyncio.sleep(0.05)
            before, t0 = counters[1], time.perf_counter()
            results[name] = await phase(client, args.runs)
            reconnects[name] = (counters[1] - before) / (time.perf_counter() - t0)
            stop.set()
            loader.join(10)
            if loader.is_alive():
                loader.terminate()
            await phase(client, 20)  # settle between scenarios

    print(f"{args.runs} runs of a 3-step job per phase, max_concurrent_runs=2, {sys.platform}")
    print(f"{'':22}" + "".join(f"{name:>12}" for name in results))
    for key in results["idle"]:
        print(f"{key:22}" + "".join(f"{r[key]:12.2f}" for r in results.values()))
    print(
        f"typical: {args.streams} open streams ({args.full} getting every event), "
        f"{args.streams} clients reconnecting every 3 s: {reconnects['typical']:.0f} reconnects/s"
    )
    print(
        f"worst:   {args.streams} streams getting every event, {args.storm} clients "
        f"reconnecting back to back: {reconnects['worst']:.0f} reconnects/s"
    )
    print(json.dumps({"results": results, "reconnects_per_s": reconnects}))


def main() -> None:
    parser = argparse.ArgumentParser(description="SSE load vs trigger latency and throughput")
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--full", type=int, default=10)
    parser.add_argument("--storm", type=int, default=50)
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = mp.Process(target=serve, args=(port,))
    server.start()
    try:
        asyncio.run(measure(port, args))
    finally:
        server.terminate()
        server.join(10)


if __name__ == "__main__":
    main()
