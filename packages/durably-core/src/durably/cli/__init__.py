"""The ``durably`` command line: inspect and act on runs, run a worker, serve the
dashboard. Needs the ``cli`` extra: ``pip install "durably-core[cli]"``.

Every command takes ``--url`` (or ``DURABLY_DATABASE_URL``). Commands that only
read (``runs list``, ``runs show``, ``events``, ``doctor``) and those that act on
stored runs (``runs retry``, ``cancel``, ``delete``, ``purge``) never import the
job code; ``worker``, ``trigger`` and ``runs retrigger`` (which validate input with
the job's input type) load it from ``--app module:attribute`` (or ``DURABLY_APP``).
Exit codes: :data:`EXIT_CODES`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ._exit import EXIT_CODES

__all__ = ["EXIT_CODES", "main"]

_EXTRA = ("click", "rich", "uvicorn", "starlette", "sse_starlette")


def main(argv: Sequence[str] | None = None) -> None:
    """The ``durably`` console script (``argv``: the arguments, default ``sys.argv[1:]``)."""
    try:
        from ._commands import cli
    except ImportError as exc:
        if exc.name is None or exc.name.partition(".")[0] not in _EXTRA:
            raise
        sys.stderr.write(
            f"durably: the command line needs the cli extra ({exc.name} is missing): "
            "pip install 'durably-core[cli]'\n"
        )
        raise SystemExit(EXIT_CODES["usage"]) from None
    cli.main(args=list(argv) if argv is not None else None, prog_name="durably")
