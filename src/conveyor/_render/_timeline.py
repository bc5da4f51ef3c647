"""A run over time, for the report's charts: pure arithmetic on result times.

`TimelineBuilder` takes results one at a time and keeps only compact float
arrays (three numbers per item), never the results themselves. `build()`
cuts the run into equal time buckets and computes, per bucket, how many items
finished, how many were in progress on average, and how many failed by error
type; plus a latency histogram.

"In progress" runs from an item's first attempt to its terminal result
(retries and backoff included), the span `Result.started_at`/`ended_at` covers.
"""

from __future__ import annotations

import bisect
import math
from array import array
from collections import Counter
from dataclasses import dataclass
from itertools import accumulate
from typing import TYPE_CHECKING, Any

from .._base._types import Status
from .._core._report import percentile

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .._base._types import Result

__all__ = ["Histogram", "Timeline", "TimelineBuilder", "nice_step", "nice_time_step"]

OTHER_ERRORS = "other"
_STEPS = (1.0, 2.0, 2.5, 5.0)
_TIME_STEPS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600)


def nice_step(raw: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k that is >= `raw` (raw > 0)."""
    if raw <= 0 or not math.isfinite(raw):
        return 1.0
    exp = math.floor(math.log10(raw))
    for m in (*_STEPS, 10.0):
        step = m * 10.0**exp
        if step >= raw * (1 - 1e-12):
            return step
    return 10.0 ** (exp + 1)  # pragma: no cover - the loop always returns


# Below a microsecond a span is clock noise; treating it as zero keeps the
# bucket arithmetic away from sub-normal floats.
_MIN_SPAN = 1e-6


def nice_time_step(raw: float) -> float:
    """The smallest time step a reader can count in (0.1 s ... 1 h) that is >= `raw`."""
    for step in _TIME_STEPS:
        if step >= raw:
            return float(step)
    return float(math.ceil(raw / 3600) * 3600)


@dataclass(frozen=True)
class Histogram:
    """Counts per bin: `counts[i]` holds values in [edges[i], edges[i+1])
    (the last bin includes its right edge); `overflow` counts values past it."""

    edges: tuple[float, ...]
    counts: tuple[int, ...]
    overflow: int = 0

    @property
    def total(self) -> int:
        return sum(self.counts) + self.overflow


@dataclass(frozen=True)
class Timeline:
    """Per-bucket series of a run. Bucket `i` covers
    [start + i*bucket_seconds, start + (i+1)*bucket_seconds), except the last,
    which ends with the run (`last_bucket_seconds`), so its rates are not
    diluted by time after the end."""

    start: float
    bucket_seconds: float
    completed: tuple[int, ...]
    in_flight: tuple[float, ...]
    errors: dict[str, tuple[int, ...]]
    latency: Histogram
    last_bucket_seconds: float = 0.0

    @property
    def widths(self) -> tuple[float, ...]:
        """Each bucket's duration in seconds."""
        n = len(self.completed)
        if n == 0:
            return ()
        last = self.last_bucket_seconds or self.bucket_seconds
        return (self.bucket_seconds,) * (n - 1) + (last,)

    @property
    def buckets(self) -> int:
        return len(self.completed)

    @property
    def throughput(self) -> tuple[float, ...]:
        """Items finished per second, per bucket."""
        return tuple(c / w for c, w in zip(self.completed, self.widths, strict=True))

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "bucket_seconds": self.bucket_seconds,
            "last_bucket_seconds": self.last_bucket_seconds,
            "completed": list(self.completed),
            "in_flight": [round(v, 3) for v in self.in_flight],
            "errors": {k: list(v) for k, v in self.errors.items()},
            "latency_histogram": {
                "edges": list(self.latency.edges),
                "counts": list(self.latency.counts),
                "overflow": self.latency.overflow,
            },
        }


