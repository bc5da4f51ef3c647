"""The engine's required behaviours, through the public API."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import threading
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import conveyor
from conveyor import Status
from conveyor._base._clock import FakeClock

# ---- order, completeness ------------------------------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    delays=st.lists(st.floats(min_value=0, max_value=0.004), min_size=0, max_size=60),
    fail_mask=st.lists(st.booleans(), min_size=60, max_size=60),
    concurrency=st.integers(min_value=1, max_value=12),
)
def test_results_in_input_order_and_counts_add_up(
    delays: list[float], fail_mask: list[bool], concurrency: int
) -> None:
    """Random per-item delays and failures: every item has exactly one result,
    in input order, and the per-status counts sum to the number of items."""

    async def fn(i: int) -> int:
        await asyncio.sleep(delays[i])
        if fail_mask[i]:
            raise ValueError(f"item {i}")
        return i * 10

    report = conveyor.run(range(len(delays)), fn, concurrency=concurrency, retries=0)
    assert [r.index for r in report] == list(range(len(delays)))
    assert sum(report.counts.values()) == len(delays) == report.total
    for r in report:
        if fail_mask[r.index]:
            assert r.status is Status.FAILED and r.error is not None
            assert r.error.type == "ValueError" and f"item {r.index}" in r.error.message
            assert "Traceback" in r.error.traceback
        else:
            assert r.ok and r.value == r.index * 10


def test_generator_is_consumed_lazily() -> None:
    """A generator is pulled as slots free up, at most a bounded lookahead
    ahead (it is pulled beside the loop, #12.14), never drained up front."""
    from conveyor._core._source import LOOKAHEAD

    pulled = 0
    seen_max_ahead = 0
    done = 0

    def gen():  # type: ignore[no-untyped-def]
        nonlocal pulled
        for i in range(2000):
            pulled += 1
            yield i

    async def fn(i: int) -> int:
        nonlocal seen_max_ahead, done
        seen_max_ahead = max(seen_max_ahead, pulled - done)
        await asyncio.sleep(0)
        done += 1
        return i

    report = conveyor.run(gen(), fn, concurrency=5)
    assert report.counts["ok"] == 2000
    assert seen_max_ahead <= 2 * 5 + LOOKAHEAD + 1


def test_async_iterable_items() -> None:
    """Async iterables are accepted as items."""

    async def agen():  # type: ignore[no-untyped-def]
        for i in range(30):
            await asyncio.sleep(0)
            yield i

    async def fn(i: int) -> int:
        return -i

    report = conveyor.run(agen(), fn, concurrency=4)
    assert report.values() == [-i for i in range(30)]


def test_key_function_and_default_keys() -> None:
    """Keys come from the key function, else from the index."""
    items = [{"id": f"c{i}"} for i in range(5)]
    report = conveyor.run(items, lambda d: d["id"].upper(), key=lambda d: d["id"])
    assert [r.key for r in report] == [f"c{i}" for i in range(5)]
    assert report.values() == [f"C{i}" for i in range(5)]
    report = conveyor.run(["a", "b"], str.upper)
    assert [r.key for r in report] == ["0", "1"]


def test_key_function_that_raises_fails_only_that_item() -> None:
    """A key function error is that item's failure, not the run's."""

    def key(x: int) -> str:
        if x == 2:
            raise KeyError("no id")
        return f"k{x}"

    report = conveyor.run(range(4), lambda x: x, key=key)
    assert report.counts["ok"] == 3 and report.counts["failed"] == 1
    assert report[2].error is not None and report[2].error.type == "KeyError"


# ---- concurrency: window and waves ------------------------------------------------


def test_max_in_flight_never_exceeded_async() -> None:
    """In window mode at most `concurrency` calls run at once, and the window
    stays full (the peak is reached)."""
    active = 0
    peak = 0

    async def fn(i: int) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(random.random() * 0.003)
        active -= 1

    report = conveyor.run(range(300), fn, concurrency=7)
    assert report.counts["ok"] == 300
    assert peak == 7
    assert report.extra["max_in_flight"] <= 7


def test_max_in_flight_never_exceeded_threads() -> None:
    """Sync functions on threads obey the same limit."""
    lock = threading.Lock()
    active = 0
    peak = 0

    def fn(i: int) -> None:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.002)
        with lock:
            active -= 1

    report = conveyor.run(range(120), fn, concurrency=6)
    assert report.counts["ok"] == 120
    assert 2 <= peak <= 6


