"""Progress renderers (`conveyor.cli._display`): the plain line, the live table rows,
the throttled plain display, the terminal display, and the choice between them."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import sys
import textwrap
import time
from typing import TYPE_CHECKING, Any

from hypothesis import given
from hypothesis import strategies as st

import conveyor
from conveyor._core._progress import ProgressSnapshot
from conveyor.cli._display import (
    NullDisplay,
    PlainDisplay,
    RichDisplay,
    format_count,
    format_duration,
    format_line,
    limit_sparkline,
    make_display,
    snapshot_rows,
)

if TYPE_CHECKING:
    import pytest

ESC = "\x1b"


def snap(**over: Any) -> ProgressSnapshot:
    base: dict[str, Any] = {
        "elapsed": 42.0,
        "total": 5000,
        "done": 1200,
        "counts": {"ok": 1180, "failed": 12, "timed_out": 0, "cancelled": 0, "skipped": 0},
        "in_flight": 64,
        "retrying": 3,
        "attempts": 1300,
        "requests_per_second": 31.2,
        "tokens_in_per_minute": 52_000.0,
        "tokens_out_per_minute": 9_000.0,
        "concurrency_limit": 64,
        "rpm_limit": 6000.0,
        "tpm_limit": None,
        "rpm_in_window": 5880.0,
        "tpm_in_window": 0.0,
        "rate_limited": 2,
        "paused_for": 0.0,
        "breaker": "closed",
        "extra": {"done_per_second": 31.4},
    }
    base.update(over)
    return ProgressSnapshot(**base)


def test_format_line_shows_every_figure_in_a_fixed_layout() -> None:
    """One plain line carries done/total, statuses, rates, limits, 429s, elapsed and ETA."""
    assert format_line(snap()) == (
        "[00:42] 1200/5000 24% ok 1180 failed 12 retrying 3 in-flight 64 | 31.2 req/s | "
        "tok/min in 52k out 9.0k | limits rpm 6000 (98%) tpm - conc 64 | 429s 2 | eta 02:01"
    )


def test_format_line_unknown_total_pause_breaker_and_finish() -> None:
    """No total shows `?` and an unknown ETA; a pause and an open breaker are called out;
    a finished run says `eta done`."""
    line = format_line(
        snap(
            total=None, paused_for=7.2, breaker="open", tpm_limit=100_000.0, tpm_in_window=25_000.0
        )
    )
    assert "1200/? " in line
    assert "eta --:--" in line
    assert "paused 7s" in line and "breaker open" in line
    assert "tpm 100000 (25%)" in line
    done = format_line(snap(done=5000, finished=True, counts={"ok": 5000}))
    assert "5000/5000 100%" in done and done.endswith("eta done")


def test_rows_carry_the_same_figures_as_the_line() -> None:
    """The live table and the plain line are two layouts of the same numbers."""
    rows = dict(snapshot_rows(snap(counts={"ok": 1180, "failed": 12, "skipped": 4})))
    assert rows["done"] == "1200/5000 24%"
    assert rows["items"] == "ok 1180  failed 12  retrying 3  in flight 64  skipped 4"
    assert rows["throughput"] == "31.2 req/s  tokens/min in 52k out 9.0k"
    assert rows["limits"] == "rpm 6000 (98%)  tpm -  concurrency 64"
    assert rows["429s"] == "2"
    assert rows["time"] == "elapsed 00:42  eta 02:01"
    assert "attention" not in rows
    assert "attention" in dict(snapshot_rows(snap(paused_for=3.0)))


snapshots = st.builds(
    snap,
    elapsed=st.floats(0, 1e6),
    total=st.none() | st.integers(0, 10**9),
    done=st.integers(0, 10**9),
    in_flight=st.integers(0, 10**5),
    retrying=st.integers(0, 10**5),
    requests_per_second=st.floats(0, 1e6),
    tokens_in_per_minute=st.floats(0, 1e12),
    tokens_out_per_minute=st.floats(0, 1e12),
    rpm_limit=st.none() | st.floats(0.001, 1e9),
    rpm_in_window=st.floats(0, 1e9),
    rate_limited=st.integers(0, 10**6),
    paused_for=st.floats(0, 1e4),
    breaker=st.sampled_from(["closed", "open", "half_open", "off"]),
    finished=st.booleans(),
    extra=st.fixed_dictionaries({"done_per_second": st.floats(0, 1e6)}),
)


@given(snapshots)
def test_line_is_one_plain_line_for_any_snapshot(s: ProgressSnapshot) -> None:
    """Whatever the figures, the plain render is one line with no escape codes and
    every row of the table is plain text too."""
    line = format_line(s)
    assert "\n" not in line and ESC not in line
    assert line.startswith("[") and " eta " in line
    assert f"429s {s.rate_limited}" in line
    for label, value in snapshot_rows(s):
        assert ESC not in label + value and "\n" not in value


@given(st.floats(0, 1e15))
def test_format_count_is_short_and_close(value: float) -> None:
    """Compact counts stay within 4 characters plus a unit and within 5% of the value."""
    text = format_count(value)
    m = re.fullmatch(r"(\d+(?:\.\d)?)([kMG]?)", text)
    assert m is not None, text
    scale = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9}[m.group(2)]
    shown = float(m.group(1)) * scale
    assert abs(shown - value) <= max(0.5, 0.05 * value)
    assert len(m.group(1)) <= 4 or m.group(2) == "G"


@given(st.floats(0, 1e7))
def test_format_duration_round_trips_to_the_second(seconds: float) -> None:
    """`MM:SS` / `H:MM:SS` parse back to the rounded number of seconds."""
    parts = [int(p) for p in format_duration(seconds).split(":")]
    total = parts[-1] + 60 * parts[-2] + (3600 * parts[0] if len(parts) == 3 else 0)
    assert total == round(seconds)
    assert format_duration(None) == "--:--" and format_duration(float("nan")) == "--:--"


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_plain_display_throttles_to_one_line_per_interval() -> None:
    """The first snapshot is written at once, then at most one line per interval,
    and the final figures exactly once on close."""
    out = io.StringIO()
    clock = FakeTime()
    d = PlainDisplay(out, interval=5.0, clock=clock)
    for i in range(21):  # 0..10 s in half-second steps
        clock.now = i * 0.5
        d.update(snap(done=i))
    lines = out.getvalue().splitlines()
    assert [ln.split()[1] for ln in lines] == ["0/5000", "10/5000", "20/5000"]
    d.close(snap(done=5000, finished=True))
    d.close(snap(done=1))  # closed: ignored
    d.update(snap(done=2))
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and lines[-1].endswith("eta done")


def test_plain_display_writes_the_finished_snapshot_once() -> None:
    """A finished snapshot from the engine is written even inside the interval, and
    close() without arguments does not repeat it."""
    out = io.StringIO()
    clock = FakeTime()
    with PlainDisplay(out, interval=60.0, clock=clock) as d:
        d.update(snap(done=1))
        clock.now = 1.0
        d.update(snap(done=5000, finished=True))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[1].endswith("eta done")


def test_make_display_picks_by_stream_and_quiet() -> None:
    """--quiet shows nothing; a non-terminal stream gets plain lines; `terminal=True`
    (or a TTY) gets the live display."""
    out = io.StringIO()
    assert isinstance(make_display(quiet=True, stream=out), NullDisplay)
    plain = make_display(stream=out, interval=0.0)
    assert isinstance(plain, PlainDisplay)
    plain.update(snap())
    plain.close()
    assert ESC not in out.getvalue() and "1200/5000" in out.getvalue()
    live = make_display(stream=io.StringIO(), terminal=True)
    assert isinstance(live, RichDisplay)
    live.close()


def test_rich_display_renders_the_rows_and_stops() -> None:
    """The terminal display draws the bar and the table rows, and close() leaves the
    final figures on screen (not transient)."""
    out = io.StringIO()
    d = make_display(stream=out, terminal=True)
    with d:
        d.update(snap())
        d.close(snap(done=5000, finished=True, counts={"ok": 5000}))
    text = out.getvalue()
    assert ESC in text  # it is the terminal renderer
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    assert "5000/5000 100%" in plain and "rpm 6000" in plain and "eta done" in plain


def test_run_feeds_the_plain_display_through_on_progress() -> None:
    """`conveyor.run(on_progress=display.update)` writes plain lines ending with the
    final figures; the API's snapshot is the same object the display reads."""
    out = io.StringIO()
    seen: list[ProgressSnapshot] = []
    display = make_display(stream=out, interval=0.0)

    def both(s: ProgressSnapshot) -> None:
        seen.append(s)
        display.update(s)

    items = list(range(30))
    with display:
        report = conveyor.run(items, lambda x: x * 2, on_progress=both, progress_interval=0.05)
    assert report.successful == 30
    lines = out.getvalue().splitlines()
    assert lines, "no progress line written"
    assert ESC not in out.getvalue()
    assert seen[-1].finished and seen[-1].done == 30
    assert lines[-1].startswith("[") and "30/30 100% ok 30 failed 0" in lines[-1]


