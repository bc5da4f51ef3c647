"""`--dry-run`: read and check the whole input, send nothing, and say what the
run would cost in requests, tokens, money and time."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._journal._journal import Journal
from .._journal._keys import SeenKeys
from .._render._pricing import Price, estimate_cost, lookup_price
from ._batchfile import BadLine, FileCheck
from ._tokens import request_estimate, tokenizer_name

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["Plan", "make_plan"]


@dataclass
class Plan:
    input: str
    lines: int = 0
    valid: int = 0
    bad: list[BadLine] = field(default_factory=list)
    bad_count: int = 0
    done_in_journal: int = 0
    pending: int = 0
    duplicates: int = 0
    models: Counter[str] = field(default_factory=Counter)
    prompt_tokens: Counter[str] = field(default_factory=Counter)
    output_tokens: Counter[str] = field(default_factory=Counter)
    tokenizer: str = ""
    cost: float | None = None
    unpriced: list[str] = field(default_factory=list)
    seconds: float | None = None
    bound_by: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "lines": self.lines,
            "valid": self.valid,
            "invalid": self.bad_count,
            "invalid_lines": [{"line": b.line, "reason": b.reason} for b in self.bad],
            "already_done": self.done_in_journal,
            "to_send": self.pending,
            "identical_requests": self.duplicates,
            "models": dict(self.models),
            "prompt_tokens": sum(self.prompt_tokens.values()),
            "max_output_tokens": sum(self.output_tokens.values()),
            "tokenizer": self.tokenizer,
            "estimated_cost_usd": None if self.cost is None else round(self.cost, 4),
            "unpriced_models": self.unpriced,
            "estimated_seconds": None if self.seconds is None else round(self.seconds, 1),
            "bound_by": self.bound_by,
        }

    def render(self) -> str:
        lines = [
            f"dry run of {self.input}: nothing was sent",
            f"  lines {self.lines}  valid {self.valid}  invalid {self.bad_count}"
            f"  already done (journal) {self.done_in_journal}  to send {self.pending}",
        ]
        if self.duplicates:
            lines.append(f"  identical requests sent once (dedupe): {self.duplicates}")
        lines.extend(f"  {b.describe()}" for b in self.bad[:20])
        if self.bad_count > 20:
            lines.append(f"  ... {self.bad_count - 20} more invalid lines")
        pt, ot = sum(self.prompt_tokens.values()), sum(self.output_tokens.values())
        lines.append(f"  tokens: prompt ~{pt:,}  output up to {ot:,}  ({self.tokenizer} estimate)")
        for model, n in self.models.most_common():
            lines.append(
                f"    {model}: {n} requests, prompt ~{self.prompt_tokens[model]:,}, "
                f"output up to {self.output_tokens[model]:,}"
            )
        if self.cost is not None:
            note = f" (no price for: {', '.join(self.unpriced)})" if self.unpriced else ""
            lines.append(f"  estimated cost: up to ${self.cost:,.2f}{note}")
        if self.seconds is not None:
            lines.append(
                f"  estimated duration: ~{_fmt_seconds(self.seconds)} (bound by {self.bound_by})"
            )
        return "\n".join(lines)


def _fmt_seconds(s: float) -> str:
    if s < 90:
        return f"{s:.0f}s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def make_plan(
    items: Any,
    input_path: Path,
    *,
    journal_path: Path | None,
    key_of: Any,
    concurrency: int,
    rpm: float | None,
    tpm: float | None,
    latency: float = 1.0,
    prices: dict[str, Price] | None = None,
    request_key: Any = None,
) -> Plan:
    """Walk every item once; `latency` is the assumed seconds per request."""
    plan = Plan(input=str(input_path))
    journal = None
    if journal_path is not None and journal_path.exists():
        journal = Journal.open_readonly(journal_path)
    seen = SeenKeys()  # identical requests: bounded memory, every repeat found
    check = FileCheck(path=str(input_path))  # the same scan step as validate_file
    try:
        for parsed in items:
            plan.lines += 1
            item = check.add(parsed)
            if item is None:
                continue
            if journal is not None and journal.is_terminal(key_of(item)):
                plan.done_in_journal += 1
                continue
            plan.pending += 1
            if request_key is not None:
                rk = request_key(item.url, item.body)
                if seen.first(rk, plan.lines) is not None:
                    plan.duplicates += 1
                    continue
            model = str(item.body.get("model", "?"))
            plan.models[model] += 1
            prompt, output = request_estimate(item.body, item.endpoint)
            plan.prompt_tokens[model] += prompt
            plan.output_tokens[model] += output  # n/best_of included, as the run reserves
    finally:
        seen.close()
        if journal is not None:
            journal.close()
    plan.valid, plan.bad_count, plan.bad = check.valid, check.bad, check.bad_lines
    plan.tokenizer = tokenizer_name(next(iter(plan.models), None))
    total_cost = 0.0
    priced = False
    for model in plan.models:
        price = lookup_price(model, prices)
        if price is None:
            plan.unpriced.append(model)
            continue
        priced = True
        total_cost += estimate_cost(price, plan.prompt_tokens[model], plan.output_tokens[model])
    plan.cost = total_cost if priced else None
    sent = plan.pending - plan.duplicates
    bounds = {"concurrency": sent * latency / max(1, concurrency)}
    if rpm:
        bounds["rpm limit"] = sent / rpm * 60
    if tpm:
        tokens = sum(plan.prompt_tokens.values()) + sum(plan.output_tokens.values())
        bounds["tpm limit"] = tokens / tpm * 60
    plan.bound_by, plan.seconds = max(bounds.items(), key=lambda kv: kv[1])
    if math.isnan(plan.seconds):
        plan.seconds = None
    return plan
