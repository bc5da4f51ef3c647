"""Admission policies (`conveyor._core._limits`), driven with explicit times: nothing sleeps.

The rate-limiter properties simulate virtual time: a caller asks `wait_time`, advances its
clock by exactly the answer and asks again, the way the engine's admission loop does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor._base._exceptions import ConfigError
from conveyor._core._limits import AdaptiveConcurrency, BreakerState, CircuitBreaker, RateLimiter

BUCKETS = 600  # the limiter's window resolution, window / BUCKETS seconds
MAX_TRIES = 50  # wait_time calls one admission may take before the simulation calls it stuck


def close_enough(value: float, bound: float) -> bool:
    """`value <= bound` up to float rounding of sums of weights."""
    return value <= bound + 1e-9 * max(1.0, abs(bound))


def check_wait(wait: float) -> None:
    assert not math.isnan(wait), "wait_time returned NaN"
    assert wait >= 0.0, f"wait_time returned a negative wait {wait!r}"
    assert math.isfinite(wait), f"wait_time returned {wait!r}"


def next_time(now: float, wait: float) -> float:
    """The clock after sleeping `wait`: a real clock always moves on, even when
    `now + wait` rounds back to `now` (that case is pinned on its own below)."""
    later = now + wait
    return later if later > now else math.nextafter(now, math.inf)


def admit(rl: RateLimiter, now: float, weight: float) -> tuple[float, int]:
    """Wait as told until `weight` is admitted; returns (admission time, tries)."""
    for tries in range(1, MAX_TRIES + 1):
        wait = rl.wait_time(now, weight)
        check_wait(wait)
        if wait == 0.0:
            rl.commit(now, weight)
            return now, tries
        now = next_time(now, wait)
    raise AssertionError(f"weight {weight} not admitted after {MAX_TRIES} waits (now={now})")


@st.composite
def limiter_shapes(draw: st.DrawFn) -> tuple[float, float, float | None, float]:
    """(limit, window, burst, start time) over the ranges the engine uses and beyond."""
    limit = draw(st.sampled_from([1.0, 3.0, 10.0, 60.0, 2.5, 0.5, 1000.0]) | st.floats(0.1, 1e5))
    window = draw(st.sampled_from([1.0, 60.0]) | st.floats(0.01, 3600.0))
    burst = draw(st.none() | st.floats(0.01, 2.0 * limit))
    start = draw(st.sampled_from([0.0, 1000.0, 1e6, 123.456]))
    return limit, window, burst, start


def gaps(window: float) -> st.SearchStrategy[float]:
    return st.one_of(st.just(0.0), st.floats(0.0, window / 50.0), st.floats(0.0, 2.0 * window))


FRACTIONS = st.one_of(st.just(1.0), st.floats(1e-6, 1.0))


# ---- RateLimiter: the window invariant ---------------------------------------------


@dataclass
class Admission:
    at: float
    estimated: float
    actual: float
    settled_before: int  # the index of the first admission that saw the settled weight
    limit: float  # the limit in force when it was admitted


@dataclass
class Ledger:
    window: float
    admissions: list[Admission] = field(default_factory=list)

    def known_weight(self, j: int, k: int) -> float:
        """Admission j's weight as the limiter knew it when admission k was made."""
        a = self.admissions[j]
        return a.actual if a.settled_before <= k else a.estimated

    def window_indexes(self, k: int) -> list[int]:
        t = self.admissions[k].at
        return [j for j in range(k + 1) if self.admissions[j].at > t - self.window]