def test_waves_barrier_hook_and_log(caplog: pytest.LogCaptureFixture) -> None:
    """Waves mode: no item of wave k+1 starts before wave k finished; the hook
    gets each wave's results; the seed 000 progress line is logged."""
    events: list[tuple[str, int, float]] = []
    hooks: list[conveyor.BatchInfo] = []

    def fn(i: int) -> int:
        events.append(("start", i, time.monotonic()))
        time.sleep(0.001 * (i % 3))
        if i == 7:
            raise RuntimeError("worker 7 broke")
        events.append(("end", i, time.monotonic()))
        return i

    caplog.set_level(logging.INFO, logger="conveyor")
    report = conveyor.run(
        list(range(12)), fn, waves=True, batch_size=5, on_batch=hooks.append, retries=0
    )
    assert report.counts == {**report.counts, "ok": 11, "failed": 1}
    assert [h.number for h in hooks] == [1, 2, 3]
    assert [len(h.results) for h in hooks] == [5, 5, 2]
    assert [h.total for h in hooks] == [3, 3, 3]
    assert [h.completed for h in hooks] == [5, 10, 12]
    assert [r.index for r in hooks[1].results] == [5, 6, 7, 8, 9]
    # barrier: every start in wave k+1 is after every end/failure in wave k
    for k in range(2):
        wave = range(5 * k, 5 * k + 5)
        nxt = range(5 * (k + 1), min(12, 5 * (k + 2)))
        last_end = max(r.ended_at or 0 for r in report if r.index in wave)
        first_start = min(r.started_at or 0 for r in report if r.index in nxt)
        assert first_start >= last_end - 1e-3
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Processed")]
    assert lines == [
        "Processed batch 1/3: 5 items complete",
        "Processed batch 2/3: 10 items complete",
        "Processed batch 3/3: 12 items complete",
    ]


def test_waves_in_flight_within_batch_size() -> None:
    """In waves mode the concurrency within a wave is at most batch_size."""
    active = 0
    peak = 0

    async def fn(i: int) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.001)
        active -= 1

    conveyor.run(range(40), fn, waves=True, batch_size=4, concurrency=100)
    assert peak == 4


# ---- timeouts ------------------------------------------------------------------------


def test_hung_sync_function_times_out_and_others_keep_full_concurrency() -> None:
    """A sync function that never returns is marked timed_out; after that the
    rest still run `concurrency` at a time (the stuck thread is replaced)."""
    release = threading.Event()
    gave_up = threading.Event()
    lock = threading.Lock()
    active = 0
    peak_after = 0

    def fn(i: int) -> int:
        nonlocal active, peak_after
        if i == 0:
            release.wait(30)  # "forever" for this test; released at the end
            return -1
        with lock:
            active += 1
            if gave_up.is_set():
                peak_after = max(peak_after, active)
        time.sleep(0.02)
        with lock:
            active -= 1
        return i

    def on_result(r: conveyor.Result[Any]) -> None:
        if r.index == 0:
            gave_up.set()

    try:
        t = time.monotonic()
        report = conveyor.run(
            range(80), fn, concurrency=4, timeout=0.2, retries=0, on_result=on_result
        )
        elapsed = time.monotonic() - t
    finally:
        release.set()
    assert report[0].status is Status.TIMED_OUT
    assert report[0].error is not None and "timeout" in report[0].error.message
    assert report.counts["ok"] == 79
    assert peak_after == 4  # the hung item's slot was given back
    assert elapsed < 5


