"""A crash harness with real processes: SIGKILL workers, or SIGSTOP them for longer
than their lease and SIGCONT them later, at random moments; check that no
checkpointed step ever runs again and that no run is lost.

Usable on any database URL a durably backend opens and several processes can
share (a SQLite file, a libSQL server, your own adapter's)::

    python -m durably_testing.crash --url sqlite:////tmp/crash.db --kills 200 --seed 1
    python -m durably_testing.crash --url sqlite:////tmp/crash.db --kills 0 --stalls 200

or from Python / a test::

    from durably_testing.crash import run_crash_harness

    report = run_crash_harness("sqlite:////tmp/crash.db", kills=10, seed=1)
    print(report.format())
    assert report.ok, report.problems

A URL that holds a secret (a password, a token) belongs in ``DURABLY_DATABASE_URL``
rather than on the command line (``--url`` may then be left out); the harness hands
the URL and the backend options to its workers through their environment, never
their command line, and prints the URL without its password or query.

What it does
------------

The harness process migrates the database and keeps a supply of runs of one job
(``durably-crash-harness``) triggered, with idempotency keys fresh for each
invocation and a label naming it (``crash-invocation``), so running it again on
the same database tests again. It starts
``workers`` worker processes (``python -m durably_testing.crash --worker N``), each
a ``Durably`` with short leases (``lease_duration`` 1 s, renewal every 0.25 s) and
short polling. Then it interrupts them ``kills + stalls`` times, in an order shuffled
by the seed, each after a random delay (``kill_interval``):

- a **kill** SIGKILLs a random worker that is up, reaps it and starts a new one;
- a **stall** SIGSTOPs a random worker that is up (while at least one other keeps
  running) for a random time in ``stall_time`` (by default 1.5 to 3 leases), then
  SIGCONTs it.

A worker is "up" once it has started its first step (before that, interrupting
it would test nothing: on a loaded machine a new worker can take seconds to
start), so a slow machine or backend slows the schedule down instead of emptying
it. Meanwhile its leases expire and the others take its runs over; when
  it resumes, its event loop, its renewal timer and its steps go on as after any
  stall (a GC pause, a swapped-out process, a paused VM, a blocked loop).

The delays and choices come from a ``random.Random(seed)``; the processes' own
timing is not deterministic, so a seed reproduces the schedule, not the exact
interleaving. After the last interruption it resumes every stalled worker, stops
triggering, waits until every run is finished, stops the workers (SIGTERM) and
checks.

Each run has ``steps`` steps; step ``i`` of trial ``k`` returns a value that is a
fixed function of ``(seed, k, i)`` and the run's output is ``{"total": …,
"values": […]}`` of those values, so the expected output of every run is known.

With ``waits`` (the default), halfway through its steps each run also waits for a
signal (``step.prepare_wait("gate")`` before a step, ``step.wait_for`` after it),
whose payload value —
a fixed function of ``(seed, k)`` — joins its values; every third run first sleeps
on a durable timer (``step.sleep``). The harness signals each run's gate at random
moments (before the run reaches the wait, while it waits, sometimes twice): kills
land around suspensions and resumptions. A lost signal leaves its run waiting
(``runs lost``), a wrong one shows in its output, and every execution that passes
the wait records the payload it got (``wrong signals`` counts those that differ).

What is checked, and how it is known
------------------------------------

The checks never trust the database under test. The job functions append records
to per-process JSONL files outside it (opened with ``O_APPEND``; one ``write`` per
record, which a SIGKILL does not tear; an unparsable line is skipped and can only
hide a problem, never invent one). Times are ``time.monotonic_ns()``, which on one
host is a single clock for all processes. Every record names the process (``p``)
that wrote it.

- ``start``: the step function writes it first thing, with a token naming this
  execution (process and counter). The step returns ``{"value": v, "x": token}``,
  so the checkpointed output says *which* execution was checkpointed. It also
  carries ``d``, when the worker *decided* to call the function: the workers' clock
  remembers its last reading in each thread, and the engine reads it to check its
  lease right before calling a step function, in the thread the function starts in
  (the loop's for a coroutine, the worker thread for a sync function). An engine
  that calls a sync function without looking at the clock in its thread leaves no
  ``d``, and the function's own start counts.
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
    ``start`` records of a step decided later than its checkpoint bound. Each one
    is a step that began again although its checkpoint was already committed —
    e.g. a worker that resumed after a stall and called a step function another
    worker had checkpointed meanwhile.
``in-flight re-executions`` (allowed, counted)
    further ``start`` records of a step decided at or before its checkpoint bound:
    the step was running when its worker was killed, stalled or lost its lease,
    so it ran again.
``starts delayed past the lease`` (allowed, counted; part of the above)
    in-flight starts whose function began after the checkpoint bound although the
    worker decided to call it before: the worker stalled in the microseconds
    between its lease check and the function's first statement. No lease can
    prevent that (see "What a stall means" in the semantics); it should be rare
    (0 in hundreds of stalls; dozens mean something waits between the two).
``checkpoints changed`` (must be 0)
    steps whose ``done`` records carry different tokens: a completed step's output
    changed.
``runs lost`` (must be 0)
    triggered runs that are not ``completed`` at the end (missing, failed,
    cancelled, or still unfinished after ``settle_timeout``).
``wrong outputs`` (must be 0)
    completed runs whose output differs from the expected one.
``coverage`` (at least ``min_coverage``)
    the share of kills and stalls that hit a worker in the middle of a run that had
    at least one checkpoint already, i.e. that could have exposed a re-execution.
    A backend whose workers are interrupted before they do anything (too slow for
    the intervals) has a low coverage and fails instead of printing OK: lengthen
    ``kill_interval`` (``--min-gap``/``--max-gap``).

A worker that exits by itself (not killed by the harness) is reported as a
problem too. ``trials`` is the number of runs triggered and checked; runs of other
invocations still in the database are run by the workers but not checked.

Retries (``--retries``)
-----------------------

With ``retries=True`` the runs' steps fail on their first calls and are retried:
step ``i`` fails its first ``(seed + trial + i) % 3`` calls (counted in a file per
step beside the records, so a call that a kill cuts short counts too); steps
``0, 3, …`` wait 0.3 s and more before the next attempt (longer than the lease
renewal interval: the run waits without a worker), steps ``1, 4, …`` wait 0.05 s to
0.2 s (in place, holding the lease). Each worker records every ``step:retry`` it
emits (after the failure's record is committed) with the attempt number and the
next attempt's due time, and every ``start`` carries its wall-clock time. Kills
land in backoffs too (``kills during a backoff``: of a worker whose last record
for some step was that step's ``retry``). Checked:

``retries early`` (must be 0)
    starts of a step, after one of its ``retry`` records, decided before that
    record's due time: the next attempt came too soon — e.g. a worker that took
    the run over after a kill in the backoff and did not wait the rest of it.
``attempt counts reset`` (must be 0)
    steps whose ``retry`` records do not carry strictly increasing attempt numbers:
    the count went back (a crash made it start over), or one attempt was retried
    twice. A lower number written after a higher one by a process stalled since
    before the higher one was recorded is not counted: its listener wrote it late.

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
import uuid
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from durably import (
    Durably,
    JobDefinition,
    NotFoundError,
    Retry,
    RunStatus,
    ScheduleFireEvent,
    SignalRejectedError,
    Step,
    StepRetryEvent,
    StorageError,
    SystemClock,
    ValidationError,
    WaitHandle,
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
    "signal_value",
    "step_value",
]

JOB_NAME = "durably-crash-harness"
"""The job the workers run."""

TICK_JOB = "durably-crash-harness-tick"
"""The job of the schedule the workers fire with ``schedules=True`` (a slot a second)."""

OPTIONS_ENV = "DURABLY_CRASH_BACKEND_OPTIONS"
"""Environment variable with backend options (JSON) for the harness, so that secrets
such as an auth token stay off the command line."""

URL_ENV = "DURABLY_DATABASE_URL"
"""Where the harness reads the URL when ``--url`` is not given (a URL with a password
stays off the command line)."""

_CONFIG_ENV = "DURABLY_CRASH_CONFIG"  # the whole configuration, parent → workers
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_ACTIVE = (RunStatus.PENDING.value, RunStatus.LEASED.value, RunStatus.WAITING.value)
#: The wait each run of the harness suspends on, and its timer.
GATE, NAP = "gate", "nap"

#: ``retries=True``: the policies of steps 0, 3, … (waits longer than the lease renewal
#: interval: the run waits without a worker) and of steps 1, 4, … (in place).
WAITING_RETRY = Retry(max_attempts=8, initial=0.3, factor=1.5, max=1.0, jitter=0)
IN_PLACE_RETRY = Retry(max_attempts=8, initial=0.05, factor=2, max=0.2, jitter=0)


@dataclass(frozen=True)
class CrashConfig:
    """How the harness runs. Only ``url`` is required."""

    url: str
    #: SIGKILLs to deliver.
    kills: int = 200
    #: SIGSTOP … SIGCONT stalls to deliver (each longer than the lease by default).
    stalls: int = 0
    #: Seed of the schedule (order, delays, victims, stall times) and of the step values.
    seed: int = 1
    #: Worker processes alive at any moment.
    workers: int = 3
    #: Runs each worker executes at once (``max_concurrent_runs``).
    slots: int = 2
    #: Steps per run.
    steps: int = 6
    #: Each step sleeps a random time up to this many seconds.
    step_time: float = 0.02
    #: Random delay before each kill or stall is drawn from this range (seconds).
    kill_interval: tuple[float, float] = (0.02, 0.3)
    #: How long a stall lasts, drawn from this range (seconds); default 1.5 to 3 leases.
    stall_time: tuple[float, float] | None = None
    #: The least share of kills and stalls that must land in a run past its first
    #: checkpoint (see "coverage"); below it the report fails.
    min_coverage: float = 0.5
    lease_duration: float = 1.0
    lease_renew_interval: float = 0.25
    polling_interval: float = 0.05
    #: After the last kill or stall, how long to wait for every run to finish.
    settle_timeout: float = 60.0
    #: Keep the records here (default: a temporary directory, removed afterwards
    #: unless the checks fail).
    records_dir: str | None = None
    #: Options for the storage backend (``create_durably(url, **backend_options)``).
    backend_options: Mapping[str, Any] = field(default_factory=dict)
    #: Prefix of this invocation's idempotency keys (default: a fresh random one).
    invocation: str | None = None
    #: Also fire a schedule every second from the workers, and check its slots.
    schedules: bool = False
    #: Steps fail on their first calls and are retried; check the retries' timing.
    retries: bool = False

    def stall_range(self) -> tuple[float, float]:
        """``stall_time``, or 1.5 to 3 times ``lease_duration`` when it is not set."""
        if self.stall_time is not None:
            return self.stall_time
        return (1.5 * self.lease_duration, 3.0 * self.lease_duration)

    #: Runs wait for a signal halfway (and every third sleeps first); see above.
    waits: bool = True
    #: The durable timer's length (seconds).
    nap: float = 0.05


@dataclass(frozen=True)
class CrashReport:
    """The figures of one harness run. ``ok`` when every must-be-zero figure is 0."""

    #: The database URL without password or query.
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
    #: Executions that got a wait result other than the signal the harness sent.
    wrong_signals: int = 0
    #: Signals the harness delivered (accepted), and repeated (duplicates).
    signals: int = 0
    duplicate_signals: int = 0
    #: Waits whose signal came before the run suspended on them, and the others.
    signalled_before_suspension: int = 0
    suspensions: int = 0
    problems: tuple[str, ...] = ()
    records_dir: str | None = None
    stalls: int = 0
    #: Kills and stalls that hit a worker in a run past its first checkpoint.
    interruptions_covered: int = 0
    #: Distinct runs so interrupted at least once.
    trials_interrupted_after_checkpoint: int = 0
    #: In-flight starts whose function began after the checkpoint bound (see module doc).
    starts_delayed_past_lease: int = 0
    min_coverage: float = 0.0
    schedule_slots: int = 0
    slots_fired_twice: int = 0
    slots_missed: int = 0
    #: ``retries=True``: retries recorded, kills in a backoff, and the two checks.
    retries: int = 0
    kills_during_backoff: int = 0
    retries_early: int = 0
    attempt_counts_reset: int = 0

    @property
    def interruptions(self) -> int:
        """Kills plus stalls."""
        return self.kills + self.stalls

    @property
    def coverage(self) -> float:
        """The share of interruptions that hit a run past its first checkpoint
        (1.0 when there were none: nothing to cover)."""
        if not self.interruptions:
            return 1.0
        return self.interruptions_covered / self.interruptions

    @property
    def covered_enough(self) -> bool:
        """Coverage at least ``min_coverage``: the interruptions could expose bugs."""
        return self.coverage >= self.min_coverage

    @property
    def ok(self) -> bool:
        """No checkpointed step ran again, none changed, no run was lost, every output
        was right, and nothing else went wrong."""
        return (
            not self.problems
            and self.covered_enough
            and not (
                self.checkpointed_steps_reexecuted
                or self.checkpoints_changed
                or self.runs_lost
                or self.wrong_outputs
                or self.slots_fired_twice
                or self.slots_missed
                or self.wrong_signals
                or self.retries_early
                or self.attempt_counts_reset
            )
        )

    def format(self) -> str:
        """The report as the command line prints it."""
        lines = [
            f"durably crash harness: {self.url} (seed {self.seed})",
            f"  trials:                         {self.trials}",
            f"  kills:                          {self.kills}",
            f"  stalls:                         {self.stalls}",
            f"  coverage:                       {self.coverage:.0%} of kills and stalls "
            f"hit a run past its first checkpoint ({self.interruptions_covered} of "
            f"{self.interruptions}; {self.trials_interrupted_after_checkpoint} runs)",
            f"  checkpointed steps:             {self.checkpointed_steps}",
            f"  checkpointed steps re-executed: {self.checkpointed_steps_reexecuted}",
            f"  in-flight re-executions:        {self.in_flight_reexecutions}",
            f"  starts delayed past the lease:  {self.starts_delayed_past_lease}",
            f"  checkpoints changed:            {self.checkpoints_changed}",
            f"  runs lost:                      {self.runs_lost}",
            f"  wrong outputs:                  {self.wrong_outputs}",
            f"  signals (duplicates):           {self.signals} ({self.duplicate_signals})",
            f"  signalled before suspension:    {self.signalled_before_suspension}",
            f"  suspended on the signal wait:   {self.suspensions}",
            f"  wrong signals:                  {self.wrong_signals}",
            f"  elapsed:                        {self.elapsed:.1f} s",
        ]
        if self.retries:
            lines[-1:-1] = [
                f"  retries:                        {self.retries}",
                f"  kills during a backoff:         {self.kills_during_backoff}",
                f"  retries early:                  {self.retries_early}",
                f"  attempt counts reset:           {self.attempt_counts_reset}",
            ]
        if self.schedule_slots:
            lines[-1:-1] = [
                f"  schedule slots:                 {self.schedule_slots}",
                f"  slots fired twice:              {self.slots_fired_twice}",
                f"  slots missed:                   {self.slots_missed}",
            ]
        if not self.covered_enough:
            lines.append(
                f"  coverage below {self.min_coverage:.0%}: the workers were interrupted "
                "before they did anything; lengthen the gaps (--min-gap/--max-gap)"
            )
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


def signal_value(seed: int, trial: int) -> int:
    """The value the harness signals to trial ``trial``'s gate."""
    return (seed * 7_919 + trial * 1_000_003) % 104_729


