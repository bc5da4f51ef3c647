"""Report arithmetic and renderings (`conveyor._core._report`, `conveyor._base._types`)."""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from fractions import Fraction
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor._base._types import ErrorInfo, Result, Status, Usage
from conveyor._core._report import BatchReport, ReportBuilder, percentile

ERROR_TYPES = ["TimeoutError", "RateLimitError", "ValueError", "ConnectionResetError"]

JSON_VALUES: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=["Cs"]), max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.text(st.characters(exclude_categories=["Cs"]), max_size=8), inner, max_size=4
        )
    ),
    max_leaves=5,
)


@st.composite
def one_result(draw: st.DrawFn, index: int) -> Result[Any]:
    status = draw(st.sampled_from(Status))
    attempts = 0 if status is Status.SKIPPED else draw(st.integers(0, 6))
    duration = draw(st.sampled_from([0.0, 0.001, 1.0]) | st.floats(0.0, 1e4))
    error = None
    # An OK result may still carry the error of an earlier attempt: it is not counted.
    if (status is not Status.OK or draw(st.booleans())) and draw(st.integers(0, 4)) > 0:
        error = ErrorInfo(
            type=draw(st.sampled_from(ERROR_TYPES)),
            message=draw(st.text(st.characters(exclude_categories=["Cs"]), max_size=30)),
            status_code=draw(st.none() | st.sampled_from([429, 500, 400])),
        )
    usage = draw(st.none() | st.builds(Usage, st.integers(0, 10**7), st.integers(0, 10**7)))
    return Result(
        index=index,
        key=f"k{index}",
        status=status,
        value=draw(JSON_VALUES) if status is Status.OK else None,
        error=error,
        attempts=attempts,
        started_at=1_700_000_000.0 + index,
        ended_at=1_700_000_000.0 + index + duration,
        duration=duration,
        usage=usage,
        meta=draw(st.sampled_from([{}, {"phase": "a"}])),
    )


@st.composite
def result_lists(draw: st.DrawFn) -> list[Result[Any]]:
    """Results for indexes 0..n-1 in a random completion order."""
    n = draw(st.integers(0, 40))
    order = draw(st.permutations(range(n)))
    return [draw(one_result(i)) for i in order]


def build(results: list[Result[Any]], **kwargs: Any) -> BatchReport:
    builder = ReportBuilder(batch_id="batch_test")
    for r in results:
        builder.add(r)
    return builder.build(**kwargs)


def latencies(results: list[Result[Any]]) -> list[float]:
    """Durations the report's latency figures are over: attempted, not skipped."""
    return [r.duration for r in results if r.status is not Status.SKIPPED and r.attempts]


@settings(max_examples=80, deadline=None)
@given(results=result_lists())
def test_report_arithmetic(results: list[Result[Any]]) -> None:
    """Counts per status add up to the results added; successful/failed follow them
    (failed = failed + timed out); attempts and retries = sum(attempts) and
    sum(attempts - 1); errors are counted by type over non-OK results; tokens are
    summed; results come back sorted by index; latency p50 <= p95 <= p99 <= max,
    all within [min, max] of the attempted durations, with the mean between."""
    rep = build(results)
    n = len(results)
    assert rep.total == n == len(rep) == sum(rep.counts.values())
    assert set(rep.counts) == {s.value for s in Status}
    by_status = Counter(r.status.value for r in results)
    assert all(rep.counts[s.value] == by_status[s.value] for s in Status)
    assert rep.successful == by_status["ok"]
    assert rep.failed == by_status["failed"] + by_status["timed_out"]
    assert rep.ok == (by_status["ok"] == n)
    assert rep.attempts == sum(r.attempts for r in results)
    assert rep.retries == sum(max(0, r.attempts - 1) for r in results)
    expected_errors = Counter(
        r.error.type for r in results if r.error is not None and r.status is not Status.OK
    )
    assert rep.errors == dict(expected_errors)
    assert rep.input_tokens == sum(r.usage.input_tokens for r in results if r.usage)
    assert rep.output_tokens == sum(r.usage.output_tokens for r in results if r.usage)
    assert [r.index for r in rep.results] == list(range(n))
    assert [r.index for r in rep] == list(range(n))
    assert all(rep[i].index == i for i in range(n))
    assert rep.values() == [r.value if r.ok else None for r in rep.results]
    assert [r.index for r in rep.failures()] == [r.index for r in rep.results if not r.ok]

    lat = latencies(results)
    p = (rep.latency_p50, rep.latency_p95, rep.latency_p99, rep.latency_max)
    if lat:
        assert min(lat) <= p[0] <= p[1] <= p[2] <= p[3] == max(lat)
        assert min(lat) <= rep.avg_duration_seconds * (1 + 1e-12)
        assert rep.avg_duration_seconds <= max(lat) * (1 + 1e-12)
    else:
        assert p == (0.0, 0.0, 0.0, 0.0)
        assert rep.avg_duration_seconds == 0.0

    assert rep.total_duration_seconds >= 0.0
    assert rep.finished_at >= rep.started_at
    if n:
        assert rep.first_result_seconds is not None
        assert 0.0 <= rep.first_result_seconds <= rep.total_duration_seconds
    else:
        assert rep.first_result_seconds is None
    assert rep.throughput_per_second >= 0.0


