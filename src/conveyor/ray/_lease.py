"""Leases on one global rate limit: the pure arithmetic, no Ray, no clock, no I/O.

A `LeaseLedger` (held by the limiter actor) grants blocks of request and
token units to workers; a `Lease` (held by each worker) is spent locally, so
the limiter is asked once per block, not once per request.

Why the limit still holds where it is measured, at the server:

- every unit is committed to the ledger's `RateLimiter`s when it is granted,
  at the grant time `g`;
- a worker spends a lease only until `request time + ttl`, and it sent the
  request before `g`, so every spend falls in `[g, g + ttl]`;
- the ledger's window is `window + ttl + slack`: grants inside it stay
  within the limit, so spends inside any `window` do too, and requests may
  reach the server up to `slack` apart from when they were spent (event
  loops on a busy machine, the network) without two windows' worth landing
  in one.

Units a worker gives back (a lease that expired or was cut short by a pause)
are refunded at their own grant time, and a token refund (the response used
fewer tokens than estimated) at the grant time of the lease the attempt drew
from. A refund at or before the true spend time is safe: from now on, every
window that holds the refunded bucket also holds the spend it stood for.
Extra tokens (the estimate was low) are charged now, which is later than the
spend and therefore safe as well.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .._core._limits import RateLimiter

__all__ = [
    "Demand",
    "Grant",
    "Lease",
    "LeaseLedger",
    "LeaseRequest",
    "delivery_slack",
    "lease_ttl",
]

_MIN_BLOCK_SHARE = 0.1  # smallest block granted under a binding limit: 0.1 s of the rate
_SEARCH_STEPS = 48  # bisection steps for the largest grant; float precision is reached sooner


def delivery_slack(window: float) -> float:
    """How far apart spending and arrival at the server may drift: 0.25 s on a minute
    window (with the ttl, 2% of the rate), a tenth of shorter windows."""
    return min(0.25, window / 10.0)


def lease_ttl(window: float) -> float:
    """How long a lease may be spent: 1 s on a minute window, shorter on short windows.

    The ledger's window grows by this plus `delivery_slack`, so the rate
    achieved is `window / (window + ttl + slack)` of the limit: 98% on a minute.
    """
    return min(1.0, window / 20.0)


@dataclass(frozen=True, slots=True)
class LeaseRequest:
    """One round trip to the limiter: what a worker needs, wants, and gives back.

    `need_*` is the smallest useful block (one attempt: 1 request and its
    estimated tokens); zero needs make a flush that only gives back.
    `returns` are unspent blocks `(granted_at, requests, tokens)`, `refunds`
    are tokens `(granted_at, amount)` not used after all, `charge` tokens
    used beyond the estimates, `pause` seconds of a global pause (a 429).
    """

    need_requests: float = 0.0
    need_tokens: float = 0.0
    want_requests: float = 0.0
    want_tokens: float = 0.0
    returns: tuple[tuple[float, float, float], ...] = ()
    refunds: tuple[tuple[float, float], ...] = ()
    charge: float = 0.0
    pause: float = 0.0

    @property
    def flush_only(self) -> bool:
        return self.need_requests <= 0 and self.need_tokens <= 0


@dataclass(frozen=True, slots=True)
class Grant:
    """The limiter's answer. Unlimited kinds are granted as `math.inf`.

    Nothing is granted when `wait > 0` (try again after it), when
    `paused_for > 0` (a global pause runs that much longer) or when
    `impossible` (the need exceeds the whole limit and never fits).
    """

    requests: float
    tokens: float
    granted_at: float
    wait: float = 0.0
    paused_for: float = 0.0
    impossible: bool = False

    @property
    def granted(self) -> bool:
        return self.wait <= 0 and self.paused_for <= 0 and not self.impossible


def _largest(lim: RateLimiter, now: float, need: float, want: float, integral: bool) -> float:
    """The largest block in [need, want] the limiter admits now (`need` is known to fit)."""
    if want <= need or lim.wait_time(now, want) == 0.0:
        return max(need, want)
    lo, hi = need, want  # lo fits, hi does not
    for _ in range(_SEARCH_STEPS):
        if integral:
            if hi - lo <= 1:
                break
            mid = float(math.floor((lo + hi) / 2))
        else:
            if hi - lo <= 1e-9 * max(1.0, hi):
                break
            mid = (lo + hi) / 2
        if lim.wait_time(now, mid) == 0.0:
            lo = mid
        else:
            hi = mid
    return lo


class LeaseLedger:
    """The global budget: grants blocks from per-window `RateLimiter`s.

    Each limiter keeps pacing at one second of the rate (its `burst`), and a
    block never exceeds it, so leases do not turn a minute's budget into a
    burst the server would answer with 429s.
    """

    def __init__(
        self,
        rpm: float | None,
        tpm: float | None,
        window: float = 60.0,
        ttl: float | None = None,
    ) -> None:
        self.window = float(window)
        self.ttl = lease_ttl(window) if ttl is None else float(ttl)
        span = self.window + self.ttl + delivery_slack(self.window)
        # Pacing at one second of the *configured* rate, not of the longer span;
        # a block never exceeds it.
        self.burst_requests = _burst(rpm, self.window)
        self.burst_tokens = _burst(tpm, self.window)
        self.rpm = RateLimiter(rpm, span, self.burst_requests) if rpm is not None else None
        self.tpm = RateLimiter(tpm, span, self.burst_tokens) if tpm is not None else None
        self.paused_until = -math.inf
        self.granted_requests = 0.0
        self.granted_tokens = 0.0
        self.returned_requests = 0.0
        self.pauses = 0

    def apply(self, now: float, req: LeaseRequest) -> Grant:
        """Take back what the request returns, then grant what it needs."""
        for granted_at, requests, tokens in req.returns:
            self.give_back(granted_at, requests, tokens)
        if self.tpm is not None:
            for granted_at, amount in req.refunds:
                if amount > 0:
                    self.tpm.settle(granted_at, amount, 0.0)
            if req.charge > 0:
                self.tpm.commit(now, req.charge)
        if req.pause > 0:
            self.pause(now, req.pause)
        if req.flush_only:
            return Grant(0.0, 0.0, now, paused_for=max(0.0, self.paused_until - now))
        return self.grant(
            now, req.need_requests, req.need_tokens, req.want_requests, req.want_tokens
        )

    def pause(self, now: float, seconds: float) -> None:
        if seconds > 0 and math.isfinite(seconds):
            self.paused_until = max(self.paused_until, now + seconds)
            self.pauses += 1

    def give_back(self, granted_at: float, requests: float, tokens: float) -> None:
        """Refund units granted at `granted_at` and never spent."""
        if self.rpm is not None and requests > 0 and math.isfinite(requests):
            self.rpm.settle(granted_at, requests, 0.0)
            self.returned_requests += requests
        if self.tpm is not None and tokens > 0 and math.isfinite(tokens):
            self.tpm.settle(granted_at, tokens, 0.0)

    def grant(
        self, now: float, need_r: float, need_t: float, want_r: float, want_t: float
    ) -> Grant:
        paused_for = self.paused_until - now
        if paused_for > 0:
            return Grant(0.0, 0.0, now, paused_for=paused_for)
        rpm, tpm = self.rpm, self.tpm
        if tpm is not None and not tpm.fits(need_t):
            return Grant(0.0, 0.0, now, impossible=True)
        # Wait for a useful block, not one unit at a time: under a binding limit
        # that keeps a worker to ~1/_MIN_BLOCK_SHARE round trips per second.
        floor_r = min(max(need_r, want_r), max(need_r, self.burst_requests * _MIN_BLOCK_SHARE))
        floor_t = min(max(need_t, want_t), max(need_t, self.burst_tokens * _MIN_BLOCK_SHARE))
        wait = 0.0
        if rpm is not None and floor_r > 0:
            wait = rpm.wait_time(now, math.floor(floor_r) if floor_r >= 1 else floor_r)
        if tpm is not None and floor_t > 0:
            wait = max(wait, tpm.wait_time(now, floor_t))
        if wait > 0:
            return Grant(0.0, 0.0, now, wait=wait)
        requests = math.inf
        tokens = math.inf
        if rpm is not None:
            cap = max(need_r, min(want_r, self.burst_requests))
            requests = _largest(rpm, now, math.floor(floor_r), cap, integral=True)
            rpm.commit(now, requests)
            self.granted_requests += requests
        if tpm is not None:
            cap = max(need_t, min(want_t, self.burst_tokens))
            tokens = _largest(tpm, now, floor_t, cap, integral=False)
            tpm.commit(now, tokens)
            self.granted_tokens += tokens
        return Grant(requests, tokens, now)


def _burst(limit: float | None, window: float) -> float:
    if limit is None:
        return math.inf
    # Never above the limit: an empty window would otherwise admit it whole.
    return min(float(limit), max(1.0, limit / window))


@dataclass(slots=True)
class Lease:
    """A block a worker holds: spent locally until `expires` (local clock)."""

    granted_at: float
    requests: float
    tokens: float
    started: float
    expires: float
    spent_requests: float = 0.0
    spent_tokens: float = 0.0

    def take(self, now: float, requests: float, tokens: float) -> bool:
        """Spend from this lease if it is still valid and holds enough."""
        if now >= self.expires or self.requests < requests or self.tokens < tokens:
            return False
        self.requests -= requests
        self.tokens -= tokens
        self.spent_requests += requests
        self.spent_tokens += tokens
        return True

    def leftover(self) -> tuple[float, float, float] | None:
        """What to give back, `(granted_at, requests, tokens)`; None if nothing finite."""
        r = self.requests if math.isfinite(self.requests) else 0.0
        t = self.tokens if math.isfinite(self.tokens) else 0.0
        if r <= 0 and t <= 0:
            return None
        return (self.granted_at, max(0.0, r), max(0.0, t))


@dataclass(slots=True)
class Demand:
    """A worker's recent spend rate, to size the next block it asks for."""

    requests_per_second: float = 0.0
    tokens_per_second: float = 0.0
    _seen: bool = field(default=False)

    def observe(self, lease: Lease, now: float) -> None:
        elapsed = max(1e-3, min(now, lease.expires) - lease.started)
        r = lease.spent_requests / elapsed
        t = lease.spent_tokens / elapsed
        if not self._seen:
            self.requests_per_second, self.tokens_per_second, self._seen = r, t, True
        else:
            self.requests_per_second = 0.5 * self.requests_per_second + 0.5 * r
            self.tokens_per_second = 0.5 * self.tokens_per_second + 0.5 * t

    def want(self, ttl: float, waiting: int, need_t: float) -> tuple[float, float]:
        """Requests and tokens to ask for: a lease's worth of recent demand, at least
        enough for everyone waiting right now."""
        want_r = max(1.0, float(waiting), math.ceil(self.requests_per_second * ttl * 1.25))
        want_t = max(need_t, need_t * waiting, self.tokens_per_second * ttl * 1.25)
        return want_r, want_t
