"""The report's section for ``concurrency="auto"``: the limit over time, and why it moved.

Reads `report.extra["concurrency_auto"]` (the controller's moves, in seconds
since the start: ``[t, limit, reason]``, the first one "start") and draws the
limit as a step line, with the moves listed below it as an event log.
"""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING, Any

from ._svg import PALETTE, Series, line_chart
from ._timeline import nice_time_step

if TYPE_CHECKING:
    from .._core._report import BatchReport

__all__ = ["AUTO_CHART_ID", "auto_section", "limit_steps"]

AUTO_CHART_ID = "chart-concurrency"
_LOGGED = 40  # moves listed; the chart shows them all


def limit_steps(history: list[list[Any]], end: float) -> tuple[list[float], list[float]]:
    """(times, limits) of a step line: each limit held until the next move, the last until `end`."""
    xs: list[float] = []
    ys: list[float] = []
    for i, (t, n, _) in enumerate(history):
        if i:
            xs.append(float(t))
            ys.append(ys[-1])
        xs.append(float(t))
        ys.append(float(n))
    if xs and end > xs[-1]:
        xs.append(end)
        ys.append(ys[-1])
    return xs, ys


def _seconds(x: float, step: float) -> str:
    return f"{x:.0f}s" if step >= 1 or step == 0 else f"{x:.1f}s"


def auto_section(report: BatchReport) -> str:
    """The HTML of the section, or "" when the run did not use ``concurrency="auto"``."""
    auto = report.extra.get("concurrency_auto")
    if not isinstance(auto, dict) or not auto.get("history"):
        return ""
    history: list[list[Any]] = auto["history"]
    end = max(report.total_duration_seconds, float(history[-1][0]))
    xs, ys = limit_steps(history, end)
    chart = line_chart(
        chart_id=AUTO_CHART_ID,
        title="Concurrency limit over time (auto)",
        x_label="elapsed (s)",
        y_label="in-flight limit",
        xs=xs,
        series=[Series("limit", ys, PALETTE[2])],
        x_range=(0.0, end or 1.0),
        x_format=_seconds,
        x_step=nice_time_step,
    )
    unloaded = auto.get("unloaded_latency")
    per = auto.get("compared", "per request")
    summary = (
        f"final limit {auto.get('final')}, {auto.get('changes', 0)} moves; latency compared "
        f"{escape(str(per))}"
        + (f", unloaded {unloaded:.4g} s" if isinstance(unloaded, int | float) else "")
    )
    moves = history[-_LOGGED:]
    rows = "".join(
        f'<tr><td class="num">{float(t):.1f}</td><td class="num">{int(n)}</td>'
        f"<td>{escape(str(why))}</td></tr>"
        for t, n, why in moves
    )
    skipped = len(history) - len(moves)
    note = f'<p class="sub">the first {skipped} moves are in the JSON report</p>' if skipped else ""
    return (
        "<h2>Concurrency (auto)</h2>"
        f'<p class="sub">{summary}</p>'
        f'<div class="charts"><figure><figcaption>Limit</figcaption>{chart}</figure></div>'
        "<table><thead><tr><th>seconds</th><th>limit</th><th>why it moved</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>{note}"
    )
