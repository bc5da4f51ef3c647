"""The report's extra sections and its full text rendering.

Beyond `BatchReport`'s totals: the slowest items, what the cache saved, the
estimated cost, and the achieved rate as a fraction of the limits. They live
in `BatchReport.extra` (so `to_json` carries them) under the keys `slowest`,
`cache`, `cost` and `achieved_rate`.

A result served from the response cache says so with `meta["cached"]` true;
its tokens count as saved, not spent.
"""

from __future__ import annotations

import dataclasses
import heapq
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from .._base._types import Status
from ._pricing import estimate_cost, lookup_price

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    from .._base._types import Result
    from .._core._report import BatchReport
    from ._pricing import Price

__all__ = ["ExtrasBuilder", "RunFacts", "add_extras", "render_text"]

DEFAULT_SLOWEST = 5


@dataclass(frozen=True)
class RunFacts:
    """What a run was configured with, as far as the report needs it.

    Read from a journal's meta table by `from_meta`: the keys `batch_id`,
    `model`, `rpm`, `tpm`, `concurrency`, each also looked up in the stored
    `identity`. Any of them may be missing.
    """

    batch_id: str | None = None
    model: str | None = None
    rpm_limit: float | None = None
    tpm_limit: float | None = None
    concurrency: int | None = None

    @classmethod
    def from_meta(cls, get_meta: Callable[[str], str | None]) -> RunFacts:
        identity: dict[str, Any] = {}
        raw = get_meta("identity")
        if raw:
            try:
                loaded = orjson.loads(raw)
            except orjson.JSONDecodeError:
                loaded = None
            if isinstance(loaded, dict):
                identity = loaded

        def find(name: str) -> str | None:
            value = get_meta(name)
            if value is None:
                value = identity.get(name)
            return None if value in (None, "", "None", "null") else str(value)

        return cls(
            batch_id=find("batch_id"),
            model=find("model"),
            rpm_limit=_number(find("rpm")),
            tpm_limit=_number(find("tpm")),
            concurrency=_whole(find("concurrency")),
        )


def _number(text: str | None) -> float | None:
    try:
        v = float(text) if text is not None else None
    except ValueError:
        return None
    return v if v is not None and v > 0 else None


def _whole(text: str | None) -> int | None:
    v = _number(text)
    return int(v) if v is not None else None


class ExtrasBuilder:
    """Accumulates what the extra sections need, one result at a time.

    Constant memory: a heap of the `slowest` longest items and a few counters.
    """

    def __init__(self, *, slowest: int = DEFAULT_SLOWEST) -> None:
        self._n = slowest
        self._heap: list[tuple[float, int, dict[str, Any]]] = []
        self.cache_hits = 0
        self.cached_in = 0
        self.cached_out = 0

    def add(self, r: Result[Any]) -> None:
        if r.meta.get("cached"):
            self.cache_hits += 1
            if r.usage is not None:
                self.cached_in += r.usage.input_tokens
                self.cached_out += r.usage.output_tokens
        if r.status is Status.SKIPPED or not r.attempts or self._n <= 0:
            return
        entry = (r.duration, -r.index, _slow_entry(r))
        if len(self._heap) < self._n:
            heapq.heappush(self._heap, entry)
        elif entry[:2] > self._heap[0][:2]:
            heapq.heapreplace(self._heap, entry)

    def sections(
        self,
        report: BatchReport,
        facts: RunFacts | None = None,
        prices: Mapping[str, Price] | None = None,
    ) -> dict[str, Any]:
        facts = facts or RunFacts()
        slow = sorted(self._heap, key=lambda e: (-e[0], -e[1]))
        return {
            "slowest": [e[2] for e in slow],
            "cache": {
                "hits": self.cache_hits,
                "requests_saved": self.cache_hits,
                "tokens_saved": {"input": self.cached_in, "output": self.cached_out},
            },
            "cost": self._cost(report, facts.model, prices),
            "achieved_rate": _achieved(report, facts),
        }

    def _cost(
        self, report: BatchReport, model: str | None, prices: Mapping[str, Price] | None
    ) -> dict[str, Any]:
        if model is None:
            return {"model": None, "total": None, "note": "model unknown: no cost estimate"}
        price = lookup_price(model, prices)
        if price is None:
            return {
                "model": model,
                "total": None,
                "note": f"no price for {model}: pass --prices FILE to estimate the cost",
            }
        paid_in = max(0, report.input_tokens - self.cached_in)
        paid_out = max(0, report.output_tokens - self.cached_out)
        return {
            "model": model,
            "currency": "USD",
            "per_million_tokens": {"input": price.input, "output": price.output},
            "input": round(estimate_cost(price, paid_in, 0), 6),
            "output": round(estimate_cost(price, 0, paid_out), 6),
            "total": round(estimate_cost(price, paid_in, paid_out), 6),
            "saved_by_cache": round(estimate_cost(price, self.cached_in, self.cached_out), 6),
            "reasks": _reask_cost(report, price),
        }


