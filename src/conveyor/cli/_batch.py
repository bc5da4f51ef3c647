"""Batch mode on the command line: `--dry-run --mode batch`, the summary's
batch section, the batch part of `conveyor status`, and `conveyor cancel`."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import click
import orjson

from .._base._exceptions import ConveyorError
from .._journal._journal import Journal
from .._journal._shards import ACTIVE, ShardStore
from ._common import cli_errors, setup_logging

__all__ = ["batch_dry_run", "batch_status", "cancel_cmd", "render_batch_section", "render_batches"]


def _money(v: float | None) -> str:
    if v is None:
        return "-"
    return f"${v:,.2f}" if v >= 1 else f"${v:.4f}"


def batch_dry_run(input_path: Path, settings: Any, o: dict[str, Any]) -> None:
    """Print the shards the run would submit, their tokens and the cost at both prices."""
    from .._render._pricing import estimate_cost, load_prices, lookup_price
    from ..openai._batchfile import RequestLine
    from ..openai._batchmode._driver import request_bytes
    from ..openai._batchmode._policy import Line, Shard, Sharder
    from ..openai._batchmode._runner import shard_limits
    from ..openai._runparts import _items, default_journal_path, item_key
    from ..openai._tokens import estimate_prompt_tokens, max_output_tokens

    if not input_path.is_file():
        raise click.BadParameter(f"{input_path}: no such file", param_hint="INPUT")
    jpath = o["journal"] or (default_journal_path(settings.output) if settings.output else None)
    done: set[str] = set()
    if jpath is not None and Path(jpath).exists():
        with Journal.open_readonly(jpath) as j:
            done = set(j.keys_with_status(["ok", "failed", "timed_out"]))
    prices = load_prices(o["prices"]) if o.get("prices") else None
    limits = shard_limits(settings)
    sharder = Sharder(limits)
    prompt: Counter[str] = Counter()
    output: Counter[str] = Counter()
    lines = bad = skipped = 0
    shards: list[Shard] = []
    for item in _items(input_path, settings):
        lines += 1
        if not isinstance(item, RequestLine):
            bad += 1
            continue
        if item_key(item) in done:
            skipped += 1
            continue
        model = str(item.body.get("model"))
        tokens = estimate_prompt_tokens(item.body, item.endpoint)
        prompt[model] += tokens
        output[model] += max_output_tokens(item.body, item.endpoint)
        closed = sharder.add(Line(item.custom_id, lines - 1, item.url, model,
                                  len(request_bytes(item)), tokens))  # fmt: skip
        if closed is not None:
            shards.append(closed)
    shards += sharder.finish()
    out = [
        f"dry run of {input_path} in batch mode: nothing was sent",
        f"  lines {lines}  invalid {bad}  already done (journal) {skipped}  "
        f"to send {sum(len(s.lines) for s in shards)}",
        f"  shards {len(shards)} (at most {limits.max_lines:,} lines, {limits.max_bytes:,} "
        "bytes" + (f", {limits.max_tokens:,} tokens" if limits.max_tokens else "") + " each)",
    ]
    for i, sh in enumerate(shards[:50], 1):
        out.append(f"    shard {i}: {sh.model} {sh.url}  {len(sh.lines):,} lines  "
                   f"{sh.nbytes:,} bytes  ~{sh.tokens:,} prompt tokens")  # fmt: skip
    if len(shards) > 50:
        out.append(f"    ... {len(shards) - 50} more shards")
    online = 0.0
    unpriced = []
    for model in prompt:
        price = lookup_price(model, prices)
        if price is None:
            unpriced.append(model)
            continue
        online += estimate_cost(price, prompt[model], output[model])
    out.append(f"  tokens: prompt ~{sum(prompt.values()):,}  output up to "
               f"{sum(output.values()):,}")  # fmt: skip
    if len(unpriced) < len(prompt):
        note = f" (no price for: {', '.join(unpriced)})" if unpriced else ""
        out.append(f"  estimated cost: up to {_money(online / 2)} at batch prices, "
                   f"{_money(online)} online{note}")  # fmt: skip
    else:
        out.append("  estimated cost: no price for these models (--prices FILE)")
    click.echo("\n".join(out))


def render_batch_section(bm: dict[str, Any]) -> str:
    """The batch lines of a run's summary: lines per path, cost at both prices."""
    lines = [
        f"  batch mode: {bm['lines_batch']} lines by batch, {bm['lines_online']} online"
        + (f", {bm['lines_invalid']} invalid" if bm.get("lines_invalid") else "")
        + (f"; {bm['answers_dropped']} later answers dropped" if bm.get("answers_dropped") else ""),
        f"  shards {bm['shards']} "
        + " ".join(f"{k} {v}" for k, v in sorted(bm["shard_states"].items())),
    ]
    c = bm.get("counters") or {}
    shown = {k: v for k, v in sorted(c.items()) if v}
    if shown:
        lines.append("  " + "  ".join(f"{k} {v}" for k, v in shown.items()))
    cost = bm.get("cost") or {}
    if cost.get("total") is not None:
        lines.append(
            f"  cost {_money(cost['total'])} ({_money(cost['batch_path'])} batch + "
            f"{_money(cost['online_path'])} online); all at batch prices "
            f"{_money(cost['all_at_batch_prices'])}, all online "
            f"{_money(cost['all_at_online_prices'])}"
        )
    elif cost.get("note"):
        lines.append(f"  cost - ({cost['note']})")
    return "\n".join(lines)