SCRIPT = textwrap.dedent(
    """
    import sys, time
    from conveyor.cli._display import make_display
    from conveyor._core._progress import ProgressSnapshot
    d = make_display(interval=0.0)
    for i in range(3):
        d.update(ProgressSnapshot(elapsed=i, total=3, done=i, counts={"ok": i}, in_flight=1,
            retrying=0, attempts=i, requests_per_second=1.0, tokens_in_per_minute=0.0,
            tokens_out_per_minute=0.0, concurrency_limit=4, rpm_limit=None, tpm_limit=None,
            rpm_in_window=0.0, tpm_in_window=0.0, rate_limited=0, paused_for=0.0,
            breaker="off", finished=(i == 2)))
    d.close()
    print("END", file=sys.stderr, flush=True)
    """
)


def test_not_a_terminal_means_plain_lines_in_a_real_process(tmp_path: Any) -> None:
    """A process whose stderr is a file (CI, nohup) writes plain lines, no escape codes."""
    log = tmp_path / "run.log"
    with log.open("w") as err:
        proc = subprocess.run(
            [sys.executable, "-c", SCRIPT],
            stderr=err,
            timeout=60,
            check=False,
            env={**os.environ, "TERM": "xterm-256color"},
        )
    assert proc.returncode == 0
    text = log.read_text()
    assert ESC not in text
    assert re.search(r"^\[00:02\] 2/3 66% ok 2 .* eta stopped$", text, re.MULTILINE), text


