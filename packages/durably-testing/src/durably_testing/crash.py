"""A crash harness with real processes: SIGKILL workers at random moments, check
that no checkpointed step ever runs again and that no run is lost.

Usable on any database URL a durably backend opens and several processes can
share (a SQLite file, a libSQL server, your own adapter's)::

    python -m durably_testing.crash --url sqlite:////tmp/crash.db --kills 200 --seed 1

or from Python / a test::

    from durably_testing.crash import run_crash_harness

    report = run_crash_harness("sqlite:////tmp/crash.db", kills=10, seed=1)
    print(report.format())
    assert report.ok, report.problems

What it does
------------

The harness process migrates the database and keeps a supply of runs of one job
(``durably-crash-harness``) triggered. It starts ``workers`` worker processes
(``python -m durably_testing.crash --worker N …``), each a ``Durably`` with
short leases (``lease_duration`` 1 s, renewal every 0.25 s) and short polling.
Then, ``kills`` times: it waits a random delay, SIGKILLs a random worker that is
up, reaps it and starts a new one. The delays and choices come from a
``random.Random(seed)``; the processes' own timing is not deterministic, so a
seed reproduces the schedule, not the exact interleaving. After the last kill it
stops triggering, waits until every run is finished, stops the workers (SIGTERM)
and checks.

Each run has ``steps`` steps; step ``i`` of trial ``k`` returns a value that is a
fixed function of ``(seed, k, i)`` and the run's output is ``{"total": …,
"values": […]}`` of those values, so the expected output of every run is known.

What is checked, and how it is known
------------------------------------

The checks never trust the database under test. The job functions append records
to per-process JSONL files outside it (opened with ``O_APPEND``; one ``write`` per
record, which a SIGKILL does not tear; an unparsable line is skipped and can only
hide a problem, never invent one). Times are ``time.monotonic_ns()``, which on one
host is a single clock for all processes.

- ``start``: the step function writes it first thing, with a token naming this
  execution (process and counter). The step returns ``{"value": v, "x": token}``,
  so the checkpointed output says *which* execution was checkpointed.
- ``done``: the job writes it after ``await step.run(...)`` returns, with the
  token it got back. ``step.run`` returns only once the checkpoint is committed
  (or when it replays one), so a ``done`` record proves the checkpoint existed at
  that moment. A run that completes passes through every ``step.run`` in its last
  execution, so every step of a completed run has at least one ``done`` record,
  whatever crashed before.

Why not read the steps table at the end? By default (``preserve_steps=False``)
a completed run's steps are deleted, and even with ``preserve_steps=True`` a step
row says that a checkpoint exists, not *when* it was committed relative to other
executions. The harness needs that instant: a step that starts again *before* its
checkpoint is committed is an allowed in-flight re-execution; one that starts
*after* is a bug. The workers therefore run with the default
``preserve_steps=False`` (which also exercises the delete-on-complete path), and
the checkpoint instant of a step is bounded from above by the earliest of:

- the first ``done`` record of that step (the commit happened before it), and
- the death (reaping, by the harness) of the process whose execution token the
  checkpoint holds: that process made the commit, so it happened before it died.

This bound is never earlier than the commit, so:

``checkpointed steps re-executed`` (must be 0)
    ``start`` records of a step later than its checkpoint bound. Each one is a step
    that began again although its checkpoint was already committed.
``in-flight re-executions`` (allowed, counted)
    further ``start`` records of a step at or before its checkpoint bound: the step
    was running when its worker was killed (or its lease was lost), so it ran again.
``checkpoints changed`` (must be 0)
    steps whose ``done`` records carry different tokens: a completed step's output
    changed.
``runs lost`` (must be 0)
    triggered runs that are not ``completed`` at the end (missing, failed,
    cancelled, or still unfinished after ``settle_timeout``).
``wrong outputs`` (must be 0)
    completed runs whose output differs from the expected one.

A worker that exits by itself (not killed by the harness) is reported as a
problem too. ``trials`` is the number of runs triggered and checked.

Schedules (``--schedules``)
---------------------------

With ``schedules=True`` the workers also run a schedule every second
(``durably-crash-harness-tick``, ``catch_up="all"``), so kills land around fires
too. Each worker records every ``schedule:fire`` it makes (after its transaction
committed). Checked, once the workers have caught up:

``slots fired twice`` (must be 0)
    slots with more than one ``fire`` record, or one answered by an existing run
    (``idempotent``): two fires of one slot.
``slots missed`` (must be 0)
    slots from the schedule's first to its last fired slot without a run in the
    database: a fire lost by a crash, or skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from durably import (
    JobDefinition,
    RunStatus,
    ScheduleFireEvent,
    Step,
    ValidationError,
    create_durably,
    define_job,
)

__all__ = [
    "JOB_NAME",
    "CrashConfig",
    "CrashReport",
    "crash_harness",
    "expected_output",
    "main",
    "run_crash_harness",
    "step_value",
]

JOB_NAME = "durably-crash-harness"
"""The job the workers run."""

TICK_JOB = "durably-crash-harness-tick"
"""The job of the schedule the workers fire with ``schedules=True`` (a slot a second)."""

#: Environment variable that carries backend options (JSON) to the workers, so
#: secrets such as an auth token stay off the command line.
OPTIONS_ENV = "DURABLY_CRASH_BACKEND_OPTIONS"

_ACTIVE = (RunStatus.PENDING.value, RunStatus.LEASED.value)


@dataclass(frozen=True)
class CrashConfig:
    """How the harness runs. Only ``url`` is required."""

    url: str
    #: SIGKILLs to deliver.
    kills: int = 200
    #: Seed of the kill schedule (delays, victims) and of the step values.
    seed: int = 1
    #: Worker processes alive at any moment.
    workers: int = 3
    #: Runs each worker executes at once (``max_concurrent_runs``).
    slots: int = 2
    #: Steps per run.
    steps: int = 6
    #: Each step sleeps a random time up to this many seconds.
    step_time: float = 0.02
    #: Random delay before each kill is drawn from this range (seconds).
    kill_interval: tuple[float, float] = (0.02, 0.3)
    lease_duration: float = 1.0
    lease_renew_interval: float = 0.25
    polling_interval: float = 0.05
    #: After the last kill, how long to wait for every run to finish.
    settle_timeout: float = 60.0
    #: Keep the records here (default: a temporary directory, removed afterwards
    #: unless the checks fail).
    records_dir: str | None = None
    #: Options for the storage backend (``create_durably(url, **backend_options)``).
    backend_options: Mapping[str, Any] = field(default_factory=dict)
    #: Also fire a schedule every second from the workers, and check its slots.
    schedules: bool = False


@dataclass(frozen=True)
class CrashReport:
    """The figures of one harness run. ``ok`` when every must-be-zero figure is 0."""

    url: str
    seed: int
    trials: int
    kills: int
    checkpointed_steps: int
    checkpointed_steps_reexecuted: int
    in_flight_reexecutions: int
    checkpoints_changed: int
    runs_lost: int
    wrong_outputs: int
    elapsed: float
    problems: tuple[str, ...] = ()
    records_dir: str | None = None
    schedule_slots: int = 0
    slots_fired_twice: int = 0
    slots_missed: int = 0

    @property
    def ok(self) -> bool:
        """No checkpointed step ran again, none changed, no run was lost, every output
        was right, and nothing else went wrong."""
        return not self.problems and not (
            self.checkpointed_steps_reexecuted
            or self.checkpoints_changed
            or self.runs_lost
            or self.wrong_outputs
            or self.slots_fired_twice
            or self.slots_missed
        )

    def format(self) -> str:
        """The report as the command line prints it."""
        lines = [
            f"durably crash harness: {self.url} (seed {self.seed})",
            f"  trials:                         {self.trials}",
            f"  kills:                          {self.kills}",
            f"  checkpointed steps:             {self.checkpointed_steps}",
            f"  checkpointed steps re-executed: {self.checkpointed_steps_reexecuted}",
            f"  in-flight re-executions:        {self.in_flight_reexecutions}",
            f"  checkpoints changed:            {self.checkpoints_changed}",
            f"  runs lost:                      {self.runs_lost}",
            f"  wrong outputs:                  {self.wrong_outputs}",
            f"  elapsed:                        {self.elapsed:.1f} s",
        ]
        if self.schedule_slots:
            lines[-1:-1] = [
                f"  schedule slots:                 {self.schedule_slots}",
                f"  slots fired twice:              {self.slots_fired_twice}",
                f"  slots missed:                   {self.slots_missed}",
            ]
        if self.problems:
            lines.append("  problems:")
            lines += [f"    - {p}" for p in self.problems[:50]]
            if len(self.problems) > 50:
                lines.append(f"    … and {len(self.problems) - 50} more")
        if self.records_dir is not None:
            lines.append(f"  records kept in {self.records_dir}")
        lines.append("  result: " + ("OK" if self.ok else "FAILED"))
        return "\n".join(lines)


# -- the job (runs in the worker processes) --


def step_value(seed: int, trial: int, index: int) -> int:
    """The value step ``index`` of trial ``trial`` returns: a fixed function of its input."""
    return (seed * 1_000_003 + trial * 7_919 + index * 104_729) % 1_000_003


def expected_output(seed: int, trial: int, steps: int) -> dict[str, Any]:
    """The output an uninterrupted run of trial ``trial`` produces."""
    values = [step_value(seed, trial, i) for i in range(steps)]
    return {"total": sum(values), "values": values}


class _Recorder:
    """Appends JSON lines to this process's record file: one ``write`` per record."""

    def __init__(self, path: Path, process: int, seed: int, step_time: float) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.process = process
        self.step_time = step_time
        self._rng = random.Random(seed * 7_919 + process)
        self._counter = itertools.count(1)
        self._lock = threading.Lock()

    def token(self) -> str:
        with self._lock:
            return f"{self.process}:{next(self._counter)}"

    def pause(self) -> float:
        with self._lock:
            return self._rng.uniform(0.0, self.step_time)

    def write(self, event: str, run_id: str, index: int, token: str) -> None:
        line = json.dumps(
            {"e": event, "run": run_id, "i": index, "x": token, "t": time.monotonic_ns()},
            separators=(",", ":"),
        )
        os.write(self.fd, (line + "\n").encode())

    def fire(self, event: ScheduleFireEvent) -> None:
        line = json.dumps(
            {
                "e": "fire",
                "slot": event.slot.isoformat(),
                "run": event.run_id,
                "how": event.disposition,
                "x": f"{self.process}",
                "t": time.monotonic_ns(),
            },
            separators=(",", ":"),
        )
        os.write(self.fd, (line + "\n").encode())

    def close(self) -> None:
        os.close(self.fd)


