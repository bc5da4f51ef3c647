"""The values that flow out of the engine: one `Result` per input item."""

from __future__ import annotations

import enum
import traceback
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")

__all__ = ["ErrorInfo", "Result", "Status", "Usage"]


class Status(enum.StrEnum):
    """The terminal state of one item. Every item ends in exactly one."""

    OK = "ok"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"


_OK = Status.OK  # read per result (`Result.ok`): a module constant, not EnumType.__getattr__


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """What went wrong, as text: safe to log, store and serialise.

    `type` is the exception class name, `traceback` the formatted traceback
    of the last attempt (empty for errors that never raised, like a skip).
    """

    type: str
    message: str
    traceback: str = ""
    status_code: int | None = None
    retryable: bool = False

    @classmethod
    def from_exception(cls, exc: BaseException, *, retryable: bool = False) -> ErrorInfo:
        code = getattr(exc, "status_code", None)
        return cls(
            type=type(exc).__name__,
            message=str(exc) or type(exc).__name__,
            traceback="".join(traceback.format_exception(exc)),
            status_code=code if isinstance(code, int) else None,
            retryable=retryable,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "message": self.message,
            "status_code": self.status_code,
            "traceback": self.traceback,
        }


@dataclass(slots=True)
class Usage:
    """Tokens (or any cost unit) an attempt consumed, reported by the task."""

    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(slots=True)
class Result(Generic[T]):
    """The terminal result of one input item.

    `index` is the item's position in the input, `key` its stable id (a key
    function's value, or the index as text). `started_at`/`ended_at` are wall
    clock (epoch seconds); `duration` is measured on a monotonic clock from the
    first attempt's start to the end, retries and backoff included.
    """

    index: int
    key: str
    status: Status
    item: Any = None
    value: T | None = None
    error: ErrorInfo | None = None
    attempts: int = 0
    started_at: float | None = None
    ended_at: float | None = None
    duration: float = 0.0
    usage: Usage | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status is _OK

    def to_dict(self, *, include_item: bool = False) -> dict[str, Any]:
        """A JSON-ready dict (the value is included as is; make it JSON-able)."""
        d: dict[str, Any] = {
            "index": self.index,
            "key": self.key,
            "status": self.status.value,
            "attempts": self.attempts,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "duration_seconds": round(self.duration, 6),
        }
        if include_item:
            d["item"] = self.item
        if self.status is Status.OK:
            d["value"] = self.value
        if self.error is not None:
            d["error_type"] = self.error.type
            d["error_message"] = self.error.message
            if self.error.status_code is not None:
                d["status_code"] = self.error.status_code
        if self.usage is not None:
            d["usage"] = {
                "input_tokens": self.usage.input_tokens,
                "output_tokens": self.usage.output_tokens,
            }
        if self.meta:
            d["meta"] = self.meta
        return d
