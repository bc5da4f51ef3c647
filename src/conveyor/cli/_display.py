"""Progress renderers: a live terminal display, plain log lines, or nothing.

Every renderer reads a `ProgressSnapshot` and shows the same figures. The text
comes from two pure functions, `format_line` (one fixed-layout line) and
`snapshot_rows` (label/value pairs for the live table), so tests assert on
words rather than escape codes. Pass `display.update` as `on_progress`.

On a terminal the display is a `rich.live.Live` panel redrawn a few times a
second. Anywhere else (CI, `nohup`, a log file) it is one plain line every
few seconds: never an escape code, never a redrawn bar.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from .._core._sampler import format_metric
from .._render._format import format_count, format_duration

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

    from rich.console import Console, RenderableType
    from rich.live import Live

    from .._core._progress import ProgressSnapshot

__all__ = [
    "Display",
    "NullDisplay",
    "PlainDisplay",
    "RichDisplay",
    "auto_rows",
    "format_count",
    "format_duration",
    "format_line",
    "format_memo",
    "format_resources",
    "limit_sparkline",
    "make_display",
    "snapshot_rows",
]

DEFAULT_PLAIN_INTERVAL = 5.0
_RICH_REFRESH_PER_SECOND = 4


# -- pure formatting ------------------------------------------------------------


def _limit(limit: float | None, used: float) -> str:
    if limit is None:
        return "-"
    share = f" ({used / limit:.0%})" if limit > 0 else ""
    # Limits are shown in full: they are the numbers a user typed or a server sent.
    shown = f"{limit:.0f}" if limit >= 10 else f"{limit:g}"
    return f"{shown}{share}"


def _progress(s: ProgressSnapshot) -> str:
    if s.total is None:
        return f"{s.done}/?"
    pct = 100 if s.total == 0 else int(100 * min(s.done, s.total) / s.total)
    return f"{s.done}/{s.total} {pct}%"


def _eta(s: ProgressSnapshot) -> str:
    if s.finished:
        # Ended before every item (Ctrl+C, a fatal stop): not "done".
        short = s.total is not None and s.done < s.total
        left = s.counts.get("cancelled", 0) + s.counts.get("skipped", 0)
        return "stopped" if short or left else "done"
    return format_duration(s.eta_seconds)


def _alerts(s: ProgressSnapshot) -> list[str]:
    out: list[str] = []
    if s.paused_for > 0:
        out.append(f"paused {s.paused_for:.0f}s")
    if s.breaker not in ("closed", "off"):
        out.append(f"breaker {s.breaker}")
    if s.reasks:
        out.append(f"re-asks {s.reasks}")
    return out


# The monitor's metrics the live views show, with short labels; gauges follow by name.
_RESOURCES = (
    ("process_rss_mb", "rss"),
    ("children_rss_mb", "jobs rss"),
    ("process_cpu_percent", "cpu"),
    ("system_memory_percent", "sys mem"),
    ("system_cpu_percent", "sys cpu"),
    ("gpu_utilization_percent", "gpu"),
    ("gpu_memory_percent", "gpu mem"),
)
_SYSTEM_PREFIXES = ("process_", "children_", "system_", "gpu")


def format_resources(s: ProgressSnapshot) -> str:
    """The latest sample (`monitor=`): memory, CPU, GPU, then the user's gauges."""
    res = s.resources
    parts = [
        f"{label} {format_metric(name, res[name])}" for name, label in _RESOURCES if name in res
    ]
    parts += [
        f"{name} {format_metric(name, v)}"
        for name, v in sorted(res.items())
        if not name.startswith(_SYSTEM_PREFIXES)
    ]
    return "  ".join(parts)


def format_memo(memo: dict[str, Any]) -> str:
    """What the run's `Memo` saved so far (`memo=`)."""
    saved = memo["tokens_saved"]
    return (
        f"{memo['calls']} calls made, {memo['calls_saved']} saved "
        f"({memo['joined']} joined in flight)  tokens saved "
        f"{format_count(saved['input'] + saved['output'])}"
    )


_BARS = "▁▂▃▄▅▆▇█"
_SPARK = 24  # moves drawn in the panel's sparkline
_LOG = 3  # latest moves listed in the panel


