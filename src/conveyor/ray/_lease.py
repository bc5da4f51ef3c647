"""Leases on one global rate limit: the pure arithmetic, no Ray, no clock, no I/O.

A `LeaseLedger` (held by the limiter actor) grants blocks of request and
token units to workers; a `Lease` (held by each worker) is spent locally, so
the limiter is asked once per block, not once per request.

The ledger holds the cluster's one mirror of each server budget (a `Budget`
for requests and one for tokens): a limit the user told, or, told nothing,
what workers report of the server's headers and rate refusals
(`Observation`, `Refusal`), so that N workers together keep to the server's
budget instead of each believing the whole of it is theirs. An observation
names its request by the lease it drew from (grant time, the block's mark
and size) and how much of the lease was spent before it; the ledger turns
that into the request's send time and mark for `Budget.observe`.

Why a told limit still holds where it is measured, at the server:

- every unit is committed to the ledger's budgets when it is granted,
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
from collections import deque
from dataclasses import dataclass, field

from .._core._budget import Budget, Model

__all__ = [
    "Demand",
    "Grant",
    "Lease",
    "LeaseLedger",
    "LeaseRequest",
    "Observation",
    "Refusal",
    "delivery_slack",
    "lease_ttl",
]

_MIN_BLOCK_SHARE = 0.1  # smallest block granted under a binding limit: 0.1 s of the rate
_RETURN_LOG = 1024  # returned blocks remembered, to discount them from later observations


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
class Observation:
    """What one response's headers said, as a worker reports it to the limiter.

    The request drew from the lease granted at `granted_at` whose block of
    `size_*` units ended at the ledger's mark `mark_*`; `before_*` units of
    it were spent before this request, which spent `weight` tokens and was
    sent `offset` seconds after the lease started (worker clock). `hints`
    are `(scope, limit, remaining, reset)` for "requests" and "tokens".
    """

    granted_at: float
    offset: float
    mark_requests: float
    mark_tokens: float
    size_requests: float
    size_tokens: float
    before_requests: float
    before_tokens: float
    weight: float
    hints: tuple[tuple[str, float | None, float | None, float | None], ...] = ()


@dataclass(frozen=True, slots=True)
class Refusal:
    """A rate-limit refusal a worker reports: which budget, for how much."""

    granted_at: float
    offset: float
    scope: str
    weight: float
    retry_after: float | None = None
    limit: float | None = None


@dataclass(frozen=True, slots=True)
class LeaseRequest:
    """One round trip to the limiter: what a worker needs, wants, and gives back.

    `need_*` is the smallest useful block (one attempt: 1 request and its
    estimated tokens); zero needs make a flush that only gives back.
    `returns` are unspent blocks `(granted_at, requests, tokens)`, optionally
    followed by the block's marks `(mark_requests, mark_tokens)`, `refunds`
    are tokens `(granted_at, amount)` not used after all, `charge` tokens
    used beyond the estimates, `pause` seconds of a global pause (a 429);
    `observations` and `refusals` are what the server said since the last one.
    """

    need_requests: float = 0.0
    need_tokens: float = 0.0
    want_requests: float = 0.0
    want_tokens: float = 0.0
    returns: tuple[tuple[float, ...], ...] = ()
    refunds: tuple[tuple[float, float], ...] = ()
    charge: float = 0.0
    pause: float = 0.0
    observations: tuple[Observation, ...] = ()
    refusals: tuple[Refusal, ...] = ()

    @property
    def flush_only(self) -> bool:
        return self.need_requests <= 0 and self.need_tokens <= 0


@dataclass(frozen=True, slots=True)
class Grant:
    """The limiter's answer: blocks of `requests` and `tokens` units.

    Nothing is granted when `wait > 0` (try again after it), when
    `paused_for > 0` (a global pause runs that much longer) or when
    `impossible` (the need exceeds the whole limit and never fits).
    `mark_*` is each budget's cumulative charge after this block (so the
    block is `(mark - size, mark]`), for observations to refer to.
    """

    requests: float
    tokens: float
    granted_at: float
    wait: float = 0.0
    paused_for: float = 0.0
    impossible: bool = False
    mark_requests: float = 0.0
    mark_tokens: float = 0.0

    @property
    def granted(self) -> bool:
        return self.wait <= 0 and self.paused_for <= 0 and not self.impossible


class LeaseLedger:
    """The global budget: one `Budget` mirror per kind (requests, tokens) for the cluster.

    A limit the user told is a `Budget` in its told mode (an exact sliding
    window padded by the ttl and the slack, paced at one second of the rate);
    nothing told leaves it open until a worker reports the server's headers
    or a refusal, and from then on it mirrors the server's bucket or window
    for every worker at once. Every grant is committed at its grant time and
    never exceeds what the mirror holds, so workers together keep to it.
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
        margin = self.ttl + delivery_slack(self.window)
        self.told_rpm = float(rpm) if rpm is not None else None
        self.told_tpm = float(tpm) if tpm is not None else None
        # Pacing at one second of the *configured* rate, not of the longer span;
        # a block never exceeds it.
        self.burst_requests = _burst(rpm, self.window)
        self.burst_tokens = _burst(tpm, self.window)
        w = self.window
        self.requests = Budget("requests", told=rpm, window=w, burst=1.0, margin=margin)
        self.tokens = Budget("tokens", told=tpm, window=w, burst=1.0, margin=margin)
        # Blocks given back unspent, `(block mark, amount)` per kind: an answer
        # to a request before them must not count them as spent after it.
        self._returned: dict[str, deque[tuple[float, float]]] = {
            "requests": deque(maxlen=_RETURN_LOG),
            "tokens": deque(maxlen=_RETURN_LOG),
        }
        self.paused_until = -math.inf
        self.granted_requests = 0.0
        self.granted_tokens = 0.0
        self.returned_requests = 0.0
        self.observed = 0
        self.refused = 0
        self.pauses = 0

    def apply(self, now: float, req: LeaseRequest) -> Grant:
        """Take back what the request returns, learn what it reports, then grant."""
        for ret in req.returns:
            self.give_back(*ret)
        for granted_at, amount in req.refunds:
            if amount > 0:
                self.tokens.settle(granted_at, amount, 0.0)
        if req.charge > 0 and self.tokens.model is Model.TOLD:
            self.tokens.commit(now, req.charge)
        for obs in req.observations:
            self.observe(now, obs)
        for ref in req.refusals:
            self.on_refused(now, ref)
        if req.pause > 0:
            self.pause(now, req.pause)
        if req.flush_only:
            return Grant(0.0, 0.0, now, paused_for=max(0.0, self.paused_until - now))
        return self.grant(
            now, req.need_requests, req.need_tokens, req.want_requests, req.want_tokens
        )

    def observe(self, now: float, obs: Observation) -> None:
        """Apply one response's headers, reported by a worker, to the cluster's mirror."""
        self.observed += 1
        sent_at = min(now, obs.granted_at + max(0.0, obs.offset))
        for scope, limit, remaining, reset in obs.hints:
            if scope == "requests":
                budget, mark = self.requests, obs.mark_requests - obs.size_requests
                mark += obs.before_requests + 1.0
            elif scope == "tokens":
                budget, mark = self.tokens, obs.mark_tokens - obs.size_tokens
                mark += obs.before_tokens + obs.weight
            else:
                continue
            # Units granted after this request but given back were never sent.
            mark += sum(amount for at, amount in self._returned[scope] if at > mark)
            budget.observe(now, sent_at, mark, limit=limit, remaining=remaining, reset=reset)

    def on_refused(self, now: float, ref: Refusal) -> None:
        """A rate refusal a worker saw: the mirror holds back from now on."""
        self.refused += 1
        budget = self.tokens if ref.scope == "tokens" else self.requests
        weight = ref.weight if ref.scope == "tokens" else 1.0
        sent_at = min(now, ref.granted_at + max(0.0, ref.offset))
        # The server did not charge it: what the mirror holds comes back (an
        # observation applied since still counted it as spent after its own).
        budget.refund(sent_at, weight)
        budget.on_refused(now, sent_at, weight, retry_after=ref.retry_after, limit=ref.limit)

    def pause(self, now: float, seconds: float) -> None:
        if seconds > 0 and math.isfinite(seconds):
            self.paused_until = max(self.paused_until, now + seconds)
            self.pauses += 1

    def give_back(
        self,
        granted_at: float,
        requests: float,
        tokens: float,
        mark_requests: float | None = None,
        mark_tokens: float | None = None,
    ) -> None:
        """Refund units granted at `granted_at` and never spent (the tail of the
        block whose marks are given, if they are)."""
        if requests > 0 and math.isfinite(requests):
            self.requests.refund(granted_at, requests)
            self.returned_requests += requests
            if mark_requests is not None:
                self._returned["requests"].append((mark_requests, requests))
        if tokens > 0 and math.isfinite(tokens):
            self.tokens.refund(granted_at, tokens)
            if mark_tokens is not None:
                self._returned["tokens"].append((mark_tokens, tokens))

    def grant(
        self, now: float, need_r: float, need_t: float, want_r: float, want_t: float
    ) -> Grant:
        paused_for = self.paused_until - now
        if paused_for > 0:
            return Grant(0.0, 0.0, now, paused_for=paused_for)
        rb, tb = self.requests, self.tokens
        if tb.told is not None and not tb.fits(need_t):
            return Grant(0.0, 0.0, now, impossible=True)
        # Wait for a useful block, not one unit at a time: under a binding limit
        # that keeps a worker to ~1/_MIN_BLOCK_SHARE round trips per second.
        floor_r = _floor(rb, need_r, want_r, integral=True)
        floor_t = _floor(tb, need_t, want_t, integral=False)
        wait = max(rb.wait_time(now, floor_r), tb.wait_time(now, floor_t))
        if wait > 0:
            return Grant(0.0, 0.0, now, wait=wait)
        requests = _largest(rb, now, floor_r, max(need_r, min(want_r, self.burst_requests)), True)
        tokens = _largest(tb, now, floor_t, max(need_t, min(want_t, self.burst_tokens)), False)
        mark_r = rb.commit(now, requests)
        mark_t = tb.commit(now, tokens)
        self.granted_requests += requests
        self.granted_tokens += tokens
        return Grant(requests, tokens, now, mark_requests=mark_r, mark_tokens=mark_t)


