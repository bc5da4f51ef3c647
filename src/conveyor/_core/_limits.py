"""Admission policies: rate limits, adaptive concurrency, circuit breaker.

Each is a pure object: it is told the time and answers "go" or "wait d
seconds". None sleeps, locks or does I/O, so each is tested with plain numbers.
"""

from __future__ import annotations

import enum
import logging
import math
from collections import deque
from typing import Protocol

from .._base._exceptions import ConfigError

log = logging.getLogger("conveyor")

__all__ = [
    "AdaptiveConcurrency",
    "BreakerState",
    "CircuitBreaker",
    "RateLimiter",
    "SharedLimiter",
]

# The window is kept in this many buckets: memory stays constant at any rate,
# and expiring a whole bucket late costs at most window/_BUCKETS of throughput.
_BUCKETS = 600
# Added to every positive wait so that sleeping exactly the wait always
# crosses the boundary despite float rounding (else a virtual clock can spin).
_EPS = 1e-9


class RateLimiter:
    """At most `limit` units (requests, tokens) in any `window` seconds.

    Two rules, both must allow an acquisition:

    - an exact sliding window: the units admitted in the last `window`
      seconds plus the new weight never exceed `limit`. Admissions are kept
      in time buckets and a bucket only leaves the window once its *end* is
      older than `window`, which can only make the limiter stricter;
    - pacing: a token bucket refilled at `limit/window` per second holding at
      most `burst` units, so a full minute's budget is not spent in the first
      second (servers that meter with their own bucket would answer 429).

    A weight larger than `burst` is admitted when the bucket is full and
    leaves it in debt, so large items are slowed, never starved. Weights
    larger than `limit` can never be admitted: callers check `fits()` first.
    """

    def __init__(self, limit: float, window: float = 60.0, burst: float | None = None) -> None:
        if not limit > 0 or math.isinf(limit):
            raise ConfigError("limit", limit, "a number > 0 per window")
        if not window > 0:
            raise ConfigError("window", window, "seconds > 0")
        self.window = float(window)
        self._res = self.window / _BUCKETS
        self._buckets: deque[list[float]] = deque()  # [bucket index, weight]
        self._sum = 0.0
        self._tokens = 0.0
        self._last: float | None = None
        self.limit = float(limit)
        self._burst_override = burst
        self._burst = self._default_burst() if burst is None else float(burst)
        self._tokens = self._burst

    def _default_burst(self) -> float:
        # One second's worth of the rate, at least one unit.
        return max(1.0, self.limit / self.window)

    @property
    def rate(self) -> float:
        return self.limit / self.window

    def set_limit(self, limit: float) -> None:
        """Change the limit (for example one learned from response headers)."""
        if not limit > 0:
            return
        self.limit = float(limit)
        if self._burst_override is None:
            self._burst = self._default_burst()
        self._tokens = min(self._tokens, self._burst)

    def fits(self, weight: float) -> bool:
        return weight <= self.limit

    def in_window(self, now: float) -> float:
        """Units admitted in the current window."""
        self._expire(now)
        return self._sum

    def _expiry(self, idx: float) -> float:
        """When a bucket leaves the window: one expression for test and wait."""
        return (idx + 1) * self._res + self.window

    def _expire(self, now: float) -> None:
        b = self._buckets
        while b and self._expiry(b[0][0]) <= now:
            self._sum -= b.popleft()[1]
        if not b:
            self._sum = 0.0  # drop float drift when the window empties

    def _refill(self, now: float) -> None:
        if self._last is not None and now > self._last:
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self.rate)
        if self._last is None or now > self._last:
            self._last = now

    def wait_time(self, now: float, weight: float = 1.0) -> float:
        """Seconds until `weight` could be admitted; 0.0 means now."""
        self._expire(now)
        self._refill(now)
        wait = 0.0
        if self._sum + weight > self.limit and self._buckets:
            # Find how far the oldest buckets must age out to make room.
            excess = self._sum + weight - self.limit
            freed = 0.0
            for idx, w in self._buckets:
                freed += w
                if freed >= excess:
                    wait = self._expiry(idx) - now
                    break
            else:
                wait = self._expiry(self._buckets[-1][0]) - now
        need = min(weight, self._burst)
        if self._tokens < need:
            wait = max(wait, (need - self._tokens) / self.rate)
        # Pad by more than the clock's own resolution at `now` (a float clock far
        # from zero cannot move by 1e-9).
        return wait + max(_EPS, 4 * math.ulp(now)) if wait > 0 else 0.0

    def available(self, now: float) -> float:
        """Units admissible now under both rules."""
        self._expire(now)
        self._refill(now)
        return max(0.0, min(self.limit - self._sum, self._tokens))

    def in_since(self, start: float, now: float) -> float:
        """Units admitted at or after `start` that are still in the window."""
        self._expire(now)
        first = math.floor(start / self._res)
        return sum(w for idx, w in self._buckets if idx >= first)

    def time_until_room(self, now: float, limit: float, weight: float) -> float:
        """Seconds until the window holds at most `limit - weight` (0.0: now)."""
        self._expire(now)
        excess = self._sum + weight - limit
        if excess <= 0:
            return 0.0
        freed = 0.0
        for idx, w in self._buckets:
            freed += w
            if freed >= excess:
                return max(0.0, self._expiry(idx) - now)
        return self.window

    def acquire(self, now: float, weight: float = 1.0) -> float:
        """Admit `weight` now if allowed (returns 0.0), else the wait."""
        wait = self.wait_time(now, weight)
        if wait > 0:
            return wait
        self.commit(now, weight)
        return 0.0

    def commit(self, now: float, weight: float) -> None:
        """Record an admission `wait_time` allowed (callers combining limiters)."""
        idx = float(math.floor(now / self._res))
        if self._buckets and self._buckets[-1][0] == idx:
            self._buckets[-1][1] += weight
        else:
            self._buckets.append([idx, weight])
        self._sum += weight
        self._tokens -= weight

    def settle(self, admitted_at: float, estimated: float, actual: float) -> None:
        """Replace an admission's estimated weight by the actual one.

        A refund returns units to both the window and the bucket; a shortfall
        is charged, so the limit holds even when estimates were low.
        """
        delta = actual - estimated
        if delta == 0:
            return
        idx = math.floor(admitted_at / self._res)
        for bucket in reversed(self._buckets):
            if bucket[0] == idx:
                # Never below zero: the bucket may hold other admissions only.
                applied = max(delta, -bucket[1])
                bucket[1] += applied
                self._sum += applied
                break
            if bucket[0] < idx:
                break
        self._tokens = min(self._burst, self._tokens - delta)


