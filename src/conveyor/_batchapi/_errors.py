"""The OpenAI error body, shared by every simulated or served route.

``{"error": {"message", "type", "param", "code"}}``, as
https://platform.openai.com/docs/guides/error-codes shows it.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["ApiError", "error_body", "json_object", "not_found"]


class ApiError(Exception):
    """An error the server answers with an OpenAI error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",  # OpenAI's field name
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> bytes:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type_: str, param: str | None, code: str | None) -> bytes:
    """``{"error": {"message", "type", "param", "code"}}`` as JSON bytes."""
    return orjson.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    )


def not_found(kind: str, object_id: str) -> ApiError:
    """OpenAI's 404 for an unknown id: "No such File object: file-..." (param "id")."""
    shown = object_id if len(object_id) <= 80 else object_id[:80] + "..."
    return ApiError(404, f"No such {kind} object: {shown}", param="id")


def json_object(raw: bytes) -> dict[str, Any]:
    """A request body that must be one JSON object, or the API's 400."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        raise ApiError(
            400,
            "We could not parse the JSON body of your request: send one JSON object "
            "with Content-Type: application/json.",
        )
    return body
