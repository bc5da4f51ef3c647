"""Retry policy (`conveyor._core._retry`): a pure decision, checked without waiting."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor._base._exceptions import ConfigError, FatalError, RetryableError
from conveyor._core._retry import RetryPolicy, default_retryable


@st.composite
def policies(draw: st.DrawFn, jitter: bool | None = None) -> RetryPolicy:
    """Valid policies over the ranges users write (cap >= base, multiplier in [1, 10]).

    Subnormal waits (5e-324 s) are not a range users write, and a uniform
    draw over one cannot spread: they are left out.
    """
    base = draw(st.sampled_from([0.0, 0.5, 1.0]) | st.floats(0.0, 60.0, allow_subnormal=False))
    cap = draw(
        st.sampled_from([base, 30.0 + base]) | st.floats(base, base + 3600.0, allow_subnormal=False)
    )
    return RetryPolicy(
        retries=draw(st.integers(0, 100)),
        base=base,
        cap=cap,
        multiplier=draw(st.sampled_from([1.0, 2.0]) | st.floats(1.0, 10.0)),
        jitter=draw(st.booleans()) if jitter is None else jitter,
    )


def bound(policy: RetryPolicy, attempt: int) -> float:
    """The documented bound, computed independently: min(cap, base * mult**(n-1))."""
    try:
        raw = policy.base * policy.multiplier ** (attempt - 1)
    except OverflowError:
        raw = math.inf
    return min(policy.cap, raw)


TRANSIENT: list[BaseException] = [
    RetryableError("busy"),
    TimeoutError("slow"),
    ConnectionResetError("reset"),
    ConnectionRefusedError("refused"),
]


@settings(max_examples=300, deadline=None)
@given(
    policy=policies(),
    attempt=st.integers(1, 100),
    exc_i=st.integers(0, len(TRANSIENT) - 1),
    seed=st.integers(0, 2**32),
)
def test_delay_within_full_jitter_bound(
    policy: RetryPolicy, attempt: int, exc_i: int, seed: int
) -> None:
    """A retryable failure of attempt n <= retries waits a finite delay in
    [0, min(cap, base * multiplier**(n-1))]; with jitter off it is exactly that bound;
    past `retries` the answer is None (give up)."""
    exc = TRANSIENT[exc_i]
    delay = policy.decide(attempt, exc, random.Random(seed))
    if attempt > policy.retries:
        assert delay is None
        return
    assert delay is not None
    assert math.isfinite(delay)
    assert 0.0 <= delay <= bound(policy, attempt)
    if attempt <= 65:  # past that see test_bound_keeps_growing_past_attempt_65
        assert policy.backoff_bound(attempt) == pytest.approx(bound(policy, attempt))
        if not policy.jitter:
            assert delay == pytest.approx(bound(policy, attempt))


@settings(max_examples=200, deadline=None)
@given(
    policy=policies(),
    attempt=st.integers(1, 100),
    hint=st.sampled_from([0, 1, 120]) | st.floats(0.0, 7200.0),
    seed=st.integers(0, 2**32),
)
def test_retry_after_hint_is_a_minimum(
    policy: RetryPolicy, attempt: int, hint: float, seed: int
) -> None:
    """A `retry_after` hint is honoured as the minimum wait: the delay is >= the hint;
    exactly the hint when the hint is above the backoff bound, else within the bound."""
    exc = RetryableError("slow down", retry_after=hint, status_code=429)
    delay = policy.decide(attempt, exc, random.Random(seed))
    if attempt > policy.retries:
        assert delay is None
        return
    assert delay is not None
    assert delay >= hint
    b = bound(policy, attempt)
    if hint > b:
        assert delay == hint
    else:
        assert delay <= b


@settings(max_examples=100, deadline=None)
@given(policy=policies(), seed=st.integers(0, 2**32))
def test_gives_up_after_retries(policy: RetryPolicy, seed: int) -> None:
    """Driving one item to the end, a retryable error is retried exactly `retries` times
    (attempts 1..retries get a delay) and the next failure gives up."""
    rng = random.Random(seed)
    exc = TimeoutError("slow")
    attempt = 1
    delays: list[float] = []
    while (d := policy.decide(attempt, exc, rng)) is not None:
        delays.append(d)
        attempt += 1
        assert attempt <= policy.retries + 1
    assert len(delays) == policy.retries
    assert attempt == policy.retries + 1


def fatal_with_hint() -> FatalError:
    exc = FatalError("key rejected, retry later")
    exc.retry_after = 1.0  # type: ignore[attr-defined]
    return exc


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("bad request"),
        KeyError("x"),
        FatalError("key rejected"),
        fatal_with_hint(),
        RuntimeError("boom"),
        ConfigError("retries", -1, "a whole number >= 0"),
    ],
)
def test_non_retryable_errors_give_up_at_once(exc: BaseException) -> None:
    """Errors that are not transient give None on the first attempt, whatever the
    retry budget; a FatalError never retries even when it carries `retry_after`."""
    policy = RetryPolicy(retries=100)
    assert policy.decide(1, exc, random.Random(0)) is None
    assert policy.is_retryable(exc) is False


def test_default_retryable_classification() -> None:
    """Transient: RetryableError, TimeoutError, ConnectionError and subclasses, and any
    exception carrying a numeric `retry_after` or `retryable = True`; not: ValueError,
    FatalError, or `retryable` set to a truthy non-True value."""
    assert default_retryable(RetryableError("x"))
    assert default_retryable(TimeoutError())
    assert default_retryable(ConnectionAbortedError())
    opted_in = RuntimeError("other library")
    opted_in.retryable = True  # type: ignore[attr-defined]
    assert default_retryable(opted_in)
    with_hint = RuntimeError("rate limited")
    with_hint.retry_after = 2  # type: ignore[attr-defined]
    assert default_retryable(with_hint)
    vague = RuntimeError("maybe")
    vague.retryable = "yes"  # type: ignore[attr-defined]
    assert not default_retryable(vague)
    assert not default_retryable(ValueError("bad"))
    assert not default_retryable(FatalError("stop"))


def test_hint_from_another_library_is_honoured() -> None:
    """An exception that is not conveyor's but carries `retry_after` is retried after at
    least that hint; a negative or boolean hint is not taken as a wait."""
    exc = RuntimeError("429 from a client library")
    exc.retry_after = 7  # type: ignore[attr-defined]
    policy = RetryPolicy(retries=2, base=0.1, cap=1.0)
    assert policy.decide(1, exc, random.Random(1)) == 7.0
    neg = RetryableError("odd", retry_after=-5)
    d = policy.decide(1, neg, random.Random(1))
    assert d is not None
    assert 0.0 <= d <= 0.1


@settings(max_examples=50, deadline=None)
@given(attempt=st.integers(1, 5), seed=st.integers(0, 2**32))
def test_raising_predicate_counts_as_not_retryable(attempt: int, seed: int) -> None:
    """A `retry_on` predicate that itself raises gives None (no retry storm) instead of
    propagating its error; a predicate's truthy return counts as retryable."""

    def broken(exc: BaseException) -> bool:
        raise RuntimeError("predicate bug")

    assert RetryPolicy(retries=5, retry_on=broken).decide(attempt, TimeoutError(), None) is None
    only_value = RetryPolicy(retries=5, retry_on=lambda e: isinstance(e, ValueError))
    assert only_value.decide(attempt, ValueError("flaky"), random.Random(seed)) is not None
    assert only_value.decide(attempt, TimeoutError(), random.Random(seed)) is None


