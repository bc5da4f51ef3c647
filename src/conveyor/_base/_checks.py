"""Preflight check outcomes, and how a user's own check function's answer reads."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

__all__ = ["Check", "CheckStatus", "user_check_outcome"]

CheckStatus = Literal["ok", "warn", "fail", "skip"]


@dataclass(frozen=True)
class Check:
    """One preflight check's outcome. `fix` says what to do when it is not ok."""

    name: str
    status: CheckStatus
    detail: str
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def user_check_outcome(fn: Any, out: Any = None, exc: BaseException | None = None) -> Check:
    """What a user's check function's answer means: None or True passes; False,
    a string (the reason) or an exception fails; a `Check` is taken as it is."""
    name = f"check {getattr(fn, '__name__', type(fn).__name__)}"
    fix = "fix what this check looks at, or run without it"
    if exc is not None:
        return Check(name, "fail", f"raised {type(exc).__name__}: {exc}", fix)
    if isinstance(out, Check):
        return out
    if out is None or out is True:
        return Check(name, "ok", "passed")
    if out is False:
        return Check(name, "fail", "returned False", fix)
    return Check(name, "fail", str(out), fix)
