"""What travels between the driver and a worker: plain tuples, cheap to pickle.

Items go out as `(index, key, item)`; results come back without the item
(the driver still holds it) as `WireResult` tuples, in batches with an
optional control message (a fatal error that must stop the whole run).
"""

from __future__ import annotations

import pickle
from typing import Any

from .._base._exceptions import FatalError
from .._base._types import ErrorInfo, Result, Status, Usage

__all__ = [
    "Control",
    "WireEntry",
    "WireBatch",
    "WireResult",
    "decode_fatal",
    "decode_result",
    "encode_fatal",
    "encode_result",
]

WireEntry = tuple[int, str, Any]
"""One item sent to a worker: (input index, key, item)."""

WireResult = tuple[
    int,  # input index
    str,  # status value
    Any,  # value
    tuple[str, str, str, int | None, bool] | None,  # error
    int,  # attempts
    float | None,  # started_at
    float | None,  # ended_at
    float,  # duration
    tuple[int, int] | None,  # usage
    dict[str, Any] | None,  # meta
]

Control = tuple[str, str, bytes | None]
"""("fatal", message, the pickled exception or None)."""

WireBatch = tuple[list[WireResult], Control | None]


def encode_result(index: int, r: Result[Any]) -> WireResult:
    e = r.error
    err = None if e is None else (e.type, e.message, e.traceback, e.status_code, e.retryable)
    u = r.usage
    usage = None if u is None else (u.input_tokens, u.output_tokens)
    return (
        index,
        r.status.value,
        r.value,
        err,
        r.attempts,
        r.started_at,
        r.ended_at,
        r.duration,
        usage,
        r.meta or None,
    )


def decode_result(w: WireResult, key: str, item: Any) -> Result[Any]:
    index, status, value, err, attempts, started, ended, duration, usage, meta = w
    return Result(
        index=index,
        key=key,
        status=Status(status),
        item=item,
        value=value,
        error=None if err is None else ErrorInfo(*err),
        attempts=attempts,
        started_at=started,
        ended_at=ended,
        duration=duration,
        usage=None if usage is None else Usage(*usage),
        meta=dict(meta) if meta else {},
    )


def encode_fatal(exc: BaseException) -> Control:
    message = f"{exc}" or type(exc).__name__
    try:
        exc.report = None  # type: ignore[attr-defined]  # the worker's partial report stays there
        blob: bytes | None = pickle.dumps(exc)
    except Exception:
        blob = None  # not picklable: the driver rebuilds a FatalError from the message
    return ("fatal", message, blob)


def decode_fatal(control: Control) -> FatalError:
    _, message, blob = control
    if blob is not None:
        try:
            exc = pickle.loads(blob)  # our own worker's bytes: as trusted as fn
        except Exception:
            exc = None
        if isinstance(exc, FatalError):
            return exc
    return FatalError(message)