@settings(max_examples=250, deadline=None)
@given(data=st.data(), shape=limiter_shapes())
def test_window_never_exceeds_limit(
    data: st.DataObject, shape: tuple[float, float, float | None, float]
) -> None:
    """Waiting exactly the returned time, any sequence of weights in (0, limit] is admitted
    so that the weight admitted in every window (t - window, t] ending at an admission
    stays <= limit; wait_time is never negative, NaN or infinite; and every admission,
    even one above `burst`, comes within window + one bucket + the time to refill the
    bucket from its deepest debt (-limit) to full: nothing starves."""
    limit, window, burst, start = shape
    rl = RateLimiter(limit, window, burst)
    res = window / BUCKETS
    full_burst = burst if burst is not None else max(1.0, limit / window)
    max_wait = window + 2 * res + (full_burst + limit) / rl.rate
    steps = data.draw(st.lists(st.tuples(gaps(window), FRACTIONS), min_size=1, max_size=40))
    now = start
    ledger = Ledger(window)
    for k, (gap, frac) in enumerate(steps):
        now += gap
        weight = frac * limit
        asked = now
        now, _ = admit(rl, now, weight)
        assert close_enough(now - asked, max_wait), f"weight {weight} waited {now - asked}s"
        ledger.admissions.append(Admission(now, weight, weight, k + 1, limit))
        in_window = sum(ledger.admissions[j].estimated for j in ledger.window_indexes(k))
        assert close_enough(in_window, limit), (k, in_window, limit)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), shape=limiter_shapes())
def test_window_invariant_with_settlements(
    data: st.DataObject, shape: tuple[float, float, float | None, float]
) -> None:
    """With refunds and extra charges settled later (`settle`), the limiter promises
    what it can know: at each admission k, the weights in the window ending at t_k, each
    counted as the limiter knew it then (actual if settled before k, else estimated),
    stay <= limit. Hence the final actual weights in that window exceed the limit by at
    most the extra charges (actual - estimated > 0) settled after admission k."""
    limit, window, burst, start = shape
    rl = RateLimiter(limit, window, burst)
    steps = data.draw(
        st.lists(
            st.tuples(
                gaps(window),
                FRACTIONS,
                st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 3.0)),  # actual / est
                st.integers(0, 3),  # settled after this many further admissions
            ),
            min_size=1,
            max_size=40,
        )
    )
    now = start
    ledger = Ledger(window)
    settle_after: dict[int, list[int]] = {}
    for k, (gap, frac, ratio, lag) in enumerate(steps):
        now += gap
        estimated = frac * limit
        now, _ = admit(rl, now, estimated)
        actual = estimated * ratio
        ledger.admissions.append(Admission(now, estimated, actual, k + lag + 1, limit))
        settle_after.setdefault(k + lag, []).append(k)
        for j in settle_after.pop(k, []):
            a = ledger.admissions[j]
            rl.settle(a.at, a.estimated, a.actual)
    for k, adm in enumerate(ledger.admissions):
        idx = ledger.window_indexes(k)
        known = sum(ledger.known_weight(j, k) for j in idx)
        assert close_enough(known, limit), (k, known, limit)
        final = sum(ledger.admissions[j].actual for j in idx)
        late_extra = sum(
            max(0.0, ledger.admissions[j].actual - ledger.admissions[j].estimated)
            for j in idx
            if ledger.admissions[j].settled_before > k
        )
        assert close_enough(final, limit + late_extra), (k, final, limit, late_extra)
        assert adm.limit == limit


@settings(max_examples=60, deadline=None)
@given(data=st.data(), shape=limiter_shapes())
def test_set_limit_applies_to_later_admissions(
    data: st.DataObject, shape: tuple[float, float, float | None, float]
) -> None:
    """After `set_limit` (a limit learned from headers) every later admission keeps the
    window ending at it within the *new* limit, counting admissions made before the
    change; a non-positive limit is ignored."""
    limit, window, burst, start = shape
    rl = RateLimiter(limit, window, burst)
    steps = data.draw(
        st.lists(
            st.tuples(gaps(window), FRACTIONS, st.none() | st.floats(0.1, 1e5)),
            min_size=1,
            max_size=30,
        )
    )
    now = start
    ledger = Ledger(window)
    for k, (gap, frac, new_limit) in enumerate(steps):
        if new_limit is not None:
            rl.set_limit(new_limit)
            limit = new_limit
        rl.set_limit(0.0)
        rl.set_limit(-5.0)
        assert rl.limit == limit
        now += gap
        weight = frac * limit
        assert rl.fits(weight)
        now, _ = admit(rl, now, weight)
        ledger.admissions.append(Admission(now, weight, weight, k + 1, limit))
        in_window = sum(ledger.admissions[j].estimated for j in ledger.window_indexes(k))
        assert close_enough(in_window, limit), (k, in_window, limit)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), shape=limiter_shapes())
