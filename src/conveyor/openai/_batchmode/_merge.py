"""Lines of a batch's output and error files -> results for the journal.

An output line is `{"id", "custom_id", "response": {"status_code",
"request_id", "body"}, "error": null}`; an error-file line has a non-2xx
response, or `response: null` and `error: {"code", "message"}` (OpenAI:
`batch_expired` for the lines an expired batch never ran,
https://platform.openai.com/docs/guides/batch). What is transient (429,
5xx, expired, cancelled) is re-driven; anything else is the line's answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson

from ..._base._types import ErrorInfo, Result, Status, Usage
from .._http import _RETRYABLE_STATUS, Answer, _error_message

__all__ = ["RETRYABLE_CODES", "Outcome", "classify", "to_result"]

RETRYABLE_CODES = frozenset({"batch_expired", "batch_cancelled", "rate_limit_exceeded",
                             "server_error", "internal_error", "timeout",
                             "service_unavailable"})  # fmt: skip


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one line of a result file says about its request."""

    custom_id: str
    kind: Literal["ok", "retry", "failed"]
    status_code: int | None = None
    body: Any = None
    request_id: str | None = None
    code: str | None = None
    message: str = ""


def classify(raw: bytes) -> Outcome | None:
    """The outcome of one result-file line (None when it names no custom_id)."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("custom_id"), str):
        return None
    cid = obj["custom_id"]
    resp = obj.get("response")
    err = obj.get("error")
    if isinstance(resp, dict) and isinstance(resp.get("status_code"), int):
        code = int(resp["status_code"])
        body = resp.get("body")
        rid = resp.get("request_id")
        rid = rid if isinstance(rid, str) else None
        if 200 <= code < 300:
            return Outcome(cid, "ok", code, body, rid)
        kind: Literal["retry", "failed"] = "retry" if code in _RETRYABLE_STATUS else "failed"
        return Outcome(cid, kind, code, body, rid, message=_error_message(body))
    if isinstance(err, dict):
        code_s = str(err.get("code") or "batch_error")
        msg = str(err.get("message") or code_s)
        return Outcome(cid, "retry" if code_s in RETRYABLE_CODES else "failed", code=code_s,
                       message=msg)  # fmt: skip
    return Outcome(cid, "retry", code="no_result", message="the batch gave no result")


def _usage(body: Any) -> Usage | None:
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return None
    tin = usage.get("prompt_tokens", usage.get("input_tokens", 0))
    tout = usage.get("completion_tokens", usage.get("output_tokens", 0))
    if isinstance(tin, int) and isinstance(tout, int):
        return Usage(tin, tout)
    return None


def to_result(
    outcome: Outcome,
    *,
    key: str,
    index: int,
    attempts: int,
    started_at: float | None,
    ended_at: float,
    meta: dict[str, Any],
) -> Result[Any]:
    """The terminal result of a line whose outcome is final (ok, or failed for good)."""
    duration = 0.0 if started_at is None else max(0.0, ended_at - started_at)
    common: dict[str, Any] = {"index": index, "key": key, "attempts": attempts,
                              "started_at": started_at, "ended_at": ended_at,
                              "duration": duration}  # fmt: skip
    if outcome.kind == "ok" and outcome.status_code is not None:
        answer = Answer(outcome.status_code, outcome.body, outcome.request_id)
        return Result(status=Status.OK, value=answer, usage=_usage(outcome.body), meta=meta,
                      **common)  # fmt: skip
    if outcome.status_code is not None:
        message = f"HTTP {outcome.status_code}: {outcome.message}".rstrip(": ")
        error = ErrorInfo("HTTPClientError", message, status_code=outcome.status_code,
                          retryable=outcome.kind == "retry")  # fmt: skip
        meta = {**meta, "status_code": outcome.status_code, "body": outcome.body,
                "request_id": outcome.request_id}  # fmt: skip
        return Result(status=Status.FAILED, error=error, meta=meta, **common)
    error = ErrorInfo(outcome.code or "batch_error", outcome.message,
                      retryable=outcome.kind == "retry")  # fmt: skip
    return Result(status=Status.FAILED, error=error, meta=meta, **common)