def _reask_cost(report: BatchReport, price: Price) -> float | None:
    """What the re-asks of invalid answers cost (their tokens are in the totals)."""
    tok = (report.validation or {}).get("reask_tokens")
    if not tok:
        return None
    return round(estimate_cost(price, int(tok["input"]), int(tok["output"])), 6)


def _slow_entry(r: Result[Any]) -> dict[str, Any]:
    return {
        "key": r.key,
        "index": r.index,
        "status": r.status.value,
        "duration_seconds": round(r.duration, 6),
        "attempts": r.attempts,
        "error_type": r.error.type if r.error is not None and not r.ok else None,
    }


def _achieved(report: BatchReport, facts: RunFacts) -> dict[str, Any]:
    minutes = report.total_duration_seconds / 60
    rpm = report.attempts / minutes if minutes > 0 else None
    tokens = report.input_tokens + report.output_tokens
    tpm = tokens / minutes if minutes > 0 and tokens else None

    def frac(value: float | None, limit: float | None) -> float | None:
        return None if value is None or not limit else round(value / limit, 4)

    return {
        "requests_per_minute": None if rpm is None else round(rpm, 3),
        "rpm_limit": facts.rpm_limit,
        "rpm_fraction": frac(rpm, facts.rpm_limit),
        "tokens_per_minute": None if tpm is None else round(tpm, 3),
        "tpm_limit": facts.tpm_limit,
        "tpm_fraction": frac(tpm, facts.tpm_limit),
        "concurrency": facts.concurrency,
    }


def add_extras(
    report: BatchReport,
    *,
    facts: RunFacts | None = None,
    prices: Mapping[str, Price] | None = None,
    results: Iterable[Result[Any]] | None = None,
    slowest: int = DEFAULT_SLOWEST,
) -> BatchReport:
    """A copy of `report` with the extra sections, from `results` (default: its own).

    For the summary printed at the end of a run: `add_extras(report,
    facts=RunFacts(model=..., rpm_limit=...))` then `render_text`.
    """
    builder = ExtrasBuilder(slowest=slowest)
    for r in report.results if results is None else results:
        builder.add(r)
    extra = {**report.extra, **builder.sections(report, facts, prices)}
    return dataclasses.replace(report, extra=extra)


def _fmt_money(v: float) -> str:
    return f"${v:,.2f}" if v >= 1 else f"${v:.4f}"


def render_text(report: BatchReport) -> str:
    """`BatchReport.summary()` plus the extra sections present in `report.extra`."""
    lines = report.summary().splitlines()
    if report.errors:  # the full distribution below replaces the summary's top-5 line
        lines = [ln for ln in lines if not ln.startswith("  errors ")]
    extra = report.extra
    rate = extra.get("achieved_rate")
    if rate and rate.get("requests_per_minute") is not None:
        text = f"  rate {rate['requests_per_minute']:.1f} req/min"
        if rate.get("rpm_fraction") is not None:
            text += f" ({rate['rpm_fraction']:.0%} of rpm {rate['rpm_limit']:g})"
        if rate.get("tokens_per_minute") is not None:
            text += f"  {rate['tokens_per_minute']:.0f} tok/min"
            if rate.get("tpm_fraction") is not None:
                text += f" ({rate['tpm_fraction']:.0%} of tpm {rate['tpm_limit']:g})"
        lines.append(text)
    refused = {k[len("refused_") :]: v for k, v in extra.items() if k.startswith("refused_")}
    if refused:
        names = {"rate": "rate limit (waited out)", "quota": "quota", "capacity": "capacity"}
        lines.append(
            "  refused " + ", ".join(f"{n} {names.get(k, k)}" for k, n in sorted(refused.items()))
        )
    for name, why in sorted((extra.get("budgets") or {}).items()):
        lines.append(f"  {name} budget: {why}")
    cost = extra.get("cost")
    if cost:
        if cost.get("total") is not None:
            text = f"  est. cost {_fmt_money(cost['total'])} ({cost['model']})"
            if cost.get("saved_by_cache"):
                text += f", cache saved {_fmt_money(cost['saved_by_cache'])}"
            if cost.get("reasks"):
                text += f", re-asks {_fmt_money(cost['reasks'])} of it"
            lines.append(text)
        elif cost.get("model"):
            lines.append(f"  est. cost - ({cost['note']})")
    cache = extra.get("cache")
    if cache and cache.get("hits"):
        saved = cache["tokens_saved"]
        lines.append(
            f"  cache saved {cache['requests_saved']} requests, "
            f"{saved['input']} tokens in, {saved['output']} out"
        )
    if report.errors:
        lines.append("  error distribution:")
        total = sum(report.errors.values())
        for name, n in sorted(report.errors.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"    {n:>7}  {n / total:>4.0%}  {name}")
    slow = extra.get("slowest")
    if slow:
        lines.append("  slowest items:")
        for s in slow:
            err = f"  {s['error_type']}" if s.get("error_type") else ""
            lines.append(
                f"    {s['duration_seconds']:>9.3f}s  {s['status']:<9} "
                f"attempts {s['attempts']}  {s['key']}{err}"
            )
    return "\n".join(lines)