def test_in_window_counts_the_window_plus_at_most_one_bucket(
    data: st.DataObject, shape: tuple[float, float, float | None, float]
) -> None:
    """`in_window(now)` is at least the weight admitted in (now - window, now] and at
    most the weight admitted in (now - window - window/600, now]: a bucket leaves the
    window only once its end is older than the window, one bucket late at most."""
    limit, window, burst, start = shape
    rl = RateLimiter(limit, window, burst)
    res = window / BUCKETS
    steps = data.draw(
        st.lists(st.tuples(gaps(window), FRACTIONS, gaps(window)), min_size=1, max_size=30)
    )
    now = start
    admitted: list[tuple[float, float]] = []
    for gap, frac, look_ahead in steps:
        now += gap
        now, _ = admit(rl, now, frac * limit)
        admitted.append((now, frac * limit))
        probe = now = now + look_ahead  # every call sees a clock that never goes back
        seen = rl.in_window(probe)
        lower = sum(w for t, w in admitted if t > probe - window)
        upper = sum(w for t, w in admitted if t > probe - window - res * (1 + 1e-9))
        assert close_enough(lower, seen), (lower, seen)
        assert close_enough(seen, upper), (seen, upper)


# ---- RateLimiter: throughput, idle and large weights --------------------------------


@settings(max_examples=15, deadline=None)
@given(
    limit=st.integers(1, 1000),
    window=st.sampled_from([1.0, 60.0]) | st.floats(0.05, 3600.0),
    start=st.sampled_from([0.0, 1e6]),
    burst=st.none() | st.floats(1.0, 50.0),
)
def test_throughput_at_least_97_percent_of_the_limit(
    limit: int, window: float, start: float, burst: float | None
) -> None:
    """Admitting weight-1 units as fast as allowed for 10 windows achieves at least 97%
    of `limit` per window on average, and never more than the limit allows."""
    rl = RateLimiter(limit, window, burst)
    end = start + 10 * window
    now = start
    admitted = 0
    for _ in range(20 * limit + 10_000):
        wait = rl.acquire(now)
        check_wait(wait)
        if wait == 0.0:
            admitted += 1
        else:
            now = next_time(now, wait)
            if now >= end:
                break
    else:
        raise AssertionError("the loop did not reach the end of the 10 windows")
    per_window = admitted / 10
    assert per_window >= 0.97 * limit, (per_window, limit)
    assert per_window <= limit


@settings(max_examples=100, deadline=None)
@given(
    shape=limiter_shapes(),
    frac=FRACTIONS,
)
def test_fresh_limiter_admits_at_once(
    shape: tuple[float, float, float | None, float], frac: float
) -> None:
    """An empty limiter answers 0 for any weight that fits, and `acquire` admits it."""
    limit, window, burst, start = shape
    rl = RateLimiter(limit, window, burst)
    assert rl.fits(frac * limit)
    assert rl.wait_time(start, frac * limit) == 0.0
    assert rl.acquire(start, frac * limit) == 0.0
    assert close_enough(frac * limit, rl.in_window(start))


@settings(max_examples=60, deadline=None)
@given(data=st.data(), shape=limiter_shapes(), frac=FRACTIONS)
def test_idle_limiter_admits_at_once(
    data: st.DataObject, shape: tuple[float, float, float | None, float], frac: float
) -> None:
    """After any history, once the limiter has been idle for a window plus one bucket
    and long enough to refill its bucket from the deepest debt, it answers 0 again and
    its window is empty."""
    limit, window, burst, start = shape
    rl = RateLimiter(limit, window, burst)
    steps = data.draw(st.lists(st.tuples(gaps(window), FRACTIONS), max_size=20))
    now = start
    for gap, f in steps:
        now, _ = admit(rl, now + gap, f * limit)
    full_burst = burst if burst is not None else max(1.0, limit / window)
    idle = window * (1 + 2 / BUCKETS) + (full_burst + limit) / rl.rate
    later = now + idle
    assert rl.in_window(later) == 0.0
    assert rl.wait_time(later, frac * limit) == 0.0


