"""Admission: the driver that carries out the policies of `_limits` for one run.

Before each attempt: wait out a global pause (a 429's `Retry-After`, a budget
the server said is spent), the requests- and tokens-per-window limits, the
circuit breaker and, across processes, a shared limiter. After it: settle the
token reservation from the reported usage, learn limits the server
announced, and feed the outcome to the breaker and the adaptive concurrency.
The policies decide; this module only waits and keeps their books.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from ._limits import AdaptiveConcurrency, CircuitBreaker, RateLimiter

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._attempt import Attempt, RateLimitHint
    from ._options import Options

__all__ = ["Admission", "Refused"]

log = logging.getLogger("conveyor")

# A 429 without Retry-After pauses admission this long.
_DEFAULT_OVERLOAD_PAUSE = 1.0
# Our clock counts a request when it is sent, the server when it arrives: a
# little extra window (1%, at least 50 ms) keeps the counts from disagreeing
# at the edge, at the cost of that much of the allowed rate.
_WINDOW_MARGIN = 0.01
_WINDOW_MARGIN_MIN = 0.05
# A 429 pauses everyone only when the budget is known to be spent, or when
# 429s are frequent among recent answers; a sporadic one delays its own item.
_RECENT = 50
_OVERLOAD_SHARE = 0.2
_OVERLOAD_MIN = 3


class Refused(Exception):
    """Admission refused because the run is stopping."""


class Admission:
    def __init__(self, options: Options, refusing: Callable[[], bool]) -> None:
        self._opts = options
        self._clock = options.clock
        self._refusing = refusing
        self.adaptive = AdaptiveConcurrency(options.concurrency) if options.adaptive else None
        w = options.limit_window
        self._window = w + max(w * _WINDOW_MARGIN, _WINDOW_MARGIN_MIN)
        self.rpm = RateLimiter(options.rpm, self._window) if options.rpm else None
        self.tpm = RateLimiter(options.tpm, self._window) if options.tpm else None
        self._rpm_learned = options.rpm is None
        self._tpm_learned = options.tpm is None
        b = options.breaker
        self.breaker = (
            CircuitBreaker(b.threshold, b.cooldown, b.max_cooldown) if b is not None else None
        )
        self.shared = options.shared_limiter
        self.paused_until = -1.0
        self._lock = asyncio.Lock()
        self.rate_limited = 0
        self.answered_locally = 0
        self._recent: deque[bool] = deque(maxlen=_RECENT)  # True: that answer was a 429

    def concurrency_limit(self, maximum: int) -> int:
        return maximum if self.adaptive is None else min(maximum, self.adaptive.limit)

    def never_fits(self, weight: float) -> str | None:
        """Why an item of this weight can never be admitted, or None."""
        if self.tpm is not None and not self.tpm.fits(weight):
            return (
                f"item cost {weight:g} exceeds the per-window token limit "
                f"{self.tpm.limit:g}: it can never be admitted"
            )
        return None

    async def admit(self, weight: float) -> float | None:
        """Wait until every limit allows one attempt; returns the admission time
        (None when no local limit applied)."""
        admitted = await self._admit_local(weight)
        if self.shared is not None:
            await self.shared.acquire(weight)
            if self._refusing():
                raise Refused
        return admitted

    async def _admit_local(self, weight: float) -> float | None:
        if self._refusing():
            raise Refused
        if self.rpm is None and self.tpm is None and self.breaker is None and self.paused_until < 0:
            return None
        clock, brk = self._clock, self.breaker
        async with self._lock:  # FIFO: one waiter polls, the rest queue behind it
            while True:
                if self._refusing():
                    raise Refused
                rpm, tpm = self.rpm, self.tpm
                now = clock.now()
                wait = self.paused_until - now
                if wait <= 0 and rpm is not None:
                    wait = rpm.wait_time(now, 1.0)
                if wait <= 0 and tpm is not None and weight > 0:
                    wait = tpm.wait_time(now, weight)
                if wait <= 0 and brk is not None:
                    wait = brk.wait_time(now)  # last: it may claim the half-open probe
                if wait <= 0:
                    if rpm is not None:
                        rpm.commit(now, 1.0)
                    if tpm is not None and weight > 0:
                        tpm.commit(now, weight)
                    return now
                await clock.sleep(wait)

    def on_success(self) -> None:
        self._recent.append(False)
        if self.breaker is not None:
            self.breaker.record_success()
        if self.adaptive is not None:
            self.adaptive.on_success()

    def on_failure(self, exc: BaseException, *, transient: bool) -> None:
        """What a failed attempt means for everyone: pause on 429, breaker."""
        now = self._clock.now()
        status = getattr(exc, "status_code", None)
        overload = getattr(exc, "overload", None)
        if status == 429 or overload:
            self.rate_limited += 1
            self._recent.append(True)
            if overload or self._frequent():
                hint = getattr(exc, "retry_after", None)
                pause = float(hint) if isinstance(hint, int | float) else _DEFAULT_OVERLOAD_PAUSE
                self.paused_until = max(self.paused_until, now + pause)
                if self.shared is not None:
                    self.shared.pause(pause)
                if self.adaptive is not None:
                    self.adaptive.on_overload(now)
        elif status is not None:
            self._recent.append(False)
        if self.breaker is not None:
            if transient and status != 429:
                self.breaker.record_failure(now)
            else:
                # The endpoint answered (a refusal or a 429 is an answer): it is
                # up, which also releases a half-open probe.
                self.breaker.record_success()

    def _frequent(self) -> bool:
        hits = sum(self._recent)
        return hits >= _OVERLOAD_MIN and hits >= _OVERLOAD_SHARE * len(self._recent)

    def settle(self, attempt: Attempt, admitted_at: float | None, weight: float) -> None:
        """Book what the attempt really cost and what the server announced."""
        if attempt.limits is not None:
            self._learn(attempt.limits)
        if attempt.cached:
            # Answered locally: give the reservations back.
            self.answered_locally += 1
            if admitted_at is not None and self.rpm is not None:
                self.rpm.settle(admitted_at, 1.0, 0.0)
            if admitted_at is not None and self.tpm is not None:
                self.tpm.settle(admitted_at, weight, 0.0)
            if self.shared is not None:
                self.shared.settle(weight, 0.0)
            return
        if attempt.usage is None:
            return
        actual = float(attempt.usage.total_tokens)
        if admitted_at is not None and self.tpm is not None:
            self.tpm.settle(admitted_at, weight, actual)
        if self.shared is not None:
            self.shared.settle(weight, actual)

    def _learn(self, hint: RateLimitHint) -> None:
        now = self._clock.now()
        window = self._window  # servers announce per-minute limits: 60 s by default
        if hint.requests_limit and self._rpm_learned:
            if self.rpm is None:
                self.rpm = RateLimiter(hint.requests_limit, window)
                log.info("learned a limit of %g requests/min from the server", hint.requests_limit)
            elif self.rpm.limit != hint.requests_limit:
                self.rpm.set_limit(hint.requests_limit)
        if hint.tokens_limit and self._tpm_learned and self._opts.cost is not None:
            if self.tpm is None:
                self.tpm = RateLimiter(hint.tokens_limit, window)
                log.info("learned a limit of %g tokens/min from the server", hint.tokens_limit)
            elif self.tpm.limit != hint.tokens_limit:
                self.tpm.set_limit(hint.tokens_limit)
        # The server may have counted requests we did not (sent before the
        # limit was known, or by another client with the same key): when it
        # says fewer remain than we think, book the difference now.
        for own, remaining in ((self.rpm, hint.requests_remaining),
                               (self.tpm, hint.tokens_remaining)):  # fmt: skip
            if own is not None and remaining is not None:
                mine = own.limit - own.in_window(now)
                if remaining < mine:
                    own.commit(now, mine - max(0.0, remaining))
        # A spent budget pauses everyone until its reset, unless a limiter here
        # already keeps to that limit: the reset is when the whole window is
        # empty, and waiting for it would idle most of a window each time.
        for remaining, reset, own in (
            (hint.requests_remaining, hint.requests_reset, self.rpm),
            (hint.tokens_remaining, hint.tokens_reset, self.tpm),
        ):
            if own is None and remaining is not None and remaining <= 0 and reset:
                self.paused_until = max(self.paused_until, now + reset)

    def figures(self, now: float) -> dict[str, Any]:
        """For the progress snapshot and the report."""
        rpm, tpm, brk = self.rpm, self.tpm, self.breaker
        return {
            "rpm_limit": rpm.limit if rpm is not None else None,
            "tpm_limit": tpm.limit if tpm is not None else None,
            "rpm_in_window": rpm.in_window(now) if rpm is not None else 0.0,
            "tpm_in_window": tpm.in_window(now) if tpm is not None else 0.0,
            "rate_limited": self.rate_limited,
            "paused_for": max(0.0, self.paused_until - now),
            "breaker": brk.state.value if brk is not None else "off",
        }

    def report_extra(self) -> dict[str, int]:
        extra: dict[str, int] = {}
        if self.breaker is not None and self.breaker.opened:
            extra["breaker_opened"] = self.breaker.opened
        if self.adaptive is not None and self.adaptive.decreases:
            extra["concurrency_decreases"] = self.adaptive.decreases
        if self.rate_limited:
            extra["rate_limited"] = self.rate_limited
        if self.answered_locally:
            extra["answered_locally"] = self.answered_locally
        return extra
