"""The simulated server's structured answers: minimal instances fit their schema,
injected violations break it."""

from __future__ import annotations

from typing import Any, Literal

import jsonschema
import orjson
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from conveyor.mock import MockConfig, MockServer, conversation_key, minimal_instance
from conveyor.mock._structured import _violate, plan_reply

SCALARS = st.sampled_from(
    [
        {"type": "string"},
        {"type": "string", "minLength": 5, "maxLength": 9},
        {"type": "string", "format": "date-time"},
        {"type": "integer", "minimum": 3},
        {"type": "integer", "maximum": -2},
        {"type": "number", "exclusiveMinimum": 1.5},
        {"type": "boolean"},
        {"type": "null"},
        {"enum": ["a", "b", 3]},
        {"const": 7},
        {"type": ["string", "null"]},
        {"anyOf": [{"type": "null"}, {"type": "integer"}]},
    ]
)


def _compose(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    objects = st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), children, max_size=3).map(
        lambda props: {
            "type": "object",
            "properties": props,
            "required": sorted(props),
            "additionalProperties": False,
        }
    )
    arrays = children.map(lambda item: {"type": "array", "items": item, "minItems": 2})
    return objects | arrays


SCHEMAS = st.recursive(SCALARS, _compose, max_leaves=12)


@given(SCHEMAS)
def test_minimal_instance_fits_its_schema(schema: dict[str, Any]) -> None:
    """For types, required, enum/const, anyOf, bounds and nesting, the mock's
    valid answer passes jsonschema."""
    jsonschema.validate(minimal_instance(schema), schema)


@given(SCHEMAS)
def test_violation_breaks_its_schema(schema: dict[str, Any]) -> None:
    """When the mock can break a schema (a required property dropped, a wrong
    type), the result fails jsonschema."""
    broken = _violate(schema, schema, minimal_instance(schema))
    if broken is not None:
        assert not jsonschema.Draft202012Validator(schema).is_valid(broken)


class Inner(BaseModel):
    when: str = Field(json_schema_extra={"format": "date"})
    tags: list[Literal["x", "y"]]


class Outer(BaseModel):
    name: str
    inner: Inner
    maybe: int | None = None


def test_pydantic_schema_with_refs() -> None:
    """A Pydantic model's schema ($defs, $ref, anyOf with null) gets a valid instance."""
    schema = Outer.model_json_schema()
    value = minimal_instance(schema)
    assert Outer.model_validate(value).inner.tags == ["x"]


def test_invalid_json_is_not_json() -> None:
    """At invalid_json rate 1 the answer text does not parse; at 0 it parses and fits."""
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    fmt = {"type": "json_schema", "json_schema": {"schema": schema}}
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "response_format": fmt}
    bad = plan_reply("chat", body, seed=0, invalid_json=1.0, violation=0, reask_invalid=0)
    good = plan_reply("chat", body, seed=0, invalid_json=0.0, violation=0, reask_invalid=0)
    assert bad is not None and good is not None and bad.text is not None
    assert bad.outcome == "invalid_json" and not bad.reask
    try:
        orjson.loads(bad.text)
    except orjson.JSONDecodeError:
        pass
    else:
        raise AssertionError("invalid JSON parsed")
    assert good.text is not None and orjson.loads(good.text) == {"n": 0}


def test_a_reask_keeps_the_conversation_key() -> None:
    """A re-ask (the request plus the answer and a note) has the same
    conversation key as its request, and is recognised as a re-ask."""
    fmt = {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}
    first = {"model": "m", "messages": [{"role": "user", "content": "q"}],
             "response_format": fmt}  # fmt: skip
    again = {**first, "messages": [*first["messages"], {"role": "assistant", "content": "{"},
                                   {"role": "user", "content": "fix it"}]}  # fmt: skip
    assert conversation_key(first) == conversation_key(again)
    reply = plan_reply("chat", again, seed=0, invalid_json=1.0, violation=0, reask_invalid=0)
    assert reply is not None and reply.reask and reply.outcome == "valid"
    resp = {"model": "m", "input": "q"}
    resp_again = {**resp, "input": [{"role": "user", "content": "q"},
                                    {"role": "assistant", "content": "{"}]}  # fmt: skip
    assert conversation_key(resp) == conversation_key(resp_again)


class Review(BaseModel):
    label: Literal["pos", "neg"]
    score: int = Field(ge=1, le=5)
    topics: list[str]


def test_the_openai_sdk_parses_the_mocks_structured_answers() -> None:
    """The official SDK's own structured helpers (chat `parse` with a Pydantic
    response_format, Responses `parse` with text_format, a pydantic function
    tool) accept the mock's answers: its shapes are the API's."""
    import openai

    server = MockServer(MockConfig(api_key="x"))
    with server.running_in_thread() as base_url:
        client = openai.OpenAI(base_url=base_url, api_key="x", max_retries=0)
        try:
            msgs: Any = [{"role": "user", "content": "review this"}]
            chat = client.chat.completions.parse(
                model="mock-gpt", messages=msgs, response_format=Review
            )
            resp = client.responses.parse(model="mock-gpt", input="review", text_format=Review)
            tool = client.chat.completions.parse(
                model="mock-gpt", messages=msgs, tools=[openai.pydantic_function_tool(Review)],
                tool_choice="required",
            )  # fmt: skip
        finally:
            client.close()
    parsed = chat.choices[0].message.parsed
    assert isinstance(parsed, Review) and parsed.score == 1
    assert isinstance(resp.output_parsed, Review)
    calls = tool.choices[0].message.tool_calls
    assert calls is not None
    assert isinstance(calls[0].function.parsed_arguments, Review)
    assert server.stats.structured["first:valid"] == 3