@settings(max_examples=60, deadline=None)
@given(
    limit=st.floats(10.0, 1e5),
    window=st.sampled_from([1.0, 60.0]) | st.floats(0.05, 3600.0),
    burst_frac=st.floats(0.001, 0.5),
    frac=st.floats(0.6, 1.0),
    rounds=st.integers(1, 6),
)
def test_weight_above_burst_is_admitted_without_starving(
    limit: float, window: float, burst_frac: float, frac: float, rounds: int
) -> None:
    """A weight above `burst` but within `limit` is admitted every time it is asked for:
    after the first (a full bucket), each waits about weight/rate (the bucket's debt),
    at most a window plus one bucket plus the refill from that debt."""
    burst = burst_frac * limit
    weight = frac * limit
    assert weight > burst
    rl = RateLimiter(limit, window, burst)
    now = 0.0
    for i in range(rounds):
        asked = now
        now, tries = admit(rl, now, weight)
        waited = now - asked
        if i == 0:
            assert waited == 0.0
        else:
            assert waited > 0.0
            bound = window * (1 + 2 / BUCKETS) + (burst + weight) / rl.rate
            assert close_enough(waited, bound), (waited, bound)
        assert tries <= 10


def test_pacing_spreads_a_window_over_time() -> None:
    """With the default burst (one second of the rate) a full window is not spent in
    its first second: 60 requests/min admits 1 at t=0 and then one per second."""
    rl = RateLimiter(60, 60.0)
    assert rl.acquire(0.0) == 0.0
    assert rl.wait_time(0.0) == pytest.approx(1.0)
    assert rl.acquire(0.5) == pytest.approx(0.5)
    assert rl.acquire(1.0) == 0.0


def test_window_rule_waits_for_the_oldest_bucket_to_leave() -> None:
    """When the window is full, the wait is until the oldest bucket that frees enough
    room leaves the window: its end plus the window."""
    rl = RateLimiter(10, 60.0, burst=10)
    assert rl.acquire(0.0, 4) == 0.0
    assert rl.acquire(30.0, 6) == 0.0
    res = 60.0 / BUCKETS
    assert rl.wait_time(31.0, 3) == pytest.approx(res + 60.0 - 31.0)
    assert rl.wait_time(31.0, 5) == pytest.approx(30.0 + res + 60.0 - 31.0)
    assert rl.wait_time(60.0 + res, 4) == 0.0


def test_settle_refund_makes_room_and_extra_charge_takes_it() -> None:
    """A refund returns units to the window at once; an extra charge blocks later
    admissions until the charged bucket leaves the window."""
    rl = RateLimiter(100, 60.0, burst=100)
    assert rl.acquire(0.0, 80) == 0.0
    assert rl.wait_time(1.0, 50) > 0
    rl.settle(0.0, 80, 30)
    assert rl.in_window(1.0) == pytest.approx(30)
    assert rl.wait_time(1.0, 50) == 0.0
    rl.settle(0.0, 30, 120)
    assert rl.in_window(1.0) == pytest.approx(120)
    assert rl.wait_time(1.0, 1) == pytest.approx(60.0 + 60.0 / BUCKETS - 1.0)


def test_settle_of_an_expired_admission_leaves_the_window_alone() -> None:
    """Settling an admission whose bucket already left the window changes nothing in
    the window (the units were never counted there any more)."""
    rl = RateLimiter(10, 1.0, burst=10)
    assert rl.acquire(0.0, 5) == 0.0
    assert rl.acquire(5.0, 2) == 0.0
    rl.settle(0.0, 5, 9)
    assert rl.in_window(5.0) == pytest.approx(2)