def _floor(budget: Budget, need: float, want: float, *, integral: bool) -> float:
    """The smallest block worth granting: a tenth of a second of the rate, at least
    the need, at most what is wanted and what the budget can ever hold at once."""
    floor = min(max(need, want), max(need, budget.rate * _MIN_BLOCK_SHARE))
    floor = max(need, min(floor, budget.capacity))
    if integral and floor >= 1:
        floor = float(math.floor(floor))
    return floor


def _largest(budget: Budget, now: float, floor: float, cap: float, integral: bool) -> float:
    """The largest block in [floor, cap] the budget holds now (`floor` is known to fit).

    Read from `level`, not `wait_time`: a full bucket would admit any one
    weight, however large, and a block is many requests, not one."""
    if cap <= floor:
        return max(floor, cap)
    level = budget.level(now)
    if math.isinf(level):
        return cap
    size = min(cap, level)
    if integral:
        size = float(math.floor(size + 1e-9))
    return max(floor, size)


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
    # The ledger's marks after this block (see `Grant`); the block's size is
    # what was granted, `requests + spent_requests` at any time.
    mark_requests: float = 0.0
    mark_tokens: float = 0.0

    def take(self, now: float, requests: float, tokens: float) -> bool:
        """Spend from this lease if it is still valid and holds enough."""
        if now >= self.expires or self.requests < requests or self.tokens < tokens:
            return False
        self.requests -= requests
        self.tokens -= tokens
        self.spent_requests += requests
        self.spent_tokens += tokens
        return True

    def leftover(self) -> tuple[float, float, float, float, float] | None:
        """What to give back, `(granted_at, requests, tokens, mark_requests,
        mark_tokens)`; None if nothing finite."""
        r = self.requests if math.isfinite(self.requests) else 0.0
        t = self.tokens if math.isfinite(self.tokens) else 0.0
        if r <= 0 and t <= 0:
            return None
        return (self.granted_at, max(0.0, r), max(0.0, t), self.mark_requests, self.mark_tokens)


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