def batch_status(j: Journal) -> dict[str, Any] | None:
    """The batch part of `conveyor status`: each shard's state and an ETA."""
    rows = ShardStore(j).shards()
    if not rows:
        return None
    now = time.time()
    live = [r for r in rows if r.state in ACTIVE]
    done = sum(r.completed + r.failed for r in live)
    total = sum(r.lines for r in live)
    started = min((r.submitted_at for r in live if r.submitted_at), default=None)
    rate = done / (now - started) if started and now > started and done else None
    eta = (total - done) / rate if rate else None
    deadline = j.get_meta("batch_deadline_at")
    return {
        "shards": [
            {
                "seq": r.seq,
                "batch_id": r.batch_id,
                "state": r.state,
                "status": r.remote_status,
                "lines": r.lines,
                "completed": r.completed,
                "failed": r.failed,
                "model": r.model,
            }
            for r in rows
        ],
        "states": dict(Counter(r.state for r in rows)),
        "active_lines": total,
        "active_done": done,
        "eta_seconds": None if eta is None else round(eta, 1),
        "deadline_in_seconds": None if not deadline else round(float(deadline) - now, 1),
    }


def render_batches(st: dict[str, Any]) -> list[str]:
    out = ["  batches: " + "  ".join(f"{k} {v}" for k, v in sorted(st["states"].items()))]
    out.extend(
        f"    {sh['batch_id'] or '(creating)'}  {sh['status'] or sh['state']}  "
        f"{sh['completed'] + sh['failed']}/{sh['lines']} lines  {sh['model']}"
        for sh in st["shards"]
        if sh["state"] in ACTIVE
    )
    tail = []
    if st["eta_seconds"] is not None:
        tail.append(f"batch eta {st['eta_seconds']:.0f}s")
    if st["deadline_in_seconds"] is not None:
        tail.append(f"deadline in {st['deadline_in_seconds']:.0f}s")
    if tail:
        out.append("    " + ", ".join(tail))
    return out


def _journal_path(target: Path) -> Path:
    """The journal itself, or the output whose journal sits beside it."""
    beside = target.with_name(target.name + ".conveyor.db")
    return beside if not target.name.endswith(".db") and beside.exists() else target


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("journal", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--base-url", help="Override the base URL the run used.")
@click.option("-v", "--verbose", count=True)
@cli_errors
def cancel_cmd(journal: Path, base_url: str | None, verbose: int) -> None:
    """Cancel the provider batches a `--mode batch` run submitted (JOURNAL, or
    the run's OUTPUT). What they finished is kept when the run is resumed; a
    running `conveyor run` stops when it sees its batches cancelled."""
    setup_logging(verbose=verbose)
    from ..openai._batchmode._api import BatchAPI
    from ..openai._http import Endpoint

    path = _journal_path(journal)
    with Journal.open_readonly(path) as j:
        rows = ShardStore(j).shards(ACTIVE)
        ident = j.identity
        saved = orjson.loads(j.get_meta("run_settings") or "{}")
    targets = [r.batch_id for r in rows if r.batch_id]
    if not targets:
        raise ConveyorError(f"{path}: no batch is running (nothing to cancel)")
    key_env = saved.get("api_key_env") or "OPENAI_API_KEY"
    endpoint = Endpoint.resolve(base_url or ident.get("base_url"), api_key_env=key_env)

    async def go() -> list[tuple[str, str]]:
        out = []
        async with BatchAPI(endpoint) as api:
            for bid in targets:
                try:
                    b = await api.cancel(bid)
                    out.append((bid, str(b.get("status"))))
                except ConveyorError as exc:
                    out.append((bid, f"not cancelled: {exc}"))
        return out

    for bid, status in asyncio.run(go()):
        click.echo(f"{bid}: {status}")