@pytest.mark.parametrize(
    ("limit", "window"),
    [
        (0, 60.0),
        (-1, 60.0),
        (math.nan, 60.0),
        (math.inf, 60.0),
        (10, 0.0),
        (10, -1.0),
        (10, math.nan),
    ],
)
def test_rate_limiter_rejects_bad_config(limit: float, window: float) -> None:
    """A limit that is not a finite number > 0 or a window that is not > 0 raises
    ConfigError naming the option."""
    with pytest.raises(ConfigError) as info:
        RateLimiter(limit, window)
    assert info.value.option in {"limit", "window"}
    assert info.value.option in str(info.value)


@settings(max_examples=100, deadline=None)
@given(data=st.data(), shape=limiter_shapes())
def test_one_wait_suffices_when_nothing_else_changes(
    data: st.DataObject, shape: tuple[float, float, float | None, float]
) -> None:
    """A caller that sleeps exactly the returned wait is admitted on its next ask, when
    nothing else happened in between (clock values a fresh monotonic clock or a fake
    clock has): the wait covers float rounding at the window and bucket boundaries."""
    limit, window, burst, start = shape
    rl = RateLimiter(limit, window, burst)
    steps = data.draw(st.lists(st.tuples(gaps(window), FRACTIONS), min_size=1, max_size=40))
    now = start
    for gap, frac in steps:
        now += gap
        now, tries = admit(rl, now, frac * limit)
        assert tries <= 2


@pytest.mark.parametrize("start", [2.0**25, 1.7e9])
def test_waiting_the_returned_time_moves_a_large_clock(start: float) -> None:
    """A positive wait is one the caller's clock can represent (`now + wait > now`), also
    for a monotonic clock after 194+ days of uptime (2**24 s) or one in epoch seconds:
    RateLimiter(100, 60) paced at weight 1 from t=2**25 answers 2.5e-9 s at
    t=33554433.4, which a clock there (resolution 7.5e-9 s) cannot sleep."""
    rl = RateLimiter(100, 60.0)
    now = start
    for _ in range(60):
        wait = rl.acquire(now)
        if wait > 0:
            assert now + wait > now, f"wait {wait!r} at now={now!r} cannot be slept"
            now += wait


# ---- AdaptiveConcurrency -----------------------------------------------------------

EVENTS = st.lists(
    st.one_of(st.just(None), st.floats(0.0, 3.0)),  # None = success, dt = overload after dt
    max_size=200,
)


@settings(max_examples=150, deadline=None)
@given(
    maximum=st.integers(1, 200),
    minimum=st.integers(-3, 250),
    factor=st.floats(0.0, 0.99),
    cooldown=st.floats(0.0, 2.0),
    events=EVENTS,
)
def test_adaptive_limit_stays_in_bounds_and_halves_once_per_cooldown(
    maximum: int,
    minimum: int,
    factor: float,
    cooldown: float,
    events: list[float | None],
) -> None:
    """Under any mix of successes and overloads the limit stays within
    [minimum, maximum] (minimum clamped to [1, maximum]); successes never lower it; an
    overload lowers it at most once per `cooldown` seconds, by `factor` but not below
    minimum, and `decreases` counts the drops."""
    ac = AdaptiveConcurrency(maximum, minimum=minimum, factor=factor, cooldown=cooldown)
    low = max(1, min(minimum, maximum))
    assert ac.limit == maximum
    now = 0.0
    last_drop = -math.inf
    drops = 0
    for ev in events:
        before = ac.limit
        if ev is None:
            ac.on_success()
            assert ac.limit >= before
        else:
            now += ev
            dropped = ac.on_overload(now)
            if dropped:
                assert now - last_drop >= cooldown
                last_drop = now
                drops += 1
                # The float limit was in [before, before + 1) and dropped by `factor`.
                assert max(low, int(before * factor)) <= ac.limit <= before
                assert ac.limit <= max(low, (before + 1) * factor)
            else:
                assert ac.limit == before
        assert low <= ac.limit <= maximum
    assert ac.decreases == drops


