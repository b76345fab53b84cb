"""Do many open SSE streams and a reconnect storm slow triggers or the worker?

    uv run python bench/sse_load.py [--seconds 4] [--repeat 3] [--streams 200]
                                    [--full 10] [--storm 50] [--memory]

Starts three processes: the server (uvicorn + durably.http + the worker, on a
fresh SQLite file — the embedded default — or the memory backend with
``--memory``, or ``DURABLY_DATABASE_URL`` if set), a load generator, and this
one, which triggers runs of a 3-step job over HTTP one after another for
``--seconds`` per phase. Per phase:

- worker throughput: runs completed per second, measured in the server from the
  first ``run:leased`` to the last ``run:complete`` of the phase (the runs are
  triggered one after another, so this is also the trigger rate it sustains);
- trigger latency (POST /trigger round trip, measured here): median, p95, max;
- server event-loop lag: the largest extra delay of a 10 ms timer;
- CPU, in % of one core, of the server, the load generator, this process and
  everything else on the machine: the processes share the machine's cores, so
  on a small machine the load generator takes CPU the server would have used.

Phases: "idle" (no other clients); "typical" (``--streams`` open SSE streams, of
which ``--full`` are dashboards on ``/runs/subscribe`` receiving every event and
the rest filtered to another job, plus ``--streams`` clients reconnecting to a
finished run's ``/subscribe`` every 3 s like a browser's EventSource — all at
the same moments, as tabs do when the runs they show finish together); "worst"
(``--streams`` streams all receiving every event, plus ``--storm`` clients
reconnecting back to back as fast as they can). A phase lasts longer than the
3 s reconnect period, so every "typical" phase has a reconnect burst. The phases
run ``--repeat`` times, interleaved, and each figure is the median; finished
runs are deleted between phases, so each starts from the same few rows. A
measurement, not a test: prints a table, then one JSON line per figure (for
``bench/run_all.py``).

Then the stalled-clients measurement (``--stalled 10 --stalled-steps 10000``;
``--stalled 0`` skips it, ``--only-stalled`` runs nothing else): the server's
memory while a run of ``--stalled-steps`` steps (a checkpoint and a progress
each) is watched by ``--stalled`` clients that never read — half on
``/runs/subscribe``, half on the run's ``/subscribe``, each with a 4 KiB
receive buffer. Its RSS (and peak RSS) before the run, after it, and after the
clients hang up, against a control server running the same run with no
clients; and how many of the stalled streams the server still had open when
the run ended (a bounded server has cut them off).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
from _bench import emit, header

# -- the server --


def serve(port: int, url: str) -> None:
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

    go = asyncio.Event()  # the stalled-clients run waits for its clients

    @define_job("long", input=In)
    async def long(step: Step, payload: In) -> int:
        await go.wait()
        for i in range(payload.n):
            await step.run(f"s{i}", lambda i=i: i)
            step.progress(i + 1, payload.n)
        return payload.n

    @define_job("bench", input=In)
    async def bench(step: Step, payload: In) -> int:
        for i in range(3):
            await step.run(f"s{i}", lambda i=i: i)
            step.progress(i + 1, 3)
        return payload.n

    durably = create_durably(url, jobs={"bench": bench, "long": long}, max_concurrent_runs=2)
    handler = create_handler(durably)
    stats: dict[str, Any] = {}

    def reset() -> None:
        stats.update(
            first_leased=None,
            last_complete=None,
            completed=0,
            max_lag=0.0,
            cpu0=time.process_time(),
            wall0=time.perf_counter(),
        )

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
        cpu = (time.process_time() - stats["cpu0"]) / (time.perf_counter() - stats["wall0"])
        streams = handler.state.durably_hub.streams
        return JSONResponse({**stats, "cpu": cpu, "streams": streams, **memory()})

    async def post_go(request: Request) -> JSONResponse:
        go.set()
        return JSONResponse({})

    async def post_reset(request: Request) -> JSONResponse:
        reset()
        return JSONResponse(stats)

    async def post_purge(request: Request) -> JSONResponse:
        # every phase starts from the same few rows: the memory backend's claim
        # scans all runs, so without this each phase would be slower than the last
        keep = request.query_params.get("keep")
        done = [r for r in await durably.get_runs(status="completed") if r.id != keep]
        for run in done:
            await durably.delete_run(run.id)
        return JSONResponse({"deleted": len(done)})

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
            Route("/bench/purge", post_purge, methods=["POST"]),
            Route("/bench/go", post_go, methods=["POST"]),
            Mount("/api", handler),
        ],
        lifespan=lifespan,
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", backlog=2048)


def memory() -> dict[str, float]:
    """This process's resident set and its peak, in MB (NaN without /proc)."""
    out = {"rss_mb": float("nan"), "peak_rss_mb": float("nan")}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key = "rss_mb" if line.startswith("VmRSS") else "peak_rss_mb"
                    out[key] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return out


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


