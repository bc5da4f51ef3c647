"""Formatting helpers shared by the terminal display and the rendered reports."""

from __future__ import annotations

import math

__all__ = ["format_count", "format_duration"]


def format_duration(seconds: float | None) -> str:
    """`MM:SS` under an hour, `H:MM:SS` above; `--:--` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "--:--"
    s = round(seconds)
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


def format_count(value: float) -> str:
    """A compact count: 950, 52k, 1.2M (one decimal below 10 of a unit)."""
    if not math.isfinite(value):
        return "-"
    v = abs(value)
    sign = "-" if value <= -0.5 else ""
    if round(v) < 1000:
        return f"{sign}{v:.0f}"
    unit, q = "G", v / 1e9
    for name, scale in (("k", 1e3), ("M", 1e6)):
        # Move to the next unit before rounding would show 1000k.
        if v / scale < 999.5:
            unit, q = name, v / scale
            break
    text = f"{q:.1f}" if q < 9.95 else f"{q:.0f}"
    return f"{sign}{text}{unit}"
