"""What every statement of ``SqlStorage`` shares: the column lists it selects, the
lease fence its writes carry, and the functions that map a row to a
:class:`durably.Run`, :class:`durably.StepRecord`, :class:`durably.LogRecord`,
:class:`durably.Wait` or :class:`durably.Attempt`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from .._errors import StorageCorruptError
from .._records import (
    Attempt,
    AttemptStatus,
    LogRecord,
    Progress,
    Run,
    RunStatus,
    StepRecord,
    StepStatus,
    Wait,
    WaitStatus,
)
from .._timefmt import parse_ts
from .executor import Row

RUN_COLUMNS = (
    "id, job_name, input, status, idempotency_key, concurrency_key, labels, "
    "current_step_index, completed_step_count, progress, output, error, lease_owner, "
    "lease_expires_at, lease_generation, started_at, completed_at, created_at, updated_at, "
    "waiting_on_wait_id, wake_at, attempt"
)
STEP_COLUMNS = 'id, run_id, name, "index", status, output, error, started_at, completed_at'
LOG_COLUMNS = "id, run_id, step_name, level, message, data, created_at"


def status_list(statuses: frozenset[RunStatus]) -> str:
    """``('a', 'b')`` of a set of :mod:`durably.lifecycle`, in declaration order."""
    return "(" + ", ".join(f"'{s.value}'" for s in RunStatus if s in statuses) + ")"


#: The guard of every write about a claimed run: the lease generation still holds.
FENCE = "status = 'leased' AND lease_generation = ?"
#: ``FENCE`` for a statement on another table (parameters: run id, generation).
HELD = f"EXISTS (SELECT 1 FROM durably_runs WHERE id = ? AND {FENCE})"

WAIT_COLUMNS = (
    "id, run_id, name, kind, status, outcome, payload, signal_id, metadata, deadline_at, "
    "created_at, suspended_at, resolved_at, first_resumed_at"
)

decode_json = msgspec.json.Decoder().decode
_decode_progress = msgspec.json.Decoder(Progress).decode
encode_json = msgspec.json.Encoder().encode
_RUN_STATUS = {s.value: s for s in RunStatus}
_STEP_STATUS = {s.value: s for s in StepStatus}


def _ts(value: str | None) -> datetime | None:
    return None if value is None else parse_ts(value)


def _json(text: str | None) -> Any:
    # As the reference reads it: an empty or missing value is null.
    return decode_json(text) if text else None


def _progress(text: str | None) -> Progress | None:
    if not text:
        return None
    try:
        return _decode_progress(text)
    except msgspec.ValidationError:  # not a progress object: nothing we can show
        return None


def to_run_status(value: str) -> RunStatus:
    try:
        return _RUN_STATUS[value]
    except KeyError:
        raise StorageCorruptError(
            f"A run has status {value!r}, which this release of durably does not know; "
            "upgrade durably"
        ) from None


def to_run(row: Row) -> Run:
    return Run(
        id=row[0],
        job_name=row[1],
        input=_json(row[2]),
        status=to_run_status(row[3]),
        idempotency_key=row[4],
        concurrency_key=row[5],
        labels=decode_json(row[6]) if row[6] else {},
        current_step_index=row[7],
        completed_step_count=row[8],
        progress=_progress(row[9]),
        output=_json(row[10]),
        error=row[11],
        lease_owner=row[12],
        lease_expires_at=_ts(row[13]),
        lease_generation=row[14],
        started_at=_ts(row[15]),
        completed_at=_ts(row[16]),
        created_at=parse_ts(row[17]),
        updated_at=parse_ts(row[18]),
        waiting_on_wait_id=row[19],
        wake_at=_ts(row[20]),
        attempt=row[21],
    )


def to_step(row: Row) -> StepRecord:
    return StepRecord(
        id=row[0],
        run_id=row[1],
        name=row[2],
        index=row[3],
        status=_STEP_STATUS[row[4]],
        output=_json(row[5]),
        error=row[6],
        started_at=parse_ts(row[7]),
        completed_at=_ts(row[8]),
    )


def to_log(row: Row) -> LogRecord:
    return LogRecord(
        id=row[0],
        run_id=row[1],
        step_name=row[2],
        level=row[3],
        message=row[4],
        data=_json(row[5]),
        created_at=parse_ts(row[6]),
    )


_WAIT_STATUS = {s.value: s for s in WaitStatus}


def to_wait(row: Row) -> Wait:
    return Wait(
        id=row[0],
        run_id=row[1],
        name=row[2],
        kind=row[3],
        status=_WAIT_STATUS[row[4]],
        outcome=row[5],
        payload=_json(row[6]),
        signal_id=row[7],
        metadata=_json(row[8]),
        deadline_at=_ts(row[9]),
        created_at=parse_ts(row[10]),
        suspended_at=_ts(row[11]),
        resolved_at=_ts(row[12]),
        first_resumed_at=_ts(row[13]),
    )


ATTEMPT_COLUMNS = (
    "id, run_id, step_name, step_index, attempt, status, lease_generation, error, "
    "started_at, completed_at, next_attempt_at"
)
_ATTEMPT_STATUS = {s.value: s for s in AttemptStatus}


def to_attempt(row: Row) -> Attempt:
    return Attempt(
        id=row[0],
        run_id=row[1],
        step_name=row[2],
        step_index=row[3],
        attempt=row[4],
        status=_ATTEMPT_STATUS[row[5]],
        lease_generation=row[6],
        error=row[7],
        started_at=parse_ts(row[8]),
        completed_at=_ts(row[9]),
        next_attempt_at=_ts(row[10]),
    )
