"""What :class:`~durably.sql.SqlStorage` does when a write's answer was lost.

A remote executor raises :class:`~durably.StorageOutcomeUnknownError` when a request
with a write left but its answer never came back (the connection broke, the server
died): the write may or may not have been applied. Sending it again blindly could
apply it twice, or turn a success into a refusal (a fenced ``UPDATE`` that already
applied matches no row the second time). Giving up instead costs a whole lease
duration: the run waits for its lease to expire before anyone resumes it.

So each write that can be checked is checked by what it wrote:

- inserts carry ids chosen here (ULIDs): a read by id says whether they landed;
- fenced updates set a state only the holder of the lease generation can set: a read
  of the run says whether it is in that state, still waiting for it, or gone.

When the read shows the write did not land (yet), it is sent once more. Each such
write is idempotent under its check: should the first copy still land late, the
second one conflicts on the id or matches no row, and the check decides again.
Reads are retried by the executor itself. The claim is not resolved (two claims of
one owner in the same millisecond could not be told apart): its error is raised,
the worker backs off, and a lease it may have taken expires.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from .._errors import ConflictError, StorageOutcomeUnknownError
from .executor import ConstraintViolation

T = TypeVar("T")

#: ``landed()``: the operation's result if the write was applied, ``None`` if it was
#: not (yet) and may be sent again.
Check = Callable[[], Awaitable[T | None]]


async def resolved(write: Callable[[], Awaitable[T]], landed: Check[T]) -> T:
    """``await write()``; if its answer is lost, let ``landed`` decide, sending the
    write once more only when ``landed`` says it did not apply."""
    try:
        return await write()
    except StorageOutcomeUnknownError:
        pass
    return await resolve_lost(write, landed)


async def resolve_lost(write: Callable[[], Awaitable[T]], landed: Check[T]) -> T:
    """What :func:`resolved` does once the first answer was lost. The per-step writes
    call it from their ``except`` clause instead of going through :func:`resolved`, so
    that the usual path builds no closures (a checkpoint is ~25 µs of Python)."""
    found = await landed()
    if found is not None:
        return found
    try:
        result = await write()
    except (StorageOutcomeUnknownError, ConstraintViolation, ConflictError):
        found = await landed()
        if found is not None:
            return found
        raise
    if not result:  # refused: the first copy may have landed in between
        found = await landed()
        if found is not None:
            return found
    return result
