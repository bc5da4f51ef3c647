"""BatchReport: what happened in a run, as numbers, JSON and a text summary.

`ReportBuilder` accumulates results one at a time (constant work per result);
`BatchReport` is the frozen outcome.
"""

from __future__ import annotations

import json
import math
import random
import time
import uuid
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from .._base._types import Result, Status
from ._validation import ValidationTally

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

__all__ = [
    "BatchReport",
    "ReportBuilder",
    "memo_lines",
    "percentile",
    "resource_lines",
    "validation_lines",
]

_KEEP = 65_536
_VALUES = {s: s.value for s in Status}  # `Enum.value` is a property: read once, not per result
# Enum members read per request, as module constants (on 3.11 `Enum.MEMBER` goes
# through EnumType.__getattr__: ~10x a global; issue 18).
_OK, _SKIPPED = Status.OK, Status.SKIPPED


def percentile(sorted_values: Iterable[float] | array[float], q: float) -> float:
    """Linear-interpolated percentile of already sorted values (0 if empty)."""
    vals = sorted_values if isinstance(sorted_values, array | list) else list(sorted_values)
    n = len(vals)
    if n == 0:
        return 0.0
    if n == 1:
        return float(vals[0])
    pos = (n - 1) * min(100.0, max(0.0, q)) / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    return float(vals[lo] + (vals[hi] - vals[lo]) * (pos - lo))


def new_batch_id() -> str:
    return time.strftime("batch_%Y%m%d_%H%M%S_") + uuid.uuid4().hex[:6]