def _crash_job(recorder: _Recorder | None) -> JobDefinition[Any, Any]:
    """The harness's job, its steps writing to ``recorder``. The harness process,
    which only triggers runs, passes ``None``: a step run there is an error."""

    def the_recorder() -> _Recorder:
        if recorder is None:
            raise ValidationError(
                f"The job {JOB_NAME!r} runs only in the crash harness's worker processes "
                "(python -m durably_testing.crash --worker …); do not start a worker "
                "for it in the harness process"
            )
        return recorder

    async def async_step(run_id: str, seed: int, trial: int, index: int) -> dict[str, Any]:
        rec = the_recorder()
        token = rec.token()
        rec.write("start", run_id, index, token)
        await asyncio.sleep(rec.pause())
        return {"value": step_value(seed, trial, index), "x": token}

    def sync_step(run_id: str, seed: int, trial: int, index: int) -> dict[str, Any]:
        # A sync step runs in a worker thread: the kill may land there too.
        rec = the_recorder()
        token = rec.token()
        rec.write("start", run_id, index, token)
        time.sleep(rec.pause())
        return {"value": step_value(seed, trial, index), "x": token}

    async def run(step: Step, payload: dict[str, Any]) -> dict[str, Any]:
        rec = the_recorder()
        seed, trial, steps = int(payload["seed"]), int(payload["trial"]), int(payload["steps"])
        values: list[int] = []
        for i in range(steps):
            args = (step.run_id, seed, trial, i)
            if i % 3 == 2:
                out = await step.run(f"step-{i}", sync_step, *args)
            else:
                out = await step.run(f"step-{i}", async_step, *args)
            rec.write("done", step.run_id, i, str(out["x"]))
            values.append(int(out["value"]))
        return {"total": sum(values), "values": values}

    return define_job(name=JOB_NAME, run=run)