def limit_sparkline(history: tuple[tuple[float, int, str], ...], width: int = _SPARK) -> str:
    """The limit's latest moves as a row of bars, tallest = the highest limit."""
    limits = [n for _, n, _ in history[-width:]]
    if not limits:
        return ""
    lo, hi = min(limits), max(limits)
    span = max(1, hi - lo)
    return "".join(_BARS[(n - lo) * (len(_BARS) - 1) // span] for n in limits)


def auto_rows(s: ProgressSnapshot) -> list[tuple[str, str]]:
    """With ``concurrency="auto"``: the limit over time and why it last moved."""
    h = s.concurrency_history
    if not h:
        return []
    highest = max(n for _, n, _ in h)
    rows = [("auto limit", f"{limit_sparkline(h)}  now {s.concurrency_limit}, highest {highest}")]
    for t, n, why in h[-_LOG:][::-1]:
        rows.append(("", f"{format_duration(t)} -> {n}: {why}"))
    return rows


def format_line(s: ProgressSnapshot) -> str:
    """Every live figure on one plain line (no escape codes), for logs and CI."""
    parts = [
        f"[{format_duration(s.elapsed)}] {_progress(s)} ok {s.ok} failed {s.failed} "
        f"retrying {s.retrying} in-flight {s.in_flight}",
        f"{s.requests_per_second:.1f} req/s",
        f"tok/min in {format_count(s.tokens_in_per_minute)} "
        f"out {format_count(s.tokens_out_per_minute)}",
        f"limits rpm {_limit(s.rpm_limit, s.rpm_in_window)} "
        f"tpm {_limit(s.tpm_limit, s.tpm_in_window)} conc {s.concurrency_limit}"
        + (f" auto ({s.concurrency_reason})" if s.concurrency_reason else ""),
        f"429s {s.rate_limited}",
        *([format_resources(s)] if s.resources else []),
        *_alerts(s),
        *([f"batches {s.extra['batches']}"] if s.extra.get("batches") else []),
        f"eta {_eta(s)}",
    ]
    return " | ".join(parts)


def snapshot_rows(s: ProgressSnapshot) -> list[tuple[str, str]]:
    """The live table's rows (label, value): the same figures as `format_line`."""
    counts = f"ok {s.ok}  failed {s.failed}  retrying {s.retrying}  in flight {s.in_flight}"
    others = {k: v for k, v in s.counts.items() if k in ("cancelled", "skipped") and v}
    if others:
        counts += "  " + "  ".join(f"{k} {v}" for k, v in sorted(others.items()))
    rows = [
        ("done", _progress(s)),
        ("items", counts),
        (
            "throughput",
            f"{s.requests_per_second:.1f} req/s  tokens/min in "
            f"{format_count(s.tokens_in_per_minute)} out {format_count(s.tokens_out_per_minute)}",
        ),
        (
            "limits",
            f"rpm {_limit(s.rpm_limit, s.rpm_in_window)}  "
            f"tpm {_limit(s.tpm_limit, s.tpm_in_window)}  concurrency {s.concurrency_limit}"
            + (f" auto ({s.concurrency_reason})" if s.concurrency_reason else ""),
        ),
        *auto_rows(s),
        ("429s", str(s.rate_limited)),
        *((f"{name} budget", why) for name, why in sorted(s.budgets.items())),
        *([("resources", format_resources(s))] if s.resources else []),
        *([("memo", format_memo(s.extra["memo"]))] if s.extra.get("memo") else []),
        *([("batches", str(s.extra["batches"]))] if s.extra.get("batches") else []),
        ("time", f"elapsed {format_duration(s.elapsed)}  eta {_eta(s)}"),
    ]
    alerts = _alerts(s)
    if alerts:
        rows.append(("attention", "  ".join(alerts)))
    return rows


# -- renderers ------------------------------------------------------------------


class Display(Protocol):
    """What the CLI and `conveyor.run(on_progress=...)` talk to."""

    def update(self, snapshot: ProgressSnapshot) -> None: ...

    def close(self, final_snapshot: ProgressSnapshot | None = None) -> None: ...

    def __enter__(self) -> Display: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class _Base:
    def update(self, snapshot: ProgressSnapshot) -> None:
        raise NotImplementedError

    def close(self, final_snapshot: ProgressSnapshot | None = None) -> None:
        raise NotImplementedError

    def __enter__(self) -> Display:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class NullDisplay(_Base):
    """`--quiet`: shows nothing."""

    def update(self, snapshot: ProgressSnapshot) -> None:
        return None

    def close(self, final_snapshot: ProgressSnapshot | None = None) -> None:
        return None


class PlainDisplay(_Base):
    """One `format_line` every `interval` seconds, plus the final figures once.

    The first snapshot is written at once, so a log shows the run started;
    then at most one line per `interval`. `clock` is injectable for tests.
    Safe to call from any thread (the engine may run on a helper thread).
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        interval: float = DEFAULT_PLAIN_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._interval = interval
        self._clock = clock
        self._last_write: float | None = None
        self._last: ProgressSnapshot | None = None
        self._final_written = False
        self._closed = False
        self._lock = threading.Lock()

    def update(self, snapshot: ProgressSnapshot) -> None:
        with self._lock:
            if self._closed:
                return
            self._last = snapshot
            now = self._clock()
            if snapshot.finished:
                self._write(snapshot, now)
                self._final_written = True
            elif self._last_write is None or now - self._last_write >= self._interval:
                self._write(snapshot, now)

    def close(self, final_snapshot: ProgressSnapshot | None = None) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            last = final_snapshot or self._last
            # The final figures once, unless `update` already wrote them.
            if last is not None and (final_snapshot is not None or not self._final_written):
                self._write(last, self._clock())

    def _write(self, snapshot: ProgressSnapshot, now: float) -> None:
        self._last_write = now
        self._stream.write(format_line(snapshot) + "\n")
        self._stream.flush()


class JsonDisplay(PlainDisplay):
    """`--log-json`: each progress line is one JSON object, like the log lines."""

    def _write(self, snapshot: ProgressSnapshot, now: float) -> None:
        import dataclasses

        import orjson

        self._last_write = now
        d = {"ts": round(time.time(), 3), "event": "progress", **dataclasses.asdict(snapshot)}
        d["eta"] = _eta(snapshot)
        self._stream.write(orjson.dumps(d, default=str).decode() + "\n")
        self._stream.flush()


class RichDisplay(_Base):
    """A live panel on a terminal: a bar and the `snapshot_rows` table."""

    def __init__(
        self,
        stream: TextIO,
        *,
        refresh_per_second: float = _RICH_REFRESH_PER_SECOND,
        force_terminal: bool | None = None,
    ) -> None:
        from rich.console import Console
        from rich.live import Live

        self._console = Console(file=stream, force_terminal=force_terminal)
        self._live: Live | None = Live(
            console=self._console,
            refresh_per_second=refresh_per_second,
            transient=False,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._started = False
        self._lock = threading.Lock()

    @property
    def console(self) -> Console:
        """Print or log through this console (e.g. `rich.logging.RichHandler(console=...)`)
        so lines appear above the live panel instead of tearing it."""
        return self._console

    def update(self, snapshot: ProgressSnapshot) -> None:
        with self._lock:
            if self._live is None:
                return
            self._live.update(render_rich(snapshot))
            if not self._started:
                self._live.start(refresh=True)
                self._started = True

    def close(self, final_snapshot: ProgressSnapshot | None = None) -> None:
        with self._lock:
            live, self._live = self._live, None
            if live is None:
                return
            if final_snapshot is not None:
                live.update(render_rich(final_snapshot))
                if not self._started:
                    live.start(refresh=True)
                    self._started = True
            if self._started:
                live.refresh()
                live.stop()


def render_rich(s: ProgressSnapshot) -> RenderableType:
    """The live panel: a progress bar over the `snapshot_rows` table."""
    from rich.progress_bar import ProgressBar
    from rich.table import Table

    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    total = float(s.total) if s.total else None
    rows = snapshot_rows(s)
    for label, value in rows:
        if label == "done":
            line = Table.grid(padding=(0, 1))
            line.add_row(ProgressBar(total=total, completed=float(s.done), width=40), value)
            table.add_row(label, line)
        else:
            table.add_row(label, value)
    return table


def _is_terminal(stream: TextIO) -> bool:
    if os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if isatty is not None else False
    except ValueError:  # a closed stream
        return False


def make_display(
    *,
    quiet: bool = False,
    stream: TextIO | None = None,
    interval: float | None = None,
    terminal: bool | None = None,
    log_json: bool = False,
) -> Display:
    """The right renderer for `stream` (stderr by default).

    `quiet` shows nothing; `log_json` a JSON object per progress line; a
    terminal gets the live panel; anything else gets a plain line every
    `interval` seconds (5 by default). `terminal` forces
    the choice either way.
    """
    if quiet:
        return NullDisplay()
    out = stream if stream is not None else sys.stderr
    if log_json:  # a JSON log stays JSON: no panel, no plain lines
        return JsonDisplay(out, interval=DEFAULT_PLAIN_INTERVAL if interval is None else interval)
    on_tty = _is_terminal(out) if terminal is None else terminal
    if on_tty:
        return RichDisplay(out, force_terminal=terminal)
    return PlainDisplay(out, interval=DEFAULT_PLAIN_INTERVAL if interval is None else interval)
