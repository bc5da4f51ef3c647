"""Inline SVG charts for the HTML report: no JavaScript, no external files.

Two shapes cover the report: a line chart over time (optionally filled) and
a bar chart, stacked when given several series. Each chart is one `<svg>`
element with an `id`, a `<title>` (its accessible name) and a `<desc>`;
every bar and point carries its own `<title>` so hovering shows the value.
All text is escaped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape
from typing import TYPE_CHECKING

from ._timeline import nice_step

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["PALETTE", "Series", "bar_chart", "line_chart"]

PALETTE = ("#2563eb", "#dc2626", "#d97706", "#16a34a", "#7c3aed", "#0891b2", "#6b7280")

WIDTH, HEIGHT = 560, 260
LEFT, RIGHT, TOP, BOTTOM = 58, 16, 16, 46
PLOT_W, PLOT_H = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[float]
    color: str = PALETTE[0]
    xs: Sequence[float] | None = None
    """The x of each value when it is not the chart's shared `xs`."""

    def xs_of(self, shared: Sequence[float]) -> list[float] | None:
        """x of each finite value (None when every value is finite: the shared xs)."""
        if all(math.isfinite(v) for v in self.values):
            return None if self.xs is None else list(self.xs)
        own = self.xs if self.xs is not None else shared
        return [x for x, v in zip(own, self.values, strict=False) if math.isfinite(v)]


def _num(v: float) -> str:
    return f"{v:.1f}".rstrip("0").rstrip(".")


def _tick_label(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v / 1000:g}k"
    return f"{v:.3g}"


def _y_axis(top: float, *, integer: bool = False) -> tuple[float, list[float]]:
    step = nice_step(top / 5) if top > 0 else 1.0
    if integer:  # counts: no tick at 0.5 items
        step = float(max(1, math.ceil(step)))
    hi = step * max(1, math.ceil(top / step - 1e-9))
    return hi, [i * step for i in range(round(hi / step) + 1)]


def _frame(
    chart_id: str,
    title: str,
    desc: str,
    x_label: str,
    y_label: str,
    axis: tuple[float, list[float]],
) -> list[str]:
    y_hi, ticks = axis
    out = [
        f'<svg id="{escape(chart_id)}" class="chart" xmlns="http://www.w3.org/2000/svg" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-labelledby="{escape(chart_id)}-title">',
        f'<title id="{escape(chart_id)}-title">{escape(title)}</title>',
        f"<desc>{escape(desc)}</desc>",
    ]
    for t in ticks:
        y = TOP + PLOT_H - (t / y_hi * PLOT_H if y_hi > 0 else 0)
        out.append(
            f'<line class="grid" x1="{LEFT}" x2="{LEFT + PLOT_W}" y1="{_num(y)}" y2="{_num(y)}"/>'
        )
        out.append(
            f'<text class="tick" x="{LEFT - 6}" y="{_num(y + 4)}" text-anchor="end">'
            f"{escape(_tick_label(t))}</text>"
        )
    out.append(
        f'<line class="axis" x1="{LEFT}" x2="{LEFT + PLOT_W}" y1="{TOP + PLOT_H}" '
        f'y2="{TOP + PLOT_H}"/>'
    )
    out.append(
        f'<text class="label" x="{LEFT + PLOT_W / 2}" y="{HEIGHT - 6}" text-anchor="middle">'
        f"{escape(x_label)}</text>"
    )
    out.append(
        f'<text class="label" transform="translate(14 {TOP + PLOT_H / 2}) rotate(-90)" '
        f'text-anchor="middle">{escape(y_label)}</text>'
    )
    return out


def _empty(chart_id: str, title: str, x_label: str, y_label: str) -> str:
    out = _frame(chart_id, title, "no data", x_label, y_label, _y_axis(1.0))
    out.append(
        f'<text class="empty" x="{LEFT + PLOT_W / 2}" y="{TOP + PLOT_H / 2}" '
        'text-anchor="middle">no data</text>'
    )
    out.append("</svg>")
    return "\n".join(out)