#: The load generator's shared counters: streams open, reconnects answered, CPU seconds.
OPEN, RECONNECTS, CPU = 0, 1, 2


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
            counters[OPEN] += 1
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
                    counters[RECONNECTS] += 1
            if interval:  # EventSource's retry delay
                await asyncio.sleep(max(0.0, interval - (time.perf_counter() - t)))

    async def cpu_meter() -> None:
        while not stop.is_set():
            counters[CPU] = time.process_time()
            await asyncio.sleep(0.05)

    async def main() -> None:
        tasks = [asyncio.create_task(cpu_meter())]
        tasks += [asyncio.create_task(stream("/api/runs/subscribe")) for _ in range(full)]
        tasks += [
            asyncio.create_task(stream("/api/runs/subscribe?jobName=other"))
            for _ in range(filtered)
        ]
        tasks += [asyncio.create_task(reconnect()) for _ in range(storm)]
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())


# -- the measuring client --


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (all cores; NaN without /proc)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


async def phase(client: httpx.AsyncClient, seconds: float) -> dict[str, float]:
    """Trigger runs one after another for ``seconds``; wait for them to finish."""
    await client.post("/bench/reset")
    busy0, own0, wall0 = machine_busy(), time.process_time(), time.perf_counter()
    latencies = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        r = await client.post(
            "/api/trigger", json={"jobName": "bench", "input": {"n": len(latencies)}}
        )
        latencies.append(time.perf_counter() - t)
        r.raise_for_status()
    cpu = (await client.get("/bench/stats")).json()["cpu"]  # while triggering
    wall = time.perf_counter() - wall0
    busy = (machine_busy() - busy0) / wall
    own = (time.process_time() - own0) / wall
    while True:
        stats = (await client.get("/bench/stats")).json()
        if stats["completed"] >= len(latencies):
            break
        await asyncio.sleep(0.05)
    latencies.sort()
    elapsed = stats["last_complete"] - stats["first_leased"]
    return {
        "runs_per_s": len(latencies) / elapsed,
        "trigger_median_ms": statistics.median(latencies) * 1000,
        "trigger_p95_ms": latencies[int(len(latencies) * 0.95) - 1] * 1000,
        "trigger_max_ms": latencies[-1] * 1000,
        "loop_lag_max_ms": stats["max_lag"] * 1000,
        "server_cpu_pct": cpu * 100,
        "client_cpu_pct": own * 100,
        "machine_busy_pct": busy * 100,
    }


async def scenario(
    client: httpx.AsyncClient,
    port: int,
    finished: str,
    load_args: tuple[Any, ...] | None,
    seconds: float,
) -> dict[str, float]:
    """One phase, with the load generator running ``load_args`` (None: no load)."""
    if load_args is None:
        result = await phase(client, seconds)
        await client.post("/bench/purge", params={"keep": finished})
        return {**result, "loader_cpu_pct": 0.0, "reconnects_per_s": 0.0}
    full, filtered = load_args[0], load_args[1]
    counters = mp.Array("d", 3)
    stop = mp.Event()
    loader = mp.Process(target=load, args=(port, *load_args, finished, counters, stop))
    loader.start()
    while counters[OPEN] < full + filtered:  # noqa: ASYNC110 - another process counts
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # the connection burst is over
    before, cpu_before, t0 = counters[RECONNECTS], counters[CPU], time.perf_counter()
    result = await phase(client, seconds)
    wall = time.perf_counter() - t0
    result.update(
        loader_cpu_pct=(counters[CPU] - cpu_before) / wall * 100,
        reconnects_per_s=(counters[RECONNECTS] - before) / wall,
    )
    stop.set()
    loader.join(10)
    if loader.is_alive():
        loader.terminate()
    await phase(client, 0.5)  # settle before the next phase
    await client.post("/bench/purge", params={"keep": finished})
    return result


