"""Triggering runs: validation, idempotency, concurrency keys, coalescing, labels,
batch triggers (docs/semantics.md, "Runs")."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest
from engine_support import recorder

from durably import ConflictError, RunStatus, Step, ValidationError, define_job


class In(pydantic.BaseModel):
    name: str
    count: int = 3


async def noop(step: Step, payload: Any) -> None:
    return None


def typed_job(name: str = "typed") -> Any:
    return define_job(name, input=In, run=noop)


async def test_trigger__stores_validated_input_with_defaults(make_durably: Any) -> None:
    d = make_durably({"t": typed_job()})
    result = await d.jobs.t.trigger({"name": "a"})
    assert result.disposition == "created"
    assert result.run.input == {"name": "a", "count": 3}
    stored = await d.get_run(result.id)
    assert stored is not None
    assert stored.input == {"name": "a", "count": 3}
    assert stored.status is RunStatus.PENDING
    assert stored.job_name == "typed"


async def test_trigger__coerces_input_through_schema(make_durably: Any) -> None:
    d = make_durably({"t": typed_job()})
    result = await d.jobs.t.trigger({"name": "a", "count": "7"})
    stored = await d.get_run(result.id)
    assert stored is not None
    assert stored.input == {"name": "a", "count": 7}


async def test_trigger__accepts_model_instance(make_durably: Any) -> None:
    d = make_durably({"t": typed_job()})
    result = await d.jobs.t.trigger(In(name="b", count=1))
    assert result.run.input == {"name": "b", "count": 1}


async def test_trigger__invalid_input_names_field_and_writes_nothing(make_durably: Any) -> None:
    d = make_durably({"t": typed_job()})
    events = recorder(d)
    with pytest.raises(ValidationError, match="count") as info:
        await d.jobs.t.trigger({"name": "a", "count": "many"})
    assert "typed" in str(info.value)
    assert await d.get_runs() == []
    assert events == []


async def test_trigger__missing_field_is_named(make_durably: Any) -> None:
    d = make_durably({"t": typed_job()})
    with pytest.raises(ValidationError, match="name"):
        await d.jobs.t.trigger({"count": 1})
    assert await d.get_runs() == []


async def test_trigger__untyped_non_json_input_is_rejected(make_durably: Any) -> None:
    d = make_durably({"u": define_job("untyped", run=noop)})
    with pytest.raises(ValidationError, match="JSON"):
        await d.jobs.u.trigger({"x": object()})
    assert await d.get_runs() == []


async def test_trigger__emits_run_trigger_event(make_durably: Any) -> None:
    d = make_durably({"t": typed_job()})
    events = recorder(d, "run:trigger")
    result = await d.jobs.t.trigger({"name": "a"}, labels={"env": "test"})
    assert len(events) == 1
    ev = events[0]
    assert ev.type == "run:trigger"
    assert ev.run_id == result.id
    assert ev.job_name == "typed"
    assert ev.labels == {"env": "test"}
    assert ev.input == {"name": "a", "count": 3}


async def test_trigger__idempotency_key_returns_same_run(make_durably: Any) -> None:
    d = make_durably({"t": typed_job()})
    events = recorder(d, "run:trigger")
    first = await d.jobs.t.trigger({"name": "a"}, idempotency_key="k1")
    second = await d.jobs.t.trigger({"name": "other"}, idempotency_key="k1")
    assert second.disposition == "idempotent"
    assert second.id == first.id
    assert second.run.input == {"name": "a", "count": 3}
    assert len(events) == 1
    assert len(await d.get_runs()) == 1


async def test_trigger__idempotency_key_holds_after_run_finished(make_durably: Any) -> None:
    d = make_durably({"t": typed_job()})
    first = await d.jobs.t.trigger({"name": "a"}, idempotency_key="k1")
    assert await d.process_one()
    again = await d.jobs.t.trigger({"name": "a"}, idempotency_key="k1")
    assert again.disposition == "idempotent"
    assert again.id == first.id
    assert again.status is RunStatus.COMPLETED


async def test_trigger__idempotency_key_is_per_job(make_durably: Any) -> None:
    d = make_durably({"a": typed_job("a"), "b": typed_job("b")})
    ra = await d.jobs.a.trigger({"name": "x"}, idempotency_key="same")
    rb = await d.jobs.b.trigger({"name": "x"}, idempotency_key="same")
    assert rb.disposition == "created"
    assert rb.id != ra.id


async def test_trigger__empty_idempotency_key_is_rejected(make_durably: Any) -> None:
    d = make_durably({"t": typed_job()})
    with pytest.raises(ValidationError, match="idempotency_key"):
        await d.jobs.t.trigger({"name": "a"}, idempotency_key="")
    assert await d.get_runs() == []


async def test_trigger__second_pending_run_of_concurrency_key_conflicts(make_durably: Any) -> None:
    d = make_durably({"t": typed_job()})
    first = await d.jobs.t.trigger({"name": "a"}, concurrency_key="user-1")
    with pytest.raises(ConflictError) as info:
        await d.jobs.t.trigger({"name": "b"}, concurrency_key="user-1")
    assert info.value.run_id == first.id
    assert [r.id for r in await d.get_runs()] == [first.id]


async def test_trigger__other_concurrency_key_does_not_conflict(make_durably: Any) -> None:
    d = make_durably({"t": typed_job()})
    await d.jobs.t.trigger({"name": "a"}, concurrency_key="user-1")
    second = await d.jobs.t.trigger({"name": "b"}, concurrency_key="user-2")
    assert second.disposition == "created"


async def test_trigger__pending_uniqueness_is_per_job(make_durably: Any) -> None:
    d = make_durably({"a": typed_job("a"), "b": typed_job("b")})
    await d.jobs.a.trigger({"name": "a"}, concurrency_key="k")
    other = await d.jobs.b.trigger({"name": "a"}, concurrency_key="k")
    assert other.disposition == "created"


async def test_trigger__coalesce_skip_returns_pending_run(make_durably: Any) -> None:
    d = make_durably({"t": typed_job()})
    events = recorder(d)
    first = await d.jobs.t.trigger({"name": "a"}, concurrency_key="k")
    events.clear()
    second = await d.jobs.t.trigger(
        {"name": "b"}, concurrency_key="k", coalesce="skip", labels={"x": "1"}
    )
    assert second.disposition == "coalesced"
    assert second.id == first.id
    assert [e.type for e in events] == ["run:coalesced"]
    ev = events[0]
    assert ev.run_id == first.id
    assert ev.skipped_input == {"name": "b", "count": 3}
    assert ev.skipped_labels == {"x": "1"}
    assert len(await d.get_runs()) == 1


async def test_trigger__coalesce_without_pending_run_creates(make_durably: Any) -> None:
    d = make_durably({"t": typed_job()})
    result = await d.jobs.t.trigger({"name": "a"}, concurrency_key="k", coalesce="skip")
    assert result.disposition == "created"


async def test_trigger__coalesce_without_key_is_rejected(make_durably: Any) -> None:
    d = make_durably({"t": typed_job()})
    with pytest.raises(ValidationError, match="concurrency_key"):
        await d.jobs.t.trigger({"name": "a"}, coalesce="skip")
    assert await d.get_runs() == []


async def test_trigger__unknown_coalesce_value_is_rejected(make_durably: Any) -> None:
    d = make_durably({"t": typed_job()})
    with pytest.raises(ValidationError, match="coalesce"):
        await d.jobs.t.trigger({"name": "a"}, concurrency_key="k", coalesce="replace")


async def test_trigger__labels_are_stored(make_durably: Any) -> None:
    d = make_durably({"t": typed_job()})
    labels = {"tenant": "acme", "a-b_c.d/e": "v"}
    result = await d.jobs.t.trigger({"name": "a"}, labels=labels)
    stored = await d.get_run(result.id)
    assert stored is not None
    assert stored.labels == labels


# "a\n": the key pattern was anchored with `$`, which also matches before a final newline
@pytest.mark.parametrize("key", ["has space", "colon:key", "", "é", "a\n", "\na"])
async def test_trigger__bad_label_key_is_rejected(make_durably: Any, key: str) -> None:
    d = make_durably({"t": typed_job()})
    with pytest.raises(ValidationError, match="label key"):
        await d.jobs.t.trigger({"name": "a"}, labels={key: "v"})
    assert await d.get_runs() == []


@pytest.mark.parametrize("value", [1, None, ["a"], True])
async def test_trigger__non_string_label_value_is_rejected(make_durably: Any, value: Any) -> None:
    d = make_durably({"t": typed_job()})
    with pytest.raises(ValidationError, match="env"):
        await d.jobs.t.trigger({"name": "a"}, labels={"env": value})
    assert await d.get_runs() == []


class Labels(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    tenant: str
    region: str = "eu"


async def test_trigger__labels_schema_on_instance_validates(make_durably: Any) -> None:
    d = make_durably({"t": typed_job()}, labels=Labels)
    with pytest.raises(ValidationError, match="tenant"):
        await d.jobs.t.trigger({"name": "a"}, labels={"region": "us"})
    with pytest.raises(ValidationError, match="other"):
        await d.jobs.t.trigger({"name": "a"}, labels={"tenant": "t", "other": "x"})
    assert await d.get_runs() == []
    ok = await d.jobs.t.trigger({"name": "a"}, labels={"tenant": "acme"})
    assert ok.run.labels == {"tenant": "acme", "region": "eu"}


async def test_batch_trigger__creates_all_in_order(make_durably: Any) -> None:
    d = make_durably({"t": typed_job()})
    events = recorder(d, "run:trigger")
    results = await d.jobs.t.batch_trigger(
        [{"name": "a"}, ({"name": "b"}, {"labels": {"k": "v"}, "idempotency_key": "i"})]
    )
    assert [r.disposition for r in results] == ["created", "created"]
    assert [r.run.input["name"] for r in results] == ["a", "b"]
    assert results[1].run.labels == {"k": "v"}
    assert results[1].run.idempotency_key == "i"
    assert [e.run_id for e in events] == [r.id for r in results]
    assert len(await d.get_runs()) == 2


async def test_batch_trigger__validates_all_first_naming_index(make_durably: Any) -> None:
    d = make_durably({"t": typed_job()})
    with pytest.raises(ValidationError, match=r"Item 2.*count"):
        await d.jobs.t.batch_trigger([{"name": "a"}, {"name": "b"}, {"name": "c", "count": "x"}])
    assert await d.get_runs() == []


async def test_batch_trigger__bad_options_name_index(make_durably: Any) -> None:
    d = make_durably({"t": typed_job()})
    with pytest.raises(ValidationError, match=r"Item 1.*label"):
        await d.jobs.t.batch_trigger([{"name": "a"}, ({"name": "b"}, {"labels": {"k": 1}})])
    with pytest.raises(ValidationError, match=r"Item 0.*Unknown trigger option"):
        await d.jobs.t.batch_trigger([({"name": "a"}, {"bogus": 1})])
    assert await d.get_runs() == []


async def test_batch_trigger__is_all_or_nothing(make_durably: Any) -> None:
    d = make_durably({"t": typed_job()})
    events = recorder(d)
    with pytest.raises(ConflictError):
        await d.jobs.t.batch_trigger(
            [
                ({"name": "a"}, {"concurrency_key": "k"}),
                {"name": "free"},
                ({"name": "b"}, {"concurrency_key": "k"}),
            ]
        )
    assert await d.get_runs() == []
    assert events == []


async def test_batch_trigger__conflict_with_existing_run_writes_nothing(make_durably: Any) -> None:
    d = make_durably({"t": typed_job()})
    existing = await d.jobs.t.trigger({"name": "a"}, concurrency_key="k")
    with pytest.raises(ConflictError):
        await d.jobs.t.batch_trigger([{"name": "x"}, ({"name": "b"}, {"concurrency_key": "k"})])
    assert [r.id for r in await d.get_runs()] == [existing.id]


async def test_batch_trigger__idempotent_and_coalesced_items(make_durably: Any) -> None:
    d = make_durably({"t": typed_job()})
    first = await d.jobs.t.trigger({"name": "a"}, idempotency_key="i")
    pending = await d.jobs.t.trigger({"name": "p"}, concurrency_key="k")
    results = await d.jobs.t.batch_trigger(
        [
            ({"name": "a2"}, {"idempotency_key": "i"}),
            ({"name": "c"}, {"concurrency_key": "k", "coalesce": "skip"}),
            {"name": "new"},
        ]
    )
    assert [r.disposition for r in results] == ["idempotent", "coalesced", "created"]
    assert results[0].id == first.id
    assert results[1].id == pending.id
    assert len(await d.get_runs()) == 3


async def test_batch_trigger__empty_list_returns_empty(make_durably: Any) -> None:
    d = make_durably({"t": typed_job()})
    assert await d.jobs.t.batch_trigger([]) == []


async def test_batch_trigger__non_list_is_rejected(make_durably: Any) -> None:
    d = make_durably({"t": typed_job()})
    with pytest.raises(ValidationError, match="list"):
        await d.jobs.t.batch_trigger("abc")