async def _tick(step: Step, payload: Any) -> Any:
    return payload


def _jobs(config: CrashConfig, recorder: _Recorder | None) -> dict[str, JobDefinition[Any, Any]]:
    jobs = {"crash": _crash_job(recorder)}
    if config.schedules:
        jobs["tick"] = define_job(name=TICK_JOB, run=_tick)
    return jobs


def _durably_options(config: CrashConfig) -> dict[str, Any]:
    return {
        "polling_interval": config.polling_interval,
        "lease_duration": config.lease_duration,
        "lease_renew_interval": config.lease_renew_interval,
        "max_concurrent_runs": config.slots,
        **config.backend_options,
    }


async def _worker_main(config: CrashConfig, index: int, records: Path) -> None:
    recorder = _Recorder(records / f"p{index}.jsonl", index, config.seed, config.step_time)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    durably = create_durably(config.url, jobs=_jobs(config, recorder), **_durably_options(config))
    durably.on("schedule:fire", recorder.fire)
    try:
        await durably.init()
        (records / f"p{index}.ready").touch()
        await stop.wait()
        await durably.stop(timeout=5.0)
    finally:
        await durably.close()
        recorder.close()


# -- the harness --


@dataclass
class _Worker:
    index: int
    process: subprocess.Popen[bytes]
    ready_file: Path

    def is_ready(self) -> bool:
        return self.ready_file.exists()