class AdaptiveConcurrency:
    """AIMD on the number of items in flight.

    An overload signal (HTTP 429) multiplies the limit by `factor`, at most
    once per `cooldown` seconds so one burst of 429s from the same round counts
    once. Successes grow it back: +1 each while below the level it dropped
    from (back within a few rounds, as TCP's slow start), then +1/limit each
    (about +1 per round) up to `maximum`. Sporadic 429s therefore cost little,
    while a persistent overload keeps the limit down.
    """

    def __init__(
        self, maximum: int, *, minimum: int = 1, factor: float = 0.5, cooldown: float = 1.0
    ) -> None:
        self.maximum = maximum
        self.minimum = max(1, min(minimum, maximum))
        self.factor = factor
        self.cooldown = cooldown
        self._limit = float(maximum)
        self._recover_to = float(maximum)
        self._last_decrease = -math.inf
        self.decreases = 0

    @property
    def limit(self) -> int:
        return max(self.minimum, int(self._limit))

    def on_success(self) -> None:
        if self._limit >= self.maximum:
            return
        step = 1.0 if self._limit < self._recover_to else 1.0 / max(1.0, self._limit)
        self._limit = min(float(self.maximum), self._limit + step)

    def on_overload(self, now: float) -> bool:
        """Back off; returns True when the limit actually dropped."""
        if now - self._last_decrease < self.cooldown:
            return False
        self._last_decrease = now
        new = max(float(self.minimum), self._limit * self.factor)
        if new < self._limit:
            # A repeated overload lowers the level to recover to as well.
            self._recover_to = self._limit * (1 + self.factor) / 2
            self._limit = new
            self.decreases += 1
            return True
        return False


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