@settings(max_examples=40, deadline=None)
@given(policy=policies(jitter=True), attempt=st.integers(1, 8))
def test_jitter_spreads_delays(policy: RetryPolicy, attempt: int) -> None:
    """Full jitter spreads a herd: 200 seeded draws for one attempt cover more than the
    lower and upper thirds of [0, bound] (when the bound is > 0 and retries remain)."""
    b = bound(policy, attempt)
    if attempt > policy.retries or b == 0:
        return
    rng = random.Random(attempt)
    draws = [policy.decide(attempt, TimeoutError(), rng) for _ in range(200)]
    values = [d for d in draws if d is not None]
    assert len(values) == 200
    assert min(values) < b / 3
    assert max(values) > 2 * b / 3


def test_exponential_growth_then_cap_without_jitter() -> None:
    """Without jitter the delays are base, base*m, base*m**2, ... capped at `cap`."""
    policy = RetryPolicy(retries=8, base=0.5, cap=10.0, multiplier=2.0, jitter=False)
    delays = [policy.decide(n, TimeoutError()) for n in range(1, 10)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0, None]


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"retries": -1}, "retries"),
        ({"retries": 2.5}, "retries"),
        ({"retries": "3"}, "retries"),
        ({"base": -0.1}, "retry base"),
        ({"base": 5.0, "cap": 1.0}, "retry cap"),
        ({"multiplier": 0.5}, "retry multiplier"),
    ],
)
def test_bad_values_raise_config_error(kwargs: dict[str, object], option: str) -> None:
    """Each bad option raises ConfigError naming it and what is allowed."""
    with pytest.raises(ConfigError) as info:
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
    assert info.value.option == option
    assert option in str(info.value)


@pytest.mark.parametrize(
    "kwargs", [{"base": math.nan}, {"cap": math.nan}, {"multiplier": math.nan}]
)
def test_nan_values_raise_config_error(kwargs: dict[str, float]) -> None:
    """A NaN option is rejected like any other bad value (else `decide` answers NaN
    seconds, e.g. RetryPolicy(cap=nan).decide(1, TimeoutError()) is nan)."""
    with pytest.raises(ConfigError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_large_multiplier_is_capped_not_overflowing() -> None:
    """A valid policy answers for every attempt within its retries: with multiplier=1e6
    and retries=100, attempt 60 waits at most `cap`. Today it raises OverflowError
    (1e6**59 is out of float range), which the engine would turn into a failed item."""
    policy = RetryPolicy(retries=100, base=0.5, cap=30.0, multiplier=1e6, jitter=False)
    assert policy.decide(60, TimeoutError()) == 30.0


def test_bound_keeps_growing_past_attempt_65() -> None:
    """The bound is min(cap, base * multiplier**(n-1)) for every attempt: with base=0.5,
    multiplier=1.125, cap=940, attempt 66 waits cap (0.5 * 1.125**65 = 1056 > 940), not
    0.5 * 1.125**64 = 939.14 as the clamped exponent gives."""
    policy = RetryPolicy(retries=100, base=0.5, cap=940.0, multiplier=1.125, jitter=False)
    assert policy.decide(66, TimeoutError()) == 940.0