def test_a_terminal_gets_the_live_display_in_a_real_process() -> None:
    """A process whose stderr is a pseudo-terminal gets the live (rich) display."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", SCRIPT],
            stderr=slave,
            stdout=subprocess.DEVNULL,
            env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "120"},
        )
        os.close(slave)
        slave = -1
        chunks: list[bytes] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and b"END" not in b"".join(chunks):
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
        assert proc.wait(timeout=30) == 0
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    text = b"".join(chunks).decode(errors="replace")
    assert ESC in text  # drawn and redrawn, not appended
    assert "2/3 66%" in text and "concurrency 4" in text


def test_term_dumb_is_plain_even_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """TERM=dumb (emacs shells, some CI) is treated as not a terminal."""
    monkeypatch.setenv("TERM", "dumb")

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert isinstance(make_display(stream=Tty()), PlainDisplay)
    monkeypatch.setenv("TERM", "xterm")
    d = make_display(stream=Tty())
    assert isinstance(d, RichDisplay)
    d.close()


def test_auto_rows_draw_the_limit_and_say_why_it_moved() -> None:
    """With ``concurrency="auto"`` the panel draws the limit's moves as bars
    (tallest = highest limit) and lists the latest moves, newest first, with
    their reasons; the plain line carries the latest reason."""
    history = (
        (0.0, 16, "start"),
        (0.6, 32, "grew: slow start, latency x1.00"),
        (1.2, 64, "grew: slow start, latency x1.02"),
        (2.4, 40, "backed off: latency rose x1.60"),
    )
    s = snap(
        concurrency_limit=40,
        concurrency_reason=history[-1][2],
        concurrency_history=history,
    )
    rows = snapshot_rows(s)
    labels = [label for label, _ in rows]
    spark = dict(rows)["auto limit"]
    assert spark.startswith("▁▃█▄")  # 16, 32, 64, 40 on 8 heights
    assert "now 40, highest 64" in spark
    log = [value for label, value in rows if label == ""]
    assert log[0] == "00:02 -> 40: backed off: latency rose x1.60"
    assert len(log) == 3
    assert labels.index("auto limit") < labels.index("429s")
    assert "auto (backed off: latency rose x1.60)" in format_line(s)
    assert "auto limit" not in dict(snapshot_rows(snap()))
    assert limit_sparkline(()) == ""


def test_a_stopped_run_says_stopped_not_eta_done() -> None:
    """A run that ended before every item (Ctrl+C, a fatal stop) shows
    `eta stopped`, not `eta done`; a complete one `eta done` (#12.22)."""
    stopped = snap(finished=True, done=1200, total=5000)
    assert "eta stopped" in format_line(stopped)
    assert "eta done" not in format_line(stopped)
    complete = snap(finished=True, done=5000, total=5000,
                    counts={"ok": 5000, "failed": 0, "cancelled": 0})  # fmt: skip
    assert "eta done" in format_line(complete)


def test_log_json_progress_lines_are_json() -> None:
    """With --log-json every progress line is one JSON object (no plain lines
    mixed into a JSON log) (#12.22)."""
    import orjson

    out = io.StringIO()
    d = make_display(stream=out, log_json=True)
    d.update(snap())
    d.close(snap(finished=True))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    for line in lines:
        obj = orjson.loads(line)
        assert obj["event"] == "progress"
        assert obj["done"] == 1200 and obj["total"] == 5000
