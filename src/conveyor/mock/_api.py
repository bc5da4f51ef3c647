"""Request validation and OpenAI-shaped bodies for the simulated server.

Pure functions: a body goes in, an `ApiError` or a response dict comes out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._batchapi import ApiError, error_body
from ._content import (
    expected_content,
    expected_embeddings,
    float32_base64,
)

if TYPE_CHECKING:
    from ._structured import StructuredReply

__all__ = [
    "ApiError",
    "build_answer",
    "build_chat",
    "build_completion",
    "build_embeddings",
    "build_models",
    "build_response",
    "error_body",
    "shape_answer",
    "token_cap",
    "validate",
]

_MAX_N = 128
_MAX_DIMENSIONS = 4096


def _missing(param: str) -> ApiError:
    return ApiError(
        400,
        f"Missing required parameter: '{param}'.",
        param=param,
        code="missing_required_parameter",
    )


def _invalid_type(param: str, expected: str) -> ApiError:
    return ApiError(
        400,
        f"Invalid type for '{param}': expected {expected}.",
        param=param,
        code="invalid_type",
    )


def _positive_int(body: dict[str, Any], param: str, upper: int | None = None) -> int | None:
    value = body.get(param)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise _invalid_type(param, "an integer")
    if value < 1 or (upper is not None and value > upper):
        bound = f" and at most {upper}" if upper is not None else ""
        raise ApiError(
            400,
            f"Invalid '{param}': {value}. It must be at least 1{bound}.",
            param=param,
            code="invalid_value",
        )
    return value


def _is_prompt(value: Any) -> bool:
    """A string, a list of strings, a list of token ids or a list of token-id lists."""
    if isinstance(value, str):
        return True
    if not isinstance(value, list) or not value:
        return False
    if all(isinstance(v, str) for v in value):
        return True
    if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return True
    return all(isinstance(v, list) and v and all(isinstance(t, int) for t in v) for v in value)


def _check_tool_answers(messages: list[Any]) -> None:
    """An assistant message with `tool_calls` must be followed by a `tool`
    message for each call id, as the Chat Completions API requires (it answers
    400 otherwise: https://platform.openai.com/docs/guides/function-calling)."""
    for i, message in enumerate(messages):
        calls = message.get("tool_calls")
        if message.get("role") != "assistant" or not isinstance(calls, list):
            continue
        answered = {
            m.get("tool_call_id")
            for m in messages[i + 1 :]
            if isinstance(m, dict) and m.get("role") == "tool"
        }
        for call in calls:
            cid = call.get("id") if isinstance(call, dict) else None
            if cid not in answered:
                raise ApiError(
                    400,
                    "An assistant message with 'tool_calls' must be followed by tool messages "
                    f"responding to each 'tool_call_id'. The following tool_call_ids did not "
                    f"have response messages: {cid}",
                    param=f"messages.[{i}].role",
                )


def _check_call_outputs(items: list[Any]) -> None:
    """A `function_call` input item needs a `function_call_output` with its
    `call_id` (the Responses API answers 400 "No tool output found")."""
    outputs = {
        i.get("call_id")
        for i in items
        if isinstance(i, dict) and i.get("type") == "function_call_output"
    }
    for item in items:
        if (
            isinstance(item, dict)
            and item.get("type") == "function_call"
            and item.get("call_id") not in outputs
        ):
            raise ApiError(
                400,
                f"No tool output found for function call {item.get('call_id')}.",
                param="input",
            )


def validate(kind: str, body: dict[str, Any]) -> None:
    """Raise `ApiError` (400) when `body` is not a valid request for endpoint `kind`."""
    model = body.get("model")
    if model is None:
        raise _missing("model")
    if not isinstance(model, str):
        raise _invalid_type("model", "a string")
    if body.get("stream"):
        raise ApiError(
            400,
            "The conveyor mock server does not stream responses; send stream=false.",
            param="stream",
            code="unsupported_value",
        )
    if kind == "chat":
        messages = body.get("messages")
        if messages is None:
            raise _missing("messages")
        if not isinstance(messages, list) or not messages:
            raise _invalid_type("messages", "a non-empty array of messages")
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise _invalid_type(f"messages[{i}]", "an object with a string 'role'")
        _check_tool_answers(messages)
        _positive_int(body, "max_tokens")
        _positive_int(body, "max_completion_tokens")
        _positive_int(body, "n", _MAX_N)
    elif kind == "completions":
        if body.get("prompt") is None:
            raise _missing("prompt")
        if not _is_prompt(body["prompt"]):
            raise _invalid_type("prompt", "a string, array of strings or array of tokens")
        _positive_int(body, "max_tokens")
        _positive_int(body, "n", _MAX_N)
    elif kind == "embeddings":
        if body.get("input") is None:
            raise _missing("input")
        if not _is_prompt(body["input"]):
            raise _invalid_type("input", "a string, array of strings or array of tokens")
        _positive_int(body, "dimensions", _MAX_DIMENSIONS)
        fmt = body.get("encoding_format")
        if fmt not in (None, "float", "base64"):
            raise ApiError(
                400,
                f"Invalid 'encoding_format': {fmt!r}. Use 'float' or 'base64'.",
                param="encoding_format",
                code="invalid_value",
            )
    elif kind == "responses":
        items = body.get("input")
        if items is None:
            raise _missing("input")
        if not isinstance(items, str | list):
            raise _invalid_type("input", "a string or an array of input items")
        if isinstance(items, list):
            _check_call_outputs(items)
        _positive_int(body, "max_output_tokens")


def token_cap(kind: str, body: dict[str, Any]) -> int | None:
    """The request's own completion-length cap, if any (already validated)."""
    if kind == "chat":
        cap = body.get("max_completion_tokens")
        return cap if cap is not None else body.get("max_tokens")
    if kind == "responses":
        return body.get("max_output_tokens")
    return body.get("max_tokens")


def shape_answer(
    kind: str, body: dict[str, Any], completion_tokens: int
) -> tuple[int, int, str, int]:
    """``(tokens per choice, choices, finish_reason, tokens asked)`` of a valid request:
    the request's own cap, else the server's `completion_tokens`, caps the answer."""
    if kind == "embeddings":
        return 0, 1, "stop", 0
    cap = token_cap(kind, body)
    each = completion_tokens if cap is None else min(cap, completion_tokens)
    finish = "length" if each < completion_tokens else "stop"
    n = 1 if kind == "responses" else (body.get("n") or 1)
    return each, n, finish, completion_tokens if cap is None else cap


def build_answer(
    kind: str,
    rid: str,
    created: int,
    body: dict[str, Any],
    prompt: int,
    each: int,
    finish: str,
    reply: StructuredReply | None = None,
) -> dict[str, Any]:
    """The 200 body for endpoint `kind` (a structured `reply` shapes its content)."""
    if kind == "embeddings":
        return build_embeddings(body, prompt)
    builder = {"chat": build_chat, "completions": build_completion, "responses": build_response}
    return builder[kind](rid, created, body, prompt, each, finish, reply)


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def build_chat(
    rid: str,
    created: int,
    body: dict[str, Any],
    prompt: int,
    each: int,
    finish: str,
    reply: StructuredReply | None = None,
) -> dict[str, Any]:
    """A ``chat.completion`` with `n` identical choices of `each` tokens; with a
    structured `reply`, its JSON text or its function call
    (https://platform.openai.com/docs/api-reference/chat/object)."""
    text: str | None = expected_content(body)
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    if reply is not None and reply.name is not None:
        call = {"id": f"call_{rid}", "type": "function",
                "function": {"name": reply.name, "arguments": reply.arguments}}  # fmt: skip
        message = {"role": "assistant", "content": None, "refusal": None, "tool_calls": [call]}
        finish = "tool_calls" if finish == "stop" else finish
    elif reply is not None:
        message["content"] = reply.text
    n = body.get("n") or 1
    choices = [
        {"index": i, "message": dict(message), "logprobs": None, "finish_reason": finish}
        for i in range(n)
    ]
    return {
        "id": f"chatcmpl-{rid}",
        "object": "chat.completion",
        "created": created,
        "model": body["model"],
        "choices": choices,
        "usage": _usage(prompt, each * n),
        "system_fingerprint": "fp_conveyor_mock",
    }


def build_completion(
    rid: str,
    created: int,
    body: dict[str, Any],
    prompt: int,
    each: int,
    finish: str,
    reply: StructuredReply | None = None,
) -> dict[str, Any]:
    """A ``text_completion`` with `n` identical choices of `each` tokens."""
    text = expected_content(body)
    n = body.get("n") or 1
    choices = [
        {"text": text, "index": i, "logprobs": None, "finish_reason": finish} for i in range(n)
    ]
    return {
        "id": f"cmpl-{rid}",
        "object": "text_completion",
        "created": created,
        "model": body["model"],
        "choices": choices,
        "usage": _usage(prompt, each * n),
    }


def build_embeddings(body: dict[str, Any], prompt: int) -> dict[str, Any]:
    """An embeddings ``list``; usage has prompt and total tokens, as OpenAI's does."""
    as_base64 = body.get("encoding_format") == "base64"
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": float32_base64(vector) if as_base64 else vector,
        }
        for i, vector in enumerate(expected_embeddings(body))
    ]
    return {
        "object": "list",
        "data": data,
        "model": body["model"],
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
    }


