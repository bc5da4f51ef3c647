"""Reading a structured answer out of a response, and asking again when it is wrong.

Response shapes, as OpenAI documents them:

- Chat Completions (https://platform.openai.com/docs/api-reference/chat/object):
  ``choices[0].message.content`` is the JSON text; ``message.refusal`` a
  refusal (https://platform.openai.com/docs/guides/structured-outputs, "Refusals");
  ``message.tool_calls[i].function.{name, arguments}`` a function call whose
  arguments are a JSON string, which "the model does not always generate
  valid" (https://platform.openai.com/docs/guides/function-calling).
- Responses (https://platform.openai.com/docs/api-reference/responses/object):
  ``output[]`` items: ``{"type": "message", "content": [{"type": "output_text",
  "text"}, {"type": "refusal", "refusal"}]}`` and ``{"type": "function_call",
  "call_id", "name", "arguments"}``.
- Completions: ``choices[0].text``.

A re-ask is the same request plus the answer and a message naming what was
wrong: a user message, or for function calls the tool result each call needs
(a ``tool`` message per ``tool_call_id`` in Chat, a ``function_call_output``
per ``call_id`` in Responses), since the API refuses an unanswered call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from .._base._exceptions import InvalidAnswer
from .._core._validation import Issue

if TYPE_CHECKING:
    from ._schema import AnswerSpec, Rule

__all__ = ["calls_in", "check_answer", "reask_body"]

_TEXT_FIX = "Reply again with only the corrected JSON, matching the schema exactly."
_TOOL_FIX = "Call the function again with corrected arguments."


def _chat_message(body: Any) -> dict[str, Any]:
    choices = body.get("choices") if isinstance(body, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return {}
    first = choices[0]
    msg = first.get("message")
    if isinstance(msg, dict):
        return msg
    if isinstance(first.get("text"), str):  # /v1/completions
        return {"content": first["text"]}
    return {}


def _text_of(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        parts = [p.get("text") for p in content if isinstance(p, dict)]
        texts = [t for t in parts if isinstance(t, str)]
        return "".join(texts) if texts else None
    return None


def _read(body: Any, responses: bool) -> tuple[str | None, str | None, list[dict[str, Any]]]:
    """(text, refusal, calls) of an answer; calls as {"id", "name", "arguments"}."""
    if responses:
        texts: list[str] = []
        refusal: str | None = None
        calls: list[dict[str, Any]] = []
        output = body.get("output") if isinstance(body, dict) else None
        for item in output if isinstance(output, list) else []:
            if not isinstance(item, dict):
                continue
            if item.get("type") == "function_call":
                calls.append(
                    {
                        "id": item.get("call_id"),
                        "name": item.get("name"),
                        "arguments": item.get("arguments"),
                    }
                )
            elif item.get("type") == "message":
                for part in item.get("content") or []:
                    if not isinstance(part, dict):
                        continue
                    if part.get("type") == "refusal" and isinstance(part.get("refusal"), str):
                        refusal = part["refusal"]
                    elif isinstance(part.get("text"), str):
                        texts.append(part["text"])
        return ("".join(texts) if texts else None), refusal, calls
    msg = _chat_message(body)
    calls = []
    for call in msg.get("tool_calls") or []:
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict):
            calls.append(
                {"id": call.get("id"), "name": fn.get("name"), "arguments": fn.get("arguments")}
            )
    refusal = msg.get("refusal") if isinstance(msg.get("refusal"), str) else None
    return _text_of(msg.get("content")), refusal, calls


def _parse(text: str, at: str) -> tuple[Any, Issue | None]:
    try:
        return orjson.loads(text), None
    except orjson.JSONDecodeError as exc:
        shown = text if len(text) <= 80 else text[:77] + "..."
        return None, Issue(at, "json", f"not valid JSON ({exc}): {shown!r}")


def _check_text(rule: Rule | None, text: str | None) -> tuple[Any, list[Issue]]:
    if text is None:
        return None, [Issue("$", "missing", "the answer has no text content")]
    value, bad = _parse(text, "$")
    if bad is not None:
        return None, [bad]
    if rule is None:
        return value, []
    return rule.check(value)


def _check_calls(spec: AnswerSpec, calls: list[dict[str, Any]]) -> tuple[Any, list[Issue]]:
    names = ", ".join(sorted(spec.tools))
    if not calls:
        return None, [Issue("$", "tool_call", f"expected a call to one of: {names}")]
    parsed: list[dict[str, Any]] = []
    issues: list[Issue] = []
    for i, call in enumerate(calls):
        at = f"$[{i}].arguments"
        rule = spec.tools.get(str(call.get("name")))
        if rule is None:
            issues.append(
                Issue(f"$[{i}].name", "tool_name", f"{call.get('name')!r} is not one of: {names}")
            )
            continue
        args = call.get("arguments")
        value, bad = _parse(args if isinstance(args, str) else "", at)
        if bad is not None:
            issues.append(bad)
            continue
        value, found = rule.check(value, at)
        issues.extend(found)
        parsed.append({"name": call["name"], "arguments": value})
    return parsed, issues


def calls_in(endpoint: str, body: Any) -> int:
    """How many function calls an answer makes."""
    return len(_read(body, endpoint.endswith("/responses"))[2])


def _cut_off(body: Any, responses: bool) -> bool:
    """The answer stopped at the token limit (`finish_reason` "length", or an
    incomplete response): its JSON is likely cut short."""
    if not isinstance(body, dict):
        return False
    if responses:
        return body.get("status") == "incomplete"
    choices = body.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else None
    return isinstance(first, dict) and first.get("finish_reason") == "length"


def check_answer(spec: AnswerSpec, endpoint: str, body: Any) -> Any:
    """The parsed answer (the JSON value, or for tools a list of
    ``{"name", "arguments"}``), or `InvalidAnswer` naming what is wrong."""
    responses = endpoint.endswith("/responses")
    text, refusal, calls = _read(body, responses)
    if refusal is not None and not calls:
        raise InvalidAnswer([Issue("$", "refusal", f"the model refused: {refusal}")], refusal)
    if spec.kind == "tools":
        parsed, issues = _check_calls(spec, calls)
        raw: Any = [c.get("arguments") for c in calls] if calls else text
    else:
        parsed, issues = _check_text(spec.rule, text)
        raw = text
    if issues:
        if _cut_off(body, responses):
            issues = [
                Issue(i.path, i.kind, f"{i.message} (the answer was cut off at the token limit)")
                if i.kind == "json"
                else i
                for i in issues
            ]
        raise InvalidAnswer(issues, raw)
    return parsed


def _feedback(issues: tuple[Issue, ...], tools: bool) -> str:
    what = "the function's parameters schema" if tools else "the required JSON Schema"
    lines = "\n".join(f"- {i}" for i in issues)
    return f"Your answer did not match {what}:\n{lines}\n{_TOOL_FIX if tools else _TEXT_FIX}"


def reask_body(
    body: dict[str, Any], endpoint: str, answer: Any, issues: tuple[Issue, ...]
) -> dict[str, Any]:
    """`body` plus the invalid `answer` and a message naming its `issues`."""
    responses = endpoint.endswith("/responses")
    text, refusal, calls = _read(answer, responses)
    note = _feedback(issues, bool(calls))
    if responses:
        given = body.get("input")
        items: list[Any] = (
            [{"role": "user", "content": given}] if isinstance(given, str) else list(given or [])
        )
        if text is not None or refusal is not None:
            items.append({"role": "assistant", "content": text if text is not None else refusal})
        items.extend(
            {"type": "function_call", "call_id": c["id"], "name": c["name"],
             "arguments": c["arguments"]}
            for c in calls
        )  # fmt: skip
        if calls:
            items.extend(
                {"type": "function_call_output", "call_id": c["id"], "output": note} for c in calls
            )
        else:
            items.append({"role": "user", "content": note})
        return {**body, "input": items}
    if "messages" not in body:  # /v1/completions: the answer and the note follow the prompt
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            return {**body, "prompt": f"{prompt}{text or ''}\n\n{note}\n"}
        return body
    msg = _chat_message(answer)
    said: dict[str, Any] = {"role": "assistant", "content": msg.get("content")}
    if msg.get("tool_calls"):
        said["tool_calls"] = msg["tool_calls"]
    elif said["content"] is None:
        said["content"] = refusal or ""
    messages = [*body["messages"], said]
    if calls:
        messages.extend({"role": "tool", "tool_call_id": c["id"], "content": note} for c in calls)
    else:
        messages.append({"role": "user", "content": note})
    return {**body, "messages": messages}