def expected_output(seed: int, trial: int, steps: int, waits: bool = False) -> dict[str, Any]:
    """The output an uninterrupted run of trial ``trial`` produces."""
    values = [step_value(seed, trial, i) for i in range(steps)]
    if waits:
        values.insert(steps // 2 + 1, signal_value(seed, trial))
    return {"total": sum(values), "values": values}


class _RecordingClock(SystemClock):
    """The real clock, remembering in each thread when it was last read.

    The engine reads its clock to check the lease right before it calls a step
    function, on the loop's thread (for a coroutine) or in the function's worker
    thread (for a sync one), with nothing read in between: the last reading in the
    thread a step function starts in is when the worker decided to call it."""

    def __init__(self) -> None:
        self._local = threading.local()

    def _read(self) -> int:
        ns = time.time_ns()
        self._local.ns = ns
        return ns

    def now(self) -> datetime:
        return _EPOCH + timedelta(microseconds=self._read() // 1000)

    def now_ms(self) -> datetime:
        return _EPOCH + timedelta(milliseconds=self._read() // 1_000_000)

    def last_read(self) -> int | None:
        """Wall-clock ns of this thread's last reading, once (None: none since)."""
        ns: int | None = getattr(self._local, "ns", None)
        self._local.ns = None
        return ns


class _Recorder:
    """Appends JSON lines to this process's record file: one ``write`` per record."""

    def __init__(self, path: Path, process: int, seed: int, step_time: float) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.process = process
        self.step_time = step_time
        self._rng = random.Random(seed * 7_919 + process)
        self._counter = itertools.count(1)
        self._lock = threading.Lock()
        self.clock = _RecordingClock()
        self.calls_dir = path.parent / "calls"
        self.calls_dir.mkdir(exist_ok=True)

    def token(self) -> str:
        with self._lock:
            return f"{self.process}:{next(self._counter)}"

    def pause(self) -> float:
        with self._lock:
            return self._rng.uniform(0.0, self.step_time)

    def write(self, event: str, run_id: str, index: int, token: str) -> None:
        record: dict[str, Any] = {"e": event, "run": run_id, "i": index, "x": token}
        record["p"] = self.process
        record["t"] = now = time.monotonic_ns()
        if event == "start":
            wall = time.time_ns()
            record["w"] = wall
            decided = self.clock.last_read()
            if decided is not None:  # the same instant on the monotonic clock
                record["d"] = now - (wall - decided)
                record["dw"] = decided
        line = json.dumps(record, separators=(",", ":"))
        os.write(self.fd, (line + "\n").encode())

    def calls(self, run_id: str, index: int) -> int:
        """Count one more call of step ``index`` of the run (in a file shared by every
        process); how many there have been, this one included."""
        fd = os.open(
            self.calls_dir / f"{run_id}-{index}", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644
        )
        try:
            os.write(fd, b"x")
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def retry(self, event: StepRetryEvent) -> None:
        """``step:retry`` listener: a failure this worker recorded, and when the next
        attempt is due (wall-clock ns)."""
        due = int(event.next_attempt_at.timestamp() * 1000) * 1_000_000
        record = {
            "e": "retry",
            "run": event.run_id,
            "i": event.step_index,
            "k": event.attempt,
            "due": due,
            "p": self.process,
            "t": time.monotonic_ns(),
        }
        os.write(self.fd, (json.dumps(record, separators=(",", ":")) + "\n").encode())

    def fire(self, event: ScheduleFireEvent) -> None:
        """``schedule:fire`` listener: a slot this worker fired (committed)."""
        line = json.dumps(
            {
                "e": "fire",
                "slot": event.slot.isoformat(),
                "run": event.run_id,
                "how": event.disposition,
                "x": f"{self.process}",
                "p": self.process,
                "t": time.monotonic_ns(),
            },
            separators=(",", ":"),
        )
        os.write(self.fd, (line + "\n").encode())

    def close(self) -> None:
        os.close(self.fd)


def _crash_job(recorder: _Recorder | None, retries: bool = False) -> JobDefinition[Any, Any]:
    """The harness's job, its steps writing to ``recorder``. The harness process,
    which only triggers runs, passes ``None``: a step run there is an error. With
    ``retries``, steps fail on their first calls and are retried (module docstring)."""

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
        if retries and index % 3 != 2:
            failures = (seed + trial + index) % 3
            call = rec.calls(run_id, index)
            if call <= failures:
                raise ConnectionError(f"call {call} of step-{index} fails (of {failures})")
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
        waits, nap = bool(payload.get("waits")), float(payload.get("nap", 0))
        values: list[int] = []
        gate: WaitHandle[Any] | None = None
        for i in range(steps):
            if waits and i == steps // 2:
                if trial % 3 == 0:
                    await step.sleep(NAP, nap)
                # prepared before the step whose "work" leads to the signal, as a job
                # does: a signal may land before the run suspends
                gate = await step.prepare_wait(GATE)
            args = (step.run_id, seed, trial, i)
            if i % 3 == 2:
                out = await step.run(f"step-{i}", sync_step, *args)
            elif retries:
                policy = WAITING_RETRY if i % 3 == 0 else IN_PLACE_RETRY
                out = await step.run(f"step-{i}", async_step, *args, retry=policy)
            else:
                out = await step.run(f"step-{i}", async_step, *args)
            rec.write("done", step.run_id, i, str(out["x"]))
            values.append(int(out["value"]))
            if gate is not None and i == steps // 2:
                # it may suspend here: then this process no longer holds the run
                rec.write("waits", step.run_id, -1, "")
                got = await step.wait_for(gate)
                rec.write("got", step.run_id, -1, json.dumps(got.payload, sort_keys=True))
                values.append(int((got.payload or {})["v"]))
        return {"total": sum(values), "values": values}

    return define_job(name=JOB_NAME, run=run)


async def _tick(step: Step, payload: Any) -> Any:
    return payload


def _jobs(config: CrashConfig, recorder: _Recorder | None) -> dict[str, JobDefinition[Any, Any]]:
    jobs = {"crash": _crash_job(recorder, config.retries)}
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
    durably = create_durably(
        config.url, jobs=_jobs(config, recorder), clock=recorder.clock, **_durably_options(config)
    )
    durably.on("schedule:fire", recorder.fire)
    if config.retries:
        durably.on("step:retry", recorder.retry)
    try:
        await durably.init()
        (records / f"p{index}.ready").touch()
        await stop.wait()
        await durably.stop(timeout=5.0)
    finally:
        await durably.close()
        recorder.close()


# -- the harness --

Interruption = Literal["kill", "stall"]


@dataclass
class _Worker:
    index: int
    process: subprocess.Popen[bytes]
    ready_file: Path
    #: While stopped (SIGSTOP): when it resumes, on ``time.monotonic()``, and the
    #: timer that resumes it.
    stopped_until: float | None = None
    resumer: threading.Timer | None = None

    def is_ready(self) -> bool:
        return self.ready_file.exists()

    def has_worked(self, records: Path) -> bool:
        """Has it started a step yet? (Its record file is no longer empty.)"""
        try:
            return (records / f"p{self.index}.jsonl").stat().st_size > 0
        except FileNotFoundError:
            return False


@dataclass
class _Trial:
    number: int
    run_id: str
    #: The harness's signal to its gate was accepted.
    signalled: bool = False


@dataclass
class _Signaller:
    """Signals each trial's gate at random moments: often soon after the wait is
    prepared (before the run suspends), sometimes long after, sometimes twice."""

    durably: Durably
    seed: int
    rng: random.Random
    problems: list[str]
    accepted: int = 0
    duplicates: int = 0

    async def round(self, trials: Sequence[_Trial], *, every: bool = False) -> None:
        for trial in trials:
            if trial.signalled and self.rng.random() >= 0.05:
                continue
            if not every and not trial.signalled and self.rng.random() < 0.5:
                continue  # later, for this one
            payload = {"v": signal_value(self.seed, trial.number)}
            try:
                receipt = await self.durably.signal(
                    trial.run_id, GATE, payload, signal_id=f"gate-{trial.number}"
                )
            except NotFoundError:
                continue  # the run has not prepared its wait yet
            except StorageError:
                continue  # e.g. a stalled worker holds the database's lock: next round
            except SignalRejectedError as exc:
                self.problems.append(f"run {trial.run_id}: signal refused: {exc}")
                trial.signalled = True
                continue
            if receipt.disposition == "duplicate":
                self.duplicates += 1
            elif trial.signalled:
                self.problems.append(f"run {trial.run_id}: a repeated signal was accepted again")
            else:
                self.accepted += 1
            trial.signalled = True


@dataclass
class _Harness:
    config: CrashConfig
    records: Path
    rng: random.Random
    workers: dict[int, _Worker] = field(default_factory=dict)
    deaths: dict[int, int] = field(default_factory=dict)  # process index -> monotonic_ns
    #: (process index, what, monotonic_ns) of every kill and stall
    interruptions: list[tuple[int, Interruption, int]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    #: the harness's own storage errors (its triggers and queries), retried
    storage_errors: list[str] = field(default_factory=list)
    kills: int = 0
    stalls: int = 0
    next_index: int = 0
    resume_lock: threading.Lock = field(default_factory=threading.Lock)

    def spawn(self) -> None:
        index = self.next_index
        self.next_index += 1
        args = [
            sys.executable,
            "-m",
            "durably_testing.crash",
            "--worker",
            str(index),
            "--records-dir",
            str(self.records),
        ]
        # The configuration, URL and backend options included, goes through the
        # environment: a command line is visible to every user of the machine.
        env = dict(os.environ)
        env[_CONFIG_ENV] = _config_json(self.config)
        with open(self.records / f"p{index}.stderr", "wb") as stderr:
            process = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, env=env
            )
        self.workers[index] = _Worker(index, process, self.records / f"p{index}.ready")

    def candidates(self) -> list[_Worker]:
        """Workers to interrupt: up, not stopped, and past their first step — on a slow
        machine or backend a new worker takes a while to start working, and one
        interrupted before then tests nothing (the schedule waits instead)."""
        return [
            w
            for w in self.workers.values()
            if w.resumer is None and w.is_ready() and w.has_worked(self.records)
        ]

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

    def note(self, worker: _Worker, what: str, at: int) -> None:
        """Keep the schedule beside the records (``harness.jsonl``), to read afterwards."""
        line = json.dumps({"e": what, "p": worker.index, "t": at}, separators=(",", ":"))
        with open(self.records / "harness.jsonl", "a") as f:
            f.write(line + "\n")

    def kill(self, worker: _Worker) -> None:
        at = time.monotonic_ns()
        self.interruptions.append((worker.index, "kill", at))
        self.note(worker, "kill", at)
        os.kill(worker.process.pid, signal.SIGKILL)
        worker.process.wait()
        self.deaths[worker.index] = time.monotonic_ns()
        del self.workers[worker.index]
        self.kills += 1

    def stall(self, worker: _Worker, seconds: float) -> None:
        os.kill(worker.process.pid, signal.SIGSTOP)
        at = time.monotonic_ns()
        self.interruptions.append((worker.index, "stall", at))
        self.note(worker, "stall", at)
        worker.stopped_until = time.monotonic() + seconds
        self.stalls += 1
        # Resumed by a timer thread, not by the harness's loop: that loop may itself
        # wait on the database, which the stopped worker may hold locked.
        timer = threading.Timer(seconds, self.resume, (worker,))
        timer.daemon = True
        worker.resumer = timer
        timer.start()

    def resume(self, worker: _Worker) -> None:
        """SIGCONT a stopped worker (from its timer, or at the end)."""
        with self.resume_lock:  # its timer thread and the harness may both get here
            timer, worker.resumer = worker.resumer, None
        if timer is None:
            return  # resumed already
        timer.cancel()
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.process.pid, signal.SIGCONT)
        self.note(worker, "resume", time.monotonic_ns())
        worker.stopped_until = None

    def resume_all(self) -> None:
        for worker in list(self.workers.values()):
            self.resume(worker)

    def stop_all(self, timeout: float) -> None:
        self.resume_all()  # a stopped process would not see SIGTERM
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
        """Cleanup after an error: no process outlives the harness (SIGKILL ends a
        stopped process too)."""
        for worker in list(self.workers.values()):
            if worker.resumer is not None:
                worker.resumer.cancel()
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


def _config_json(config: CrashConfig) -> str:
    data = asdict(config)
    data["backend_options"] = dict(config.backend_options)
    return json.dumps(data)


def _config_from_json(text: str) -> CrashConfig:
    data = json.loads(text)
    for name in ("kill_interval", "stall_time"):
        if data.get(name) is not None:
            data[name] = tuple(data[name])
    return CrashConfig(**data)


def _redact_url(url: str) -> str:
    """``url`` as the harness prints it: without a password, and without its query
    (where a token may be), e.g. ``postgresql://me:***@db:5432/jobs``."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return "<invalid URL>"
    text, sep, _ = url.partition("?")
    if password is not None:
        text = text.replace(f":{password}@", ":***@", 1)
    return text + ("?***" if sep else "")


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
            f"The crash harness needs a database that several processes share; "
            f"{_redact_url(url)!r} lives inside one process. Use a file "
            "(sqlite:////tmp/crash.db) or a server URL."
        )


def _check_counts(config: CrashConfig) -> None:
    counts = {
        "kills": (config.kills, 0),
        "stalls": (config.stalls, 0),
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
    if config.stalls and config.workers < 2:
        raise ValidationError(
            f"Stalls need a second worker to take the stalled one's runs over; got "
            f"workers={config.workers}: pass --workers 2 or more"
        )
    ranges = {
        "kill_interval": (config.kill_interval, "a kill or stall", "--min-gap 0.02 --max-gap 0.3"),
        "stall_time": (config.stall_range(), "a stall's end", "--min-stall 1.5 --max-stall 3"),
    }
    for name, ((low, high), what, flags) in ranges.items():
        if not 0 <= low <= high:
            raise ValidationError(
                f"{name} must be (low, high) with 0 <= low <= high, got {(low, high)}; "
                f"give the shortest and the longest delay before {what}, in seconds ({flags})"
            )
    if not 0 <= config.min_coverage <= 1:
        raise ValidationError(
            f"min_coverage is a share between 0 and 1, got {config.min_coverage}; "
            "pass e.g. --min-coverage 0.5"
        )


async def crash_harness(config: CrashConfig) -> CrashReport:
    """Run the harness (see the module docstring) and return its figures."""
    _check_url(config.url)
    _check_counts(config)
    low, high = config.kill_interval
    stall_low, stall_high = config.stall_range()
    started = time.monotonic()
    keep = config.records_dir is not None
    records = _records_dir(config.records_dir)
    invocation = config.invocation or uuid.uuid4().hex[:12]
    mine = {"crash-invocation": invocation}  # the label of this invocation's runs
    harness = _Harness(config, records, random.Random(config.seed))
    jobs = _jobs(config, None)  # triggered here, run only by the workers
    durably = create_durably(config.url, jobs=jobs, **_durably_options(config))
    trials: list[_Trial] = []
    signaller = _Signaller(durably, config.seed, random.Random(config.seed + 1), harness.problems)
    waits: dict[str, list[Any]] = {}
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
            try:
                counts = await durably.count_runs(status=list(_ACTIVE), job_name=JOB_NAME)
                for _ in range(max(target - sum(counts.values()), 0)):
                    number = len(trials)
                    payload = {
                        "seed": config.seed,
                        "trial": number,
                        "steps": config.steps,
                        "waits": config.waits,
                        "nap": config.nap,
                    }
                    key = f"crash-{invocation}-{number}"  # fresh for every invocation
                    triggered = await handle.trigger(payload, idempotency_key=key, labels=mine)
                    trials.append(_Trial(number, triggered.id))
            except StorageError as exc:
                # e.g. a worker stopped inside a SQLite write transaction holds the lock
                # past the busy timeout: trigger again next round (the same key, so a
                # trigger that landed after all is found, not doubled)
                harness.storage_errors.append(str(exc))

        await feed()
        for _ in range(config.workers):
            harness.spawn()
        kill: Interruption = "kill"
        stall: Interruption = "stall"
        interruptions = [kill] * config.kills + [stall] * config.stalls
        harness.rng.shuffle(interruptions)
        for action in interruptions:
            while True:
                await asyncio.sleep(harness.rng.uniform(low, high))
                harness.reap_exited()
                await feed()
                if config.waits:
                    await signaller.round(trials)
                candidates = harness.candidates()
                # a stall leaves at least one worker running, to take the runs over
                if len(candidates) < (2 if action == "stall" else 1):
                    continue
                victim = harness.rng.choice(candidates)
                if action == "kill":
                    harness.kill(victim)
                    harness.spawn()
                else:
                    harness.stall(victim, harness.rng.uniform(stall_low, stall_high))
                break
        # every stall lasts as long as it was drawn
        ends = [w.stopped_until for w in harness.workers.values() if w.stopped_until]
        await asyncio.sleep(max([*ends, time.monotonic()]) - time.monotonic())
        harness.resume_all()
        # Settle: no more interruptions or triggers; every run must finish.
        deadline = time.monotonic() + config.settle_timeout
        caught_up = durably.clock.now()
        while True:
            harness.reap_exited()
            if config.waits:
                await signaller.round(trials, every=True)
            try:
                counts = await durably.count_runs(
                    status=list(_ACTIVE), job_name=JOB_NAME, labels=mine
                )
            except StorageError as exc:
                harness.storage_errors.append(str(exc))
                if time.monotonic() <= deadline:
                    await asyncio.sleep(0.1)
                    continue
                counts = {}
            behind = config.schedules and not await _fired_since(durably, caught_up)
            if (not any(counts.values()) and not behind) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        await asyncio.to_thread(harness.stop_all, 15.0)
        runs = {t.run_id: await durably.get_run(t.run_id) for t in trials}
        # the counts by status must agree with the runs themselves
        counts = await durably.count_runs(job_name=JOB_NAME, labels=mine)
        counted = {s: n for s, n in counts.items() if n}
        tally = Counter(run.status for run in runs.values() if run is not None)
        if counted != dict(tally):
            harness.problems.append(f"count_runs gave {counted}, the runs are {dict(tally)}")
        scheduled = await _scheduled(durably, first_slot) if config.schedules else None
        waits = {t.run_id: await durably.get_waits(t.run_id) for t in trials}
    finally:
        harness.kill_all()
        await durably.close()
    if harness.storage_errors:  # not a finding: the workers' storage is what is tested
        print(
            f"durably crash harness: {len(harness.storage_errors)} of its own storage "
            f"calls failed and were retried; the last: {harness.storage_errors[-1]}",
            file=sys.stderr,
        )
    report = _analyse(
        config,
        records,
        trials,
        runs,
        deaths=harness.deaths,
        kills=harness.kills,
        problems=harness.problems,
        elapsed=time.monotonic() - started,
        stalls=harness.stalls,
        interruptions=harness.interruptions,
        scheduled=scheduled,
    )
    gates = [w for found in waits.values() for w in found if w.name == GATE]
    report = replace(
        report,
        signals=signaller.accepted,
        duplicate_signals=signaller.duplicates,
        signalled_before_suspension=sum(1 for w in gates if w.suspended_at is None),
        suspensions=sum(1 for w in gates if w.suspended_at is not None),
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
    stalls: int = 0,
    interruptions: Sequence[tuple[int, Interruption, int]] = (),
    scheduled: tuple[list[datetime], set[str]] | None = None,
) -> CrashReport:
    """The figures, from the records in ``records`` and the final state of the runs.

    ``deaths``: process index → ``monotonic_ns`` after it was reaped;
    ``interruptions``: (process index, kill or stall, ``monotonic_ns``) of each."""
    problems = list(problems)
    mine = {t.run_id for t in trials}
    entries, torn = _read_records(records)
    fires: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in entries:
        if entry["e"] == "fire":
            fires[str(entry["slot"])].append(entry)
    entries = [e for e in entries if e["run"] in mine]  # other invocations' runs: not ours
    # (decided, began, token) of each start; (time, token) of each done
    starts: dict[tuple[str, int], list[tuple[int, int, str]]] = defaultdict(list)
    dones: dict[tuple[str, int], list[tuple[int, str]]] = defaultdict(list)
    numbers = {t.run_id: t.number for t in trials}
    wrong_signals = 0
    for entry in entries:
        if entry["e"] == "waits":
            continue
        if entry["e"] == "got":  # what one execution got from the gate
            number = numbers.get(str(entry["run"]))
            sent = None if number is None else {"v": signal_value(config.seed, number)}
            if json.loads(entry["x"]) != sent:
                wrong_signals += 1
                problems.append(f"run {entry['run']}: the gate gave {entry['x']}, not {sent}")
            continue
        key = (str(entry["run"]), int(entry["i"]))
        t = int(entry["t"])
        if entry["e"] == "start":
            starts[key].append((int(entry.get("d", t)), t, entry["x"]))
        elif entry["e"] == "done":
            dones[key].append((t, entry["x"]))
    retries = _retries(entries, interruptions, problems)
    reexecuted = in_flight = delayed = changed = 0
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
        # judged by when the worker decided to call the function (its lease check)
        before = [s for s in starts.get(key, []) if s[0] <= bound]
        after = [s for s in starts.get(key, []) if s[0] > bound]
        in_flight += max(len(before) - 1, 0)
        delayed += sum(1 for s in before if s[1] > bound)
        if after:
            reexecuted += len(after)
            problems.append(
                f"run {key[0]} step-{key[1]}: checkpointed (execution {sorted(tokens)}) and "
                f"started again by {[token for _, _, token in after]}"
            )
    covered, interrupted_runs = _coverage(entries, interruptions, config.steps)
    lost = wrong = 0
    for trial in trials:
        run = runs.get(trial.run_id)
        if run is None or run.status is not RunStatus.COMPLETED:
            lost += 1
            state = "missing" if run is None else f"{run.status.value} ({run.error})"
            problems.append(f"run {trial.run_id} (trial {trial.number}) lost: {state}")
            continue
        if run.output != expected_output(config.seed, trial.number, config.steps, config.waits):
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
        url=_redact_url(config.url),
        seed=config.seed,
        trials=len(trials),
        kills=kills,
        checkpointed_steps=len(dones),
        checkpointed_steps_reexecuted=reexecuted,
        in_flight_reexecutions=in_flight,
        checkpoints_changed=changed,
        runs_lost=lost,
        wrong_outputs=wrong,
        wrong_signals=wrong_signals,
        elapsed=elapsed,
        problems=tuple(problems),
        stalls=stalls,
        interruptions_covered=covered,
        trials_interrupted_after_checkpoint=interrupted_runs,
        starts_delayed_past_lease=delayed,
        min_coverage=config.min_coverage,
        schedule_slots=len(expected_slots),
        slots_fired_twice=twice,
        slots_missed=missed,
        retries=retries.recorded,
        kills_during_backoff=retries.kills_during_backoff,
        retries_early=retries.early,
        attempt_counts_reset=retries.reset,
    )


@dataclass(frozen=True)
class _RetryFigures:
    recorded: int = 0
    kills_during_backoff: int = 0
    early: int = 0
    reset: int = 0


#: Slack of the "not before its due time" check: due times are stored in milliseconds.
_DUE_SLACK_NS = 2_000_000


def _retries(
    entries: Sequence[Mapping[str, Any]],
    interruptions: Sequence[tuple[int, Interruption, int]],
    problems: list[str],
) -> _RetryFigures:
    """The retry checks (module docstring, "Retries") from the ``retry`` and
    ``start`` records of this invocation's runs."""
    retried: dict[tuple[str, int], list[Mapping[str, Any]]] = defaultdict(list)
    started: dict[tuple[str, int], list[Mapping[str, Any]]] = defaultdict(list)
    for entry in entries:
        if entry["e"] in ("retry", "start"):
            target = retried if entry["e"] == "retry" else started
            target[(str(entry["run"]), int(entry["i"]))].append(entry)
    stalls: dict[int, list[int]] = defaultdict(list)
    for process, what, at in interruptions:
        if what == "stall":
            stalls[process].append(at)
    early = reset = 0
    for key, records in retried.items():
        records.sort(key=lambda r: int(r["t"]))
        numbers = [int(r["k"]) for r in records]
        if any(
            b["k"] <= a["k"] and not _written_late(b, a, started.get(key, []), stalls)
            for a, b in itertools.pairwise(records)
        ):
            reset += 1
            problems.append(f"run {key[0]} step-{key[1]}: attempts retried in order {numbers}")
        times = [int(r["t"]) for r in records]
        for start in started.get(key, []):
            # the latest retry recorded before this start began: its due time binds it
            i = bisect_left(times, int(start["t"])) - 1
            if i < 0 or "w" not in start:
                continue
            decided = int(start.get("dw", start["w"]))
            due = int(records[i]["due"])
            if decided < due - _DUE_SLACK_NS:
                early += 1
                problems.append(
                    f"run {key[0]} step-{key[1]}: attempt after attempt {records[i]['k']} "
                    f"started {(due - decided) / 1e6:.1f} ms before its due time"
                )
    in_backoff = 0
    for process, what, at in interruptions:
        if what != "kill":
            continue
        for key, records in retried.items():
            last = [r for r in records if int(r["t"]) < at]
            if not last or int(last[-1]["p"]) != process:
                continue
            since = int(last[-1]["t"])
            if not any(since < int(s["t"]) < at for s in started.get(key, [])):
                in_backoff += 1
                break
    recorded = sum(len(r) for r in retried.values())
    return _RetryFigures(recorded, in_backoff, early, reset)


def _written_late(
    late: Mapping[str, Any],
    before: Mapping[str, Any],
    starts: Sequence[Mapping[str, Any]],
    stalls: Mapping[int, Sequence[int]],
) -> bool:
    """Is ``late`` (a lower attempt number recorded after ``before``) the record of an
    attempt that began before ``before``'s, written late because its process was
    stalled in between? A record is written by the ``step:retry`` listener after the
    failure is committed: a process stopped between its attempt's start and that
    listener writes it after its SIGCONT, when another worker has taken the run over
    and recorded the next attempt (seen on libSQL: ``[2, 1]``). A higher number
    recorded first by a process that was running is still a reset, and an equal one
    (one attempt retried twice) always is."""
    if int(late["k"]) >= int(before["k"]):
        return False
    process = int(late["p"])
    own = [int(s["t"]) for s in starts if _writer(s) == process and int(s["t"]) < int(late["t"])]
    if not own:
        return False
    began = max(own)
    return any(began < at <= int(before["t"]) for at in stalls.get(process, ()))


def _writer(start: Mapping[str, Any]) -> int:
    """The process of a ``start`` record (its token ``x`` is ``"process:n"`` when it
    has no ``p``)."""
    return int(start["p"]) if "p" in start else int(str(start["x"]).split(":", 1)[0])


def _coverage(
    entries: Sequence[Mapping[str, Any]],
    interruptions: Sequence[tuple[int, Interruption, int]],
    steps: int,
) -> tuple[int, int]:
    """How many interruptions hit their process in the middle of a run that had a
    checkpoint already, and how many distinct runs were so hit.

    A process is in the middle of run R at instant t when the latest record of R
    before t is its own and is not the last step's ``done``; R had a checkpoint
    when some ``done`` record of it comes before t."""
    history: dict[str, list[tuple[int, int | None, bool]]] = defaultdict(list)
    first_done: dict[str, int] = {}
    for e in entries:
        t = int(e["t"])
        writer = _writer(e) if e["e"] == "start" else e.get("p")
        # after its last step, or at a wait (where the run may suspend), a process no
        # longer holds the run (a "got" record says when it does again)
        finished = e["e"] == "waits" or (e["e"] == "done" and int(e["i"]) == steps - 1)
        history[str(e["run"])].append((t, writer, finished))
        if e["e"] == "done":
            first_done[str(e["run"])] = min(t, first_done.get(str(e["run"]), t))
    for h in history.values():
        h.sort(key=lambda r: r[0])
    times = {run: [r[0] for r in h] for run, h in history.items()}
    covered = 0
    hit: set[str] = set()
    for process, _, at in interruptions:
        found = False
        for run, checkpointed in first_done.items():
            if checkpointed >= at:
                continue
            i = bisect_left(times[run], at) - 1
            _, writer, finished = history[run][i]
            if writer == process and not finished:
                found = True
                hit.add(run)
        covered += found
    return covered, len(hit)


def run_crash_harness(url: str, **options: Any) -> CrashReport:
    """Run the harness on ``url`` (options: the fields of :class:`CrashConfig`) in a
    new event loop; from async code, ``await crash_harness(CrashConfig(...))``."""
    return asyncio.run(crash_harness(CrashConfig(url, **options)))


# -- command line --


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m durably_testing.crash",
        description="SIGKILL durably worker processes, or SIGSTOP them past their lease and "
        "SIGCONT them later, at random moments; check that no checkpointed step runs again, "
        "no run is lost and every output is right.",
    )
    d = CrashConfig(url="")
    parser.add_argument(
        "--url",
        default=None,
        help=f"database URL shared by the processes (default: ${URL_ENV}, the place "
        "for a URL with a password)",
    )
    parser.add_argument("--kills", type=int, default=d.kills, help="SIGKILLs to deliver")
    parser.add_argument("--stalls", type=int, default=d.stalls, help="SIGSTOP/SIGCONT stalls")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--workers", type=int, default=d.workers)
    parser.add_argument("--slots", type=int, default=d.slots, help="max_concurrent_runs")
    parser.add_argument("--steps", type=int, default=d.steps, help="steps per run")
    parser.add_argument("--step-time", type=float, default=d.step_time)
    parser.add_argument("--min-gap", type=float, default=d.kill_interval[0])
    parser.add_argument("--max-gap", type=float, default=d.kill_interval[1])
    parser.add_argument(
        "--min-stall", type=float, default=None, help="seconds (default: 1.5 leases)"
    )
    parser.add_argument("--max-stall", type=float, default=None, help="seconds (default: 3 leases)")
    parser.add_argument("--min-coverage", type=float, default=d.min_coverage)
    parser.add_argument("--lease-duration", type=float, default=d.lease_duration)
    parser.add_argument("--lease-renew-interval", type=float, default=d.lease_renew_interval)
    parser.add_argument("--polling-interval", type=float, default=d.polling_interval)
    parser.add_argument("--settle-timeout", type=float, default=d.settle_timeout)
    parser.add_argument("--records-dir", default=None, help="keep the JSONL records here")
    parser.add_argument(
        "--no-waits",
        dest="waits",
        action="store_false",
        help="runs do not wait for signals (nor sleep) halfway",
    )
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
    parser.add_argument(
        "--retries",
        action="store_true",
        help="steps fail on their first calls and are retried; check the retries",
    )
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m durably_testing.crash``: run the harness (or, with ``--worker``, one
    of its worker processes); the exit status is 0 when the report is ok."""
    args = _parser().parse_args(argv)
    if args.worker is not None:  # the harness passes everything in the environment
        if args.records_dir is None or _CONFIG_ENV not in os.environ:
            raise SystemExit(
                "--worker is how the harness starts its workers, with --records-dir and "
                f"${_CONFIG_ENV}; run python -m durably_testing.crash --url … instead"
            )
        config = _config_from_json(os.environ[_CONFIG_ENV])
        asyncio.run(_worker_main(config, args.worker, Path(args.records_dir)))
        return 0
    url = args.url or os.environ.get(URL_ENV)
    if not url:
        raise SystemExit(f"python -m durably_testing.crash: pass --url, or set ${URL_ENV}")
    options: dict[str, Any] = json.loads(os.environ.get(OPTIONS_ENV) or "{}")
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--option takes KEY=VALUE, got {item!r}")
        options[key] = value
    stall_time = None
    if args.min_stall is not None or args.max_stall is not None:
        default_low, default_high = CrashConfig(
            url, lease_duration=args.lease_duration
        ).stall_range()
        stall_time = (
            default_low if args.min_stall is None else args.min_stall,
            default_high if args.max_stall is None else args.max_stall,
        )
    config = CrashConfig(
        url=url,
        kills=args.kills,
        stalls=args.stalls,
        seed=args.seed,
        workers=args.workers,
        slots=args.slots,
        steps=args.steps,
        step_time=args.step_time,
        kill_interval=(args.min_gap, args.max_gap),
        stall_time=stall_time,
        min_coverage=args.min_coverage,
        lease_duration=args.lease_duration,
        lease_renew_interval=args.lease_renew_interval,
        polling_interval=args.polling_interval,
        settle_timeout=args.settle_timeout,
        records_dir=args.records_dir,
        backend_options=options,
        schedules=args.schedules,
        waits=args.waits,
        retries=args.retries,
    )
    try:
        report = asyncio.run(crash_harness(config))
    except ValidationError as exc:  # a bad URL or figure: the message says what to pass
        raise SystemExit(f"python -m durably_testing.crash: {exc}") from exc
    print(report.format(), flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
