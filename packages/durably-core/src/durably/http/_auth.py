"""Auth hooks, called in the reference's order.

``authenticate(request)`` runs first for every request (unknown routes too) and
returns a context object; the route then checks its parameters; then, depending
on the route, ``on_trigger(ctx, trigger)`` and ``scope_keys(ctx)``,
``on_run_access(ctx, run, operation)`` or ``scope_runs(ctx, filter)`` /
``scope_runs_subscribe(ctx, filter)``. Hooks may be sync or async. To reject a request, raise
``starlette.exceptions.HTTPException(status_code, detail)`` (the response is
``{"error": detail}`` with that status and the exception's headers) or one of
durably's ``NotFoundError`` (404), ``ValidationError`` (400), ``ConflictError``
(409). Any other exception is a 500 whose body never shows its message.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias, TypeVar

from starlette.requests import Request

from .. import Run

T = TypeVar("T")
MaybeAwaitable: TypeAlias = T | Awaitable[T]

RunOperation = Literal[
    "read",
    "subscribe",
    "steps",
    "attempts",
    "retrigger",
    "cancel",
    "delete",
    "logs",
    "retry",
    "waits",
    "signal",
]
"""What a run-level route does with the run, as passed to ``Auth.on_run_access``
(``logs`` and ``retry``: routes of the dashboard, ``create_handler(dashboard=True)``;
``waits`` and ``signal``: the durable-wait routes)."""


@dataclass(frozen=True, kw_only=True)
class TriggerRequest:
    """The body of ``POST /trigger`` (snake_case)."""

    job_name: str
    input: Any = None
    idempotency_key: str | None = None
    concurrency_key: str | None = None
    labels: dict[str, str] | None = None
    coalesce: str | None = None


@dataclass(frozen=True, kw_only=True)
class SignalRequest:
    """The body of ``POST /signal?runId=…`` (snake_case): which wait of the run, the
    payload, and the sender's signal id (a retry with the same id and payload is a
    duplicate, not a conflict)."""

    name: str
    payload: Any = None
    signal_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class RunsFilter:
    """``GET /runs`` query: ``None`` means "any"."""

    job_name: tuple[str, ...] | None = None
    status: tuple[str, ...] | None = None
    labels: dict[str, str] | None = None
    limit: int | None = None
    offset: int | None = None


@dataclass(frozen=True, kw_only=True)
class RunsSubscribeFilter:
    """``GET /runs/subscribe`` query."""

    job_name: tuple[str, ...] | None = None
    labels: dict[str, str] | None = None


@dataclass(frozen=True, kw_only=True)
class Auth:
    """Authentication and authorization hooks for ``create_handler``.

    - ``authenticate(request) -> ctx``: every request, first.
    - ``on_trigger(ctx, trigger)``: after the body is checked and the job found;
      may return a replacement ``TriggerRequest`` (e.g. with a tenant label added).
    - ``on_run_access(ctx, run, operation)``: before any run-level route, with the run.
      The wait routes (``GET /waits``, ``GET /wait``: operation ``"waits"``;
      ``POST /signal``: ``"signal"``) require it: with ``authenticate`` and without
      it they answer 403 (a wait's address alone grants nothing).
    - ``scope_runs(ctx, filter) -> filter``: narrows ``GET /runs``.
    - ``scope_runs_subscribe(ctx, filter) -> filter``: narrows ``GET /runs/subscribe``;
      without it ``scope_runs`` is used (its ``job_name`` and ``labels``).
    - ``scope_keys(ctx) -> str | None``: the namespace of this caller's idempotency
      and concurrency keys (e.g. the tenant id). Keys are global per job, so without
      it a tenant reusing another's key gets the other's run back, a 409 names the
      other's pending run, and ``coalesce="skip"`` joins the other's run. With it,
      ``POST /trigger`` stores ``scoped_key(namespace, key)`` for each key of the
      final request (after ``on_trigger``); ``None`` leaves this caller's keys as sent.
    """

    authenticate: Callable[[Request], MaybeAwaitable[Any]]
    on_trigger: Callable[[Any, TriggerRequest], MaybeAwaitable[TriggerRequest | None]] | None = None
    on_run_access: Callable[[Any, Run, RunOperation], MaybeAwaitable[None]] | None = None
    scope_runs: Callable[[Any, RunsFilter], MaybeAwaitable[RunsFilter]] | None = None
    scope_runs_subscribe: (
        Callable[[Any, RunsSubscribeFilter], MaybeAwaitable[RunsSubscribeFilter]] | None
    ) = None
    scope_keys: Callable[[Any], MaybeAwaitable[str | None]] | None = None

    def __post_init__(self) -> None:
        if not callable(self.authenticate):
            raise TypeError("Auth(authenticate=...) must be a callable taking the request")


def scoped_key(namespace: str, key: str) -> str:
    """The key ``POST /trigger`` stores for ``key`` sent by a caller whose
    ``Auth.scope_keys`` is ``namespace``: ``"<len(namespace)>:<namespace>:<key>"``.
    The length prefix makes it one-to-one, whatever characters either holds, so no
    key of one namespace equals a key of another. Server code that triggers for a
    tenant uses it to share keys with that tenant's HTTP triggers."""
    if not isinstance(namespace, str) or not isinstance(key, str):
        raise TypeError(
            f"scoped_key takes two strings, got {type(namespace).__name__} and {type(key).__name__}"
        )
    return f"{len(namespace)}:{namespace}:{key}"


async def call(fn: Callable[..., MaybeAwaitable[T]], *args: Any) -> T:
    """Call a sync or async hook."""
    result = fn(*args)
    if inspect.isawaitable(result):
        return await result
    return result
