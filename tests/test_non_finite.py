"""NaN and ±infinity at every edge: JSON has no form for them, and msgspec and
pydantic both wrote them silently as ``null`` (a NaN input accepted and the run
failing later; a ``-> float`` step checkpointed as ``null`` and replayed as ``null``
by every retry; an output model holding ``inf`` completed with ``null`` and
``trigger_and_wait`` raising a raw ``pydantic.ValidationError``). Now each is a
durably error before anything is written, and a stored value that no longer fits
its type fails with a durably error too."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec
import pydantic
import pytest
from engine_support import recorder

from durably import (
    Durably,
    Run,
    RunFailedError,
    RunStatus,
    Step,
    StepOutputError,
    ValidationError,
    define_job,
)

NAN = float("nan")
INF = float("inf")


@pytest.fixture(params=["memory", "sqlite-file"])
def backend(request: pytest.FixtureRequest) -> str:
    """The engine's behaviour, not a backend's: two backends are enough."""
    return str(request.param)


class Point(pydantic.BaseModel):
    x: float
    y: float = 0.0


class Total(pydantic.BaseModel):
    total: float


class ConstantsTotal(pydantic.BaseModel):
    """pydantic writes its NaN/inf as the (invalid JSON) literals NaN/Infinity."""

    model_config = pydantic.ConfigDict(ser_json_inf_nan="constants")
    total: float


async def echo(step: Step, payload: Any) -> Any:
    return payload


async def run_once(d: Durably) -> Run:
    """Migrate, trigger job ``j`` once, process that run in this task; the stored run."""
    await d.migrate()
    run_id = (await d.jobs.j.trigger({})).id
    assert await d.process_one()
    run = await d.get_run(run_id)
    assert run is not None
    return run


# -- job input, at trigger --


@pytest.mark.parametrize(
    ("input_type", "payload", "where"),
    [
        (None, {"x": NAN}, "x is nan"),
        (None, {"points": [1.0, {"y": -INF}]}, "points.1.y is -inf"),
        (None, INF, "the value is inf"),
        (Point, {"x": INF}, "x is inf"),
        (Point, {"x": 1.0, "y": NAN}, "y is nan"),
        (list[float], [1.0, 2.0, NAN], "2 is nan"),
    ],
)
async def test_trigger__non_finite_input_is_refused_before_anything_is_written(
    make_durably: Any, input_type: Any, payload: Any, where: str
) -> None:
    d = make_durably({"j": define_job("j", input=input_type, run=echo)})
    await d.migrate()
    with pytest.raises(ValidationError, match="Invalid input for job 'j'") as info:
        await d.jobs.j.trigger(payload)
    assert where in str(info.value)
    assert "NaN and infinity cannot be stored" in str(info.value)
    assert await d.get_runs() == []


@pytest.mark.parametrize("input_type", [None, Point])
async def test_batch_trigger__non_finite_item_refuses_the_batch(
    make_durably: Any, input_type: Any
) -> None:
    d = make_durably({"j": define_job("j", input=input_type, run=echo)})
    await d.migrate()
    with pytest.raises(ValidationError, match=r"Item 1: .*y is nan"):
        await d.jobs.j.batch_trigger([{"x": 1.0}, {"x": 1.0, "y": NAN}])
    assert await d.get_runs() == []


async def test_trigger__finite_values_and_null_still_pass(make_durably: Any) -> None:
    d = make_durably({"j": define_job("j", run=echo), "p": define_job("p", input=Point, run=echo)})
    await d.migrate()
    value = {"a": None, "b": [1.5, None, -0.0, 1e308], "c": "NaN", "d": "null"}
    run = (await d.jobs.j.trigger(value)).run
    assert run.input == value
    assert (await d.jobs.p.trigger({"x": 1e-300})).run.input == {"x": 1e-300, "y": 0.0}


# -- step results, at the checkpoint --


async def nan_float() -> float:
    return NAN


async def inf_in_dict() -> dict[str, Any]:
    return {"mean": 1.0, "max": INF}


async def inf_untyped():  # type: ignore[no-untyped-def]  # no annotation: untyped
    return [1, 2, {"v": -INF}]


async def inf_model() -> Total:
    return Total(total=INF)


async def inf_constants() -> ConstantsTotal:
    return ConstantsTotal(total=INF)


class Bag(pydantic.BaseModel):
    """JSON mode turns a NaN in an ``Any`` field into None before anyone sees it."""

    extra: dict[str, Any]


async def nan_in_any_field():  # type: ignore[no-untyped-def]  # untyped: msgspec encodes
    return Bag(extra={"ratio": NAN})


@dataclasses.dataclass
class Stats:
    mean: float


class StructStats(msgspec.Struct):
    values: list[float]


async def nan_in_dataclass():  # type: ignore[no-untyped-def]
    return {"stats": Stats(mean=NAN)}


async def inf_in_struct():  # type: ignore[no-untyped-def]
    return StructStats(values=[1.0, INF])


@pytest.mark.parametrize(
    "fn",
    [
        nan_float,
        inf_in_dict,
        inf_untyped,
        inf_model,
        inf_constants,
        nan_in_any_field,
        nan_in_dataclass,
        inf_in_struct,
    ],
    ids=lambda f: f.__name__,
)
async def test_step__non_finite_result_fails_the_step_and_nothing_is_checkpointed(
    make_durably: Any, fn: Any
) -> None:
    async def job(step: Step, payload: Any) -> Any:
        return await step.run("compute", fn)

    d = make_durably({"j": define_job("j", run=job)}, preserve_steps=True)
    fails = recorder(d, "step:fail")
    completes = recorder(d, "step:complete")
    run = await run_once(d)
    assert run.status is RunStatus.FAILED
    assert run.error is not None
    assert "Step 'compute'" in run.error
    assert "NaN and infinity cannot be stored" in run.error
    assert [e.step_name for e in fails] == ["compute"]
    assert completes == []
    assert [s.status.value for s in await d.get_steps(run.id)] == []


async def test_step__retry_after_a_nan_runs_the_step_again_and_succeeds(make_durably: Any) -> None:
    """Before: the NaN was checkpointed as null and every retry replayed the null."""
    results = iter([NAN, 2.5])
    calls: list[float] = []

    async def measure() -> float:
        value = next(results)
        calls.append(value)
        return value

    async def job(step: Step, payload: Any) -> float:
        value = await step.run("measure", measure)
        return value * 2

    d = make_durably({"j": define_job("j", run=job)})
    await d.migrate()
    run_id = (await d.jobs.j.trigger({})).id
    assert await d.process_one()
    failed = await d.get_run(run_id)
    assert failed is not None
    assert failed.status is RunStatus.FAILED
    await d.retry(run_id)
    assert await d.process_one()
    done = await d.get_run(run_id)
    assert done is not None
    assert done.status is RunStatus.COMPLETED
    assert done.output == 5.0
    assert len(calls) == 2


async def test_step__non_finite_caught_by_the_job_as_a_durably_error(make_durably: Any) -> None:
    caught: list[BaseException] = []

    async def job(step: Step, payload: Any) -> str:
        try:
            await step.run("bad", nan_float)
        except StepOutputError as exc:
            caught.append(exc)
        return "recovered"

    d = make_durably({"j": define_job("j", run=job)})
    run = await run_once(d)
    assert run.status is RunStatus.COMPLETED
    [exc] = caught
    assert isinstance(exc, StepOutputError)
    assert exc.step_name == "bad"


# -- job output, at completion --


@pytest.mark.parametrize(
    ("output_type", "value"),
    [(None, {"total": INF}), (Total, {"total": INF}), (Total, Total(total=NAN)), (float, NAN)],
)
async def test_output__non_finite_fails_the_run_and_trigger_and_wait_raises_a_durably_error(
    make_durably: Any, output_type: Any, value: Any
) -> None:
    async def job(step: Step, payload: Any) -> Any:
        return value

    d = make_durably({"j": define_job("j", output=output_type, run=job)})
    await d.migrate()
    d.start()
    with pytest.raises(RunFailedError, match="Invalid output") as info:
        await d.jobs.j.trigger_and_wait({})
    assert "NaN and infinity cannot be stored" in str(info.value)
    run = await d.get_run(info.value.run_id)
    assert run is not None
    assert run.output is None


# -- logs and progress --


async def test_log__non_finite_data_raises_in_the_job_and_nothing_is_logged(
    make_durably: Any,
) -> None:
    caught: list[Exception] = []

    def in_a_thread(step: Step) -> int:
        try:
            step.log.info("from a thread", ratio=NAN)
        except ValidationError as exc:
            caught.append(exc)
        return 1

    async def job(step: Step, payload: Any) -> str:
        try:
            step.log.warn("stats", values=[1.0, INF])
        except ValidationError as exc:
            caught.append(exc)
        await step.run("sync", in_a_thread, step)
        step.log.info("fine", mean=1.5, missing=None)
        return "done"

    d = make_durably({"j": define_job("j", run=job)}, preserve_steps=True)
    writes = recorder(d, "log:write")
    run = await run_once(d)
    assert run.status is RunStatus.COMPLETED
    assert ["values.1 is inf" in str(caught[0]), "ratio is nan" in str(caught[1])] == [True, True]
    assert all(str(e).startswith("Log data:") for e in caught)
    assert [e.message for e in writes] == ["fine"]
    assert [log.message for log in await d.get_logs(run.id)] == ["fine"]


@pytest.mark.parametrize(("current", "total"), [(1, INF), (INF, None), (-INF, 10)])
async def test_progress__non_finite_raises_in_the_job(
    make_durably: Any, current: float, total: float | None
) -> None:
    caught: list[Exception] = []

    async def job(step: Step, payload: Any) -> str:
        try:
            step.progress(current, total)
        except ValidationError as exc:
            caught.append(exc)
        return "done"

    d = make_durably({"j": define_job("j", run=job)})
    run = await run_once(d)
    assert run.progress is None
    assert len(caught) == 1
    assert "finite number" in str(caught[0])


@pytest.mark.parametrize("value", [NAN, INF])
async def test_labels__non_finite_values_are_refused(make_durably: Any, value: float) -> None:
    d = make_durably({"j": define_job("j", run=echo)})
    await d.migrate()
    with pytest.raises(ValidationError, match="values must be strings"):
        await d.jobs.j.trigger({}, labels={"score": value})
    assert await d.get_runs() == []


# -- stored values that no longer fit their type --


async def test_trigger_and_wait__stored_output_that_does_not_fit_is_a_durably_error(
    make_durably: Any,
) -> None:
    """A run completed with ``{"total": null}`` (its job's output type changed since, or
    an older release stored NaN as null): ``trigger_and_wait`` that finds it raises
    ``ValidationError``, not a raw ``pydantic.ValidationError``."""

    async def old(step: Step, payload: Any) -> Any:
        return {"total": None}

    before = make_durably({"j": define_job("j", run=old)})
    await before.migrate()
    run_id = (await before.jobs.j.trigger({}, idempotency_key="k")).id
    assert await before.process_one()
    after = make_durably({"j": define_job("j", output=Total, run=echo)}, same_db_as=before)
    after.start()
    with pytest.raises(ValidationError, match="does not fit its output type Total") as info:
        await after.jobs.j.trigger_and_wait({}, idempotency_key="k")
    assert not isinstance(info.value, pydantic.ValidationError)
    assert "total" in str(info.value)
    run = await after.get_run(run_id)
    assert run is not None
    assert run.output == {"total": None}


async def test_step_replay__stored_result_that_does_not_fit_fails_with_a_durably_error(
    make_durably: Any,
) -> None:
    """A checkpoint holding ``null`` where the step is now typed ``float``: the replay
    raises ``StepOutputError`` naming the step into the job, never a pydantic error."""
    version = {"typed": False}
    seen: list[BaseException] = []

    async def untyped():  # type: ignore[no-untyped-def]
        return None

    async def typed() -> float:
        return 1.0

    async def job(step: Step, payload: Any) -> Any:
        try:
            value = await step.run("reading", typed if version["typed"] else untyped)
        except Exception as exc:
            seen.append(exc)
            raise
        if not version["typed"]:
            raise RuntimeError("fail after the checkpoint, so that retry() replays it")
        return value

    d = make_durably({"j": define_job("j", run=job)})
    await d.migrate()
    run_id = (await d.jobs.j.trigger({})).id
    assert await d.process_one()
    version["typed"] = True
    await d.retry(run_id)
    assert await d.process_one()
    run = await d.get_run(run_id)
    assert run is not None
    assert run.status is RunStatus.FAILED
    [exc] = seen
    assert isinstance(exc, StepOutputError)
    assert not isinstance(exc, pydantic.ValidationError)
    assert exc.step_name == "reading"
    assert run.error is not None
    assert "Step 'reading': its stored result None does not fit" in run.error


class Lossy(pydantic.BaseModel):
    """Serializes ``count`` as text that does not read back as an int."""

    count: int

    @pydantic.field_serializer("count")
    def _as_words(self, count: int) -> str:
        return f"{count} items"


async def lossy() -> Lossy:
    return Lossy(count=3)


async def test_step__result_that_does_not_read_back_is_refused_before_the_checkpoint(
    make_durably: Any,
) -> None:
    """Before: the checkpoint was written, then reading it back raised a raw pydantic
    error, and every replay failed the same way."""

    async def job(step: Step, payload: Any) -> Any:
        return await step.run("lossy", lossy)

    d = make_durably({"j": define_job("j", run=job)}, preserve_steps=True)
    run = await run_once(d)
    assert run.status is RunStatus.FAILED
    assert run.error is not None
    assert "does not read back as Lossy" in run.error
    assert [s for s in await d.get_steps(run.id) if s.status.value == "completed"] == []
