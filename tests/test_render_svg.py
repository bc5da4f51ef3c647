"""The SVG charts of the reports (`conveyor._render._svg`): well-formed SVG, one bar per
category, and an empty chart instead of an error. (`_render._format` is pinned in
test_display.py, next to the display that uses it.)"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from conveyor._render._svg import Series, bar_chart, line_chart


def _svg(text: str) -> ET.Element:
    return ET.fromstring(text)


def test_line_chart_is_well_formed() -> None:
    """A line chart parses as SVG and carries its title."""
    svg = line_chart(
        chart_id="tp",
        title="Throughput",
        x_label="time",
        y_label="items/s",
        xs=[0.0, 1.0, 2.0],
        series=[Series("ok", [1.0, 3.0, 2.0])],
        x_range=(0.0, 2.0),
        x_format=lambda x, step: f"{x:g}",
    )
    root = _svg(svg)
    assert root.tag.endswith("svg")
    assert "Throughput" in svg


def test_bar_chart_has_a_bar_per_category() -> None:
    """A bar chart draws one bar per non-empty category."""
    svg = bar_chart(
        chart_id="lat",
        title="Latency",
        x_label="seconds",
        y_label="items",
        categories=["a", "b", "c"],
        series=[Series("n", [1.0, 4.0, 2.0])],
    )
    root = _svg(svg)
    rects = [el for el in root.iter() if el.tag.endswith("rect")]
    assert len(rects) >= 3


def test_empty_charts_say_so() -> None:
    """No data: still a well-formed chart, not an error."""
    svg = bar_chart(chart_id="e", title="Empty", x_label="x", y_label="y", categories=[], series=[])
    _svg(svg)