def build_response(
    rid: str,
    created: int,
    body: dict[str, Any],
    prompt: int,
    each: int,
    finish: str,
    reply: StructuredReply | None = None,
) -> dict[str, Any]:
    """A Responses API ``response`` with one assistant message, or with a
    structured `reply`'s JSON text or ``function_call`` item
    (https://platform.openai.com/docs/api-reference/responses/object)."""
    capped = finish == "length"
    status = "incomplete" if capped else "completed"
    text = expected_content(body) if reply is None or reply.text is None else reply.text
    output: list[dict[str, Any]] = [
        {
            "type": "message",
            "id": f"msg_{rid}",
            "status": status,
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }
    ]
    if reply is not None and reply.name is not None:
        output = [{"type": "function_call", "id": f"fc_{rid}", "call_id": f"call_{rid}",
                   "name": reply.name, "arguments": reply.arguments,
                   "status": status}]  # fmt: skip
    return {
        "id": f"resp_{rid}",
        "object": "response",
        "created_at": created,
        "status": "incomplete" if capped else "completed",
        "incomplete_details": {"reason": "max_output_tokens"} if capped else None,
        "error": None,
        "model": body["model"],
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": each,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + each,
        },
    }


def build_models(models: tuple[str, ...]) -> dict[str, Any]:
    """``GET /v1/models``."""
    return {"object": "list", "data": [model_entry(m) for m in models]}


def model_entry(model: str) -> dict[str, Any]:
    """One model object, as in ``GET /v1/models/{id}``."""
    return {"id": model, "object": "model", "created": 0, "owned_by": "conveyor-mock"}