async def measure(port: int, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Each phase ``--repeat`` times, interleaved (idle, typical, worst, idle, ...), so
    that other work on the machine hits them alike; the median of each figure."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
        for _ in range(400):
            try:
                await client.get("/bench/stats")
                break
            except httpx.TransportError:
                await asyncio.sleep(0.05)
        r = await client.post("/api/trigger", json={"jobName": "bench", "input": {"n": -1}})
        finished = r.json()["runId"]  # for the reconnect storm
        await phase(client, 1.0)  # warm-up
        await client.post("/bench/purge", params={"keep": finished})
        scenarios: dict[str, tuple[Any, ...] | None] = {
            "idle": None,
            "typical": (args.full, args.streams - args.full, args.streams, 3.0),
            "worst": (args.streams, 0, args.storm, 0.0),
        }
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in scenarios}
        for _ in range(args.repeat):
            for name, load_args in scenarios.items():
                runs[name].append(await scenario(client, port, finished, load_args, args.seconds))
    return {
        name: {key: statistics.median(r[key] for r in results) for key in results[0]}
        for name, results in runs.items()
    }


# -- stalled clients --


async def until(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll the server's state (it is in another process: nothing to await)."""
    while not await check():  # noqa: ASYNC110 - the state is in another process
        await asyncio.sleep(0.05)


def stalled_socket(port: int, path: str) -> socket.socket:
    """A client that sends its request and never reads (a 4 KiB receive buffer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
    sock.sendall(request.encode())
    return sock


async def stalled_round(port: int, clients: int, steps: int) -> dict[str, float]:
    """One run of ``steps`` steps watched by ``clients`` clients that never read."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:

        async def stats() -> dict[str, Any]:
            return dict((await client.get("/bench/stats")).json())

        async def streams_are(ok: Callable[[int], bool]) -> bool:
            return ok((await stats())["streams"])

        for _ in range(400):
            try:
                await stats()
                break
            except httpx.TransportError:
                await asyncio.sleep(0.05)
        before = await stats()
        r = await client.post("/api/trigger", json={"jobName": "long", "input": {"n": steps}})
        run_id = r.json()["runId"]
        paths = ["/api/runs/subscribe", f"/api/subscribe?runId={run_id}"]
        socks = [stalled_socket(port, paths[i % 2]) for i in range(clients)]

        async def completed() -> bool:
            r = await client.get("/api/run", params={"runId": run_id})
            return bool(r.json()["status"] == "completed")

        await until(lambda: streams_are(lambda n: n >= clients))
        t0 = time.perf_counter()
        await client.post("/bench/go")
        await until(completed)
        elapsed = time.perf_counter() - t0
        after = await stats()
        for sock in socks:
            sock.close()
        await until(lambda: streams_are(lambda n: n == 0))
        await asyncio.sleep(0.5)  # the server has let go of the closed connections
        closed = await stats()
    return {
        "rss_before_mb": before["rss_mb"],
        "rss_after_mb": after["rss_mb"],
        "rss_closed_mb": closed["rss_mb"],
        "peak_rss_mb": closed["peak_rss_mb"],
        "open_at_end": after["streams"],
        "steps_per_s": steps / elapsed,
    }


def stalled(args: argparse.Namespace, url_for: Any) -> None:
    """The control (no clients) and the stalled clients, each on a fresh server."""
    results = {}
    for name, clients in [("no clients", 0), (f"{args.stalled} stalled clients", args.stalled)]:
        tmp = tempfile.mkdtemp(prefix="durably-sse-stalled-")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = mp.Process(target=serve, args=(port, url_for(tmp)))
        server.start()
        try:
            results[name] = asyncio.run(stalled_round(port, clients, args.stalled_steps))
        finally:
            server.terminate()
            server.join(10)
            shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"stalled clients: one run of {args.stalled_steps} steps (a checkpoint and a progress "
        f"each), watched by clients that never read (half /runs/subscribe, half /subscribe)"
    )
    print(
        f"{'':24}{'RSS before':>12}{'after run':>12}{'hung up':>12}{'peak':>10}"
        f"{'open at end':>13}{'steps/s':>9}"
    )
    for name, r in results.items():
        print(
            f"{name:24}{r['rss_before_mb']:10.0f}MB{r['rss_after_mb']:10.0f}MB"
            f"{r['rss_closed_mb']:10.0f}MB{r['peak_rss_mb']:8.0f}MB"
            f"{r['open_at_end']:13.0f}{r['steps_per_s']:9.0f}"
        )
    control, load = results["no clients"], results[f"{args.stalled} stalled clients"]
    growth = load["peak_rss_mb"] - load["rss_before_mb"]
    control_growth = control["peak_rss_mb"] - control["rss_before_mb"]
    emit(
        "SSE",
        f"{args.stalled} stalled clients, {args.stalled_steps} steps: peak RSS growth",
        growth,
        "MB",
        control=control_growth,
        note=(
            f"RSS {load['rss_before_mb']:.0f} → {load['rss_after_mb']:.0f} MB "
            f"(peak {load['peak_rss_mb']:.0f}, {load['rss_closed_mb']:.0f} after hang-up); "
            f"no clients: +{control_growth:.0f} MB; "
            f"{load['open_at_end']:.0f} of {args.stalled} streams still open at the end"
        ),
    )


