"""Checking a batch's input file, line by line, as the Batch API does while `validating`.

A file that breaks a rule fails the batch with ``errors.data`` entries that name the
line (https://platform.openai.com/docs/api-reference/batch/object, `errors`; the input
format is https://platform.openai.com/docs/api-reference/batch/request-input: one JSON
object per line with ``custom_id``, ``method`` "POST", ``url`` the batch's endpoint and a
``body``; at most 50,000 requests and 200 MB per file,
https://platform.openai.com/docs/api-reference/batch/create). Codes as OpenAI reports
them where known (``duplicate_custom_id``, ``invalid_json_line``,
``token_limit_exceeded``: openai/openai-python#2084 quotes the real message).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from ._objects import LineError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = ["Checked", "check_lines", "token_limit_error"]

_MAX_REPORTED = 1000  # errors listed per batch; the count of the rest is said in the last


@dataclass(slots=True)
class Checked:
    lines: int = 0
    tokens: Counter[str] = field(default_factory=Counter)
    models: list[str] = field(default_factory=list)
    errors: list[LineError] = field(default_factory=list)


def _line_error(
    checked: Checked, code: str, message: str, line: int, param: str | None = None
) -> None:
    if len(checked.errors) < _MAX_REPORTED:
        checked.errors.append(LineError(code, message, param, line))


def check_lines(
    lines: Iterable[bytes],
    *,
    endpoint: str,
    max_lines: int,
    tokens_of: Callable[[dict[str, Any]], int],
) -> Checked:
    """Every problem of the file, by line number (1-based), and its tokens per model."""
    checked = Checked()
    seen: set[str] = set()
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        checked.lines += 1
        if checked.lines > max_lines:
            checked.errors.append(
                LineError(
                    "too_many_requests",
                    f"The input file has more than the maximum of {max_lines:,} requests "
                    "per batch; split it into several batches.",
                    None,
                    number,
                )
            )
            break
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            obj = None
        if not isinstance(obj, dict):
            _line_error(
                checked, "invalid_json_line", "This line is not parseable as valid JSON.", number
            )
            continue
        custom_id = obj.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            _line_error(
                checked,
                "missing_required_parameter",
                "Missing required parameter: 'custom_id'.",
                number,
                "custom_id",
            )
        elif custom_id in seen:
            _line_error(
                checked,
                "duplicate_custom_id",
                f"The custom_id for this request is a duplicate of another request: "
                f"{custom_id!r}. The custom_id parameter must be unique for each request "
                "in a batch.",
                number,
                "custom_id",
            )
        else:
            seen.add(custom_id)
        if obj.get("method") != "POST":
            _line_error(
                checked,
                "invalid_value",
                "The method of each request must be 'POST'.",
                number,
                "method",
            )
        if obj.get("url") != endpoint:
            _line_error(
                checked,
                "invalid_url",
                f"The URL of this request ({obj.get('url')!r}) does not match the batch's "
                f"endpoint {endpoint!r}.",
                number,
                "url",
            )
        body = obj.get("body")
        if not isinstance(body, dict):
            _line_error(
                checked,
                "missing_required_parameter",
                "Missing required parameter: 'body'.",
                number,
                "body",
            )
            continue
        model = body.get("model")
        if not isinstance(model, str) or not model:
            _line_error(
                checked,
                "missing_required_parameter",
                "Missing required parameter: 'body.model'.",
                number,
                "body.model",
            )
            continue
        if model not in checked.tokens:
            checked.models.append(model)
        checked.tokens[model] += tokens_of(body)
    if checked.lines == 0 and not checked.errors:
        checked.errors.append(
            LineError("empty_file", "The input file has no requests.", "input_file_id", None)
        )
    return checked


def token_limit_error(model: str, limit: int) -> LineError:
    """OpenAI's batch failure when the model's enqueued tokens would pass the limit
    (the message as openai/openai-python#2084 quotes it)."""
    return LineError(
        "token_limit_exceeded",
        f"Enqueued token limit reached for {model} in organization org-conveyor. "
        f"Limit: {limit:,} enqueued tokens. Please try again once some in_progress "
        "batches have been completed.",
    )