@settings(max_examples=50, deadline=None)
@given(results=result_lists(), interrupted=st.booleans())
def test_to_json_parses_back(results: list[Result[Any]], interrupted: bool) -> None:
    """`to_json()` is valid JSON (orjson parses it) with the batch-response fields
    (batch_id, total_items, successful, failed, total_duration_seconds, results) equal
    to the report's numbers, every result in index order with its value; the indented
    form parses to the same; without results the key is absent."""
    rep = build(
        results, interrupted=interrupted, stop_reason="interrupted" if interrupted else None
    )
    d = orjson.loads(rep.to_json())
    assert d["batch_id"] == "batch_test"
    assert d["total_items"] == rep.total
    assert d["successful"] == rep.successful
    assert d["failed"] == rep.failed
    assert d["total_duration_seconds"] == pytest.approx(rep.total_duration_seconds, abs=1e-6)
    assert d["counts"] == rep.counts
    assert d["retries"] == rep.retries
    assert d["errors"] == rep.errors
    assert d["tokens"] == {"input": rep.input_tokens, "output": rep.output_tokens}
    assert d["interrupted"] is interrupted
    assert [r["index"] for r in d["results"]] == list(range(rep.total))
    for got, r in zip(d["results"], rep.results, strict=True):
        assert got["key"] == r.key
        assert got["status"] == r.status.value
        assert got["attempts"] == r.attempts
        if r.ok:
            assert got["value"] == r.value
        else:
            assert "value" not in got
        if r.error is not None:
            assert got["error_type"] == r.error.type
            assert got["error_message"] == r.error.message
    lat = d["latency_seconds"]
    assert lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert orjson.loads(rep.to_json(indent=True)) == d
    short = orjson.loads(rep.to_json(include_results=False))
    assert "results" not in short
    assert short["total_items"] == rep.total


ESCAPES = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


@settings(max_examples=40, deadline=None)
@given(results=result_lists(), stop=st.none() | st.sampled_from(["fail_fast", "interrupted"]))
def test_summary_is_plain_text(results: list[Result[Any]], stop: str | None) -> None:
    """`summary()` is plain lines without escape or control codes, naming the batch,
    each status with its count, the retries, and the top error types."""
    rep = build(results, stop_reason=stop)
    text = rep.summary()
    assert not ESCAPES.search(text), repr(text)
    assert "batch_test" in text
    for s in Status:
        assert f"{s.value} {rep.counts[s.value]}" in text
    assert f"retries {rep.retries}" in text
    if stop:
        assert f"stopped: {stop}" in text
    for name in sorted(rep.errors, key=lambda k: (-rep.errors[k], k))[:5]:
        assert f"{name} x{rep.errors[name]}" in text
    if rep.input_tokens or rep.output_tokens:
        assert f"tokens in {rep.input_tokens}  out {rep.output_tokens}" in text


@settings(max_examples=25, deadline=None)
@given(results=result_lists())
def test_builder_without_results_keeps_the_numbers(results: list[Result[Any]]) -> None:
    """With keep_results=False (stream reports) no result is kept, and every number is
    the same as with them."""
    full = build(results)
    builder = ReportBuilder(batch_id="batch_test", keep_results=False)
    for r in results:
        builder.add(r)
    lean = builder.build()
    assert lean.results == []
    a = full.to_dict(include_results=False)
    b = lean.to_dict(include_results=False)
    for volatile in ("started_at", "finished_at", "total_duration_seconds"):
        a.pop(volatile)
        b.pop(volatile)
    a.pop("first_result_seconds")
    b.pop("first_result_seconds")
    a.pop("throughput_per_second")
    b.pop("throughput_per_second")
    assert a == b


# ---- percentile --------------------------------------------------------------------


