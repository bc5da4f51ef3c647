"""The report as one self-contained HTML page: inline CSS and inline SVG charts.

Nothing is fetched (no CDN, no script, no font): the file works offline and
can be mailed or attached to a CI run. Charts: throughput over time, items
in flight over time, the latency histogram, errors over time by type, and,
when the run was monitored, memory, utilisation and gauges over time.
Every string from the run (keys, error types, model names) is escaped.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._base._types import Status
from .._base._version import __version__
from ._concurrency import auto_section
from ._format import format_duration
from ._resources import resource_charts, resource_rows
from ._svg import PALETTE, Series, bar_chart, line_chart
from ._timeline import nice_time_step

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._core._report import BatchReport
    from ._timeline import Timeline

__all__ = ["CHART_IDS", "render_html", "write_html"]

CHART_IDS = ("chart-throughput", "chart-inflight", "chart-latency", "chart-errors")

_CSS = """
:root { --fg:#111827; --muted:#6b7280; --line:#e5e7eb; --bg:#ffffff; --card:#f9fafb; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: var(--fg); background: var(--bg); margin: 0; padding: 24px 32px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 16px; margin: 28px 0 10px; }
.sub { color: var(--muted); margin: 0 0 18px; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px;
        padding: 8px 14px; min-width: 104px; }
.card .n { font-size: 22px; font-weight: 600; }
.card .l { color: var(--muted); font-size: 12px; text-transform: uppercase; }
.card.bad .n { color: #dc2626; } .card.good .n { color: #16a34a; }
table { border-collapse: collapse; }
td, th { padding: 4px 12px 4px 0; text-align: left; vertical-align: top; }
th { color: var(--muted); font-weight: 500; }
tbody tr { border-top: 1px solid var(--line); }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(480px, 1fr));
          gap: 18px; }
