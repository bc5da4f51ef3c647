"""The report's ``concurrency="auto"`` section: the limit over time and its event log,
from a real run's journal, as `conveyor report --html` draws it."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import conveyor
from conveyor._render._concurrency import AUTO_CHART_ID, auto_section, limit_steps
from conveyor._render._html import render_html
from conveyor._render._journal import load_journal_report

if TYPE_CHECKING:
    from pathlib import Path


def test_limit_steps_hold_each_limit_until_the_next_move() -> None:
    """A step line: every move is a vertical segment, the last limit lasts to the end."""
    xs, ys = limit_steps([[0.0, 16, "start"], [1.0, 32, "grew"], [3.0, 20, "backed off"]], 5.0)
    assert xs == [0.0, 1.0, 1.0, 3.0, 3.0, 5.0]
    assert ys == [16.0, 16.0, 32.0, 32.0, 20.0, 20.0]


async def test_a_journaled_auto_run_reports_its_limit_chart_and_moves(tmp_path: Path) -> None:
    """The moves of an auto run are kept in the journal: the page read back
    from it has the limit chart and one row per move, the first "start"; a
    run with a fixed concurrency has no such section."""

    async def fn(x: int) -> int:
        await asyncio.sleep(0.005)
        return x

    path = tmp_path / "run.db"
    report = await conveyor.arun(
        range(300), fn, concurrency="auto", concurrency_max=64, journal=str(path)
    )
    assert report.counts["ok"] == 300
    moves = report.extra["concurrency_auto"]["history"]
    assert len(moves) >= 2
    loaded = load_journal_report(path)
    assert loaded.report.extra["concurrency_auto"]["history"] == moves
    page = render_html(loaded.report, loaded.timeline)
    assert f'id="{AUTO_CHART_ID}"' in page
    assert "Concurrency (auto)" in page
    assert page.count("<td>grew") + page.count("<td>backed off") == len(moves) - 1
    assert "<td>start</td>" in page

    fixed = tmp_path / "fixed.db"
    await conveyor.arun(range(10), fn, concurrency=4, journal=str(fixed))
    again = load_journal_report(fixed)
    assert "concurrency_auto" not in again.report.extra
    assert auto_section(again.report) == ""
