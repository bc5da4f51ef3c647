"""Formatting helpers (`conveyor._render._format`) and the SVG charts (`_render._svg`):
durations and counts as the display and the reports show them; charts are well-formed
SVG with one mark per value."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

from hypothesis import given
from hypothesis import strategies as st

from conveyor._render._format import format_count, format_duration
from conveyor._render._svg import Series, bar_chart, line_chart


def test_durations() -> None:
    """MM:SS under an hour, H:MM:SS above, --:-- when unknown."""
    assert format_duration(0) == "00:00"
    assert format_duration(61.4) == "01:01"
    assert format_duration(3600) == "1:00:00"
    assert format_duration(None) == "--:--"
    assert format_duration(math.inf) == "--:--"
    assert format_duration(-1) == "--:--"


def test_counts() -> None:
    """950, 52k, 1.2M: never 1000k."""
    assert format_count(950) == "950"
    assert format_count(52_300) == "52k"
    assert format_count(1_234_567) == "1.2M"
    assert format_count(999_600) == "1.0M"
    assert format_count(math.nan) == "-"


@given(st.floats(min_value=0, max_value=1e12, allow_nan=False))
def test_count_is_short_and_never_1000_of_a_unit(value: float) -> None:
    """Any count fits in a few characters and never reads 1000k or 1000M."""
    text = format_count(value)
    assert len(text) <= 5
    assert not text.startswith("1000")


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
