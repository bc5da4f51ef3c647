"""The report beyond its totals: time series (`_report_timeline`), extra sections
(`_report_extras`), prices (`_pricing`), reading a journal (`_report_journal`), the
SVG charts and the HTML page (`_report_svg`, `_report_html`), the page in a real
headless browser."""

from __future__ import annotations

import math
import os
import re
import shutil
import struct
import subprocess
import time
import zlib
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import conveyor
from conveyor._base._exceptions import InputError
from conveyor._base._types import ErrorInfo, Result, Status, Usage
from conveyor._journal._journal import Journal
from conveyor._render._extras import RunFacts, add_extras, render_text
from conveyor._render._html import CHART_IDS, render_html, write_html
from conveyor._render._journal import load_journal_report, report_from_journal
from conveyor._render._pricing import (
    DEFAULT_PRICES,
    Price,
    estimate_cost,
    load_prices,
    lookup_price,
)
from conveyor._render._resources import RESOURCE_CHART_IDS
from conveyor._render._svg import Series, line_chart
from conveyor._render._timeline import OTHER_ERRORS, TimelineBuilder, nice_step

T0 = 1_700_000_000.0


def res(
    index: int,
    start: float,
    duration: float,
    status: Status = Status.OK,
    *,
    error: str | None = None,
    attempts: int = 1,
    usage: tuple[int, int] | None = None,
    cached: bool = False,
    key: str | None = None,
) -> Result[Any]:
    return Result(
        index=index,
        key=key if key is not None else f"k{index}",
        status=status,
        value="v" if status is Status.OK else None,
        error=ErrorInfo(error, f"{error} happened") if error else None,
        attempts=attempts,
        started_at=T0 + start,
        ended_at=T0 + start + duration,
        duration=duration,
        usage=Usage(*usage) if usage else None,
        meta={"cached": True} if cached else {},
    )


def journal_with(path: Path, results: list[Result[Any]], **identity: str) -> Path:
    with Journal.open(path, identity={"input": "test", **identity}) as j:
        j.record([(r, None, None) for r in results])
    return path


# -- timeline -------------------------------------------------------------------------


def test_in_flight_and_completions_per_bucket_are_exact() -> None:
    """Two items [0,2] and [1,3]: one in flight, then two, then one; each finish is
    counted in the bucket it happened in."""
    b = TimelineBuilder()
    b.add(res(0, 0.0, 2.0))
    b.add(res(1, 1.0, 2.0))
    t = b.build()
    assert t.bucket_seconds == 0.1 and t.buckets == 30
    assert all(math.isclose(v, 1.0, abs_tol=1e-6) for v in t.in_flight[:10])
    assert all(math.isclose(v, 2.0, abs_tol=1e-6) for v in t.in_flight[10:20])
    assert all(math.isclose(v, 1.0, abs_tol=1e-6) for v in t.in_flight[20:])
    assert sum(t.completed) == 2 and t.completed[-1] == 1
    assert t.throughput[-1] == pytest.approx(10.0)  # 1 item in a 0.1 s bucket


def test_error_series_keep_the_top_types_and_lump_the_rest() -> None:
    """Errors over time are per type for the most frequent ones, `other` for the rest."""
    b = TimelineBuilder()
    i = 0
    for name, n in [("A", 5), ("B", 4), ("C", 3), ("D", 1), ("E", 1)]:
        for _ in range(n):
            b.add(res(i, float(i), 0.5, Status.FAILED, error=name))
            i += 1
    b.add(res(i, 0.0, 0.5, Status.TIMED_OUT))  # no error info: counted by its status
    t = b.build(max_error_types=4)
    assert list(t.errors) == ["A", "B", "C", OTHER_ERRORS]
    assert sum(t.errors[OTHER_ERRORS]) == 3  # D, E, timed_out
    assert sum(sum(v) for v in t.errors.values()) == 15


def test_latency_long_tail_goes_to_an_overflow_bin() -> None:
    """One huge latency does not squash the histogram: it lands in the overflow bin."""
    b = TimelineBuilder()
    for i in range(200):
        b.add(res(i, 0.0, 0.1 + (i % 10) * 0.01))
    b.add(res(200, 0.0, 500.0))
    h = b.build().latency
    assert h.overflow == 1 and h.total == 201
    assert h.edges[-1] < 1.0