# Members as module constants: on 3.11 `EnumClass.MEMBER` goes through EnumType.__getattr__
# (~10x a global), and these are read several times per request (issue 18).
_CLOSED = BreakerState.CLOSED
_OPEN = BreakerState.OPEN
_HALF_OPEN = BreakerState.HALF_OPEN


class CircuitBreaker:
    """Pauses (never fails) admission while the endpoint looks down.

    After `threshold` consecutive failures it opens for `cooldown` seconds;
    then one probe attempt is let through (half-open). A successful probe
    closes it; a failed one reopens it for twice as long, up to
    `max_cooldown`.
    """

    def __init__(
        self, threshold: int = 5, cooldown: float = 5.0, max_cooldown: float = 60.0
    ) -> None:
        if not isinstance(threshold, int) or threshold < 1:
            raise ConfigError("breaker threshold", threshold, "a whole number >= 1")
        if not cooldown > 0:
            raise ConfigError("breaker cooldown", cooldown, "seconds > 0")
        self.threshold = threshold
        self.base_cooldown = float(cooldown)
        self.max_cooldown = max(float(max_cooldown), self.base_cooldown)
        self.state = _CLOSED
        self._failures = 0
        self._cooldown = self.base_cooldown
        self._open_until = 0.0
        self._probe_out = False
        self.opened = 0  # how many times it opened, for the report
        self.closes = 0  # how many times it closed again (the engine wakes retries then)
        self._down_since: float | None = None  # first failure of the current streak

    def outage(self, now: float) -> float:
        """Seconds since the first of the failures that opened it; 0 while closed."""
        if self.state is _CLOSED or self._down_since is None:
            return 0.0
        return now - self._down_since

    def wait_time(self, now: float) -> float:
        """0.0 if an attempt may start now (and claims the probe if half-open)."""
        if self.state is _CLOSED:
            return 0.0
        if self.state is _OPEN:
            if now < self._open_until:
                return self._open_until - now
            self.state = _HALF_OPEN
            self._probe_out = False
        if not self._probe_out:
            self._probe_out = True
            return 0.0
        # A probe is out: check back shortly instead of piling on.
        return min(self._cooldown, 0.25)

    def record_success(self) -> None:
        self._failures = 0
        self._down_since = None
        if self.state is not _CLOSED:
            log.warning("circuit breaker closed: the endpoint answered again; resuming")
            self.closes += 1
            self.state = _CLOSED
            self._cooldown = self.base_cooldown
            self._probe_out = False

    def record_failure(self, now: float) -> None:
        self._failures += 1
        if self._down_since is None:
            self._down_since = now
        if self.state is _HALF_OPEN:
            self._cooldown = min(self.max_cooldown, self._cooldown * 2)
            self._open(now)
        elif self.state is _CLOSED and self._failures >= self.threshold:
            self._open(now)

    def _open(self, now: float) -> None:
        if self.state is _CLOSED:
            log.warning(
                "circuit breaker open: %d consecutive failures; pausing, probing in %.0fs",
                self._failures,
                self._cooldown,
            )
        else:
            log.info("circuit breaker probe failed; next probe in %.0fs", self._cooldown)
        self.state = _OPEN
        self._open_until = now + self._cooldown
        self._probe_out = False
        self.opened += 1


class SharedLimiter(Protocol):
    """A limit shared with other processes (the Ray backend's limiter actor).

    The engine awaits `acquire` before each attempt, after its own limits,
    reports the actual cost with `settle`, and a 429 with `pause` so every
    process holds back, not only the one that was told.

    A shared limiter may also mirror the server's budget for every process:
    with an `observe(hint)` method it is handed each answer's rate-limit
    headers, and with `refused(scope, weight, retry_after, limit)` each
    rate-limit refusal, instead of the engine's own (per-process) budgets.
    """

    async def acquire(self, weight: float) -> None: ...

    def settle(self, estimated: float, actual: float) -> None: ...

    def pause(self, seconds: float) -> None: ...