@dataclass
class _Trial:
    number: int
    run_id: str


@dataclass
class _Harness:
    config: CrashConfig
    records: Path
    rng: random.Random
    workers: dict[int, _Worker] = field(default_factory=dict)
    deaths: dict[int, int] = field(default_factory=dict)  # process index -> monotonic_ns
    problems: list[str] = field(default_factory=list)
    kills: int = 0
    next_index: int = 0

    def spawn(self) -> None:
        index = self.next_index
        self.next_index += 1
        config = self.config
        args = [
            sys.executable,
            "-m",
            "durably_testing.crash",
            "--worker",
            str(index),
            "--records-dir",
            str(self.records),
            *_config_args(config),
        ]
        env = dict(os.environ)
        env[OPTIONS_ENV] = json.dumps(dict(config.backend_options))
        with open(self.records / f"p{index}.stderr", "wb") as stderr:
            process = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, env=env
            )
        self.workers[index] = _Worker(index, process, self.records / f"p{index}.ready")

    def reap_exited(self) -> None:
        """Workers that exited by themselves: a problem, replaced by new ones."""
        for worker in list(self.workers.values()):
            code = worker.process.poll()
            if code is None:
                continue
            self.deaths[worker.index] = time.monotonic_ns()
            del self.workers[worker.index]
            self.problems.append(
                f"worker process {worker.index} exited by itself with code {code}: "
                + _tail(self.records / f"p{worker.index}.stderr")
            )
            self.spawn()

    def kill(self, worker: _Worker) -> None:
        os.kill(worker.process.pid, signal.SIGKILL)
        worker.process.wait()
        self.deaths[worker.index] = time.monotonic_ns()
        del self.workers[worker.index]
        self.kills += 1

    def stop_all(self, timeout: float) -> None:
        for worker in self.workers.values():
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for worker in list(self.workers.values()):
            try:
                code = worker.process.wait(max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
                self.problems.append(
                    f"worker process {worker.index} did not stop within {timeout:g}s of SIGTERM"
                )
            else:
                # SIGTERM before its handler was installed: a worker still starting up
                starting = code == -signal.SIGTERM and not worker.is_ready()
                if code != 0 and not starting:
                    self.problems.append(
                        f"worker process {worker.index} stopped with code {code}: "
                        + _tail(self.records / f"p{worker.index}.stderr")
                    )
            self.deaths[worker.index] = time.monotonic_ns()
            del self.workers[worker.index]

    def kill_all(self) -> None:
        """Cleanup after an error: no process outlives the harness."""
        for worker in list(self.workers.values()):
            with contextlib.suppress(ProcessLookupError):
                worker.process.kill()
            worker.process.wait()
            self.deaths.setdefault(worker.index, time.monotonic_ns())
            del self.workers[worker.index]


def _tail(path: Path, limit: int = 600) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return "(no stderr)"
    return text[-limit:] if text else "(no stderr)"


def _config_args(config: CrashConfig) -> list[str]:
    return [
        "--url",
        config.url,
        "--seed",
        str(config.seed),
        "--slots",
        str(config.slots),
        "--steps",
        str(config.steps),
        "--step-time",
        repr(config.step_time),
        "--lease-duration",
        repr(config.lease_duration),
        "--lease-renew-interval",
        repr(config.lease_renew_interval),
        "--polling-interval",
        repr(config.polling_interval),
        *(["--schedules"] if config.schedules else []),
    ]


def _records_dir(path: str | None) -> Path:
    if path is None:
        return Path(tempfile.mkdtemp(prefix="durably-crash-"))
    records = Path(path)
    records.mkdir(parents=True, exist_ok=True)
    return records


def _check_url(url: str) -> None:
    lowered = url.lower()
    if (
        lowered.startswith("memory:")
        or ":memory:" in lowered
        or lowered in ("sqlite:", "sqlite://")
    ):
        raise ValidationError(
            f"The crash harness needs a database that several processes share; {url!r} "
            "lives inside one process. Use a file (sqlite:////tmp/crash.db) or a server URL."
        )


def _check_counts(config: CrashConfig) -> None:
    counts = {
        "kills": (config.kills, 0),
        "workers": (config.workers, 1),
        "slots": (config.slots, 1),
        "steps": (config.steps, 1),
    }
    for name, (value, least) in counts.items():
        if value < least:
            raise ValidationError(
                f"The crash harness needs {name} >= {least}, got {value}; "
                f"pass --{name} {least} or more (CrashConfig({name}=…))"
            )
    low, high = config.kill_interval
    if not 0 <= low <= high:
        raise ValidationError(
            f"kill_interval must be (low, high) with 0 <= low <= high, got {(low, high)}; "
            "give the shortest and the longest delay before a kill, in seconds "
            "(--min-gap 0.02 --max-gap 0.3)"
        )


async def crash_harness(config: CrashConfig) -> CrashReport:
    """Run the harness (see the module docstring) and return its figures."""
    _check_url(config.url)
    _check_counts(config)
    low, high = config.kill_interval
    started = time.monotonic()
    keep = config.records_dir is not None
    records = _records_dir(config.records_dir)
    harness = _Harness(config, records, random.Random(config.seed))
    jobs = _jobs(config, None)  # triggered here, run only by the workers
    durably = create_durably(config.url, jobs=jobs, **_durably_options(config))
    trials: list[_Trial] = []
    try:
        await durably.migrate()
        first_slot = None
        if config.schedules:
            schedule = await durably.schedules.create(
                SCHEDULE_NAME, TICK_JOB, cron="* * * * * *", catch_up="all", max_catch_up=1000
            )
            first_slot = schedule.next_fire_at
        handle = durably.jobs["crash"]
        target = 2 * config.workers * config.slots

        async def feed() -> None:
            counts = await durably.count_runs(status=list(_ACTIVE), job_name=JOB_NAME)
            for _ in range(max(target - sum(counts.values()), 0)):
                number = len(trials)
                payload = {"seed": config.seed, "trial": number, "steps": config.steps}
                triggered = await handle.trigger(payload, idempotency_key=f"trial-{number}")
                trials.append(_Trial(number, triggered.id))

        await feed()
        for _ in range(config.workers):
            harness.spawn()
        while harness.kills < config.kills:
            await asyncio.sleep(harness.rng.uniform(low, high))
            harness.reap_exited()
            await feed()
            ready = [w for w in harness.workers.values() if w.is_ready()]
            if not ready:
                continue
            harness.kill(harness.rng.choice(ready))
            harness.spawn()
        # Settle: no more kills or triggers; every run must finish.
        deadline = time.monotonic() + config.settle_timeout
        caught_up = durably.clock.now()
        while True:
            harness.reap_exited()
            counts = await durably.count_runs(status=list(_ACTIVE), job_name=JOB_NAME)
            behind = config.schedules and not await _fired_since(durably, caught_up)
            if (not any(counts.values()) and not behind) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        await asyncio.to_thread(harness.stop_all, 15.0)
        runs = {t.run_id: await durably.get_run(t.run_id) for t in trials}
        # the counts by status must agree with the runs themselves
        counted = {s: n for s, n in (await durably.count_runs(job_name=JOB_NAME)).items() if n}
        tally = Counter(run.status for run in runs.values() if run is not None)
        if counted != dict(tally):
            harness.problems.append(f"count_runs gave {counted}, the runs are {dict(tally)}")
        scheduled = await _scheduled(durably, first_slot) if config.schedules else None
    finally:
        harness.kill_all()
        await durably.close()
    report = _analyse(
        config,
        records,
        trials,
        runs,
        deaths=harness.deaths,
        kills=harness.kills,
        problems=harness.problems,
        elapsed=time.monotonic() - started,
        scheduled=scheduled,
    )
    if report.ok and not keep:
        shutil.rmtree(records, ignore_errors=True)
        return report
    return replace(report, records_dir=str(records))


SCHEDULE_NAME = "crash-harness-tick"


async def _fired_since(durably: Any, when: datetime) -> bool:
    """Has the schedule fired a slot after ``when`` (the workers caught up)?"""
    schedule = await durably.schedules.get(SCHEDULE_NAME)
    return bool(schedule and schedule.last_fired_at and schedule.last_fired_at > when)


async def _scheduled(durably: Any, first: datetime | None) -> tuple[list[datetime], set[str]]:
    """The slots the schedule should have fired (its first to its last fired slot),
    and the slots of its runs in the database."""
    schedule = await durably.schedules.get(SCHEDULE_NAME)
    expected: list[datetime] = []
    if schedule is not None and first is not None and schedule.last_fired_at is not None:
        slot = first
        while slot <= schedule.last_fired_at:
            expected.append(slot)
            slot += timedelta(seconds=1)
    runs = await durably.get_runs(labels={"durably.schedule": SCHEDULE_NAME})
    return expected, {r.labels["durably.slot"] for r in runs}


def _read_records(records: Path) -> tuple[list[dict[str, Any]], int]:
    out: list[dict[str, Any]] = []
    torn = 0
    for path in sorted(records.glob("p*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                torn += 1
    return out, torn


def _analyse(
    config: CrashConfig,
    records: Path,
    trials: Sequence[_Trial],
    runs: Mapping[str, Any],
    *,
    deaths: Mapping[int, int],
    kills: int,
    problems: Sequence[str],
    elapsed: float,
    scheduled: tuple[list[datetime], set[str]] | None = None,
) -> CrashReport:
    """The figures, from the records in ``records`` and the final state of the runs.

    ``deaths``: process index → ``monotonic_ns`` after it was reaped."""
    problems = list(problems)
    entries, torn = _read_records(records)
    starts: dict[tuple[str, int], list[tuple[int, str]]] = defaultdict(list)
    dones: dict[tuple[str, int], list[tuple[int, str]]] = defaultdict(list)
    fires: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in entries:
        if entry["e"] == "fire":
            fires[str(entry["slot"])].append(entry)
            continue
        key = (str(entry["run"]), int(entry["i"]))
        (starts if entry["e"] == "start" else dones)[key].append((int(entry["t"]), entry["x"]))
    reexecuted = in_flight = changed = 0
    for key in sorted(set(starts) | set(dones)):
        done = dones.get(key, [])
        tokens = {token for _, token in done}
        if len(tokens) > 1:
            changed += 1
            problems.append(f"run {key[0]} step-{key[1]}: checkpoint changed, tokens {tokens}")
        bound: float = min((t for t, _ in done), default=float("inf"))
        for token in tokens:
            process = int(token.split(":", 1)[0])
            bound = min(bound, deaths.get(process, float("inf")))
        before = [s for s in starts.get(key, []) if s[0] <= bound]
        after = [s for s in starts.get(key, []) if s[0] > bound]
        in_flight += max(len(before) - 1, 0)
        if after:
            reexecuted += len(after)
            problems.append(
                f"run {key[0]} step-{key[1]}: checkpointed (execution {sorted(tokens)}) and "
                f"started again by {[token for _, token in after]}"
            )
    lost = wrong = 0
    for trial in trials:
        run = runs.get(trial.run_id)
        if run is None or run.status is not RunStatus.COMPLETED:
            lost += 1
            state = "missing" if run is None else f"{run.status.value} ({run.error})"
            problems.append(f"run {trial.run_id} (trial {trial.number}) lost: {state}")
            continue
        if run.output != expected_output(config.seed, trial.number, config.steps):
            wrong += 1
            problems.append(f"run {trial.run_id} (trial {trial.number}) output {run.output!r}")
    twice = missed = 0
    expected_slots: list[datetime] = []
    if scheduled is not None:
        expected_slots, stored = scheduled
        for slot, made in sorted(fires.items()):
            if len(made) > 1 or any(m["how"] != "created" for m in made):
                twice += 1
                problems.append(f"slot {slot} fired twice: {made}")
        for expected in expected_slots:
            stamp = expected.astimezone(UTC).isoformat(timespec="milliseconds")[:23] + "Z"
            if stamp not in stored:
                missed += 1
                problems.append(f"slot {stamp} has no run")
    if torn:  # never a failure by itself: a torn line can only hide a problem
        print(f"durably crash harness: {torn} torn record line(s) skipped", file=sys.stderr)
    return CrashReport(
        url=config.url,
        seed=config.seed,
        trials=len(trials),
        kills=kills,
        checkpointed_steps=len(dones),
        checkpointed_steps_reexecuted=reexecuted,
        in_flight_reexecutions=in_flight,
        checkpoints_changed=changed,
        runs_lost=lost,
        wrong_outputs=wrong,
        elapsed=elapsed,
        problems=tuple(problems),
        schedule_slots=len(expected_slots),
        slots_fired_twice=twice,
        slots_missed=missed,
    )


def run_crash_harness(url: str, **options: Any) -> CrashReport:
    """Run the harness on ``url`` (options: the fields of :class:`CrashConfig`) in a
    new event loop; from async code, ``await crash_harness(CrashConfig(...))``."""
    return asyncio.run(crash_harness(CrashConfig(url, **options)))


# -- command line --


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m durably_testing.crash",
        description="SIGKILL durably worker processes at random moments and check that no "
        "checkpointed step runs again, no run is lost and every output is right.",
    )
    d = CrashConfig(url="")
    parser.add_argument("--url", required=True, help="database URL shared by the processes")
    parser.add_argument("--kills", type=int, default=d.kills)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--workers", type=int, default=d.workers)
    parser.add_argument("--slots", type=int, default=d.slots, help="max_concurrent_runs")
    parser.add_argument("--steps", type=int, default=d.steps, help="steps per run")
    parser.add_argument("--step-time", type=float, default=d.step_time)
    parser.add_argument("--min-gap", type=float, default=d.kill_interval[0])
    parser.add_argument("--max-gap", type=float, default=d.kill_interval[1])
    parser.add_argument("--lease-duration", type=float, default=d.lease_duration)
    parser.add_argument("--lease-renew-interval", type=float, default=d.lease_renew_interval)
    parser.add_argument("--polling-interval", type=float, default=d.polling_interval)
    parser.add_argument("--settle-timeout", type=float, default=d.settle_timeout)
    parser.add_argument("--records-dir", default=None, help="keep the JSONL records here")
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"backend option (repeatable); or JSON in ${OPTIONS_ENV}",
    )
    parser.add_argument(
        "--schedules", action="store_true", help="also fire a schedule every second"
    )
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m durably_testing.crash``: run the harness (or, with ``--worker``, one
    of its worker processes); the exit status is 0 when the report is ok."""
    args = _parser().parse_args(argv)
    options: dict[str, Any] = json.loads(os.environ.get(OPTIONS_ENV) or "{}")
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--option takes KEY=VALUE, got {item!r}")
        options[key] = value
    config = CrashConfig(
        url=args.url,
        kills=args.kills,
        seed=args.seed,
        workers=args.workers,
        slots=args.slots,
        steps=args.steps,
        step_time=args.step_time,
        kill_interval=(args.min_gap, args.max_gap),
        lease_duration=args.lease_duration,
        lease_renew_interval=args.lease_renew_interval,
        polling_interval=args.polling_interval,
        settle_timeout=args.settle_timeout,
        records_dir=args.records_dir,
        backend_options=options,
        schedules=args.schedules,
    )
    if args.worker is not None:
        if args.records_dir is None:
            raise SystemExit("--worker needs --records-dir")
        asyncio.run(_worker_main(config, args.worker, Path(args.records_dir)))
        return 0
    try:
        report = asyncio.run(crash_harness(config))
    except ValidationError as exc:  # a bad URL or figure: the message says what to pass
        raise SystemExit(f"python -m durably_testing.crash: {exc}") from exc
    print(report.format(), flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
