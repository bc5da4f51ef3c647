"""The resource sampler's policy: when to sample, what the samples say, when to stop.

Pure: it is told the time and the values (no probing, no sleeping), so it is
tested with a fake clock. The engine's driver asks `due(now)`, runs the
probes (memory, CPU, GPU, the user's gauges: `conveyor._monitor`) off the
event loop, and hands the numbers to `record`, which answers with a
`Breach` when a limit the user set has been exceeded for `patience`
samples in a row: the driver then stops the run.

History is bounded: every sample is kept up to `keep`; past that, pairs of
neighbouring samples are merged (their mean) so the series spans the whole
run at half the resolution, and memory stays constant however long it runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["Breach", "SamplerPolicy", "format_metric"]


@dataclass(frozen=True)
class Breach:
    """A limit exceeded: `metric` was `value` (> `limit`, or < it for a floor)
    for `samples` samples in a row, `at` seconds into the run."""

    metric: str
    value: float
    limit: float
    samples: int
    at: float
    floor: bool = False

    @property
    def sign(self) -> str:
        return "<" if self.floor else ">"

    def message(self) -> str:
        times = "" if self.samples == 1 else f" for {self.samples} samples in a row"
        return (
            f"resource limit exceeded: {self.metric} = {format_metric(self.metric, self.value)}"
            f" {self.sign} {format_metric(self.metric, self.limit)}{times}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "value": self.value,
            "limit": self.limit,
            "floor": self.floor,
            "samples": self.samples,
            "at": round(self.at, 3),
        }


def format_metric(name: str, value: float) -> str:
    """A value with its unit, read from the metric's name (`_percent`, `_mb`)."""
    if name.endswith("_percent"):
        return f"{value:.1f}%"
    if name.endswith("_mb"):
        return f"{value:,.0f} MB"
    return f"{value:g}"


