"""Structured answers of the simulated server: JSON that fits the request's schema,
or (at configured rates) JSON that does not.

Which requests are structured, as OpenAI documents them
(https://platform.openai.com/docs/guides/structured-outputs,
https://platform.openai.com/docs/guides/function-calling):

- Chat Completions with ``response_format: {"type": "json_schema", "json_schema":
  {"schema": ...}}`` (or ``{"type": "json_object"}``): the message content is
  a JSON text;
- Responses with ``text: {"format": {"type": "json_schema", "schema": ...}}``:
  the ``output_text`` is a JSON text;
- either with function ``tools`` (and ``tool_choice`` not "none"): the answer
  calls the function named by ``tool_choice`` (else the first), its
  ``arguments`` a JSON text fitting the function's ``parameters``.

The valid answer is a minimal instance of the schema (`minimal_instance`:
types, required and all listed properties, enum/const, anyOf/oneOf/allOf,
local ``$ref``, min/max bounds, a few string formats; ``pattern`` is not
honoured). Real servers with strict mode do not break the schema, but
non-strict models, JSON mode and other servers do; the mock injects that on
purpose: `MockConfig.invalid_json_rate` (prose around cut-off JSON) and
`schema_violation_rate` (a required property dropped or a value of the wrong
type) for first answers, `reask_invalid_rate` for re-asks (requests that
carry an earlier assistant answer). The draw is a hash of the seed and the
request body, so the same request always gets the same kind of answer and a
test can tell which ones were wrong, and hence re-asked.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from ._config import MockConfig, MockStats

__all__ = [
    "StructuredReply",
    "conversation_key",
    "minimal_instance",
    "plan_and_count",
    "plan_reply",
]

_MAX_DEPTH = 24
_FORMATS = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00Z",
    "email": "mock@example.com",
    "uri": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
}
_WRONG = {"string": 12345, "integer": "not a number", "number": "not a number",
          "boolean": "yes", "array": {"not": "an array"}, "object": ["not", "an object"],
          "null": "not null"}  # fmt: skip


def _canonical(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)


def _resolve(schema: Any, root: Any) -> Any:
    seen = 0
    while isinstance(schema, dict) and isinstance(schema.get("$ref"), str) and seen < _MAX_DEPTH:
        ref = schema["$ref"]
        if not ref.startswith("#"):
            return {}
        node: Any = root
        for part in [p for p in ref[1:].split("/") if p]:
            part = part.replace("~1", "/").replace("~0", "~")
            node = node.get(part) if isinstance(node, dict) else None
        schema = node if isinstance(node, dict) else {}
        seen += 1
    return schema


def _type_of(schema: dict[str, Any]) -> str | None:
    t = schema.get("type")
    if isinstance(t, list):
        named = [x for x in t if x != "null"]
        return str(named[0]) if named else "null"
    if isinstance(t, str):
        return t
    if "properties" in schema or "required" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    return None


def _merge_all(schema: dict[str, Any], root: Any) -> dict[str, Any]:
    merged = {k: v for k, v in schema.items() if k != "allOf"}
    for sub in schema.get("allOf") or []:
        sub = _resolve(sub, root)
        if not isinstance(sub, dict):
            continue
        for k, v in sub.items():
            if k == "properties" and isinstance(v, dict):
                merged["properties"] = {**merged.get("properties", {}), **v}
            elif k == "required" and isinstance(v, list):
                merged["required"] = [*merged.get("required", []), *v]
            else:
                merged.setdefault(k, v)
    return merged


def _number(schema: dict[str, Any], integer: bool) -> float | int:
    lo = schema.get("minimum")
    xlo = schema.get("exclusiveMinimum")
    hi = schema.get("maximum")
    xhi = schema.get("exclusiveMaximum")
    v: float = 0
    if isinstance(lo, int | float):
        v = lo
    elif isinstance(xlo, int | float):
        v = xlo + 1
    elif isinstance(hi, int | float) and hi < 0:
        v = hi
    elif isinstance(xhi, int | float) and xhi <= 0:
        v = xhi - 1
    return int(v) if integer else float(v)


def _string(schema: dict[str, Any], label: str) -> str:
    fmt = schema.get("format")
    s = _FORMATS.get(fmt, label) if isinstance(fmt, str) else label
    lo = schema.get("minLength")
    hi = schema.get("maxLength")
    if isinstance(lo, int) and len(s) < lo:
        s += "x" * (lo - len(s))
    if isinstance(hi, int) and len(s) > hi:
        s = s[:hi]
    return s


def minimal_instance(schema: Any, root: Any = None, *, label: str = "mock", depth: int = 0) -> Any:
    """A small value that satisfies `schema` (see the module doc for what is honoured)."""
    root = schema if root is None else root
    schema = _resolve(schema, root)
    if depth > _MAX_DEPTH or not isinstance(schema, dict):
        return None
    if "allOf" in schema:
        schema = _merge_all(schema, root)
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            real = [o for o in options if _type_of(_resolve(o, root) or {}) != "null"]
            return minimal_instance((real or options)[0], root, label=label, depth=depth + 1)
    kind = _type_of(schema)
    if kind == "object":
        props = schema.get("properties") or {}
        out = {k: minimal_instance(v, root, label=label, depth=depth + 1) for k, v in props.items()}
        for k in schema.get("required") or []:
            out.setdefault(k, label)
        return out
    if kind == "array":
        prefix = schema.get("prefixItems") or []
        items = [minimal_instance(p, root, label=label, depth=depth + 1) for p in prefix]
        want = max(int(schema.get("minItems") or 0), 1)
        hi = schema.get("maxItems")
        if isinstance(hi, int):
            want = min(want, hi)
        each = schema.get("items")
        while len(items) < want and isinstance(each, dict):
            items.append(minimal_instance(each, root, label=label, depth=depth + 1))
        return items
    if kind in ("integer", "number"):
        return _number(schema, kind == "integer")
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    return _string(schema, label)


def _allowed(schema: dict[str, Any]) -> set[str]:
    t = schema.get("type")
    if isinstance(t, str):
        return {t}
    if isinstance(t, list):
        return {str(x) for x in t}
    return set()


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else "null"


def _violate(schema: Any, root: Any, valid: Any) -> Any | None:
    """`valid` changed so that it breaks `schema`, or None when that is not easy."""
    schema = _resolve(schema, root)
    if not isinstance(schema, dict):
        return None
    if isinstance(valid, dict):
        required = [k for k in schema.get("required") or [] if k in valid]
        if required:
            broken = dict(valid)
            del broken[required[0]]  # a required property left out
            return broken
        for k, sub in (schema.get("properties") or {}).items():
            inner = _violate(sub, root, valid.get(k))
            if inner is not None:
                return {**valid, k: inner}
        return None
    allowed = _allowed(schema)
    if "number" in allowed:
        allowed.add("integer")  # an integer is a number too
    for kind in sorted(allowed):
        wrong = _WRONG.get(kind)
        if wrong is not None and _json_type(wrong) not in allowed:
            return wrong
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return "not-one-of-the-enum-values"
    return None


def _is_reask(kind: str, body: dict[str, Any]) -> bool:
    """A request that carries an earlier assistant answer (or a tool result)."""
    if kind == "chat":
        return any(
            isinstance(m, dict) and m.get("role") in ("assistant", "tool")
            for m in body.get("messages") or []
        )
    items = body.get("input")
    return isinstance(items, list) and any(
        isinstance(i, dict)
        and (
            i.get("role") == "assistant"
            or i.get("type") in ("function_call", "function_call_output")
        )
        for i in items
    )


def conversation_key(body: dict[str, Any]) -> str:
    """The request a conversation started from: the same for a request and its
    re-asks (the messages before the first assistant turn), as 16 hex digits."""
    turns = body.get("messages") if "messages" in body else body.get("input")
    if isinstance(turns, list):
        first: list[Any] = []
        for t in turns:
            if isinstance(t, dict) and (
                t.get("role") in ("assistant", "tool")
                or t.get("type") in ("function_call", "function_call_output")
            ):
                break
            first.append(t)
        if "messages" not in body and len(first) == 1 and isinstance(first[0], dict):
            if first[0].get("role") == "user" and isinstance(first[0].get("content"), str):
                turns = first[0]["content"]  # a string input, as its re-ask lists it
            else:
                turns = first
        else:
            turns = first
    key = {"model": body.get("model"), "turns": turns}
    return hashlib.blake2b(_canonical(key), digest_size=8).hexdigest()


@dataclass(frozen=True, slots=True)
class StructuredReply:
    """What a structured request is answered: `text` (a JSON text, valid or
    not) or a function call `name` with `arguments`; `outcome` is "valid",
    "invalid_json" or "schema_violation"; `reask` whether the request was one."""

    outcome: str
    reask: bool
    text: str | None = None
    name: str | None = None
    arguments: str | None = None


def _format_schema(kind: str, body: dict[str, Any]) -> Any:
    if kind == "responses":
        text = body.get("text")
        fmt = text.get("format") if isinstance(text, dict) else None
        holder = fmt
    else:
        fmt = body.get("response_format")
        holder = fmt.get("json_schema") if isinstance(fmt, dict) else None
    if not isinstance(fmt, dict):
        return None
    if fmt.get("type") == "json_object":
        return {"type": "object"}
    if fmt.get("type") == "json_schema" and isinstance(holder, dict):
        schema = holder.get("schema")
        return schema if isinstance(schema, dict) else {}
    return None


def _function_of(tool: dict[str, Any]) -> dict[str, Any]:
    # Chat nests {"function": {"name", "parameters"}}; Responses has them flat.
    fn = tool.get("function")
    return fn if isinstance(fn, dict) else tool


def _tool(kind: str, body: dict[str, Any]) -> tuple[str, Any] | None:
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
    choice = body.get("tool_choice")
    if not tools or choice == "none":
        return None
    wanted = _function_of(choice).get("name") if isinstance(choice, dict) else None
    for t in tools:
        fn = _function_of(t)
        if wanted is None or fn.get("name") == wanted:
            return str(fn.get("name")), fn.get("parameters") or {"type": "object"}
    return None


def _draw(seed: int, body: dict[str, Any]) -> float:
    digest = hashlib.blake2b(_canonical(body), digest_size=8, key=str(seed).encode()).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def plan_reply(
    kind: str, body: dict[str, Any], *, seed: int, invalid_json: float, violation: float,
    reask_invalid: float,
) -> StructuredReply | None:  # fmt: skip
    """The structured answer to `body`, or None for a request that asks for none."""
    if kind not in ("chat", "responses"):
        return None
    tool = _tool(kind, body)
    schema = tool[1] if tool is not None else _format_schema(kind, body)
    if schema is None:
        return None
    label = "mock-" + hashlib.blake2b(_canonical(body), digest_size=4).hexdigest()
    valid = minimal_instance(schema, label=label)
    reask = _is_reask(kind, body)
    u = _draw(seed, body)
    outcome = "valid"
    value: Any = valid
    if reask:
        if u < reask_invalid:
            outcome = "invalid_json"
    elif u < invalid_json:
        outcome = "invalid_json"
    elif u < invalid_json + violation:
        broken = _violate(schema, schema, valid)
        outcome, value = ("schema_violation", broken) if broken is not None else ("invalid_json", 0)
    text = orjson.dumps(valid if outcome == "invalid_json" else value).decode()
    if outcome == "invalid_json":
        text = "Sure! Here is the JSON: " + text[: max(1, len(text) // 2)]  # prose, cut off
    if tool is not None:
        return StructuredReply(outcome, reask, None, tool[0], text)
    return StructuredReply(outcome, reask, text)


def plan_and_count(
    cfg: MockConfig, stats: MockStats, kind: str, body: dict[str, Any]
) -> StructuredReply | None:
    """`plan_reply` under `cfg`'s rates, counted in `stats` (online and Batch API lines)."""
    reply = plan_reply(
        kind, body, seed=cfg.seed, invalid_json=cfg.invalid_json_rate,
        violation=cfg.schema_violation_rate, reask_invalid=cfg.reask_invalid_rate,
    )  # fmt: skip
    if reply is not None:
        stage = "reask" if reply.reask else "first"
        stats.structured[f"{stage}:{reply.outcome}"] += 1
        stats.structured_log.append((conversation_key(body), reply.reask, reply.outcome))
    return reply
