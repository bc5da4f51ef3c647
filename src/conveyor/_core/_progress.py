"""The live figures of a run, as one immutable snapshot.

The engine fills it in; renderers (a terminal bar, plain log lines, a
notebook widget) only read it. Rates are measured over a recent window so they
follow the run as it speeds up or slows down.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._report import ReportBuilder

__all__ = ["ProgressSnapshot", "RateMeter", "measure"]


@dataclass(frozen=True)
class ProgressSnapshot:
    """How a run stands right now. Rates are over the last few seconds."""

    elapsed: float
    total: int | None
    done: int
    counts: dict[str, int]
    in_flight: int
    retrying: int
    attempts: int
    requests_per_second: float
    tokens_in_per_minute: float
    tokens_out_per_minute: float
    concurrency_limit: int
    rpm_limit: float | None
    tpm_limit: float | None
    rpm_in_window: float
    tpm_in_window: float
    rate_limited: int
    paused_for: float
    breaker: str
    finished: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    budgets: dict[str, str] = field(default_factory=dict)
    """Each budget the server meters, as conveyor mirrors it ("the server's
    bucket: 100 at once, 100/s")."""
    concurrency_reason: str | None = None
    """With ``concurrency="auto"``: why the limit last moved."""
    concurrency_history: tuple[tuple[float, int, str], ...] = ()
    """With ``concurrency="auto"``: ``(seconds since the start, limit, reason)``
    per move of the limit, the first one ``"start"``."""
    resources: dict[str, float] = field(default_factory=dict)
    """With ``monitor=``: the latest sample (``process_rss_mb``, ``gpu_memory_percent``,
    your gauges...)."""
    reasks: int = 0
    """Re-asks of invalid answers (`validate=`, a schema), over the items done so far."""

    @property
    def ok(self) -> int:
        return self.counts.get("ok", 0)

    @property
    def failed(self) -> int:
        return self.counts.get("failed", 0) + self.counts.get("timed_out", 0)

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at the recent completion rate; None when unknown."""
        if self.total is None or self.finished:
            return None if not self.finished else 0.0
        left = max(0, self.total - self.done)
        if left == 0:
            return 0.0
        rate = self.extra.get("done_per_second", 0.0)
        if not rate:
            return None
        return float(left / rate)

    def to_dict(self) -> dict[str, Any]:
        return {
            "elapsed": round(self.elapsed, 3),
            "total": self.total,
            "done": self.done,
            "counts": dict(self.counts),
            "in_flight": self.in_flight,
            "retrying": self.retrying,
            "attempts": self.attempts,
            "requests_per_second": round(self.requests_per_second, 3),
            "tokens_in_per_minute": round(self.tokens_in_per_minute, 1),
            "tokens_out_per_minute": round(self.tokens_out_per_minute, 1),
            "concurrency_limit": self.concurrency_limit,
            "rpm_limit": self.rpm_limit,
            "tpm_limit": self.tpm_limit,
            "rpm_in_window": self.rpm_in_window,
            "tpm_in_window": self.tpm_in_window,
            "rate_limited": self.rate_limited,
            "paused_for": round(self.paused_for, 3),
            "breaker": self.breaker,
            "budgets": dict(self.budgets),
            "concurrency_reason": self.concurrency_reason,
            "resources": {k: round(v, 3) for k, v in self.resources.items()},
            "concurrency_history": [
                [round(t, 3), n, why] for t, n, why in self.concurrency_history
            ],
            "eta_seconds": None if self.eta_seconds is None else round(self.eta_seconds, 1),
            "finished": self.finished,
            "reasks": self.reasks,
        }


class RateMeter:
    """Rates of cumulative counters over the last `window` seconds."""

    def __init__(self, window: float = 10.0) -> None:
        self.window = window
        self._samples: deque[tuple[float, tuple[float, ...]]] = deque()

    def update(self, now: float, values: tuple[float, ...]) -> tuple[float, ...]:
        """Record cumulative `values` at `now`; return per-second rates."""
        s = self._samples
        s.append((now, values))
        while len(s) > 2 and s[1][0] <= now - self.window:
            s.popleft()
        t0, v0 = s[0]
        dt = now - t0
        if dt <= 0:
            return tuple(0.0 for _ in values)
        return tuple((b - a) / dt for a, b in zip(v0, values, strict=True))


_NO_LIMITS: dict[str, Any] = {
    "rpm_limit": None,
    "tpm_limit": None,
    "rpm_in_window": 0.0,
    "tpm_in_window": 0.0,
    "rate_limited": 0,
    "paused_for": 0.0,
    "breaker": "off",
    "budgets": {},
}


def measure(
    meter: RateMeter,
    report: ReportBuilder,
    *,
    now: float,
    started: float,
    total: int | None,
    attempts: int,
    in_flight: int,
    retrying: int,
    concurrency_limit: int,
    finished: bool,
    limits: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    resources: Mapping[str, float] | None = None,
) -> ProgressSnapshot:
    """A snapshot from a run's counters (the engine's and the Ray driver's)."""
    rps, tin, tout, done_rate = meter.update(
        now, (float(attempts), float(report.tokens_in), float(report.tokens_out),
              float(report.total)),
    )  # fmt: skip
    return ProgressSnapshot(
        elapsed=now - started,
        total=total,
        done=report.total,
        counts=dict(report.counts),
        in_flight=in_flight,
        retrying=retrying,
        attempts=attempts,
        requests_per_second=rps,
        tokens_in_per_minute=tin * 60,
        tokens_out_per_minute=tout * 60,
        concurrency_limit=concurrency_limit,
        **{**_NO_LIMITS, **(limits or {})},
        finished=finished,
        extra={"done_per_second": done_rate, **(extra or {})},
        resources=dict(resources or {}),
        reasks=report.validation.reasks,
    )
