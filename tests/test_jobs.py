"""define_job forms and job registration (docs/semantics.md, "Public API")."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

import durably
from durably import (
    ConflictError,
    JobDefinition,
    JobHandle,
    Step,
    ValidationError,
    create_durably,
    define_job,
)


class In(pydantic.BaseModel):
    name: str


class Out(pydantic.BaseModel):
    greeting: str


async def greet(step: Step, payload: In) -> Out:
    return Out(greeting=f"hi {payload.name}")


def test_define_job__decorator_form() -> None:
    @define_job("greet", input=In, output=Out)
    async def fn(step: Step, payload: In) -> Out:
        return Out(greeting=payload.name)

    assert isinstance(fn, JobDefinition)
    assert fn.name == "greet"
    assert fn.input is In
    assert fn.output is Out
    assert callable(fn.run)


def test_define_job__run_keyword_form() -> None:
    job = define_job(name="greet", input=In, output=Out, run=greet)
    assert isinstance(job, JobDefinition)
    assert job.name == "greet"
    assert job.run is greet
    assert (job.input, job.output) == (In, Out)


def test_define_job__untyped_defaults_to_none() -> None:
    job = define_job("plain", run=greet)
    assert job.input is None
    assert job.output is None


def test_define_job__bare_decorator_is_rejected() -> None:
    with pytest.raises(ValidationError, match="job name"):
        define_job(greet)  # type: ignore[call-overload]


def test_define_job__sync_function_is_rejected() -> None:
    def not_async(step: Step, payload: Any) -> None:
        return None

    with pytest.raises(ValidationError, match="async def"):
        define_job("sync", run=not_async)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["", "   "])
def test_define_job__empty_name_is_rejected(name: str) -> None:
    with pytest.raises(ValidationError, match="name"):
        define_job(name, run=greet)


def test_define_job__run_without_name_is_rejected() -> None:
    with pytest.raises(ValidationError, match="name"):
        define_job(run=greet)


async def test_register__returns_handles_and_fills_jobs(make_durably: Any) -> None:
    job = define_job("greet", input=In, output=Out, run=greet)
    d = make_durably()
    handles = d.register({"greet_job": job})
    handle = handles["greet_job"]
    assert isinstance(handle, JobHandle)
    assert handle.name == "greet"
    assert handle.key == "greet_job"
    assert handle.definition is job
    assert d.jobs.greet_job is handle
    assert d.jobs["greet_job"] is handle
    assert "greet_job" in d.jobs
    assert list(d.jobs) == ["greet_job"]
    assert len(d.jobs) == 1


async def test_register__jobs_option_of_create_durably(make_durably: Any) -> None:
    job = define_job("greet", run=greet)
    d = make_durably({"g": job})
    assert d.jobs.g.definition is job


async def test_register__same_definition_again_returns_same_handle(make_durably: Any) -> None:
    job = define_job("greet", run=greet)
    d = make_durably({"g": job})
    first = d.jobs.g
    again = d.register({"g": job})["g"]
    assert again is first
    assert len(d.jobs) == 1


async def test_register__different_definition_under_existing_name_conflicts(
    make_durably: Any,
) -> None:
    d = make_durably({"g": define_job("greet", run=greet)})
    other = define_job("greet", run=greet)
    with pytest.raises(ConflictError, match="greet"):
        d.register({"g2": other})
    assert "g2" not in d.jobs


async def test_register__key_taken_by_another_job_conflicts(make_durably: Any) -> None:
    d = make_durably({"g": define_job("greet", run=greet)})
    with pytest.raises(ConflictError, match="'g'"):
        d.register({"g": define_job("other", run=greet)})
    assert d.jobs.g.name == "greet"


async def test_register__non_definition_is_rejected(make_durably: Any) -> None:
    d = make_durably()
    with pytest.raises(ValidationError, match="define_job"):
        d.register({"g": greet})


async def test_register__non_mapping_is_rejected(make_durably: Any) -> None:
    d = make_durably()
    with pytest.raises(ValidationError, match="dict"):
        d.register([define_job("greet", run=greet)])


async def test_jobs__unknown_attribute_names_registered_keys(make_durably: Any) -> None:
    d = make_durably({"g": define_job("greet", run=greet)})
    with pytest.raises(AttributeError, match=r"nope.*\['g'\]"):
        _ = d.jobs.nope


async def test_jobs__unknown_item_is_not_found(make_durably: Any) -> None:
    d = make_durably({"g": define_job("greet", run=greet)})
    with pytest.raises(durably.NotFoundError, match="nope"):
        _ = d.jobs["nope"]


async def test_job_handle__trigger_and_get_run_scoped_to_job(make_durably: Any) -> None:
    d = make_durably({"a": define_job("a", run=greet), "b": define_job("b", run=greet)})
    ra = await d.jobs.a.trigger({"name": "x"})
    rb = await d.jobs.b.trigger({"name": "y"})
    assert (await d.jobs.a.get_run(ra.id)) is not None
    assert await d.jobs.a.get_run(rb.id) is None
    assert [r.id for r in await d.jobs.b.get_runs()] == [rb.id]


@pytest.mark.parametrize("key", ["get", "keys", "items", "values"])
def test_register__key_shadowing_a_method_of_jobs_is_rejected(key: str) -> None:
    job = define_job("j", run=greet)
    with pytest.raises(ValidationError, match=rf"Job key '{key}' is a method of durably.jobs"):
        create_durably("memory://", jobs={key: job})
    d = create_durably("memory://", jobs={"get_report": job})
    assert d.jobs.get_report.name == "j"