async def test_async_timeout_cancels_the_coroutine() -> None:
    """An async function past its timeout is cancelled (its finally runs)."""
    cancelled: list[int] = []

    async def fn(i: int) -> int:
        try:
            await asyncio.sleep(10 if i == 1 else 0)
        except asyncio.CancelledError:
            cancelled.append(i)
            raise
        return i

    report = await conveyor.arun(range(3), fn, timeout=0.1, retries=0)
    assert cancelled == [1]
    assert [r.status for r in report] == [Status.OK, Status.TIMED_OUT, Status.OK]


def test_timeouts_are_retried_then_timed_out() -> None:
    """A timeout is transient: retried, then `timed_out` with the attempt count."""
    clock = FakeClock()

    async def fn(i: int) -> None:
        await asyncio.sleep(1)

    report = conveyor.run([0], fn, timeout=0.02, retries=2, clock=clock)
    assert report[0].status is Status.TIMED_OUT
    assert report[0].attempts == 3


# ---- retries ---------------------------------------------------------------------------


def test_only_retryable_errors_are_retried_with_bounded_delays() -> None:
    """Transient errors retry with full-jitter delays inside the bounds;
    others fail at once."""
    clock = FakeClock()
    times: dict[int, list[float]] = {}

    async def fn(i: int) -> int:
        times.setdefault(i, []).append(clock.now())
        if i == 0:
            raise ConnectionError("reset")
        if i == 1:
            raise ValueError("bad input")
        if len(times[i]) < 3:
            raise conveyor.RetryableError("busy")
        return i

    policy = conveyor.RetryPolicy(retries=4, base=1.0, cap=3.0)
    report = conveyor.run(range(3), fn, retries=policy, clock=clock, concurrency=1)
    assert report[0].status is Status.FAILED and report[0].attempts == 5
    assert report[1].status is Status.FAILED and report[1].attempts == 1
    assert report[2].ok and report[2].attempts == 3
    assert report.retries == 4 + 0 + 2
    gaps = [b - a for a, b in zip(times[0], times[0][1:], strict=False)]
    bounds = [1.0, 2.0, 3.0, 3.0]
    for gap, bound in zip(gaps, bounds, strict=True):
        assert 0 <= gap <= bound + 1e-9


def test_retry_after_hint_is_honoured() -> None:
    """An exception's `retry_after` is the minimum wait before the next attempt."""
    clock = FakeClock()
    times: list[float] = []

    async def fn(i: int) -> str:
        times.append(clock.now())
        if len(times) == 1:
            raise conveyor.RetryableError("slow down", retry_after=7.5)
        return "ok"

    report = conveyor.run([0], fn, clock=clock, retries=conveyor.RetryPolicy(retries=2, base=0.01))
    assert report[0].ok
    assert times[1] - times[0] >= 7.5


def test_custom_retry_predicate() -> None:
    """A retry predicate decides what is transient."""
    calls = 0

    def fn(i: int) -> int:
        nonlocal calls
        calls += 1
        raise KeyError("flaky")

    policy = conveyor.RetryPolicy(
        retries=2, base=0, cap=0, retry_on=lambda e: isinstance(e, KeyError)
    )
    report = conveyor.run([0], fn, retries=policy)
    assert calls == 3 and report[0].attempts == 3


# ---- rate limits (virtual clock: exact checks) -------------------------------------------


def _max_in_any_window(events: list[tuple[float, float]], window: float) -> float:
    events = sorted(events)
    best = 0.0
    j = 0
    total = 0.0
    for t, w in events:
        total += w
        while events[j][0] <= t - window:
            total -= events[j][1]
            j += 1
        best = max(best, total)
    return best


def test_requests_per_minute_never_exceeded() -> None:
    """Over a virtual run of several minutes, no 60 s window holds more
    admitted calls than `rpm`, and the rate achieved is close to it."""
    clock = FakeClock()
    calls: list[tuple[float, float]] = []

    async def fn(i: int) -> int:
        calls.append((clock.now(), 1.0))
        return i

    report = conveyor.run(range(400), fn, rpm=100, concurrency=50, clock=clock)
    assert report.counts["ok"] == 400
    assert _max_in_any_window(calls, 60.0) <= 100
    span = max(t for t, _ in calls) - min(t for t, _ in calls)
    assert 399 / span * 60 >= 0.95 * 100  # at least 95% of the allowed rate


