"""Resources over time (`monitor=`, `conveyor run --monitor`) in the report.

A live run's report carries `extra["resources"]` (`_core._sampler`); a
journal keeps one such section per session (`_journal._resources`), which
`merge_sessions` lays on one time axis for `conveyor report`. The HTML page
draws up to three charts from it: memory (MB), utilisation (%), and the
user's gauges; the figures table lists each metric's peak, any limit that
stopped the run, and what could not be sampled (no nvidia-smi: said so).
"""

from __future__ import annotations

import math
from html import escape
from typing import TYPE_CHECKING, Any

from .._core._sampler import format_metric
from ._svg import PALETTE, Series, line_chart
from ._timeline import nice_time_step

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["RESOURCE_CHART_IDS", "merge_sessions", "resource_charts", "resource_rows"]

RESOURCE_CHART_IDS = ("chart-memory", "chart-utilisation", "chart-gauges")

_SYSTEM = ("process_", "children_", "system_", "gpu")


def merge_sessions(sessions: Sequence[dict[str, Any]], start: float) -> dict[str, Any] | None:
    """One `resources` section from a journal's sessions; times are seconds
    after `start` (the run's first item), each session at its own start."""
    if not sessions:
        return None
    times: list[float] = []
    values: dict[str, list[float | None]] = {}
    metrics: dict[str, dict[str, Any]] = {}
    unavailable: dict[str, str] = {}
    breach = None
    limits: dict[str, float] = {}
    floors: dict[str, float] = {}
    for s in sessions:
        series = s.get("series") or {}
        ts = series.get("t") or []
        offset = float(s.get("started_at", start)) - start
        n = len(times)
        for name, vs in (series.get("values") or {}).items():
            values.setdefault(name, [None] * n).extend(vs[: len(ts)] + [None] * (len(ts) - len(vs)))
        times.extend(offset + float(t) for t in ts)
        for col in values.values():
            col.extend([None] * (len(times) - len(col)))
        for name, m in (s.get("metrics") or {}).items():
            have = metrics.get(name)
            metrics[name] = dict(m) if have is None else _combine(have, m)
        unavailable.update(s.get("unavailable") or {})
        limits.update(s.get("limits") or {})
        floors.update(s.get("floors") or {})
        breach = s.get("breach") or breach
    return {
        "sessions": len(sessions),
        "metrics": metrics,
        "limits": limits,
        "floors": floors,
        "breach": breach,
        "unavailable": unavailable,
        "series": {"t": times, "values": values},
    }


def _combine(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {
        "min": min(a["min"], b["min"]),
        "max": max(a["max"], b["max"]),
        "mean": (a["mean"] + b["mean"]) / 2,  # sessions weigh alike: an estimate
        "last": b.get("last"),
    }


def resource_rows(res: dict[str, Any] | None) -> list[tuple[str, str]]:
    """Rows for the figures table: peaks, the limit that stopped the run, gaps."""
    if not res:
        return []
    rows: list[tuple[str, str]] = []
    for name, m in sorted((res.get("metrics") or {}).items()):
        if name.startswith("gpu") and name[3:4].isdigit():
            continue  # per-GPU figures: in the chart; the busiest GPU is listed
        rows.append(
            (
                f"{name} (min / mean / max)",
                " / ".join(format_metric(name, m[k]) for k in ("min", "mean", "max")),
            )
        )
    for metric, limit in sorted((res.get("limits") or {}).items()):
        rows.append((f"limit on {metric}", format_metric(metric, limit)))
    for metric, floor in sorted((res.get("floors") or {}).items()):
        rows.append((f"floor on {metric}", format_metric(metric, floor)))
    breach = res.get("breach")
    if breach:
        rows.append(
            (
                "stopped by a resource limit",
                f"{breach['metric']} = {format_metric(breach['metric'], breach['value'])} "
                f"{'<' if breach.get('floor') else '>'} "
                f"{format_metric(breach['metric'], breach['limit'])} at {breach['at']:.1f} s",
            )
        )
    for what, why in sorted((res.get("unavailable") or {}).items()):
        rows.append((f"not sampled: {what}", why))
    return rows


def _series(names: Sequence[str], values: dict[str, list[float | None]]) -> list[Series]:
    return [
        Series(name, [math.nan if v is None else float(v) for v in values[name]], PALETTE[i % 7])
        for i, name in enumerate(names)
    ]


def resource_charts(res: dict[str, Any] | None, x_format: Callable[[float, float], str]) -> str:
    """The charts (an empty string when nothing was sampled)."""
    if not res:
        return ""
    series = res.get("series") or {}
    xs = [float(t) for t in series.get("t") or []]
    values = series.get("values") or {}
    if not xs or not values:
        return ""
    memory = sorted(n for n in values if n.endswith("_mb") and n.startswith(_SYSTEM))
    memory = [n for n in memory if n != "system_memory_available_mb"]  # of another scale
    percent = sorted(n for n in values if n.endswith("_percent") and n.startswith(_SYSTEM))
    gauges = sorted(n for n in values if not n.startswith(_SYSTEM))
    x_range = (0.0, max(xs[-1], 1e-9))
    figs = []
    for chart_id, caption, title, y_label, names in (
        (RESOURCE_CHART_IDS[0], "Memory", "Memory over time", "MB", memory),
        (RESOURCE_CHART_IDS[1], "CPU and GPU", "Utilisation over time", "%", percent),
        (RESOURCE_CHART_IDS[2], "Your gauges", "Gauges over time", "value", gauges),
    ):
        if not names:
            continue
        drawn = _series(names, values)
        svg = line_chart(
            chart_id=chart_id,
            title=title,
            x_label="elapsed (samples)",
            y_label=y_label,
            xs=xs,
            series=drawn,
            x_range=x_range,
            x_format=x_format,
            x_step=nice_time_step,
            fill=False,
        )
        legend = (
            '<div class="legend">'
            + "".join(f'<span style="--c:{s.color}">{escape(s.name)}</span>' for s in drawn)
            + "</div>"
        )
        figs.append(f"<figure><figcaption>{escape(caption)}</figcaption>{svg}{legend}</figure>")
    return '<div class="charts">' + "".join(figs) + "</div>" if figs else ""