@settings(max_examples=100, deadline=None)
@given(maximum=st.integers(1, 60), minimum=st.integers(1, 60), overloads=st.integers(0, 10))
def test_adaptive_successes_recover_to_maximum(maximum: int, minimum: int, overloads: int) -> None:
    """From any depth, maximum**2 successes bring the limit back to exactly `maximum`
    (each success adds 1/limit: about +1 per round of successes), never past it."""
    ac = AdaptiveConcurrency(maximum, minimum=minimum, cooldown=1.0)
    for i in range(overloads):
        ac.on_overload(float(i) * 2.0)
    for _ in range(maximum * maximum + 1):
        ac.on_success()
        assert ac.limit <= maximum
    assert ac.limit == maximum


def test_adaptive_burst_of_overloads_counts_once() -> None:
    """Twenty 429s inside one cooldown halve the limit once; the next one after the
    cooldown halves it again."""
    ac = AdaptiveConcurrency(64, cooldown=1.0)
    results = [ac.on_overload(10.0 + i * 0.04) for i in range(20)]
    assert results.count(True) == 1
    assert ac.limit == 32
    assert ac.on_overload(11.0) is True
    assert ac.limit == 16
    assert ac.decreases == 2


# ---- CircuitBreaker ----------------------------------------------------------------


def state(br: CircuitBreaker) -> BreakerState:
    """The state read fresh (a call, so type checkers do not narrow it across calls)."""
    return br.state


@dataclass
class BreakerModel:
    """The breaker's contract, written out: the reference the property compares to."""

    threshold: int
    base: float
    cap: float
    state: str = "closed"
    failures: int = 0
    cooldown: float = 0.0
    open_until: float = 0.0
    probe_out: bool = False

    def wait(self, now: float) -> float | None:
        """The expected answer, or None for "positive, unspecified" (probe out)."""
        if self.state == "closed":
            return 0.0
        if self.state == "open":
            if now < self.open_until:
                return self.open_until - now
            self.state = "half_open"
            self.probe_out = False
        if not self.probe_out:
            self.probe_out = True
            return 0.0
        return None

    def success(self) -> None:
        self.failures = 0
        self.state = "closed"
        self.cooldown = self.base
        self.probe_out = False

    def failure(self, now: float) -> None:
        self.failures += 1
        if self.state == "half_open":
            self.cooldown = min(self.cap, self.cooldown * 2)
            self.open(now)
        elif self.state == "closed" and self.failures >= self.threshold:
            self.open(now)

    def open(self, now: float) -> None:
        self.state = "open"
        self.open_until = now + self.cooldown
        self.probe_out = False


@settings(max_examples=150, deadline=None)
@given(
    threshold=st.integers(1, 6),
    cooldown=st.floats(0.01, 10.0),
    max_factor=st.floats(1.0, 20.0),
    ops=st.lists(
        st.tuples(st.sampled_from(["wait", "ok", "fail"]), st.floats(0.0, 5.0)),
        max_size=120,
    ),
)
def test_breaker_follows_its_contract(
    threshold: int,
    cooldown: float,
    max_factor: float,
    ops: list[tuple[str, float]],
) -> None:
    """Driven by any sequence of polls, successes and failures at increasing times, the
    breaker: opens after `threshold` consecutive failures; answers the rest of the
    cooldown while open; then lets exactly one probe through (half-open) and answers a
    positive wait to every other caller until the probe's outcome; closes on success
    (resetting the cooldown and the consecutive count); reopens on failure for twice
    the last cooldown, capped at max_cooldown. Waits are never negative."""
    max_cooldown = cooldown * max_factor
    br = CircuitBreaker(threshold, cooldown, max_cooldown)
    model = BreakerModel(threshold, cooldown, max_cooldown, cooldown=cooldown)
    now = 0.0
    opened = 0
    for op, dt in ops:
        now += dt
        if op == "wait":
            expected = model.wait(now)
            got = br.wait_time(now)
            check_wait(got)
            if expected is None:
                assert got > 0.0
            else:
                assert got == pytest.approx(expected)
        elif op == "ok":
            model.success()
            br.record_success()
        else:
            was_open = model.state == "open"
            model.failure(now)
            br.record_failure(now)
            opened += model.state == "open" and not was_open
        assert br.state.value == model.state
        assert cooldown <= model.cooldown <= max_cooldown
    assert br.opened == opened


