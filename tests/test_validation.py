"""Bad input at every edge gets a ``ValidationError`` that says what was wrong, and
nothing is written; what only shows while a run executes fails that run clearly
(never a raw driver or pydantic exception, never a run retried forever)."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import pydantic
import pytest
import typing_extensions
from engine_support import recorder

from durably import (
    RunStatus,
    Step,
    StepOutputError,
    ValidationError,
    create_durably,
    define_job,
)
from durably._validate import MAX_JSON_DEPTH

LONE = "\ud800"  # a lone surrogate: a str Python accepts and no database can store


class PlainClass:
    """Not something pydantic can build a schema for."""


class OldTypedDict(typing.TypedDict):  # pydantic refuses typing.TypedDict on 3.11
    a: int


class NewTypedDict(typing_extensions.TypedDict):
    a: int


@dataclasses.dataclass
class Pair:
    left: str
    right: int


async def ok(step: Step, payload: Any) -> Any:
    return payload


# -- job definitions --


@pytest.mark.parametrize("role", ["input", "output"])
@pytest.mark.parametrize("tp", [PlainClass, OldTypedDict], ids=["plain-class", "typing-TypedDict"])
def test_define_job__type_pydantic_cannot_validate_is_refused(role: str, tp: Any) -> None:
    with pytest.raises(ValidationError, match=rf"Job 'j': its {role} type .* cannot be validated"):
        define_job("j", run=ok, **{role: tp})


def test_define_job__name_must_be_text() -> None:
    with pytest.raises(ValidationError, match="not valid Unicode"):
        define_job(f"j{LONE}", run=ok)


def test_create_durably__labels_schema_pydantic_cannot_validate() -> None:
    with pytest.raises(ValidationError, match=r"labels=.*cannot be validated"):
        create_durably("memory://", labels=PlainClass)


# -- triggers: nothing written --


@pytest.mark.parametrize(
    "options",
    [
        {"idempotency_key": f"k{LONE}"},
        {"concurrency_key": LONE},
        {"labels": {"team": LONE}},
    ],
    ids=["idempotency-key", "concurrency-key", "label-value"],
)
async def test_trigger__text_that_cannot_be_stored_is_refused(
    make_durably: Any, options: dict[str, Any]
) -> None:
    d = make_durably({"j": define_job("j", run=ok)})
    await d.migrate()
    with pytest.raises(ValidationError, match="not valid Unicode"):
        await d.jobs.j.trigger({}, **options)
    assert await d.get_runs() == []


def nested(depth: int) -> Any:
    """A value of ``depth`` levels of objects and arrays, alternating."""
    value: Any = 1
    for level in range(depth):
        value = {"a": value} if level % 2 else [value]
    return value


async def test_trigger__input_nested_deeper_than_the_http_limit_is_refused(
    make_durably: Any,
) -> None:
    """One limit for every edge: the HTTP handler's (``MAX_JSON_DEPTH``). trigger()
    used to accept ~990 levels (as deep as the stack let msgspec encode), which a
    deeper stack may not decode again."""
    d = make_durably({"j": define_job("j", run=ok)})
    await d.migrate()
    for depth in (MAX_JSON_DEPTH + 1, 900):
        with pytest.raises(ValidationError, match=f"input for job 'j'.*more than {MAX_JSON_DEPTH}"):
            await d.jobs.j.trigger(nested(depth))
        with pytest.raises(ValidationError, match="nested more than"):
            await d.jobs.j.trigger_and_wait({"x": nested(depth)}, timeout=1)
        with pytest.raises(ValidationError, match=r"Item 1: .*nested more than"):
            await d.jobs.j.batch_trigger([{}, nested(depth)])
    assert await d.get_runs() == []
    # at the limit, and wide rather than deep: stored and read back
    wide = [nested(MAX_JSON_DEPTH - 1) for _ in range(50)]
    run_id = (await d.jobs.j.trigger(nested(MAX_JSON_DEPTH))).id
    wide_id = (await d.jobs.j.trigger(wide)).id
    assert (await d.get_run(run_id)).input == nested(MAX_JSON_DEPTH)
    assert (await d.get_run(wide_id)).input == wide


async def test_trigger__validator_raising_another_exception_is_a_validation_error(
    make_durably: Any,
) -> None:
    class In(pydantic.BaseModel):
        n: int

        @pydantic.field_validator("n")
        @classmethod
        def explode(cls, value: int) -> int:
            raise LookupError("no such n")  # not a ValueError: pydantic lets it through

    d = make_durably({"j": define_job("j", input=In, run=ok)})
    await d.migrate()
    with pytest.raises(ValidationError, match="LookupError: no such n"):
        await d.jobs.j.trigger({"n": 1})
    assert await d.get_runs() == []


async def test_get_runs__job_name_must_be_text(make_durably: Any) -> None:
    d = make_durably()
    with pytest.raises(ValidationError, match="job_name"):
        await d.get_runs(job_name=123)
    with pytest.raises(ValidationError, match="not valid Unicode"):
        await d.get_runs(job_name=[LONE])


# -- while a run executes --


async def test_output_validator_raising_another_exception_fails_the_run(
    make_durably: Any,
) -> None:
    class Out(pydantic.BaseModel):
        n: int

        @pydantic.field_validator("n")
        @classmethod
        def explode(cls, value: int) -> int:
            raise LookupError("bad n")

    d = make_durably({"j": define_job("j", output=Out, run=ok)})
    await d.migrate()
    triggered = await d.jobs.j.trigger({"n": 1})
    assert await d.process_one()
    run = await d.get_run(triggered.id)
    assert run is not None
    assert run.status is RunStatus.FAILED  # failed once, not retried forever
    assert run.error == "Invalid output: LookupError: bad n"


@pytest.mark.parametrize(
    ("input_type", "value", "expected"),
    [
        (list[int], ["1", 2], [1, 2]),
        (Pair, {"left": "a", "right": "2"}, Pair("a", 2)),
        (NewTypedDict, {"a": "3"}, {"a": 3}),
    ],
    ids=["list-of-int", "dataclass", "TypedDict"],
)
async def test_job__any_pydantic_type_as_input_and_output(
    make_durably: Any, input_type: Any, value: Any, expected: Any
) -> None:
    seen: list[Any] = []

    async def echo(step: Step, payload: Any) -> Any:
        seen.append(payload)
        return payload

    d = make_durably({"j": define_job("j", input=input_type, output=input_type, run=echo)})
    await d.init()
    result = await d.jobs.j.trigger_and_wait(value, timeout=10)
    assert seen == [expected]  # validated and coerced before the job saw it
    assert result.output == expected


async def test_step__return_annotation_pydantic_cannot_handle_is_treated_as_unknown(
    make_durably: Any,
) -> None:
    def make() -> OldTypedDict:
        return {"a": 1}

    async def job(step: Step, payload: Any) -> Any:
        return await step.run("make", make)

    d = make_durably({"j": define_job("j", run=job)})
    await d.migrate()
    triggered = await d.jobs.j.trigger({})
    assert await d.process_one()
    run = await d.get_run(triggered.id)
    assert run is not None
    assert (run.status, run.output) == (RunStatus.COMPLETED, {"a": 1})


async def test_step__explicit_returns_type_pydantic_cannot_handle_fails_the_step(
    make_durably: Any,
) -> None:
    caught: list[StepOutputError] = []

    async def job(step: Step, payload: Any) -> Any:
        try:
            await step.run("make", lambda: 1, returns=PlainClass)
        except StepOutputError as exc:
            caught.append(exc)
            raise

    d = make_durably({"j": define_job("j", run=job)})
    await d.migrate()
    fails = recorder(d, "step:fail")
    triggered = await d.jobs.j.trigger({})
    assert await d.process_one()
    run = await d.get_run(triggered.id)
    assert run is not None
    assert run.status is RunStatus.FAILED
    assert "'make'" in str(caught[0])
    assert [e.step_name for e in fails] == ["make"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("half",), "current must be a finite number"),
        ((float("nan"),), "current must be a finite number"),
        ((1, "10"), "total must be a finite number"),
        ((1, 10, 5), "message must be a string"),
        ((1, 10, LONE), "not valid Unicode"),
    ],
)
async def test_step_progress__bad_values_raise_in_the_job(
    make_durably: Any, args: tuple[Any, ...], message: str
) -> None:
    caught: list[Exception] = []

    async def job(step: Step, payload: Any) -> str:
        try:
            step.progress(*args)
        except ValidationError as exc:
            caught.append(exc)
        step.progress(1, 2, "fine")
        return "done"

    d = make_durably({"j": define_job("j", run=job)})
    await d.migrate()
    triggered = await d.jobs.j.trigger({})
    assert await d.process_one()
    run = await d.get_run(triggered.id)
    assert run is not None
    assert run.status is RunStatus.COMPLETED
    assert len(caught) == 1
    assert message in str(caught[0])


@pytest.mark.parametrize("where", ["step-name", "log-message"])
async def test_step__text_that_cannot_be_stored_raises_in_the_job(
    make_durably: Any, where: str
) -> None:
    caught: list[Exception] = []

    async def job(step: Step, payload: Any) -> str:
        try:
            if where == "step-name":
                await step.run(f"s{LONE}", lambda: 1)
            else:
                step.log.info(f"hello {LONE}")
        except ValidationError as exc:
            caught.append(exc)
        return "done"

    d = make_durably({"j": define_job("j", run=job)})
    await d.migrate()
    triggered = await d.jobs.j.trigger({})
    assert await d.process_one()
    run = await d.get_run(triggered.id)
    assert run is not None
    assert run.status is RunStatus.COMPLETED
    assert "not valid Unicode" in str(caught[0])


async def test_run_id_that_is_not_text__no_driver_error_leaks(make_durably: Any) -> None:
    d = make_durably()
    await d.migrate()
    for call in (d.get_run, d.get_steps, d.get_logs):
        try:
            result = await call(LONE)
        except ValidationError as exc:
            result = str(exc)
        # no such run, or refused as not storable: never a raw UnicodeEncodeError
        assert not result or "not valid Unicode" in result


async def test_job_error_text_that_cannot_be_stored_still_fails_the_run(
    make_durably: Any,
) -> None:
    # e.g. an OSError about a file name that was not valid UTF-8
    def read() -> None:
        raise FileNotFoundError(f"no such file: 'photo-{LONE}.jpg'")

    async def job(step: Step, payload: Any) -> None:
        await step.run("read", read)

    d = make_durably({"j": define_job("j", run=job)})
    await d.migrate()
    triggered = await d.jobs.j.trigger({})
    assert await d.process_one()
    run = await d.get_run(triggered.id)
    assert run is not None
    assert run.status is RunStatus.FAILED
    assert run.error == "no such file: 'photo-\\ud800.jpg'"
    [step] = await d.get_steps(triggered.id)
    assert step.error == run.error


async def test_job_error_text_with_nul_is_stored_escaped(make_durably: Any) -> None:
    # PostgreSQL text cannot hold U+0000; the error is written the same on every backend
    def read() -> None:
        raise ValueError("bad byte \x00 in header")

    async def job(step: Step, payload: Any) -> None:
        await step.run("read", read)

    d = make_durably({"j": define_job("j", run=job)})
    await d.migrate()
    triggered = await d.jobs.j.trigger({})
    assert await d.process_one()
    run = await d.get_run(triggered.id)
    assert run is not None
    assert run.status is RunStatus.FAILED
    assert run.error == "bad byte \\x00 in header"


async def test_an_adapter_refusing_the_error_text__the_run_still_fails_once(
    clock: Any,
) -> None:
    """An adapter that cannot store some text in ``fail_run`` raises ValidationError:
    the run is failed with the text in ASCII, not left leased to be claimed again
    (and fail again) forever."""
    from durably import create_durably
    from durably_testing.memory import MemoryStorage

    refused: list[str] = []

    class AsciiOnly(MemoryStorage):
        async def fail_run(self, run_id: str, generation: int, error: str, now: Any) -> bool:
            if not error.isascii():
                refused.append(error)
                raise ValidationError("this database stores ASCII only")
            return await super().fail_run(run_id, generation, error, now)

    calls = []

    async def job(step: Step, payload: Any) -> None:
        calls.append(1)
        raise RuntimeError("échec")

    storage = AsciiOnly()
    d = create_durably(storage, jobs={"j": define_job("j", run=job)}, clock=clock)
    await d.migrate()
    triggered = await d.jobs.j.trigger({})
    assert await d.process_one()
    run = await d.get_run(triggered.id)
    assert run is not None
    assert run.status is RunStatus.FAILED
    assert run.error == "\\xe9chec"
    assert refused == ["échec"]
    await clock.advance(3600)  # long past any lease: nothing left to claim
    assert not await d.process_one()
    assert calls == [1]