class SamplerPolicy:
    """Sampling every `interval` seconds of the run's clock, `limits` (metric ->
    maximum), `floors` (metric -> minimum, e.g. memory available), `patience`
    consecutive samples past one before it breaches."""

    def __init__(
        self,
        *,
        interval: float,
        limits: Mapping[str, float] | None = None,
        floors: Mapping[str, float] | None = None,
        patience: int = 1,
        keep: int = 512,
        started: float = 0.0,
    ) -> None:
        if not interval > 0:
            raise ValueError("interval must be > 0")
        self.interval = float(interval)
        self.limits = dict(limits or {})
        self.floors = dict(floors or {})
        self.patience = max(1, int(patience))
        self._keep = max(4, int(keep))
        self._t0 = started
        self._next = started  # the first sample at once
        self._over: dict[str, int] = {}
        self._times: list[float] = []
        self._series: dict[str, list[float]] = {}  # aligned with _times (nan: not sampled)
        self._weights: list[int] = []  # samples merged into each point
        self._stride = 1  # samples per point now (doubles each time the history halves)
        self._pending: tuple[float, dict[str, tuple[float, int]], int] | None = None
        self._stats: dict[str, tuple[float, float, float, int]] = {}  # min, max, sum, n
        self._latest: dict[str, float] = {}
        self.samples = 0
        self.breach: Breach | None = None

    def due(self, now: float) -> bool:
        return now >= self._next

    def wait(self, now: float) -> float:
        """Seconds until the next sample is due (0 when it is)."""
        return max(0.0, self._next - now)

    @property
    def latest(self) -> dict[str, float]:
        return dict(self._latest)

    def record(self, now: float, values: Mapping[str, float]) -> Breach | None:
        """Take one sample; the first `Breach` (once) when a limit is exceeded."""
        self._next = now + self.interval  # late: the next one an interval on, no burst
        clean = {k: float(v) for k, v in values.items() if _finite(v)}
        self.samples += 1
        self._latest = clean
        self._append(now - self._t0, clean)
        for name, v in clean.items():
            lo, hi, total, n = self._stats.get(name, (math.inf, -math.inf, 0.0, 0))
            self._stats[name] = (min(lo, v), max(hi, v), total + v, n + 1)
        if self.breach is not None:
            return None
        bounds = [(m, v, False) for m, v in self.limits.items()]
        bounds += [(m, v, True) for m, v in self.floors.items()]
        for metric, bound, floor in bounds:
            got = clean.get(metric)
            key = ("min " if floor else "max ") + metric
            if got is not None and (got < bound if floor else got > bound):
                self._over[key] = self._over.get(key, 0) + 1
                if self._over[key] >= self.patience:
                    self.breach = Breach(
                        metric, got, bound, self._over[key], now - self._t0, floor=floor
                    )
                    return self.breach
            else:
                self._over[key] = 0
        return None

    def _append(self, t: float, values: Mapping[str, float]) -> None:
        """Add a sample to the point being filled; a full point joins the history."""
        if self._pending is None:
            self._pending = (0.0, {}, 0)
        t_sum, sums, n = self._pending
        for name, v in values.items():
            total, k = sums.get(name, (0.0, 0))
            sums[name] = (total + v, k + 1)
        self._pending = (t_sum + t, sums, n + 1)
        if n + 1 >= self._stride:
            self._flush()

    def _flush(self) -> None:
        assert self._pending is not None
        t_sum, sums, n = self._pending
        self._pending = None
        count = len(self._times)
        for name in sums:
            if name not in self._series:
                self._series[name] = [math.nan] * count
        self._times.append(t_sum / n)
        self._weights.append(n)
        for name, series in self._series.items():
            total, k = sums.get(name, (0.0, 0))
            series.append(total / k if k else math.nan)
        if len(self._times) > self._keep:
            self._halve()
            self._stride *= 2

    def _halve(self) -> None:
        """Merge neighbouring points pairwise (weighted means); an odd last one stays."""
        times, weights = self._times, self._weights
        out_t: list[float] = []
        out_w: list[int] = []
        out_s: dict[str, list[float]] = {k: [] for k in self._series}
        for i in range(0, len(times) - 1, 2):
            wa, wb = weights[i], weights[i + 1]
            out_t.append((times[i] * wa + times[i + 1] * wb) / (wa + wb))
            out_w.append(wa + wb)
            for name, s in self._series.items():
                out_s[name].append(_mean(s[i], wa, s[i + 1], wb))
        if len(times) % 2:
            out_t.append(times[-1])
            out_w.append(weights[-1])
            for name, s in self._series.items():
                out_s[name].append(s[-1])
        self._times, self._weights, self._series = out_t, out_w, out_s

    def series(self) -> tuple[list[float], dict[str, list[float | None]]]:
        """(seconds since the start, metric -> values with None where not sampled)."""
        times = list(self._times)
        cols = {k: list(v) for k, v in self._series.items()}
        if self._pending is not None:  # the point still filling, as it stands
            t_sum, sums, n = self._pending
            times.append(t_sum / n)
            for name in sums:
                cols.setdefault(name, [math.nan] * len(self._times))
            for name, col in cols.items():
                total, k = sums.get(name, (0.0, 0))
                col.append(total / k if k else math.nan)
        return times, {
            k: [None if math.isnan(v) else round(v, 3) for v in col] for k, col in cols.items()
        }

    def to_dict(self) -> dict[str, Any]:
        """The report's `resources` section: per metric min/mean/max/last, the
        series over time, the limits and any breach."""
        times, series = self.series()
        return {
            "interval_seconds": self.interval,
            "samples": self.samples,
            "metrics": {
                name: {
                    "min": round(lo, 3),
                    "mean": round(total / n, 3),
                    "max": round(hi, 3),
                    "last": round(self._latest.get(name, math.nan), 3)
                    if name in self._latest
                    else None,
                }
                for name, (lo, hi, total, n) in sorted(self._stats.items())
            },
            "limits": dict(self.limits),
            "floors": dict(self.floors),
            "breach": None if self.breach is None else self.breach.to_dict(),
            "series": {"t": [round(t, 3) for t in times], "values": series},
        }


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _mean(a: float, wa: int, b: float, wb: int) -> float:
    if math.isnan(a):
        return b
    if math.isnan(b):
        return a
    return (a * wa + b * wb) / (wa + wb)