def exact_percentile(values: list[float], q: float) -> Fraction:
    """Linear interpolation between closest ranks, in exact arithmetic."""
    n = len(values)
    pos = Fraction(n - 1) * Fraction(min(100.0, max(0.0, q))) / 100
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    return Fraction(values[lo]) + (Fraction(values[hi]) - Fraction(values[lo])) * (pos - lo)


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(st.floats(0.0, 1e6), min_size=1, max_size=50),
    qs=st.lists(st.floats(-10.0, 110.0), min_size=1, max_size=6),
)
def test_percentile_is_monotone_and_bounded(values: list[float], qs: list[float]) -> None:
    """On sorted values, percentile(q) is monotone in q, within [min, max], equal to
    min at q<=0 and max at q>=100, and equals linear interpolation between closest
    ranks up to float rounding."""
    vals = sorted(values)
    ps = [percentile(vals, q) for q in sorted(qs)]
    assert all(a <= b for a, b in itertools.pairwise(ps))
    assert all(vals[0] <= p <= vals[-1] for p in ps)
    assert percentile(vals, 0) == vals[0] == percentile(vals, -5)
    assert percentile(vals, 100) == vals[-1] == percentile(vals, 250)
    for q in qs:
        exact = exact_percentile(vals, q)
        assert percentile(vals, q) == pytest.approx(float(exact), rel=1e-12, abs=1e-12)
    assert percentile(iter(vals), 50) == percentile(vals, 50)


def test_percentile_small_cases() -> None:
    """Empty gives 0, one value gives itself, [1, 2, 3, 4] gives p50 = 2.5."""
    assert percentile([], 50) == 0.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([0.0, 10.0], 95) == pytest.approx(9.5)


# ---- Result / ErrorInfo ------------------------------------------------------------


def test_result_to_dict_shape() -> None:
    """A result's dict has index, key, status, attempts and times; the value only when
    ok; error type/message/status code when there is an error; usage when reported."""
    ok: Result[Any] = Result(
        0, "a", Status.OK, item={"x": 1}, value=[1, 2], attempts=2, duration=0.1234567
    )
    d = ok.to_dict()
    assert d["status"] == "ok"
    assert d["value"] == [1, 2]
    assert d["duration_seconds"] == 0.123457
    assert "item" not in d
    assert ok.to_dict(include_item=True)["item"] == {"x": 1}
    try:
        raise RuntimeError("upstream 503")
    except RuntimeError as exc:
        info = ErrorInfo.from_exception(exc, retryable=True)
    assert info.type == "RuntimeError"
    assert "upstream 503" in info.traceback
    bad: Result[Any] = Result(1, "b", Status.FAILED, error=info, attempts=3, usage=Usage(5, 0))
    d = bad.to_dict()
    assert "value" not in d
    assert d["error_type"] == "RuntimeError"
    assert d["error_message"] == "upstream 503"
    assert d["usage"] == {"input_tokens": 5, "output_tokens": 0}
    assert str(Status.TIMED_OUT) == "timed_out"
    assert Usage(3, 4).total_tokens == 7


def test_error_info_keeps_status_code_and_names_empty_errors() -> None:
    """An exception's int `status_code` is kept; an empty message is replaced by the
    type name so the report never shows a blank error."""

    class HTTPError(Exception):
        status_code = 503

    info = ErrorInfo.from_exception(HTTPError())
    assert info.status_code == 503
    assert info.message == "HTTPError"


def test_to_json_accepts_int_dict_keys() -> None:
    """A task returning {0: 'a', 1: 'b'} (common for per-page or per-choice results)
    does not stop the report from rendering as JSON."""
    rep = build([Result(0, "0", Status.OK, value={0: "a", 1: "b"}, attempts=1)])
    d = orjson.loads(rep.to_json())
    assert d["results"][0]["value"] == {"0": "a", "1": "b"}


def test_to_json_accepts_big_ints() -> None:
    """A task value of 2**70 still renders (as a number or a string), not an error."""
    rep = build([Result(0, "0", Status.OK, value=2**70, attempts=1)])
    d = orjson.loads(rep.to_json())
    assert d["results"][0]["value"] in (2**70, str(2**70))


def test_to_json_accepts_surrogates_in_messages() -> None:
    """An error message that quotes a non-UTF-8 file name as Python decodes it
    ('\\udcff') still renders as JSON (escaped or replaced)."""
    err = ErrorInfo("RuntimeError", "cannot read caf\udcff.txt")
    rep = build([Result(0, "0", Status.FAILED, error=err, attempts=1)])
    d = orjson.loads(rep.to_json())
    assert d["results"][0]["error_message"].startswith("cannot read caf")


def test_latency_memory_is_bounded_and_percentiles_stay_close() -> None:
    """Past 65,536 results the builder keeps a uniform sample: memory stops
    growing, mean and max stay exact, percentiles stay within ~1%."""
    from conveyor._core._report import ReportBuilder

    b = ReportBuilder(keep_results=False)
    n = 200_000
    for i in range(n):
        b.add(Result(i, str(i), Status.OK, attempts=1, duration=(i % 1000) / 1000))
    assert len(b._latencies) == 65_536
    rep = b.build()
    assert rep.latency_max == 0.999
    assert abs(rep.avg_duration_seconds - 0.4995) < 1e-9
    assert abs(rep.latency_p50 - 0.5) < 0.01
    assert abs(rep.latency_p99 - 0.99) < 0.01