class TimelineBuilder:
    """Accumulates result times; `build()` turns them into a `Timeline`."""

    def __init__(self) -> None:
        self._starts: array[float] = array("d")
        self._ends: array[float] = array("d")
        self._latencies: array[float] = array("d")
        self._error_at: array[float] = array("d")
        self._error_type: array[int] = array("l")
        self._type_ids: dict[str, int] = {}

    def add(self, r: Result[Any]) -> None:
        if r.status is not Status.SKIPPED and r.attempts:
            self._latencies.append(r.duration)
        if r.ended_at is None:
            return
        end = r.ended_at
        start = r.started_at if r.started_at is not None else end
        self._starts.append(min(start, end))
        self._ends.append(end)
        if r.status is not Status.OK and r.status is not Status.SKIPPED:
            name = r.error.type if r.error is not None else r.status.value
            tid = self._type_ids.setdefault(name, len(self._type_ids))
            self._error_at.append(end)
            self._error_type.append(tid)

    def build(
        self, *, max_buckets: int = 120, latency_bins: int = 30, max_error_types: int = 6
    ) -> Timeline:
        if not self._ends:
            return Timeline(0.0, 1.0, (), (), {}, self._histogram(latency_bins))
        t0 = min(self._starts)
        span = max(self._ends) - t0
        if span < _MIN_SPAN:
            span = 0.0  # clock noise, not a duration: one full bucket
        width = nice_time_step(span / max_buckets) if span > 0 else 1.0
        n = max(1, math.ceil(span / width - 1e-9))
        # The last bucket stops at the run's end; a zero-length run keeps one full
        # bucket. A sliver of a last bucket joins the one before, or one finish in a
        # few milliseconds would show as a spike in the rate.
        last = span - (n - 1) * width if span > 0 else width
        if n > 1 and last < 0.25 * width:
            n -= 1
            last += width
        starts = sorted(s - t0 for s in self._starts)
        ends = sorted(e - t0 for e in self._ends)
        completed = [0] * n
        for e in ends:
            completed[_bucket(e, width, n)] += 1
        return Timeline(
            start=t0,
            bucket_seconds=width,
            completed=tuple(completed),
            in_flight=_in_flight(starts, ends, width, n, last),
            errors=self._errors(t0, width, n, max_error_types),
            latency=self._histogram(latency_bins),
            last_bucket_seconds=last,
        )

    def _errors(self, t0: float, width: float, n: int, keep: int) -> dict[str, tuple[int, ...]]:
        names = {tid: name for name, tid in self._type_ids.items()}
        totals = Counter(self._error_type)
        top = [tid for tid, _ in sorted(totals.items(), key=lambda kv: (-kv[1], names[kv[0]]))]
        shown = set(top[:keep] if len(top) <= keep else top[: keep - 1])
        series: dict[str, list[int]] = {names[tid]: [0] * n for tid in top if tid in shown}
        if len(shown) < len(top):
            series[OTHER_ERRORS] = [0] * n
        for at, tid in zip(self._error_at, self._error_type, strict=True):
            name = names[tid] if tid in shown else OTHER_ERRORS
            series[name][_bucket(at - t0, width, n)] += 1
        return {k: tuple(v) for k, v in series.items()}

    def _histogram(self, bins: int) -> Histogram:
        values = sorted(self._latencies)
        if not values:
            return Histogram((), (), 0)
        # A long tail would squeeze every other bar into one: past 3x p99 it
        # goes to an overflow bin instead.
        p99 = percentile(values, 99)
        hi = values[-1] if values[-1] <= 3 * p99 or p99 <= 0 else 1.5 * p99
        width = nice_step(hi / bins) if hi > 0 else 1.0
        count = max(1, math.ceil(hi / width - 1e-9))
        edges = tuple(round(i * width, 12) for i in range(count + 1))
        counts = [0] * count
        overflow = 0
        for v in values:
            if v > edges[-1]:
                overflow += 1
            else:
                counts[min(count - 1, max(0, int(v / width)))] += 1
        return Histogram(edges, tuple(counts), overflow)


def _bucket(offset: float, width: float, n: int) -> int:
    return min(n - 1, max(0, int(offset / width)))


def _in_flight(
    starts: Sequence[float], ends: Sequence[float], width: float, n: int, last: float
) -> tuple[float, ...]:
    # Busy time up to t is F(t) = sum over started items of (t - s) minus, for
    # finished ones, (t - e); the average in flight over a bucket is the
    # difference of F at its edges over the width. Sorted arrays and prefix
    # sums make it O(n log n) however long each item took.
    s_pre = [0.0, *accumulate(starts)]
    e_pre = [0.0, *accumulate(ends)]

    def busy(t: float) -> float:
        i = bisect.bisect_left(starts, t)
        j = bisect.bisect_left(ends, t)
        return (i * t - s_pre[i]) - (j * t - e_pre[j])

    edges = [busy(k * width) for k in range(n)]
    edges.append(busy((n - 1) * width + last))
    widths = [width] * (n - 1) + [last]
    return tuple(max(0.0, (edges[k + 1] - edges[k]) / widths[k]) for k in range(n))