@dataclass
class BatchReport:
    """The outcome of one run.

    `results` are in input order (empty for `stream()` reports, which do
    not keep them). Durations are seconds. `first_result_seconds` is the
    time from the start of the run to its first terminal result.

    `validation` is set when answers were validated (`validate=`, a schema):
    how many were valid at the first try and after re-asks, the re-asks and
    their tokens, and the most common validation errors. `retries` does not
    count re-asks (`validation["reasks"]` does).
    """

    batch_id: str
    total: int
    counts: dict[str, int]
    started_at: float
    finished_at: float
    total_duration_seconds: float
    avg_duration_seconds: float
    latency_p50: float
    latency_p95: float
    latency_p99: float
    latency_max: float
    first_result_seconds: float | None
    attempts: int
    retries: int
    errors: dict[str, int]
    throughput_per_second: float
    input_tokens: int
    output_tokens: int
    interrupted: bool = False
    stop_reason: str | None = None
    results: list[Result[Any]] = field(default_factory=list, repr=False)
    extra: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] | None = None

    @property
    def successful(self) -> int:
        return self.counts.get(Status.OK.value, 0)

    @property
    def failed(self) -> int:
        """Items that did not succeed: failed + timed out (cancelled/skipped apart)."""
        return self.counts.get(Status.FAILED.value, 0) + self.counts.get(Status.TIMED_OUT.value, 0)

    @property
    def ok(self) -> bool:
        return self.successful == self.total and not self.interrupted

    def __iter__(self) -> Iterator[Result[Any]]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, index: int) -> Result[Any]:
        return self.results[index]

    def values(self) -> list[Any]:
        """Each item's value in input order (None where it did not succeed)."""
        return [r.value if r.ok else None for r in self.results]

    def failures(self) -> list[Result[Any]]:
        return [r for r in self.results if not r.ok]

    def to_dict(self, *, include_results: bool = True) -> dict[str, Any]:
        """JSON-ready, in the shape of a batch response where it applies."""
        d: dict[str, Any] = {
            "batch_id": self.batch_id,
            "total_items": self.total,
            "successful": self.successful,
            "failed": self.failed,
            "counts": dict(self.counts),
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "total_duration_seconds": round(self.total_duration_seconds, 6),
            "avg_duration_per_item": round(self.avg_duration_seconds, 6),
            "first_result_seconds": (
                None if self.first_result_seconds is None else round(self.first_result_seconds, 6)
            ),
            "latency_seconds": {
                "p50": round(self.latency_p50, 6),
                "p95": round(self.latency_p95, 6),
                "p99": round(self.latency_p99, 6),
                "max": round(self.latency_max, 6),
            },
            "attempts": self.attempts,
            "retries": self.retries,
            "errors": dict(self.errors),
            "throughput_per_second": round(self.throughput_per_second, 3),
            "tokens": {"input": self.input_tokens, "output": self.output_tokens},
            "interrupted": self.interrupted,
            "stop_reason": self.stop_reason,
        }
        if self.validation is not None:
            d["validation"] = self.validation
        if self.extra:
            d["extra"] = self.extra
        if include_results:
            d["results"] = [r.to_dict() for r in self.results]
        return d

    def to_json(self, *, include_results: bool = True, indent: bool = False) -> str:
        data = self.to_dict(include_results=include_results)
        opts = orjson.OPT_NON_STR_KEYS | (orjson.OPT_INDENT_2 if indent else 0)
        try:
            return orjson.dumps(data, option=opts, default=repr).decode()
        except TypeError:
            # Values orjson refuses (ints over 64 bits, lone surrogates): the
            # slower stdlib encoder takes them, with repr() for the rest.
            text = json.dumps(data, indent=2 if indent else None, default=repr, ensure_ascii=False)
            return text.encode("utf-8", "replace").decode("utf-8")

    def summary(self) -> str:
        """A plain multi-line summary, fixed width, no escape codes."""
        c = self.counts
        lines = [
            f"batch {self.batch_id}: {self.total} items in {self.total_duration_seconds:.2f}s"
            + (f" (stopped: {self.stop_reason})" if self.stop_reason else ""),
            "  " + "  ".join(f"{s.value} {c.get(s.value, 0)}" for s in Status),
            f"  throughput {self.throughput_per_second:.1f}/s  first result "
            + (
                f"{self.first_result_seconds:.3f}s"
                if self.first_result_seconds is not None
                else "-"
            )
            + f"  retries {self.retries}",
            f"  latency p50 {self.latency_p50:.3f}s  p95 {self.latency_p95:.3f}s  "
            f"p99 {self.latency_p99:.3f}s  max {self.latency_max:.3f}s",
        ]
        if self.input_tokens or self.output_tokens:
            lines.append(f"  tokens in {self.input_tokens}  out {self.output_tokens}")
        if self.errors:
            top = sorted(self.errors.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
            lines.append("  errors " + ", ".join(f"{k} x{n}" for k, n in top))
        lines += memo_lines(self.extra.get("memo")) + resource_lines(self.extra.get("resources"))
        lines += auto_lines(self.extra.get("concurrency_auto"))
        lines.extend(validation_lines(self.validation))
        return "\n".join(lines)


_AUTO_MOVES = 8  # the latest moves of the auto concurrency listed in the summary


def auto_lines(auto: Any) -> list[str]:
    """``concurrency="auto"``: where the limit ended, and its latest moves with
    why (the whole history is in the JSON report's ``concurrency_auto``)."""
    if not isinstance(auto, dict) or not auto.get("history"):
        return []
    history = auto["history"]
    unloaded = auto.get("unloaded_latency")
    compared = auto.get("compared", "")
    base = f", unloaded {unloaded:.3g}s {compared}" if isinstance(unloaded, float) else ""
    lines = [
        f"  concurrency auto: final {auto.get('final')} after {auto.get('changes', 0)} moves{base}"
    ]
    if auto.get("gave_way"):
        lines.append(f"    gave way: {auto['gave_way']}")
    shown = history[-_AUTO_MOVES:]
    if len(history) > len(shown):
        lines.append(f"    ... {len(history) - len(shown)} earlier moves in the JSON report")
    lines += [f"    {t:8.2f}s {n:>5}  {why}" for t, n, why in shown]
    return lines


def memo_lines(memo: Any) -> list[str]:
    if not isinstance(memo, dict) or not (memo.get("calls") or memo.get("calls_saved")):
        return []
    saved = memo["tokens_saved"]
    return [
        f"  memo {memo['calls']} calls made, {memo['calls_saved']} saved "
        f"({memo['hits']} reused, {memo['joined']} joined in flight)",
        f"  memo tokens saved in {saved['input']} out {saved['output']} "
        f"({memo['tokens_saved_share']:.0%} fewer)",
    ]


def resource_lines(res: Any) -> list[str]:
    """Peaks of the sampled resources, and a breach or what could not be read."""
    if not isinstance(res, dict):
        return []
    from ._sampler import format_metric

    metrics = res.get("metrics") or {}
    shown = [m for m in _SHOWN if m in metrics] + sorted(
        m for m in metrics if not m.startswith(("process_", "system_", "children_", "gpu"))
    )
    lines = []
    if shown:
        lines.append(
            "  resources (peak) "
            + "  ".join(f"{m} {format_metric(m, metrics[m]['max'])}" for m in shown)
        )
    breach = res.get("breach")
    if breach:
        lines.append(
            f"  resource limit hit: {breach['metric']} "
            f"{format_metric(breach['metric'], breach['value'])} "
            f"{'<' if breach.get('floor') else '>'} "
            f"{format_metric(breach['metric'], breach['limit'])} at {breach['at']:.1f}s"
        )
    for what, why in sorted((res.get("unavailable") or {}).items()):
        lines.append(f"  not sampled ({what}): {why}")
    return lines


_SHOWN = (
    "process_rss_mb",
    "process_cpu_percent",
    "children_rss_mb",
    "system_memory_percent",
    "gpu_utilization_percent",
    "gpu_memory_percent",
)


def validation_lines(v: dict[str, Any] | None) -> list[str]:
    """The summary lines of a report's `validation` section."""
    if not v:
        return []
    tok = v["reask_tokens"]
    lines = [
        f"  valid {v['valid_rate_first_try']:.1%} at first try, {v['valid_rate_final']:.1%} "
        f"after re-asks ({v['valid_first_try']}+{v['valid_after_reask']} of {v['checked']}, "
        f"{v['invalid']} invalid)",
        f"  re-asks {v['reasks']}  tokens in {tok['input']}  out {tok['output']}",
    ]
    if v["top_errors"]:
        lines.append("  validation errors:")
        lines.extend(
            f"    {e['count']:>7}  {e['error']}  e.g. {e['example'][:80]}"
            for e in v["top_errors"][:5]
        )
    return lines


class ReportBuilder:
    """Accumulates results into a `BatchReport`.

    Keeps every result only when asked to (`run()` returns them); latencies
    are kept as a compact float array for the percentiles.
    """

    def __init__(self, *, batch_id: str | None = None, keep_results: bool = True) -> None:
        self.batch_id = batch_id or new_batch_id()
        self.keep_results = keep_results
        self.started_at = time.time()
        self._t0 = time.monotonic()
        self._first: float | None = None
        self.counts: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        # Latencies for the percentiles: every one up to _KEEP, then a uniform
        # reservoir sample of _KEEP (memory stays bounded on endless streams;
        # percentiles are then estimates, mean and max stay exact).
        self._latencies: array[float] = array("d")
        self._lat_seen = 0
        self._lat_sum = 0.0
        self._lat_max = 0.0
        self._rng = random.Random(0)
        self._attempts = 0
        self._retries = 0
        self.tokens_in = 0
        self.tokens_out = 0
        self.results: list[Result[Any]] = []
        self.total = 0
        self.validation = ValidationTally()

    def add(self, r: Result[Any]) -> None:
        if self._first is None:
            self._first = time.monotonic() - self._t0
        self.total += 1
        self.counts[_VALUES[r.status]] += 1
        if r.status is not _SKIPPED and r.attempts:
            self._add_latency(r.duration)
        self._attempts += r.attempts
        reasks = 0
        if r.meta:
            before = self.validation.reasks
            self.validation.add(r.meta)
            reasks = self.validation.reasks - before
        if r.attempts > 1 + reasks:
            self._retries += r.attempts - 1 - reasks
        if r.error is not None and r.status is not _OK:
            self.errors[r.error.type] += 1
        if r.usage is not None:
            self.tokens_in += r.usage.input_tokens
            self.tokens_out += r.usage.output_tokens
        if self.keep_results:
            self.results.append(r)

    def _add_latency(self, d: float) -> None:
        self._lat_seen += 1
        self._lat_sum += d
        self._lat_max = max(self._lat_max, d)
        if len(self._latencies) < _KEEP:
            self._latencies.append(d)
        else:
            # Algorithm R: each latency seen so far stays with equal probability.
            # (`random() * n` rather than `randrange(n)`: one C call, not five frames.)
            j = int(self._rng.random() * self._lat_seen)
            if j < _KEEP:
                self._latencies[j] = d

    def build(self, *, interrupted: bool = False, stop_reason: str | None = None) -> BatchReport:
        elapsed = time.monotonic() - self._t0
        lat = sorted(self._latencies)
        seen = self._lat_seen
        if self.keep_results:
            self.results.sort(key=lambda r: r.index)
        done = self.total - self.counts.get(Status.SKIPPED.value, 0)
        return BatchReport(
            batch_id=self.batch_id,
            total=self.total,
            counts={s.value: self.counts.get(s.value, 0) for s in Status},
            started_at=self.started_at,
            finished_at=self.started_at + elapsed,
            total_duration_seconds=elapsed,
            avg_duration_seconds=(self._lat_sum / seen) if seen else 0.0,
            latency_p50=percentile(lat, 50),
            latency_p95=percentile(lat, 95),
            latency_p99=percentile(lat, 99),
            latency_max=self._lat_max if seen else 0.0,
            first_result_seconds=self._first,
            attempts=self._attempts,
            retries=self._retries,
            errors=dict(self.errors),
            throughput_per_second=(done / elapsed) if elapsed > 0 else 0.0,
            input_tokens=self.tokens_in,
            output_tokens=self.tokens_out,
            interrupted=interrupted,
            stop_reason=stop_reason,
            results=self.results,
            validation=self.validation.section(),
        )
