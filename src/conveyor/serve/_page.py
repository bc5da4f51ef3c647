"""The status page at ``GET /``: the batches, their progress, rate and ETA.

One HTML document with its style inline and no scripts or external assets; it reloads
itself every few seconds (``<meta http-equiv="refresh">``). Everything a client chose
(metadata, file names) is escaped.
"""

from __future__ import annotations

import html
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .._batchapi import BatchRecord, BatchService

__all__ = ["render_page"]

_REFRESH = 2
_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#111}
h1{font-size:20px;margin:0 0 .2em}
p.sub{color:#555;margin:0 0 1.2em}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid #ddd;white-space:nowrap}
th{background:#f4f4f5}
.bar{background:#e5e7eb;width:220px;height:12px;border-radius:6px;overflow:hidden}
.bar span{display:block;height:100%;background:#2563eb}
.s-completed{color:#16a34a}.s-failed,.s-expired{color:#dc2626}
.s-in_progress{color:#2563eb}.s-cancelled,.s-cancelling{color:#a16207}
"""


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _row(batch: BatchRecord, rate: float | None) -> str:
    done = batch.completed + batch.failed
    share = done / batch.total if batch.total else (1.0 if batch.status == "completed" else 0.0)
    eta = "-"
    if batch.status == "in_progress" and rate and batch.total:
        eta = _duration((batch.total - done) / rate)
    cells = [
        f"<code>{html.escape(batch.id)}</code>",
        f'<span class="s-{html.escape(batch.status)}">{html.escape(batch.status)}</span>',
        f'<div class="bar" title="{share:.0%}">'
        f'<span style="width:{share * 100:.1f}%"></span></div>',
        f"{done:,} / {batch.total:,}" + (f" ({batch.failed:,} failed)" if batch.failed else ""),
        "-" if rate is None else f"{rate:,.1f}/s",
        eta,
        html.escape(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(batch.created_at))),
        html.escape(", ".join(f"{k}={v}" for k, v in (batch.metadata or {}).items())),
    ]
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def _rate(service: BatchService, batch: BatchRecord) -> float | None:
    """Lines per second since this process started driving the batch."""
    job = service.jobs.get(batch.id)
    start = None if job is None else job.state.get("rate_start")
    if start is None:
        return None
    since, done_then = start
    elapsed = time.monotonic() - float(since)
    if elapsed <= 0:
        return None
    return max(0.0, (batch.completed + batch.failed - int(done_then)) / elapsed)


def render_page(service: BatchService, upstream: str) -> bytes:
    batches = list(reversed(service.store.batches.copy().values()))
    rows = "".join(_row(b, _rate(service, b)) for b in batches) or (
        '<tr><td colspan="8">No batches yet.</td></tr>'
    )
    running = sum(b.status == "in_progress" for b in batches)
    head = "".join(
        f"<th>{h}</th>"
        for h in ("Batch", "Status", "Progress", "Lines", "Rate", "ETA", "Created", "Metadata")
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{_REFRESH}">
<title>conveyor serve</title><style>{_STYLE}</style></head>
<body><h1>conveyor serve</h1>
<p class="sub">Upstream <code>{html.escape(upstream)}</code> &middot; {len(batches)} batches,
{running} in progress &middot; refreshes every {_REFRESH}s</p>
<table id="batches"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>
</body></html>
"""
    return page.encode()
