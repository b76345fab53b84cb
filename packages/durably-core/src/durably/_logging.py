"""What durably writes to the standard ``logging`` module.

- ``durably.job.<job name>``: every ``step.log`` line (``info`` → INFO, ``warn`` →
  WARNING, ``error`` → ERROR), logged in the thread and context of the code that
  called it, with ``run_id``, ``job_name``, ``step_name``, ``lease_generation`` and
  ``data`` (the keyword arguments, as given) in ``extra``;
- ``durably.worker``: every error of the background work (a ``worker:error``
  event), a WARNING with ``context`` and ``run_id`` in ``extra`` (and the
  traceback when it is not a durably error: a bug, not the database);
- ``durably``: a listener that raised (the default ``on_listener_error``).

Quiet by default: the package adds a ``NullHandler`` to ``durably`` (the
library convention), so nothing is printed until the application configures
logging — ``logging.basicConfig(level=logging.INFO)`` shows them all.
"""

from __future__ import annotations

import logging
from typing import Any

from ._errors import DurablyError
from ._records import LogLevel

#: ``step.log`` levels as ``logging`` levels.
LEVELS: dict[LogLevel, int] = {
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}

JOB_LOGGER_PREFIX = "durably.job."
WORKER_LOGGER = "durably.worker"

# Quiet unless the application configures logging (the library convention): with a
# handler on "durably", Python's last-resort handler never prints its records.
logging.getLogger("durably").addHandler(logging.NullHandler())


def job_logger(job_name: str) -> logging.Logger:
    """The logger of a job's ``step.log`` lines."""
    return logging.getLogger(JOB_LOGGER_PREFIX + job_name)


def log_worker_error(exc: BaseException, context: str, run_id: str | None) -> None:
    logging.getLogger(WORKER_LOGGER).warning(
        "durably worker error (%s%s): %s",
        context,
        f", run {run_id}" if run_id else "",
        str(exc) or type(exc).__name__,
        exc_info=None if isinstance(exc, DurablyError) else exc,
        extra={"context": context, "run_id": run_id},
    )


def step_log_extra(
    run_id: str, job_name: str, step_name: str | None, generation: int, data: dict[str, Any]
) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "job_name": job_name,
        "step_name": step_name,
        "lease_generation": generation,
        "data": data,
    }
