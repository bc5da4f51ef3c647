"""The File and Batch objects, as the API returns them.

Field for field the objects of https://platform.openai.com/docs/api-reference/files/object
and https://platform.openai.com/docs/api-reference/batch/object (openai-python
`types/file_object.py`, `types/batch.py`): ids ``file-...`` and ``batch_...``, Unix
seconds, ``request_counts {total, completed, failed}``, ``errors {object: "list",
data: [{code, message, param, line}]}``.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import asdict, dataclass, field
from typing import Any, Final

__all__ = [
    "ACTIVE",
    "FILE_PURPOSES",
    "FINAL",
    "BatchRecord",
    "FileRecord",
    "LineError",
    "new_id",
    "valid_id",
]

# Purposes an upload may name (openai-python `types/file_purpose.py`); the server's own
# files are "batch_output" (https://platform.openai.com/docs/api-reference/files/object).
FILE_PURPOSES: Final = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")

# A batch whose tokens still count against the enqueued-token limit.
ACTIVE: Final = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
FINAL: Final = frozenset({"completed", "failed", "expired", "cancelled"})

_ID = re.compile(r"\A(?:file-|batch_|batch_req_)[A-Za-z0-9]{24}\Z")


def new_id(prefix: str) -> str:
    """``file-`` / ``batch_`` + 24 random letters and digits (OpenAI's id alphabet)."""
    return prefix + secrets.token_hex(12)


def valid_id(value: str) -> bool:
    """An id this server could have made; anything else is unknown without a lookup."""
    return bool(_ID.match(value))


@dataclass(slots=True)
class FileRecord:
    """One file: an upload, or a batch's output or error file."""

    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str = "processed"
    expires_at: int | None = None

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": self.status,
            "expires_at": self.expires_at,
            "status_details": None,
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FileRecord:
        return cls(**data)


@dataclass(frozen=True, slots=True)
class LineError:
    """One entry of a batch's ``errors.data``: what is wrong, and on which input line."""

    code: str
    message: str
    param: str | None = None
    line: int | None = None

    def to_api(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param, "line": self.line}


def _usage(usage: dict[str, int] | None) -> dict[str, Any] | None:
    """The batch's ``usage`` (openai-python `types/batch_usage.py`), or None before the end."""
    if usage is None:
        return None
    given, taken = usage.get("input", 0), usage.get("output", 0)
    return {
        "input_tokens": given,
        "input_tokens_details": {"cached_tokens": usage.get("cached", 0)},
        "output_tokens": taken,
        "output_tokens_details": {"reasoning_tokens": usage.get("reasoning", 0)},
        "total_tokens": given + taken,
    }


@dataclass(slots=True)
class BatchRecord:
    """One batch and where it is in its lifecycle."""

    id: str
    endpoint: str
    input_file_id: str
    completion_window: str
    created_at: int
    expires_at: int
    status: str = "validating"
    metadata: dict[str, str] | None = None
    model: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    errors: list[LineError] = field(default_factory=list)
    # Prompt tokens per model, counted at validation (the enqueued-token limit's charge).
    tokens: dict[str, int] = field(default_factory=dict)
    # input, cached, output, reasoning tokens of the answered lines (set when it ends).
    usage: dict[str, int] | None = None

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "model": self.model,
            "errors": (
                {"object": "list", "data": [e.to_api() for e in self.errors]}
                if self.errors
                else None
            ),
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "in_progress_at": self.in_progress_at,
            "expires_at": self.expires_at,
            "finalizing_at": self.finalizing_at,
            "completed_at": self.completed_at,
            "failed_at": self.failed_at,
            "expired_at": self.expired_at,
            "cancelling_at": self.cancelling_at,
            "cancelled_at": self.cancelled_at,
            "request_counts": {
                "total": self.total,
                "completed": self.completed,
                "failed": self.failed,
            },
            "metadata": self.metadata,
            "usage": _usage(self.usage),
        }

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["errors"] = [e.to_api() for e in self.errors]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchRecord:
        fields = dict(data)
        fields["errors"] = [LineError(**e) for e in fields.get("errors", [])]
        return cls(**fields)