result_specs = st.lists(
    st.tuples(
        st.floats(0, 5000),  # start offset
        # Durations are wall-clock measurements: zero, or at least a microsecond
        # (sub-normal floats like 1e-308 only test float rounding, not the chart).
        st.one_of(st.just(0.0), st.floats(1e-6, 600)),
        st.sampled_from([Status.OK, Status.FAILED, Status.TIMED_OUT, Status.SKIPPED]),
        st.sampled_from(["E1", "E2", "E3"]),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(result_specs, st.integers(1, 200))
def test_timeline_conserves_items_and_busy_time(specs: list[Any], max_buckets: int) -> None:
    """However results fall: every finish is in exactly one bucket, every failure in
    one error series, in-flight averages are never negative and add up to the total
    busy time, and the histogram holds every latency."""
    b = TimelineBuilder()
    for i, (start, dur, status, err) in enumerate(specs):
        attempts = 0 if status is Status.SKIPPED else 1
        b.add(
            res(
                i, start, dur, status, error=None if status is Status.OK else err, attempts=attempts
            )
        )
    t = b.build(max_buckets=max_buckets)
    assert t.buckets <= max(max_buckets, 1) + 1
    assert sum(t.completed) == len(specs)
    failures = sum(s[2] in (Status.FAILED, Status.TIMED_OUT) for s in specs)
    assert sum(sum(v) for v in t.errors.values()) == failures
    assert min(t.in_flight) >= 0
    busy = sum(s[1] for s in specs)
    covered = sum(v * w for v, w in zip(t.in_flight, t.widths, strict=True))
    assert covered == pytest.approx(busy, rel=1e-6, abs=1e-3)
    span = max(s[0] + s[1] for s in specs) - min(s[0] for s in specs)
    if span >= 1e-3:
        assert sum(t.widths) == pytest.approx(span, abs=1e-3)
    else:
        # Epoch timestamps round at ~1e-7 s: a sub-millisecond run is one bucket.
        assert len(t.widths) == 1
    if len(t.widths) > 1:  # a sole bucket is as wide as the run, however short
        assert min(t.widths) >= 0.25 * t.bucket_seconds - 1e-6
    assert max(t.in_flight) <= len(specs) + 1e-6
    attempted = sum(s[2] is not Status.SKIPPED for s in specs)
    assert t.latency.total == attempted


@given(st.floats(1e-9, 1e12))
def test_nice_step_is_the_next_round_number(raw: float) -> None:
    """A nice step is >= the raw step, under 2.5x it, and 1, 2, 2.5 or 5 times 10^k."""
    step = nice_step(raw)
    assert raw * (1 - 1e-9) <= step <= raw * 2.5 * (1 + 1e-9)
    mantissa = step / 10 ** math.floor(math.log10(step) + 1e-12)
    assert any(math.isclose(mantissa, m, rel_tol=1e-9) for m in (1, 2, 2.5, 5, 10))


# -- prices ---------------------------------------------------------------------------


def test_price_lookup_by_exact_name_then_longest_prefix() -> None:
    """Dated snapshots find their family; the longest prefix wins; a prefix must end at
    a separator; unknown models have no price."""
    assert lookup_price("gpt-4o") == DEFAULT_PRICES["gpt-4o"]
    assert lookup_price("gpt-4o-mini-2024-07-18") == DEFAULT_PRICES["gpt-4o-mini"]
    assert lookup_price("gpt-4o-2024-08-06") == DEFAULT_PRICES["gpt-4o"]
    assert lookup_price("o10-preview") is None
    assert lookup_price("llama3:8b") is None
    assert estimate_cost(Price(2.0, 8.0), 1_000_000, 500_000) == pytest.approx(6.0)


def test_prices_file_json_and_toml_override_the_table(tmp_path: Path) -> None:
    """A JSON or TOML prices file adds models and overrides built-in ones."""
    j = tmp_path / "p.json"
    j.write_text('{"llama3": {"input": 0.1, "output": 0.2}, "gpt-4o": {"input": 1}}')
    table = load_prices(j)
    assert lookup_price("llama3:8b", table) == Price(0.1, 0.2)
    assert table["gpt-4o"] == Price(1.0, 0.0)
    assert table["gpt-4o-mini"] == DEFAULT_PRICES["gpt-4o-mini"]
    t = tmp_path / "p.toml"
    t.write_text("[mine]\ninput = 3\noutput = 4.5\n")
    assert load_prices(t)["mine"] == Price(3.0, 4.5)


@pytest.mark.parametrize(
    ("name", "text", "words"),
    [
        ("bad.json", "{nope", "not valid JSON"),
        ("bad.toml", "x = = 1", "not valid TOML"),
        ("list.json", "[1, 2]", "expected a table"),
        ("neg.json", '{"m": {"input": -1}}', "'input' must be a number"),
        ("str.json", '{"m": "cheap"}', "model 'm'"),
    ],
)
def test_bad_prices_file_names_the_file_and_the_problem(
    tmp_path: Path, name: str, text: str, words: str
) -> None:
    """A broken prices file raises InputError naming the file and what is wrong."""
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(InputError, match=re.escape(words)) as info:
        load_prices(p)
    assert str(p) in str(info.value)
    with pytest.raises(InputError, match="check the prices file path"):
        load_prices(tmp_path / "missing.json")


# -- reading a journal ----------------------------------------------------------------


def sample_results() -> list[Result[Any]]:
    return [
        res(0, 0.0, 1.0, usage=(100, 50)),
        res(1, 0.5, 4.0, usage=(100, 50), attempts=3),
        res(2, 1.0, 2.0, Status.FAILED, error="RateLimitError", attempts=4),
        res(3, 1.5, 0.5, usage=(100, 50), cached=True),
        res(4, 2.0, 8.0, Status.TIMED_OUT, error="TimeoutError", attempts=2),
        res(5, 3.0, 0.25, Status.FAILED, error="RateLimitError"),
    ]


def test_report_from_journal_uses_result_times(tmp_path: Path) -> None:
    """Duration, first result and throughput come from the results' wall clock: the
    run lasted from the first start to the last end, whenever the journal is read."""
    path = journal_with(tmp_path / "j.db", sample_results(), model="gpt-4o", rpm="60")
    r = report_from_journal(path)
    assert r.total == 6 and r.successful == 3 and r.failed == 3
    assert r.started_at == pytest.approx(T0)
    assert r.total_duration_seconds == pytest.approx(10.0)  # 0.0 .. 2.0 + 8.0
    assert r.first_result_seconds == pytest.approx(1.0)
    assert r.throughput_per_second == pytest.approx(0.6)
    assert r.retries == 2 + 3 + 1
    assert r.errors == {"RateLimitError": 2, "TimeoutError": 1}
    assert (r.input_tokens, r.output_tokens) == (300, 150)
    assert r.results == []  # not kept unless asked
    assert len(report_from_journal(path, keep_results=True).results) == 6


def test_extra_sections_slowest_cache_cost_and_rate(tmp_path: Path) -> None:
    """The slowest items come longest first; cached tokens count as saved, not spent;
    the rate is compared with the journal's rpm limit."""
    path = journal_with(tmp_path / "j.db", sample_results(), model="gpt-4o", rpm="60")
    loaded = load_journal_report(path, slowest=3)
    extra = loaded.report.extra
    assert [s["key"] for s in extra["slowest"]] == ["k4", "k1", "k2"]
    assert extra["slowest"][0]["error_type"] == "TimeoutError"
    assert extra["cache"] == {
        "hits": 1,
        "requests_saved": 1,
        "tokens_saved": {"input": 100, "output": 50},
    }
    cost = extra["cost"]
    assert cost["model"] == "gpt-4o"
    assert cost["total"] == pytest.approx((200 * 2.5 + 100 * 10.0) / 1e6)
    assert cost["saved_by_cache"] == pytest.approx((100 * 2.5 + 50 * 10.0) / 1e6)
    rate = extra["achieved_rate"]
    assert rate["requests_per_minute"] == pytest.approx(12 / (10 / 60))  # 12 attempts in 10 s
    assert rate["rpm_limit"] == 60 and rate["rpm_fraction"] == pytest.approx(1.2)
    assert loaded.facts == RunFacts(model="gpt-4o", rpm_limit=60.0)


def test_model_override_prices_file_and_unknown_model(tmp_path: Path) -> None:
    """--model and --prices change the estimate; an unpriced model says how to fix it."""
    path = journal_with(tmp_path / "j.db", sample_results(), model="llama3:8b")
    cost = report_from_journal(path).extra["cost"]
    assert cost["total"] is None and "--prices FILE" in cost["note"]
    table = {**DEFAULT_PRICES, "llama3": Price(1.0, 1.0)}
    assert report_from_journal(path, prices=table).extra["cost"]["total"] == pytest.approx(300e-6)
    other = report_from_journal(path, model="gpt-4o-mini").extra["cost"]
    assert other["model"] == "gpt-4o-mini" and other["total"] > 0


def test_pending_items_mark_the_report_incomplete(tmp_path: Path) -> None:
    """Items reset for a retry are pending: the report says so and how to finish."""
    path = journal_with(tmp_path / "j.db", sample_results())
    with Journal.open(path, identity={"input": "test"}) as j:
        assert j.reset(["k2", "k5"]) == 2
    r = report_from_journal(path)
    assert r.total == 4 and r.extra["pending"] == 2
    assert not r.ok and r.stop_reason is not None and "run again" in r.stop_reason


def test_text_report_has_every_section(tmp_path: Path) -> None:
    """The text report adds rate vs limit, cost, cache, error distribution and the
    slowest items to the summary."""
    path = journal_with(tmp_path / "j.db", sample_results(), model="gpt-4o", rpm="60")
    text = render_text(report_from_journal(path))
    assert text.startswith("batch ")
    assert "\n  errors " not in text  # the full distribution replaces the top-5 line
    for words in (
        "rate 72.0 req/min (120% of rpm 60)",
        "est. cost $0.0015 (gpt-4o)",
        "cache saved 1 requests",
        "error distribution:",
        "67%  RateLimitError",
        "slowest items:",
        "8.000s  timed_out attempts 2  k4  TimeoutError",
    ):
        assert words in text, words


def test_add_extras_on_a_live_run_report() -> None:
    """The end-of-run summary gets the same sections from an in-memory report."""

    def work(x: int) -> int:
        conveyor.report_usage(10, 5)
        if x % 4 == 0:
            raise ValueError("bad item")
        return x

    report = conveyor.run(range(12), work, retries=0)
    full = add_extras(report, facts=RunFacts(model="gpt-4o-mini", rpm_limit=1e6))
    assert full.extra["cost"]["total"] == pytest.approx((120 * 0.15 + 60 * 0.6) / 1e6)
    assert len(full.extra["slowest"]) == 5
    assert full.extra["achieved_rate"]["rpm_fraction"] is not None
    assert "ValueError" in render_text(full)


# -- HTML -----------------------------------------------------------------------------


class PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.svg_titles: dict[str, str] = {}
        self._svg: str | None = None
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "svg":
            self._svg = a.get("id") or ""
        elif tag == "title" and self._svg is not None and self._svg not in self.svg_titles:
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._svg = None
        self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title and self._svg is not None:
            self.svg_titles[self._svg] = data


def test_page_is_self_contained_with_four_titled_charts(tmp_path: Path) -> None:
    """One file: no script, stylesheet link, image or external URL; the four charts
    are inline SVGs with their ids and titles."""
    results = sample_results()
    path = journal_with(tmp_path / "j.db", results, model="gpt-4o", rpm="60")
    loaded = load_journal_report(path)
    page = render_html(loaded.report, loaded.timeline)
    p = PageParser()
    p.feed(page)
    tags = {t for t, _ in p.tags}
    assert not tags & {"script", "link", "img", "iframe", "object"}
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", page))
    assert urls == {"http://www.w3.org/2000/svg"}  # the SVG namespace, not a fetch
    assert set(p.svg_titles) == set(CHART_IDS)
    assert p.svg_titles["chart-latency"] == "Latency histogram"
    assert page.count('class="bar"') > 0 and page.count("<polyline") == 2


def test_page_escapes_keys_and_error_types(tmp_path: Path) -> None:
    """Text from the run (keys, error types) is escaped, never markup."""
    evil = "<script>alert(1)</script>"
    results = [res(0, 0.0, 9.0, Status.FAILED, error="Bad<b>", key=evil), res(1, 0.0, 1.0)]
    loaded = load_journal_report(journal_with(tmp_path / "j.db", results))
    page = render_html(loaded.report, loaded.timeline)
    assert evil not in page and "Bad<b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "Bad&lt;b&gt;" in page


def test_empty_journal_renders_charts_saying_no_data(tmp_path: Path) -> None:
    """A journal with no results still gives a valid page whose charts say `no data`."""
    loaded = load_journal_report(journal_with(tmp_path / "j.db", []))
    page = render_html(loaded.report, loaded.timeline)
    assert page.count(">no data</text>") == 4
    assert all(f'id="{cid}"' in page for cid in CHART_IDS)


def test_write_html_is_atomic_and_readable(tmp_path: Path) -> None:
    """The page is written whole, world-readable, with no temporary file left behind."""
    loaded = load_journal_report(journal_with(tmp_path / "j.db", sample_results()))
    out = write_html(tmp_path / "r.html", loaded.report, loaded.timeline)
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert os.stat(out).st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".r.html")) == []