def test_weighted_cost_per_minute_never_exceeded_and_settled() -> None:
    """Cost-weighted limit (tokens): reservations from the estimate, settled
    from reported usage; no window exceeds the limit on actual usage."""
    clock = FakeClock()
    used: list[tuple[float, float]] = []
    rnd = random.Random(3)
    actual = {i: rnd.randint(50, 200) for i in range(300)}

    async def fn(i: int) -> int:
        used.append((clock.now(), float(actual[i])))
        conveyor.report_usage(actual[i], 0)
        return i

    report = conveyor.run(range(300), fn, tpm=5000, cost=lambda i: 200, concurrency=20, clock=clock)
    assert report.counts["ok"] == 300
    assert report.input_tokens == sum(actual.values())
    assert _max_in_any_window(used, 60.0) <= 5000
    # Refunds let more through than the estimate alone would: 200/item -> 25/min.
    span = max(t for t, _ in used) - min(t for t, _ in used)
    assert 300 / span * 60 > 25


def test_item_costlier_than_the_limit_fails_clearly() -> None:
    """An item whose cost can never fit the limit fails instead of hanging."""
    report = conveyor.run([1, 10_000], lambda x: x, tpm=1000, cost=lambda x: x)
    assert report[0].ok
    assert report[1].status is Status.FAILED
    assert report[1].error is not None and "exceeds" in report[1].error.message


def test_429_with_spent_budget_pauses_admission_globally() -> None:
    """A 429 saying the budget is spent (overload) pauses every item's
    admission for its Retry-After, not just its own."""
    clock = FakeClock()
    calls: list[tuple[int, float]] = []

    async def fn(i: int) -> int:
        calls.append((i, clock.now()))
        if i == 0 and len(calls) == 1:
            raise conveyor.RetryableError(
                "rate limited", retry_after=30, status_code=429, overload=True
            )
        return i

    report = conveyor.run(range(5), fn, concurrency=1, clock=clock)
    assert report.counts["ok"] == 5
    later = [t for i, t in calls[1:]]
    assert all(t >= 30 for t in later)


def test_sporadic_429s_delay_only_their_item_frequent_ones_pause_all() -> None:
    """A lone 429 (no spent budget) delays its own retry only; when 429s
    become frequent among recent answers, everyone pauses."""
    calls: list[int] = []

    async def lone(i: int) -> int:
        calls.append(i)
        if i == 0 and calls.count(0) == 1:
            raise conveyor.RetryableError("busy", retry_after=0.5, status_code=429)
        return i

    # Two slots: item 0 waits out its own backoff in one, the others use the other.
    report = conveyor.run(range(5), lone, concurrency=2)
    t0 = min(r.started_at or 0 for r in report)
    others = max((r.ended_at or 0) - t0 for r in report if r.index != 0)
    assert others < 0.3  # not held up by item 0's 429
    assert report[0].duration >= 0.5

    clock2 = FakeClock()
    seen: list[tuple[int, float]] = []

    async def storm(i: int) -> int:
        seen.append((i, clock2.now()))
        if i < 4 and sum(1 for j, _ in seen if j == i) == 1:
            raise conveyor.RetryableError("busy", retry_after=30, status_code=429)
        return i

    report = conveyor.run(range(8), storm, concurrency=1, clock=clock2)
    assert report.counts["ok"] == 8
    assert min(t for i, t in seen if i >= 4) >= 30  # the third 429 paused everyone