figure { margin: 0; border: 1px solid var(--line); border-radius: 8px; padding: 10px; }
figcaption { font-weight: 600; margin-bottom: 4px; }
svg.chart { width: 100%; height: auto; display: block; }
svg .grid { stroke: #eef0f3; } svg .axis { stroke: #9ca3af; }
svg text { font: 11px system-ui, sans-serif; fill: #4b5563; }
svg .label { fill: #374151; font-size: 12px; } svg .empty { fill: #9ca3af; font-size: 14px; }
.legend { display: flex; flex-wrap: wrap; gap: 12px; margin-top: 6px; font-size: 12px; }
.legend span::before { content: ""; display: inline-block; width: 10px; height: 10px;
                       margin-right: 5px; background: var(--c); border-radius: 2px; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12px; }
footer { color: var(--muted); margin-top: 32px; font-size: 12px; }
"""


def _when(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _secs(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s"


def _elapsed(bucket: float) -> Callable[[float, float], str]:
    """Labels for elapsed time, as precise as the tick step (or bucket) needs."""

    def label(seconds: float, step: float) -> str:
        precision = step or bucket
        if precision >= 1:
            return format_duration(seconds)
        decimals = 1 if precision >= 0.1 else 2
        return f"{seconds:.{decimals}f}s"

    return label


def _cards(report: BatchReport) -> str:
    c = report.counts
    items = [("items", report.total, "")]
    for s in Status:
        n = c.get(s.value, 0)
        cls = "good" if s is Status.OK and n else ("bad" if n and s is not Status.OK else "")
        items.append((s.value.replace("_", " "), n, cls))
    pending = report.extra.get("pending")
    if pending:
        items.append(("pending", pending, "bad"))
    return (
        '<div class="cards">'
        + "".join(
            f'<div class="card {cls}"><div class="n">{n}</div><div class="l">{escape(label)}</div>'
            "</div>"
            for label, n, cls in items
        )
        + "</div>"
    )


def _figures(report: BatchReport) -> list[tuple[str, str]]:
    rows = [
        (
            "duration",
            format_duration(report.total_duration_seconds)
            + f" ({report.total_duration_seconds:.2f} s)",
        ),
        ("time to first result", _secs(report.first_result_seconds)),
        ("throughput", f"{report.throughput_per_second:.2f} items/s"),
        (
            "latency p50 / p95 / p99 / max",
            " / ".join(
                _secs(v)
                for v in (
                    report.latency_p50,
                    report.latency_p95,
                    report.latency_p99,
                    report.latency_max,
                )
            ),
        ),
        ("attempts / retries", f"{report.attempts} / {report.retries}"),
        ("tokens in / out", f"{report.input_tokens:,} / {report.output_tokens:,}"),
    ]
    extra = report.extra
    cost = extra.get("cost") or {}
    if cost.get("total") is not None:
        rows.append(
            (
                "estimated cost",
                f"${cost['total']:.4f} ({cost['model']}, "
                f"${cost['per_million_tokens']['input']:g} / "
                f"${cost['per_million_tokens']['output']:g} per 1M tokens in / out)",
            )
        )
    elif cost.get("note"):
        rows.append(("estimated cost", f"- ({cost['note']})"))
    cache = extra.get("cache") or {}
    if cache:
        saved = cache.get("tokens_saved", {})
        rows.append(
            (
                "saved by the cache",
                f"{cache.get('requests_saved', 0)} requests, "
                f"{saved.get('input', 0):,} tokens in, {saved.get('output', 0):,} out",
            )
        )
    rate = extra.get("achieved_rate") or {}
    if rate.get("requests_per_minute") is not None:
        text = f"{rate['requests_per_minute']:.1f} req/min"
        if rate.get("rpm_fraction") is not None:
            text += f" = {rate['rpm_fraction']:.0%} of the {rate['rpm_limit']:g} rpm limit"
        rows.append(("achieved request rate", text))
    if rate.get("tokens_per_minute") is not None:
        text = f"{rate['tokens_per_minute']:.0f} tokens/min"
        if rate.get("tpm_fraction") is not None:
            text += f" = {rate['tpm_fraction']:.0%} of the {rate['tpm_limit']:g} tpm limit"
        rows.append(("achieved token rate", text))
    if report.stop_reason:
        rows.append(("stopped", report.stop_reason))
    return rows


def _table(head: list[str], rows: list[list[str]], numeric: set[int] | None = None) -> str:
    num = numeric or set()
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{escape(v)}</td>' if i in num else f"<td>{escape(v)}</td>"
            for i, v in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _charts(t: Timeline) -> str:
    w = t.bucket_seconds
    widths = t.widths
    # Each point sits mid-bucket; the last bucket may be shorter (it ends with the run).
    xs = [i * w + width / 2 for i, width in enumerate(widths)]
    x_range = (0.0, (len(widths) - 1) * w + widths[-1]) if widths else (0.0, 1.0)
    step = f"{w:g} s buckets"
    fmt = _elapsed(w)
    throughput = line_chart(
        chart_id=CHART_IDS[0],
        title="Throughput over time",
        x_label=f"elapsed ({step})",
        y_label="items / s",
        xs=xs,
        series=[Series("items/s", t.throughput, PALETTE[0])],
        x_range=x_range,
        x_format=fmt,
        x_step=nice_time_step,
    )
    inflight = line_chart(
        chart_id=CHART_IDS[1],
        title="Items in flight over time",
        x_label=f"elapsed ({step})",
        y_label="in flight (avg)",
        xs=xs,
        series=[Series("in flight", t.in_flight, PALETTE[3])],
        x_range=x_range,
        x_format=fmt,
        x_step=nice_time_step,
    )
    h = t.latency
    cats = [f"{e:g}" for e in h.edges[:-1]]
    counts: list[float] = [float(c) for c in h.counts]
    if h.overflow:
        cats.append(f">{h.edges[-1]:g}")
        counts.append(float(h.overflow))
    latency = bar_chart(
        chart_id=CHART_IDS[2],
        title="Latency histogram",
        x_label="seconds per item (bin start)",
        y_label="items",
        categories=cats,
        series=[Series("items", counts, PALETTE[0])],
        label_every=max(1, len(cats) // 8),
    )
    names = list(t.errors)
    err_series = [
        Series(name, [float(v) for v in t.errors[name]], PALETTE[1 + i % (len(PALETTE) - 1)])
        for i, name in enumerate(names)
    ]
    errors = bar_chart(
        chart_id=CHART_IDS[3],
        title="Errors over time by type",
        x_label=f"elapsed ({step})",
        y_label="failed items",
        categories=[fmt(i * w, w) for i in range(t.buckets)],
        series=err_series,
        # Label every k-th bucket so labels fall on round times (every 1 s, 5 s, 1 min...).
        label_every=max(1, round(nice_time_step(t.buckets * w / 6) / w)),
    )
    legend = (
        '<div class="legend">'
        + "".join(f'<span style="--c:{s.color}">{escape(s.name)}</span>' for s in err_series)
        + "</div>"
        if err_series
        else ""
    )
    figs = [
        ("Throughput", throughput, ""),
        ("In flight", inflight, ""),
        ("Latency", latency, ""),
        ("Errors by type", errors, legend),
    ]
    return (
        '<div class="charts">'
        + "".join(
            f"<figure><figcaption>{escape(cap)}</figcaption>{svg}{extra}</figure>"
            for cap, svg, extra in figs
        )
        + "</div>"
    )


def _error_rows(report: BatchReport) -> list[list[str]]:
    total = sum(report.errors.values()) or 1
    return [
        [name, str(n), f"{n / total:.0%}"]
        for name, n in sorted(report.errors.items(), key=lambda kv: (-kv[1], kv[0]))
    ]


def _slow_rows(slowest: list[dict[str, Any]]) -> list[list[str]]:
    return [
        [
            str(s["key"]),
            f"{s['duration_seconds']:.3f}",
            s["status"],
            str(s["attempts"]),
            s.get("error_type") or "",
        ]
        for s in slowest
    ]


def render_html(report: BatchReport, timeline: Timeline) -> str:
    """The whole page as a string."""
    rid = escape(report.batch_id)
    started = _when(report.started_at) if report.total else "-"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>conveyor report {rid}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>conveyor report <code>{rid}</code></h1>",
        f'<p class="sub">started {escape(started)} &middot; '
        f"{report.total} items in {escape(format_duration(report.total_duration_seconds))}"
        "</p>",
        _cards(report),
        "<h2>Figures</h2>",
        _table(["", ""], [[k, v] for k, v in _figures(report)]),
        "<h2>Over time</h2>",
        _charts(timeline),
        auto_section(report),
    ]
    resources = report.extra.get("resources")
    if resources:
        parts += [
            "<h2>Resources</h2>",
            resource_charts(resources, _elapsed(1.0)),
            _table(["", ""], [[k, v] for k, v in resource_rows(resources)]),
        ]
    if report.errors:
        parts += [
            "<h2>Error distribution</h2>",
            _table(["error type", "items", "share"], _error_rows(report), {1, 2}),
        ]
    v = report.validation
    if v:
        tok = v["reask_tokens"]
        rows = [
            ["answers checked", str(v["checked"])],
            ["valid at first try", f"{v['valid_first_try']} ({v['valid_rate_first_try']:.1%})"],
            ["valid after re-asks", f"{v['valid_after_reask']}"],
            ["valid in the end", f"{v['valid_rate_final']:.1%}"],
            ["invalid after the last try", str(v["invalid"])],
            ["re-asks", str(v["reasks"])],
            ["re-ask tokens", f"{tok['input']} in, {tok['output']} out"],
        ]
        parts += ["<h2>Validation</h2>", _table(["", ""], rows)]
        if v["top_errors"]:
            errs = [[e["error"], str(e["count"]), e["example"]] for e in v["top_errors"]]
            parts.append(_table(["most common errors", "answers", "example"], errs, {1}))
    slowest = report.extra.get("slowest") or []
    if slowest:
        parts += [
            "<h2>Slowest items</h2>",
            _table(["key", "seconds", "status", "attempts", "error"], _slow_rows(slowest), {1, 3}),
        ]
    parts.append(
        f"<footer>generated by conveyor {escape(__version__)} on "
        f"{escape(_when(dt.datetime.now(dt.UTC).timestamp()))}</footer></body></html>"
    )
    return "\n".join(parts) + "\n"


def write_html(path: str | os.PathLike[str], report: BatchReport, timeline: Timeline) -> Path:
    """Write the page atomically (a reader never sees half a file); return its path."""
    target = Path(path)
    text = render_html(report, timeline)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp makes it private; a report is for sharing
            f.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
