"""Build a run's report from its journal (for `conveyor report`).

One pass over the journal's terminal results feeds the totals
(`ReportBuilder`), the extra sections (`ExtrasBuilder`) and the time series
(`TimelineBuilder`); none of them keeps the results unless asked. Times come
from the results' wall clock (`started_at`/`ended_at`), so the report
describes the run, not the moment it was read. A resumed run spans all of its
sessions, pauses between them included.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from .._base._types import Status
from .._core._report import ReportBuilder
from .._journal._journal import Journal
from .._journal._resources import resource_sessions
from ._extras import DEFAULT_SLOWEST, ExtrasBuilder, RunFacts
from ._resources import merge_sessions
from ._timeline import Timeline, TimelineBuilder

if TYPE_CHECKING:
    import os
    from collections.abc import Mapping

    from .._core._report import BatchReport
    from ._pricing import Price

__all__ = ["JournalReport", "load_journal_report", "report_from_journal"]


@dataclass(frozen=True)
class JournalReport:
    """A journal's report, its time series and the run facts read from its meta."""

    report: BatchReport
    timeline: Timeline
    facts: RunFacts
    pending: int


def load_journal_report(
    path: str | os.PathLike[str],
    *,
    prices: Mapping[str, Price] | None = None,
    model: str | None = None,
    keep_results: bool = False,
    slowest: int = DEFAULT_SLOWEST,
) -> JournalReport:
    """Read the journal at `path` (read-only; works while a run writes it).

    `model` overrides the model recorded in the journal (for the cost).
    `keep_results` also keeps every result in `report.results`.
    """
    with Journal.open_readonly(path) as journal:
        facts = RunFacts.from_meta(journal.get_meta)
        if model is not None:
            facts = dataclasses.replace(facts, model=model)
        # Without a recorded batch id, the journal's file name identifies the run.
        batch_id = facts.batch_id or Path(journal.path).stem
        builder = ReportBuilder(batch_id=batch_id, keep_results=keep_results)
        extras = ExtrasBuilder(slowest=slowest)
        timeline = TimelineBuilder()
        first_start: float | None = None
        first_end: float | None = None
        last_end: float | None = None
        for r in journal.iter_results():
            builder.add(r)
            extras.add(r)
            timeline.add(r)
            if r.started_at is not None:
                first_start = _min(first_start, r.started_at)
            if r.ended_at is not None:
                first_end = _min(first_end, r.ended_at)
                last_end = r.ended_at if last_end is None else max(last_end, r.ended_at)
        pending = journal.status_counts().get("pending", 0)
        sessions = resource_sessions(journal)
        auto = _auto(journal.get_meta("concurrency_auto"))
    report = builder.build()
    start = first_start if first_start is not None else first_end
    duration = 0.0
    if start is not None and last_end is not None:
        duration = max(0.0, last_end - start)
    done = report.total - report.counts.get(Status.SKIPPED.value, 0)
    report = dataclasses.replace(
        report,
        started_at=start if start is not None else report.started_at,
        finished_at=last_end if last_end is not None else report.started_at,
        total_duration_seconds=duration,
        first_result_seconds=(
            None if first_end is None or start is None else max(0.0, first_end - start)
        ),
        throughput_per_second=done / duration if duration > 0 else 0.0,
        interrupted=pending > 0,
        stop_reason=f"{pending} items pending: run again to finish them" if pending else None,
    )
    extra: dict[str, Any] = dict(extras.sections(report, facts, prices))
    extra["pending"] = pending
    resources = merge_sessions(sessions, report.started_at)
    if resources is not None:
        extra["resources"] = resources
    if auto is not None:
        extra["concurrency_auto"] = auto
    report = dataclasses.replace(report, extra=extra)
    return JournalReport(report=report, timeline=timeline.build(), facts=facts, pending=pending)


def _auto(raw: str | None) -> dict[str, Any] | None:
    """The moves of ``concurrency="auto"`` the run stored, if any."""
    if not raw:
        return None
    try:
        loaded = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return loaded if isinstance(loaded, dict) else None


def _min(a: float | None, b: float) -> float:
    return b if a is None else min(a, b)


def report_from_journal(
    path: str | os.PathLike[str],
    *,
    prices: Mapping[str, Price] | None = None,
    model: str | None = None,
    keep_results: bool = False,
) -> BatchReport:
    """The `BatchReport` of the run journaled at `path`, extra sections included."""
    return load_journal_report(path, prices=prices, model=model, keep_results=keep_results).report