def test_learned_limits_from_hints() -> None:
    """The server's budget, as its headers describe it (a bucket of 10
    refilled at 30/min), is mirrored: after the first answer conveyor spends
    the bucket, then keeps to its refill, and the server refuses nothing."""
    clock = FakeClock()
    level, last = 10.0, 0.0
    refused = 0

    async def fn(i: int) -> int:
        nonlocal level, last, refused
        now = clock.now()
        level = min(10.0, level + (now - last) * 0.5)
        last = now
        if level < 1:
            refused += 1
            raise conveyor.RetryableError("rate limited", status_code=429, retry_after=1)
        level -= 1
        conveyor.report_limits(
            requests_limit=30, requests_remaining=level, requests_reset=(10 - level) / 0.5
        )
        return i

    report = conveyor.run(range(100), fn, concurrency=1, clock=clock)
    assert report.counts["ok"] == 100
    assert refused == 0
    # 10 at once, then 90 at 0.5/s: the rate the server allows, not slower.
    assert 90 / 0.5 - 1 <= clock.now() <= 90 / 0.5 * 1.03 + 1


# ---- breaker ---------------------------------------------------------------------------


def test_breaker_pauses_then_probes() -> None:
    """After consecutive failures admission pauses for the cooldown, then a
    single probe goes out; success closes the breaker and items go on."""
    clock = FakeClock()
    calls: list[tuple[int, float]] = []
    down_until = 10.0

    async def fn(i: int) -> int:
        calls.append((i, clock.now()))
        if clock.now() < down_until:
            raise ConnectionError("endpoint down")
        return i

    report = conveyor.run(
        range(20),
        fn,
        concurrency=1,
        clock=clock,
        breaker=conveyor.Breaker(threshold=3, cooldown=4.0),
        retries=conveyor.RetryPolicy(retries=50, base=0.01, cap=0.01),
    )
    assert report.counts["ok"] == 20
    assert report.extra["breaker_opened"] >= 2
    # While open, no call is made: calls before the end of the outage are
    # spaced by the cooldown after each run of 3 failures.
    early = [t for _, t in calls if t < down_until]
    assert len(early) <= 3 + 3  # 3 failures, then one probe per cooldown (4s, 8s)


# ---- fail_fast, fatal ------------------------------------------------------------------


def test_fail_fast_cancels_in_flight_and_skips_the_rest() -> None:
    """fail_fast: the first failure stops admission; in-flight items are
    cancelled, unstarted ones skipped; every item still has a result."""

    async def fn(i: int) -> int:
        if i < 3:
            return i
        if i == 3:
            await asyncio.sleep(0.05)
            raise RuntimeError("boom")
        await asyncio.sleep(0.5)
        return i

    report = conveyor.run(range(50), fn, concurrency=5, fail_fast=True, retries=0)
    assert report.total == 50
    assert report.counts["failed"] == 1
    assert report.counts["ok"] == 3
    assert report.counts["cancelled"] >= 1
    assert report.counts["skipped"] == 50 - 3 - 1 - report.counts["cancelled"]
    assert report.stop_reason is not None and "fail_fast" in report.stop_reason


def test_fatal_error_stops_run_and_carries_report() -> None:
    """A FatalError (a rejected key) stops the run at once; run() raises it
    with the report of what happened."""

    def fn(i: int) -> int:
        if i >= 2:
            raise conveyor.FatalError("401: the API key was rejected; check OPENAI_API_KEY")
        return i

    with pytest.raises(conveyor.FatalError, match="401") as ei:
        conveyor.run(range(100), fn, concurrency=1)
    rep = ei.value.report
    assert rep is not None and rep.total == 100
    # The item the fatal error met is not its own failure: it stays to be run
    # again (cancelled, with the error kept), as are those never started.
    assert rep.counts["ok"] == 2 and rep.counts.get("failed", 0) == 0
    assert rep[2].status == "cancelled" and "401" in rep[2].error.message
    assert rep.counts["skipped"] == 97


# ---- callbacks -------------------------------------------------------------------------


