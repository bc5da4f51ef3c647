"""How the simulated server meters a limit: the models real servers document.

Pure objects, the time passed in (`now`), so tests check them with plain
numbers and the benchmark computes the ideal schedule from the very model the
server enforces.

- `BucketMeter` — OpenAI: "a bucket" holding the per-minute limit and
  refilled continuously at limit/60 per second. The headers' reset is "the
  time until the rate limit (based on requests) resets to its initial state"
  (platform.openai.com, guides/rate-limits, "Rate limits in headers"), and a
  real response after one request on a 5,000/min key reads
  `remaining-requests: 4999, reset-requests: 12ms` (community.openai.com, "How
  to get rate limit reset time for response API?"): the bucket holds the
  whole minute. Limits "may be quantized", a per-minute limit enforced over
  shorter periods (60,000/min as 1,000/s): the same bucket holding `burst=1`
  second. Anthropic documents a token bucket too (docs.anthropic.com,
  api/rate-limits: "capacity is continuously replenished up to your maximum").
- `FixedMeter` — generic APIs: a fixed window; remaining drops to 0 and
  reset is when the window restarts.
- `SlidingMeter` — an exact sliding log: a unit comes back one window after
  it was spent; reset is when the log is empty.
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = [
    "MODELS",
    "BucketMeter",
    "FixedMeter",
    "Meter",
    "SlidingMeter",
    "format_duration",
    "format_seconds",
    "ideal_finish",
    "make_meter",
]

MODELS = ("bucket", "fixed", "sliding")
_EPS = 1e-9


class Meter(Protocol):
    """One limit (requests or tokens per `window` seconds)."""

    limit: float
    window: float

    def wait(self, now: float, amount: float) -> float:
        """Seconds until `amount` fits (0.0: now; inf: never, it is too large)."""
        ...

    def take(self, now: float, amount: float) -> None:
        """Charge `amount` now (after `wait` said 0)."""
        ...

    def state(self, now: float) -> tuple[float, float]:
        """(remaining, seconds until back to its initial state)."""
        ...


class BucketMeter:
    """Holds `burst` seconds of the rate (at most the whole limit); starts full."""

    def __init__(self, limit: float, window: float = 60.0, burst: float = 60.0) -> None:
        self.limit = float(limit)
        self.window = float(window)
        self.rate = self.limit / self.window
        self.capacity = min(self.limit, max(1.0, self.rate * burst))
        self._level = self.capacity
        self._t = -math.inf

    def _refill(self, now: float) -> None:
        if self._t == -math.inf:
            self._t = now
        elif now > self._t:
            self._level = min(self.capacity, self._level + (now - self._t) * self.rate)
            self._t = now

    def wait(self, now: float, amount: float) -> float:
        if amount > self.capacity:
            return math.inf
        self._refill(now)
        if self._level >= amount - _EPS:
            return 0.0
        return (amount - self._level) / self.rate

    def take(self, now: float, amount: float) -> None:
        self._refill(now)
        self._level -= amount

    def state(self, now: float) -> tuple[float, float]:
        self._refill(now)
        level = max(0.0, self._level)
        return math.floor(level + _EPS), (self.capacity - level) / self.rate


class FixedMeter:
    """Fixed windows of `window` seconds, `offset` seconds into the first one at t=0."""

    def __init__(self, limit: float, window: float = 60.0, offset: float = 0.0) -> None:
        self.limit = float(limit)
        self.window = float(window)
        self.offset = float(offset)
        self._start: float | None = None
        self._index = 0
        self._used = 0.0

    def _roll(self, now: float) -> float:
        if self._start is None:
            self._start = now - self.offset
        idx = math.floor((now - self._start) / self.window)
        if idx != self._index:
            self._index, self._used = idx, 0.0
        return self._start + (idx + 1) * self.window - now  # until the restart

    def wait(self, now: float, amount: float) -> float:
        if amount > self.limit:
            return math.inf
        left = self._roll(now)
        return 0.0 if self._used + amount <= self.limit + _EPS else left

    def take(self, now: float, amount: float) -> None:
        self._roll(now)
        self._used += amount

    def state(self, now: float) -> tuple[float, float]:
        left = self._roll(now)
        return max(0.0, self.limit - self._used), left if self._used > 0 else 0.0


class SlidingMeter:
    """An exact log: `limit` in any half-open interval of `window` seconds."""

    def __init__(self, limit: float, window: float = 60.0) -> None:
        self.limit = float(limit)
        self.window = float(window)
        self._log: deque[tuple[float, float]] = deque()
        self._sum = 0.0

    def _evict(self, now: float) -> None:
        log = self._log
        while log and log[0][0] <= now - self.window:
            self._sum -= log.popleft()[1]
        if not log:
            self._sum = 0.0

    def wait(self, now: float, amount: float) -> float:
        if amount > self.limit:
            return math.inf
        self._evict(now)
        need = self._sum + amount - self.limit
        if need <= _EPS:
            return 0.0
        freed = 0.0
        for at, charged in self._log:
            freed += charged
            if freed >= need - _EPS:
                # Never 0 while `at` is still inside: in floating point `at + window - now`
                # can round to 0 a hair before `_evict` lets `at` go.
                return max(at + self.window - now, _EPS)
        return self.window

    def take(self, now: float, amount: float) -> None:
        self._evict(now)
        self._log.append((now, amount))
        self._sum += amount

    def state(self, now: float) -> tuple[float, float]:
        self._evict(now)
        reset = self._log[-1][0] + self.window - now if self._log else 0.0
        return max(0.0, self.limit - self._sum), max(0.0, reset)


def make_meter(
    model: str, limit: float, *, window: float = 60.0, burst: float = 60.0, offset: float = 0.0
) -> Meter:
    """The meter for one limit by its model name (`MODELS`)."""
    if model == "bucket":
        return BucketMeter(limit, window, burst)
    if model == "fixed":
        return FixedMeter(limit, window, offset)
    if model == "sliding":
        return SlidingMeter(limit, window)
    raise ValueError(f"unknown limit model {model!r}; use one of {', '.join(MODELS)}")


def ideal_finish(
    meters: Mapping[str, Meter],
    charges: Sequence[Mapping[str, float]],
    *,
    latency: float,
    start: float = 0.0,
) -> float:
    """When the last of these requests could finish under the server's own rules.

    Each request (its charge per meter, e.g. ``{"requests": 1, "tokens": 516}``)
    is admitted at the earliest moment every meter allows, in order, by a
    client with no limit of its own; the answer takes `latency`. The meters
    are used up: pass fresh ones.
    """
    now = start
    for charge in charges:
        while True:
            waits = [meters[name].wait(now, amount) for name, amount in charge.items()]
            wait = max(waits, default=0.0)
            if math.isinf(wait):
                raise ValueError(f"a request charged {dict(charge)} never fits the limits")
            if wait <= 0:
                break
            now += wait + _EPS
        for name, amount in charge.items():
            meters[name].take(now, amount)
    return now + latency


def format_duration(seconds: float) -> str:
    """OpenAI's reset format (Go durations): ``"0s"``, ``"250ms"``, ``"8.64s"``, ``"6m0s"``.

    Rounded up to the millisecond so a client that waits this long is never early.
    """
    ms = math.ceil(max(0.0, seconds) * 1000 - 1e-6)
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = format_seconds(rest / 1000) + "s"
    if hours:
        return f"{hours}h{minutes}m{secs}"
    if minutes:
        return f"{minutes}m{secs}"
    return secs


def format_seconds(seconds: float) -> str:
    """Seconds for a ``Retry-After`` header: rounded up to the ms, no trailing zeros."""
    ms = math.ceil(max(0.0, seconds) * 1000 - 1e-6)
    if ms % 1000 == 0:
        return str(ms // 1000)
    return f"{ms / 1000:.3f}".rstrip("0")
