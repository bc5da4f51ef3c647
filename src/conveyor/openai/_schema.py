"""What an answer must look like: a JSON Schema (or a Pydantic model) per request.

Where it comes from, in order:

- `--schema FILE` / `run_file(schema=...)`: a JSON Schema dict, or a Pydantic
  model class (anything with `model_json_schema()` and `model_validate()`;
  Pydantic is not a dependency of conveyor). Every chat, responses and
  completions request is checked against it; a request that does not ask for
  a format gets one (`inject`).
- else the request body itself, as OpenAI's structured outputs document it
  (https://platform.openai.com/docs/guides/structured-outputs):
  Chat Completions ``response_format: {"type": "json_schema", "json_schema":
  {"name", "schema", "strict"}}``; Responses ``text: {"format": {"type":
  "json_schema", "name", "schema", "strict"}}``; ``response_format: {"type":
  "json_object"}`` (JSON mode: any JSON object); and function tools
  (https://platform.openai.com/docs/guides/function-calling), whose call
  arguments are checked against the function's ``parameters``.

Schemas are checked with `jsonschema` (`check_schema`) before anything is
sent; a bad one raises `SchemaInvalid` naming where it came from and where in
the schema the problem is. Compiled validators are kept per distinct schema.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from .._base._exceptions import ConfigError, InputError, SchemaInvalid
from .._core._validation import Issue, json_path

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "AnswerSpec",
    "Rule",
    "inject",
    "load_schema",
    "rule_from",
    "spec_for",
]

_MAX_ISSUES = 20
_INJECTED_NAME = "answer"


def _is_model(obj: Any) -> bool:
    return isinstance(obj, type) and all(
        callable(getattr(obj, m, None)) for m in ("model_json_schema", "model_validate")
    )


@functools.lru_cache(maxsize=256)
def _validator(text: bytes) -> Any:
    """A jsonschema validator for a schema given as canonical JSON bytes
    (raises `jsonschema.SchemaError`; many lines share one schema)."""
    import jsonschema

    schema = orjson.loads(text)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    cls.check_schema(schema)
    return cls(schema)


def _compiled(text: bytes, source: str) -> Any:
    import jsonschema

    try:
        return _validator(text)
    except jsonschema.SchemaError as exc:
        raise SchemaInvalid(source, json_path(exc.path), exc.message) from None


def _canonical(schema: Any) -> bytes:
    return orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)


@dataclass(frozen=True)
class Rule:
    """One schema to check values against: a JSON Schema, or a Pydantic model."""

    schema: dict[str, Any]
    model: Any = None
    source: str = "schema"

    def check(self, value: Any, at: str = "$") -> tuple[Any, list[Issue]]:
        """(parsed value, issues): the value to keep, and what is wrong with it."""
        if self.model is not None:
            try:
                parsed = self.model.model_validate(value)
            except Exception as exc:
                errors = getattr(exc, "errors", None)
                if not callable(errors):
                    return None, [Issue(at, type(exc).__name__, str(exc))]
                return None, [
                    Issue(
                        at + json_path(e.get("loc") or ())[1:],
                        str(e.get("type", "invalid")),
                        str(e.get("msg", "invalid")),
                    )
                    for e in errors()[:_MAX_ISSUES]
                ]
            return parsed.model_dump(mode="json"), []
        validator = _compiled(_canonical(self.schema), self.source)
        found = sorted(validator.iter_errors(value), key=lambda e: list(map(str, e.path)))
        return value, [
            Issue(at + json_path(e.absolute_path)[1:], str(e.validator), e.message)
            for e in found[:_MAX_ISSUES]
        ]


def rule_from(schema: Any, source: str) -> Rule:
    """A `Rule` from a JSON Schema dict or a Pydantic model class; checked now."""
    if _is_model(schema):
        js = schema.model_json_schema()
        _compiled(_canonical(js), source)
        return Rule(js, schema, source)
    if not isinstance(schema, dict):
        raise ConfigError(
            "schema", schema, "a JSON Schema (a dict or a .json file) or a Pydantic model class"
        )
    _compiled(_canonical(schema), source)
    return Rule(schema, None, source)


def load_schema(path: str | Path) -> Rule:
    """Read and check a JSON Schema file (`--schema`)."""
    p = Path(path)
    try:
        text = p.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read the schema: {exc.strerror or exc}", path=str(p)) from None
    try:
        schema = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InputError(f"the schema is not valid JSON: {exc}", path=str(p)) from None
    if not isinstance(schema, dict):
        raise SchemaInvalid(str(p), "$", "a JSON Schema is an object ({...})")
    return rule_from(schema, str(p))


@dataclass(frozen=True)
class AnswerSpec:
    """What the answer to one request must be.

    `kind`: "text" (the answer's text is JSON checked by `rule`) or "tools"
    (each function call's arguments checked by its function's rule; a call
    is `required` when `tool_choice` is "required" or names a function, else
    an answer without one is taken as it is).
    """

    kind: str
    rule: Rule | None = None
    tools: Mapping[str, Rule] = field(default_factory=dict)
    required: bool = False


_JSON_OBJECT = Rule({"type": "object"}, None, "response_format json_object")


def _format_of(body: Mapping[str, Any], endpoint: str) -> Any:
    if endpoint.endswith("/responses"):
        text = body.get("text")
        return text.get("format") if isinstance(text, dict) else None
    return body.get("response_format")


def _tool_rules(body: Mapping[str, Any], where: str) -> dict[str, Rule]:
    rules: dict[str, Rule] = {}
    for i, tool in enumerate(body.get("tools") or []):
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            continue
        # Chat: {"type": "function", "function": {"name", "parameters"}};
        # Responses: {"type": "function", "name", "parameters"}.
        inner = tool.get("function")
        fn: dict[str, Any] = inner if isinstance(inner, dict) else tool
        name = fn.get("name")
        params = fn.get("parameters") or {"type": "object"}
        if isinstance(name, str) and isinstance(params, dict):
            rules[name] = rule_from(params, f"{where} tools[{i}].parameters")
    return rules


def spec_for(
    body: Mapping[str, Any], endpoint: str, forced: Rule | None, where: str
) -> AnswerSpec | None:
    """The answer spec of one request, or None when its answer is not checked.

    `where` names the request in errors (``input.jsonl:12 (custom_id req-1)``).
    Raises `SchemaInvalid` for a bad schema in the body.
    """
    if endpoint.endswith("/embeddings"):
        return None
    wants_tools = bool(body.get("tools")) and body.get("tool_choice") != "none"
    if wants_tools:
        tools = _tool_rules(body, where)
        if tools:
            choice = body.get("tool_choice")
            required = choice == "required" or isinstance(choice, dict)
            return AnswerSpec("tools", None, tools, required)
    if forced is not None:
        return AnswerSpec("text", forced)
    fmt = _format_of(body, endpoint)
    if not isinstance(fmt, dict):
        return None
    if fmt.get("type") == "json_object":
        return AnswerSpec("text", _JSON_OBJECT)
    if fmt.get("type") != "json_schema":
        return None
    holder = fmt.get("json_schema") if not endpoint.endswith("/responses") else fmt
    schema = holder.get("schema") if isinstance(holder, dict) else None
    if not isinstance(schema, dict):
        key = "json_schema.schema" if holder is not fmt else "text.format.schema"
        raise SchemaInvalid(where, "$", f"{key} is missing or not an object")
    return AnswerSpec("text", rule_from(schema, f"{where} schema"))


def inject(body: dict[str, Any], endpoint: str, rule: Rule) -> dict[str, Any]:
    """`body` asking for `rule`'s schema when it asks for no format itself
    (not strict: strict mode accepts only a subset of JSON Schema)."""
    if body.get("tools") or _format_of(body, endpoint) is not None:
        return body
    if endpoint.endswith("/responses"):
        fmt = {"type": "json_schema", "name": _INJECTED_NAME, "schema": rule.schema}
        text = dict(body.get("text") or {})
        text["format"] = fmt
        return {**body, "text": text}
    if endpoint.endswith("/chat/completions"):
        schema_fmt = {"name": _INJECTED_NAME, "schema": rule.schema}
        return {**body, "response_format": {"type": "json_schema", "json_schema": schema_fmt}}
    return body