# -- in a real browser ----------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium not installed (apt-get install -y chromium); CI installs it",
)


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False)


def decode_png(data: bytes) -> tuple[int, int, int, bytes]:
    """(width, height, channels, raw pixels) of an 8-bit RGB/RGBA non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, ihdr = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            ihdr = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", ihdr)
    assert depth == 8 and color in (2, 6) and interlace == 0
    ch = 3 if color == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * ch
    out = bytearray()
    prev = bytearray(stride)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - ch] if i >= ch else 0
            b, c = prev[i], prev[i - ch] if i >= ch else 0
            if f == 1:
                line[i] = (line[i] + a) & 0xFF
            elif f == 2:
                line[i] = (line[i] + b) & 0xFF
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
        out += line
        prev = line
    return width, height, ch, bytes(out)


def color_histogram(png: tuple[int, int, int, bytes]) -> Counter[bytes]:
    _, _, ch, px = png
    return Counter(px[i : i + 3] for i in range(0, len(px), ch))


def count_color(hist: Counter[bytes], rgb: tuple[int, int, int], tol: int = 6) -> int:
    return sum(n for c, n in hist.items() if all(abs(c[k] - rgb[k]) <= tol for k in range(3)))


@needs_chromium
@pytest.mark.timeout(180)
def test_page_renders_its_charts_in_headless_chromium(tmp_path: Path) -> None:
    """Loaded from disk with networking off, the page's four charts are in the rendered
    DOM and painted: the screenshot holds the chart colours (blue lines and bars, the
    in-flight green, the error red)."""
    results = [
        res(
            i,
            i * 0.05,
            0.2 + (i % 7) * 0.05,
            Status.FAILED if i % 9 == 0 else Status.OK,
            error="RateLimitError" if i % 9 == 0 else None,
            usage=(20, 10),
        )
        for i in range(300)
    ]
    path = journal_with(tmp_path / "j.db", results, model="gpt-4o-mini", rpm="600")
    loaded = load_journal_report(path)
    page = write_html(tmp_path / "report.html", loaded.report, loaded.timeline)
    url = page.resolve().as_uri()

    dom = chromium(tmp_path, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    for cid in CHART_IDS:
        assert re.search(rf'<svg id="{cid}"[^>]*>', dom.stdout), cid
    assert dom.stdout.count('class="bar"') > 10

    shot = tmp_path / "report.png"
    run = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,1600", url)
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    assert shot.stat().st_size > 20_000
    png = decode_png(shot.read_bytes())
    assert png[:2] == (1200, 1600)
    colors = color_histogram(png)
    assert count_color(colors, (0x25, 0x63, 0xEB)) > 5000  # throughput line + latency bars
    assert count_color(colors, (0x16, 0xA3, 0x4A)) > 800  # in-flight line
    assert count_color(colors, (0xDC, 0x26, 0x26)) > 2000  # error bars / failed card


# -- resources over time (monitor=) -------------------------------------------------------


def test_a_monitored_run_draws_resources_over_time_from_its_journal(tmp_path: Path) -> None:
    """A run with monitor= keeps its samples in the journal; `conveyor report --html`
    draws memory, utilisation and gauges over time, lists the peaks and says what
    could not be sampled; a resumed run adds its own session on the same axis."""
    path = tmp_path / "j.db"
    in_use = {"n": 0}

    def job(i: int) -> int:
        in_use["n"] = i % 4
        return i

    monitor = conveyor.Monitor(interval=0.02, gauges={"db_in_use": lambda: in_use["n"]},
                               nvidia_smi="/nonexistent/nvidia-smi")  # fmt: skip
    conveyor.run(range(20), job, concurrency=2, journal=path, monitor=monitor, key=str)
    conveyor.run(range(30), job, concurrency=2, journal=path, monitor=monitor, key=str)
    loaded = load_journal_report(path)
    res_ = loaded.report.extra["resources"]
    assert res_["sessions"] == 2
    assert len(res_["series"]["t"]) == len(res_["series"]["values"]["process_rss_mb"])
    page = render_html(loaded.report, loaded.timeline)
    for cid in RESOURCE_CHART_IDS:
        assert re.search(rf'<svg id="{cid}"[^>]*>', page), cid
    assert 'data-series="process_rss_mb"' in page and 'data-series="db_in_use"' in page
    assert "not sampled: gpu" in page and "/nonexistent/nvidia-smi not found" in page
    assert "process_rss_mb (min / mean / max)" in page
    assert '"resources"' in loaded.report.to_json(include_results=False)


def test_a_run_without_monitor_has_no_resources_section(tmp_path: Path) -> None:
    """Nothing sampled, nothing drawn: the page has no Resources heading."""
    loaded = load_journal_report(journal_with(tmp_path / "j.db", sample_results()))
    page = render_html(loaded.report, loaded.timeline)
    assert "<h2>Resources</h2>" not in page and "chart-memory" not in page


def test_a_gap_in_a_series_is_left_out_of_the_line() -> None:
    """Points not sampled (NaN) are not drawn; the others keep their own times."""
    svg = line_chart(
        chart_id="c",
        title="t",
        x_label="x",
        y_label="y",
        xs=[0.0, 1.0, 2.0],
        series=[Series("g", [1.0, float("nan"), 3.0])],
        x_range=(0.0, 2.0),
        x_format=lambda x, step: f"{x:g}",
    )
    assert svg.count('class="point"') == 2 and "nan" not in svg


@pytest.mark.slow  # the default run keeps test_page_renders_its_charts_in_headless_chromium
@needs_chromium
@pytest.mark.timeout(180)
def test_resource_charts_render_in_headless_chromium(tmp_path: Path) -> None:
    """A monitored run's page, loaded in a real browser: the memory, utilisation and
    gauge charts are in the rendered DOM, and the fifth gauge's line is painted in
    its own colour (purple, used by nothing else on the page)."""
    path = tmp_path / "j.db"
    gauges = {name: (lambda v=v: v) for v, name in enumerate(("a", "b", "c", "d", "e"), 1)}
    monitor = conveyor.Monitor(interval=0.02, gauges=gauges)

    def job(i: int) -> int:
        time.sleep(0.01)
        return i

    conveyor.run(range(30), job, concurrency=2, journal=path, monitor=monitor, key=str)
    loaded = load_journal_report(path)
    page = write_html(tmp_path / "report.html", loaded.report, loaded.timeline)
    url = page.resolve().as_uri()
    dom = chromium(tmp_path, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    for cid in RESOURCE_CHART_IDS:
        assert re.search(rf'<svg id="{cid}"[^>]*>', dom.stdout), cid
    shot = tmp_path / "report.png"
    run = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,3200", url)
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    colors = color_histogram(decode_png(shot.read_bytes()))
    assert count_color(colors, (0x7C, 0x3A, 0xED)) > 300  # gauge "e": line and legend