LABELS = {
    "runs_per_s": ("worker runs/s", "runs/s"),
    "trigger_median_ms": ("trigger median", "ms"),
    "trigger_p95_ms": ("trigger p95", "ms"),
    "trigger_max_ms": ("trigger max", "ms"),
    "loop_lag_max_ms": ("max loop lag", "ms"),
    "server_cpu_pct": ("server CPU", "% of a core"),
    "loader_cpu_pct": ("load generator CPU", "% of a core"),
    "client_cpu_pct": ("triggering client CPU", "% of a core"),
    "other_cpu_pct": ("other processes' CPU", "% of a core"),
    "reconnects_per_s": ("reconnects answered", "/s"),
}


def report(results: dict[str, dict[str, float]], backend: str, args: argparse.Namespace) -> None:
    print(
        f"{backend}: runs of a 3-step job for {args.seconds:g} s per phase, median of "
        f"{args.repeat} rounds, max_concurrent_runs=2, {os.cpu_count()} CPUs, {sys.platform}"
    )
    print(
        f"typical: {args.streams} open streams ({args.full} getting every event), "
        f"{args.streams} clients reconnecting every 3 s"
    )
    print(
        f"worst:   {args.streams} streams getting every event, {args.storm} clients "
        "reconnecting back to back"
    )
    for r in results.values():
        ours = r["server_cpu_pct"] + r["loader_cpu_pct"] + r["client_cpu_pct"]
        r["other_cpu_pct"] = max(0.0, r.pop("machine_busy_pct") - ours)
    print(f"{'':30}" + "".join(f"{name:>10}" for name in results))
    for key, (label, unit) in LABELS.items():
        row = "".join(f"{r[key]:10.1f}" for r in results.values())
        print(f"{label + ' (' + unit + ')':30}{row}")
    idle = results["idle"]["runs_per_s"]
    for name, r in results.items():
        emit(
            "SSE",
            f"{backend}, {name}: worker runs/s",
            r["runs_per_s"],
            "runs/s",
            of_idle=r["runs_per_s"] / idle,
            note=f"{r['runs_per_s'] / idle:.2f}× idle"
            + (f", {r['reconnects_per_s']:.0f} reconnects/s" if r["reconnects_per_s"] else ""),
        )
        emit(
            "SSE",
            f"{backend}, {name}: trigger median",
            r["trigger_median_ms"],
            "ms",
            note=f"p95 {r['trigger_p95_ms']:.1f} ms, max {r['trigger_max_ms']:.1f} ms",
        )
        emit(
            "SSE",
            f"{backend}, {name}: max loop lag",
            r["loop_lag_max_ms"],
            "ms",
            note=(
                f"CPU in % of a core: server {r['server_cpu_pct']:.0f}, load generator "
                f"{r['loader_cpu_pct']:.0f}, other processes {r['other_cpu_pct']:.0f}"
            ),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description="SSE load vs trigger latency and throughput")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each phase")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of the three phases")
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--full", type=int, default=10)
    parser.add_argument("--storm", type=int, default=50)
    parser.add_argument("--memory", action="store_true", help="memory backend, not SQLite")
    parser.add_argument("--stalled", type=int, default=10, help="clients that never read")
    parser.add_argument("--stalled-steps", type=int, default=10_000)
    parser.add_argument("--only-stalled", action="store_true", help="only that measurement")
    args = parser.parse_args()
    header("SSE load")

    def url_for(tmp: str) -> str:
        return os.environ.get("DURABLY_DATABASE_URL") or (
            "memory://" if args.memory else f"sqlite:///{tmp}/sse.db"
        )

    if not args.only_stalled:
        throughput(args, url_for)
    if args.stalled:
        stalled(args, url_for)


def throughput(args: argparse.Namespace, url_for: Any) -> None:
    tmp = tempfile.mkdtemp(prefix="durably-sse-")
    url = url_for(tmp)
    backend = url.split(":", 1)[0]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = mp.Process(target=serve, args=(port, url))
    server.start()
    try:
        results = asyncio.run(measure(port, args))
    finally:
        server.terminate()
        server.join(10)
        shutil.rmtree(tmp, ignore_errors=True)
    report(results, backend, args)


if __name__ == "__main__":
    main()