@settings(max_examples=60, deadline=None)
@given(
    threshold=st.integers(1, 8),
    cooldown=st.floats(0.01, 10.0),
    max_factor=st.floats(1.0, 40.0),
    failed_probes=st.integers(0, 8),
)
def test_breaker_backoff_doubles_to_the_cap_and_resets(
    threshold: int, cooldown: float, max_factor: float, failed_probes: int
) -> None:
    """After `threshold` consecutive failures it stays open exactly `cooldown`; the
    k-th failed probe reopens it for min(max_cooldown, cooldown * 2**k); while the probe
    is out nobody else gets through; a successful probe closes it, and the next opening
    waits the base cooldown again."""
    max_cooldown = cooldown * max_factor
    br = CircuitBreaker(threshold, cooldown, max_cooldown)
    now = 100.0
    for _i in range(threshold):
        assert state(br) is BreakerState.CLOSED
        assert br.wait_time(now) == 0.0
        br.record_failure(now)
    assert state(br) is BreakerState.OPEN
    expected = cooldown
    for k in range(failed_probes + 1):
        assert br.wait_time(now) == pytest.approx(expected)
        assert br.wait_time(now + expected / 2) == pytest.approx(expected / 2)
        now += expected
        assert br.wait_time(now) == 0.0  # the probe
        assert state(br) is BreakerState.HALF_OPEN
        for _ in range(3):
            assert br.wait_time(now) > 0.0
            assert br.wait_time(now + 1000.0) > 0.0
        if k < failed_probes:
            br.record_failure(now)
            assert state(br) is BreakerState.OPEN
            expected = min(max_cooldown, expected * 2)
            assert expected == pytest.approx(min(max_cooldown, cooldown * 2 ** (k + 1)))
    br.record_success()
    assert state(br) is BreakerState.CLOSED
    assert br.wait_time(now) == 0.0
    for _ in range(threshold):
        br.record_failure(now)
    assert br.wait_time(now) == pytest.approx(cooldown)
    assert br.opened == failed_probes + 2


@settings(max_examples=60, deadline=None)
@given(threshold=st.integers(2, 10), rounds=st.integers(1, 10))
def test_breaker_success_resets_the_consecutive_count(threshold: int, rounds: int) -> None:
    """threshold-1 failures, a success, threshold-1 failures, ... never opens it: only
    consecutive failures count."""
    br = CircuitBreaker(threshold, 1.0)
    for i in range(rounds):
        for _ in range(threshold - 1):
            br.record_failure(float(i))
        br.record_success()
        assert state(br) is BreakerState.CLOSED
        assert br.wait_time(float(i)) == 0.0
    assert br.opened == 0


@pytest.mark.parametrize(
    ("threshold", "cooldown"), [(0, 5.0), (-1, 5.0), (2.5, 5.0), (3, 0.0), (3, -1.0)]
)
def test_breaker_rejects_bad_config(threshold: int, cooldown: float) -> None:
    """A threshold that is not a whole number >= 1 or a cooldown <= 0 raises
    ConfigError naming the option."""
    with pytest.raises(ConfigError, match="breaker"):
        CircuitBreaker(threshold, cooldown)


def test_breaker_max_cooldown_below_base_is_raised_to_base() -> None:
    """A max_cooldown below the cooldown is taken as the cooldown: a failed probe never
    shortens the pause."""
    br = CircuitBreaker(1, 5.0, 1.0)
    br.record_failure(0.0)
    assert br.wait_time(5.0) == 0.0
    br.record_failure(5.0)
    assert br.wait_time(5.0) == pytest.approx(5.0)