def test_callbacks_called_and_raising_callback_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """on_start/on_result/on_error fire per item; a callback that raises is
    logged once and never stops the run."""
    seen: dict[str, list[Any]] = {"start": [], "result": [], "error": []}

    class CB(conveyor.ProgressCallback):
        def on_start(self, index: int, key: str, item: Any) -> None:
            seen["start"].append(index)

        def on_result(self, result: conveyor.Result[Any]) -> None:
            seen["result"].append(result.index)
            raise RuntimeError("callback bug")

        def on_error(self, result: conveyor.Result[Any]) -> None:
            seen["error"].append(result.index)

    def fn(i: int) -> int:
        if i % 4 == 0:
            raise ValueError("x")
        return i

    with caplog.at_level(logging.WARNING, logger="conveyor"):
        report = conveyor.run(range(12), fn, callbacks=CB(), retries=0)
    assert report.total == 12
    assert sorted(seen["start"]) == list(range(12))
    assert sorted(seen["result"]) == list(range(12))
    assert sorted(seen["error"]) == [0, 4, 8]
    assert report.extra["callback_errors"] == 12
    logged = [r for r in caplog.records if "callback" in r.getMessage()]
    assert len(logged) == 1


# ---- usage -----------------------------------------------------------------------------


def test_report_usage_from_threads_and_coroutines() -> None:
    """report_usage() works from sync functions on threads and async ones."""

    def sync_fn(i: int) -> int:
        conveyor.report_usage(10, 2)
        conveyor.report_usage(1, 0)
        return i

    async def async_fn(i: int) -> int:
        conveyor.report_usage(5, 5)
        return i

    a = conveyor.run(range(10), sync_fn)
    b = conveyor.run(range(10), async_fn)
    assert (a.input_tokens, a.output_tokens) == (110, 20)
    assert (b.input_tokens, b.output_tokens) == (50, 50)
    assert a[0].usage is not None and a[0].usage.total_tokens == 13
    conveyor.report_usage(1, 1)  # outside a run: no effect, no error


# ---- validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"concurrency": 2.5}, "concurrency"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": 0}, "timeout"),
        ({"batch_size": 5}, "batch_size"),
        ({"rpm": 0}, "rpm"),
        ({"tpm": 100}, "cost"),
        ({"tpm": -5, "cost": len}, "tpm"),
        ({"retries": -1}, "retries"),
        ({"breaker": "yes"}, "breaker"),
        ({"grace": -1}, "grace"),
        ({"on_result": 42}, "on_result"),
    ],
)
def test_bad_options_raise_config_error_before_any_item(
    kwargs: dict[str, Any], option: str
) -> None:
    """Every bad option raises ConfigError naming it, before any item runs."""
    ran: list[int] = []
    with pytest.raises(conveyor.ConfigError) as ei:
        conveyor.run(range(3), ran.append, **kwargs)
    assert ei.value.option == option
    assert option in str(ei.value)
    assert ran == []


def test_unknown_option_is_a_type_error() -> None:
    """A misspelt option is refused, not ignored."""
    with pytest.raises(TypeError, match="concurency"):
        conveyor.run([1], str, concurency=3)


def test_items_and_fn_are_checked() -> None:
    """Non-iterable items and a non-callable fn are refused clearly."""
    with pytest.raises(conveyor.ConfigError, match="items"):
        conveyor.run(5, str)  # type: ignore[arg-type]
    with pytest.raises(conveyor.ConfigError, match="fn"):
        conveyor.run([1], "nope")  # type: ignore[arg-type]


def test_source_error_stops_admission_and_reports_what_ran() -> None:
    """An items iterator that raises stops the run; what ran is in the report."""

    def gen():  # type: ignore[no-untyped-def]
        yield 1
        yield 2
        raise OSError("disk went away")

    with pytest.raises(conveyor.ConveyorError, match="items iterable raised OSError") as ei:
        conveyor.run(gen(), lambda x: x)
    assert ei.value.report is not None and ei.value.report.counts["ok"] == 2


# ---- progress snapshots ------------------------------------------------------------------


def test_on_progress_receives_live_and_final_snapshots() -> None:
    """on_progress gets snapshots while running and a final one that adds up."""
    snaps: list[Any] = []

    async def fn(i: int) -> int:
        await asyncio.sleep(0.01)
        conveyor.report_usage(3, 1)
        return i

    conveyor.run(range(60), fn, concurrency=5, on_progress=snaps.append, progress_interval=0.05)
    assert len(snaps) >= 3
    final = snaps[-1]
    assert final.finished and final.done == 60 and final.total == 60
    assert final.counts["ok"] == 60 and final.in_flight == 0
    assert final.eta_seconds == 0.0
    assert any(0 < s.in_flight <= 5 for s in snaps[:-1])
    assert all(a.done <= b.done for a, b in itertools.pairwise(snaps))
    assert final.to_dict()["counts"]["ok"] == 60