def line_chart(
    *,
    chart_id: str,
    title: str,
    x_label: str,
    y_label: str,
    xs: Sequence[float],
    series: Sequence[Series],
    x_range: tuple[float, float],
    x_format: Callable[[float, float], str],
    value_format: Callable[[float], str] = _tick_label,
    x_step: Callable[[float], float] = nice_step,
    fill: bool = True,
) -> str:
    """Lines over `xs` within `x_range`; the first series is filled below.

    `x_format(x, tick_step)` labels an x value (the step says how precise);
    `x_step(raw)` rounds a tick step up to one a reader counts in.
    """
    # A value that is not finite (NaN: not sampled then) leaves a gap in its line.
    series = [
        Series(s.name, [v for v in s.values if math.isfinite(v)], s.color, s.xs_of(xs))
        for s in series
    ]
    if not xs or not series or not any(s.values for s in series):
        return _empty(chart_id, title, x_label, y_label)
    top = max((max(s.values) for s in series if s.values), default=0.0)
    axis = _y_axis(top)
    y_hi = axis[0]
    x0, x1 = x_range
    span = (x1 - x0) or 1.0

    def px(x: float) -> float:
        return LEFT + (x - x0) / span * PLOT_W

    def py(v: float) -> float:
        return TOP + PLOT_H - (v / y_hi * PLOT_H if y_hi > 0 else 0)

    desc = "; ".join(f"{s.name}: max {value_format(max(s.values))}" for s in series if s.values)
    out = _frame(chart_id, title, desc, x_label, y_label, axis)
    ticks, step = _x_ticks(x0, x1, x_step)
    for x in ticks:
        out.append(
            f'<text class="tick" x="{_num(px(x))}" y="{TOP + PLOT_H + 16}" '
            f'text-anchor="middle">{escape(x_format(x, step))}</text>'
        )
    for i, s in enumerate(series):
        sx = s.xs if s.xs is not None else xs
        if not s.values:
            continue
        pts = " ".join(f"{_num(px(x))},{_num(py(v))}" for x, v in zip(sx, s.values, strict=False))
        if fill and i == 0:
            base = f"{_num(px(sx[0]))},{_num(py(0))}"
            end = f"{_num(px(sx[min(len(sx), len(s.values)) - 1]))},{_num(py(0))}"
            out.append(
                f'<polygon class="area" fill="{s.color}" fill-opacity="0.15" '
                f'points="{base} {pts} {end}"/>'
            )
        out.append(
            f'<polyline class="series" data-series="{escape(s.name)}" fill="none" '
            f'stroke="{s.color}" stroke-width="2" points="{pts}"/>'
        )
        for x, v in zip(sx, s.values, strict=False):
            out.append(
                f'<circle class="point" cx="{_num(px(x))}" cy="{_num(py(v))}" r="2" '
                f'fill="{s.color}"><title>{escape(x_format(x, 0.0))}: '
                f"{escape(value_format(v))} {escape(s.name)}</title></circle>"
            )
    out.append("</svg>")
    return "\n".join(out)


def _x_ticks(
    x0: float, x1: float, rounding: Callable[[float], float], count: int = 6
) -> tuple[list[float], float]:
    step = rounding((x1 - x0) / count) if x1 > x0 else 1.0
    first = math.ceil(x0 / step - 1e-9) * step
    n = int((x1 - first) / step + 1e-9) + 1
    return [first + i * step for i in range(max(1, min(n, 20)))], step


def bar_chart(
    *,
    chart_id: str,
    title: str,
    x_label: str,
    y_label: str,
    categories: Sequence[str],
    series: Sequence[Series],
    label_every: int = 1,
) -> str:
    """Bars per category, stacked when there are several series."""
    n = len(categories)
    if n == 0 or not series:
        return _empty(chart_id, title, x_label, y_label)
    totals = [sum(s.values[i] for s in series if i < len(s.values)) for i in range(n)]
    top = max(totals, default=0.0)
    axis = _y_axis(top, integer=True)
    y_hi = axis[0]
    slot = PLOT_W / n
    bar_w = max(1.0, slot * 0.8)
    desc = "; ".join(f"{s.name}: {_tick_label(sum(s.values))} in all" for s in series)
    out = _frame(chart_id, title, desc, x_label, y_label, axis)
    for i, cat in enumerate(categories):
        x = LEFT + i * slot + (slot - bar_w) / 2
        base = float(TOP + PLOT_H)
        for s in series:
            v = s.values[i] if i < len(s.values) else 0.0
            if v <= 0:
                continue
            h = v / y_hi * PLOT_H if y_hi > 0 else 0.0
            base -= h
            out.append(
                f'<rect class="bar" data-series="{escape(s.name)}" x="{_num(x)}" '
                f'y="{_num(base)}" width="{_num(bar_w)}" height="{_num(h)}" fill="{s.color}">'
                f"<title>{escape(cat)}: {escape(_tick_label(v))} {escape(s.name)}</title></rect>"
            )
        if i % max(1, label_every) == 0:
            out.append(
                f'<text class="tick" x="{_num(x + bar_w / 2)}" y="{TOP + PLOT_H + 16}" '
                f'text-anchor="middle">{escape(cat)}</text>'
            )
    out.append("</svg>")
    return "\n".join(out)