def test_shared_limiter_is_consulted_per_attempt() -> None:
    """A shared (cross-process) limiter is awaited before every attempt,
    settled from usage and told about 429s."""

    class Shared:
        def __init__(self) -> None:
            self.acquired: list[float] = []
            self.settled: list[tuple[float, float]] = []
            self.paused: list[float] = []

        async def acquire(self, weight: float) -> None:
            self.acquired.append(weight)

        def settle(self, estimated: float, actual: float) -> None:
            self.settled.append((estimated, actual))

        def pause(self, seconds: float) -> None:
            self.paused.append(seconds)

    shared = Shared()
    clock = FakeClock()
    calls = 0

    async def fn(i: int) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise conveyor.RetryableError("429", retry_after=2, status_code=429, overload=True)
        conveyor.report_usage(4, 1)
        return i

    # shared_limiter is engine plumbing (Ray's workers set it), not an option of run().
    from conveyor._api import run_with_invoker
    from conveyor._core._engine import invoker_for

    report = run_with_invoker(
        range(3), invoker_for(fn), cost=lambda i: 10, shared_limiter=shared, clock=clock,
        concurrency=1,
    )  # fmt: skip
    assert report.counts["ok"] == 3
    assert shared.acquired == [10, 10, 10, 10]
    assert shared.settled == [(10, 5)] * 3
    assert shared.paused == [2]


def test_breaker_probe_refused_or_rate_limited_does_not_hang() -> None:
    """A half-open probe that ends in a non-transient error or a 429 still
    releases the breaker (regression: the run used to wait forever)."""
    calls = 0

    def fn(x: int) -> int:
        nonlocal calls
        calls += 1
        if x < 2:
            raise TimeoutError("down")
        if x == 2:
            raise ValueError("refused")
        if x == 3:
            raise conveyor.RetryableError("slow down", status_code=429, retry_after=0.01)
        return x

    t = time.monotonic()
    report = conveyor.run(
        range(6), fn, concurrency=1, retries=0, breaker=conveyor.Breaker(2, 0.05, 0.1)
    )
    assert time.monotonic() - t < 10
    assert report.counts["ok"] == 2 and report.total == 6


# ---- a plain function returning an awaitable -----------------------------------------


def test_function_returning_an_awaitable_is_awaited() -> None:
    report = conveyor.run([1, 2, 3], lambda x: asyncio.sleep(0.01, x * 10))
    assert [r.value for r in report] == [10, 20, 30]
    assert report.counts["ok"] == 3


def test_awaitable_returned_by_a_plain_function_obeys_the_timeout() -> None:
    report = conveyor.run([1], lambda x: asyncio.sleep(5, x), timeout=0.1, retries=0)
    assert report[0].status is Status.TIMED_OUT


def test_total_failure_stops_the_run_after_give_up(caplog: pytest.LogCaptureFixture) -> None:
    """An endpoint failing every attempt: the run ends with a fatal error after
    `give_up` seconds instead of probing forever; every item has a result and
    none that the outage stopped counts as failed for good."""
    from conveyor import Breaker, FatalError

    def down(x: int) -> int:
        raise ConnectionError("connection refused")

    t = time.monotonic()
    with caplog.at_level("INFO", logger="conveyor"), pytest.raises(FatalError) as info:
        conveyor.run(
            range(30),
            down,
            retries=50,
            concurrency=10,
            breaker=Breaker(threshold=3, cooldown=0.1, max_cooldown=0.2, give_up=1.0),
        )
    assert time.monotonic() - t < 10
    assert "every request failed" in str(info.value)
    rep = info.value.report
    assert rep is not None and len(rep.results) == 30
    assert {r.status for r in rep.results} <= {Status.CANCELLED, Status.SKIPPED}
    assert "circuit breaker open" in caplog.text
