"""The global limiter: one actor holding the budget, one lease client per worker.

`LimiterActor` is a plain class here; `_ray_pool` turns it into a Ray actor.
`LeaseClient` is the engine's `shared_limiter` inside each worker: it spends
its current lease locally and makes one round trip to the actor when the
lease is empty or expired, carrying every give-back, refund and pause that
piled up since the last one, and the server's headers each attempt heard
(`observe`), for the actor's one mirror of the server's budget. A pause or a
rate refusal (a 429) is also sent at once by a small flusher task the client
owns, so the other workers hear of it on their next lease, within one lease
lifetime.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import weakref
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from .._base._clock import Clock, SystemClock
from .._base._exceptions import FatalError
from .._core._engine import FatalItem
from ._lease import (
    Demand,
    Grant,
    Lease,
    LeaseLedger,
    LeaseRequest,
    Observation,
    Refusal,
    lease_ttl,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from .._core._attempt import RateLimitHint

__all__ = ["LeaseClient", "LimiterActor"]

_FLUSH_INTERVAL = 0.25  # seconds between background flushes of refunds and returns
_EXPIRY_MARGIN = 0.1  # a lease is spent for at most (1 - margin) * ttl, against scheduling skew
_MAX_OBSERVATIONS = 16  # per round trip: the newest answers say the most


class LimiterActor:
    """The budget every worker leases from (run as a Ray actor, one per run)."""

    def __init__(self, rpm: float | None, tpm: float | None, window: float) -> None:
        self._ledger = LeaseLedger(rpm, tpm, window)
        self._leases = 0

    def config(self) -> tuple[float | None, float | None, float]:
        """(rpm, tpm, ttl): what a client needs to know before its first lease."""
        led = self._ledger
        return (led.told_rpm, led.told_tpm, led.ttl)

    def lease(self, req: LeaseRequest) -> Grant:
        self._leases += 1
        return self._ledger.apply(time.monotonic(), req)

    def stats(self) -> dict[str, float]:
        led = self._ledger
        return {
            "leases": float(self._leases),
            "granted_requests": led.granted_requests,
            "returned_requests": led.returned_requests,
            "granted_tokens": led.granted_tokens,
            "pauses": float(led.pauses),
            "observed": float(led.observed),
            "refused": float(led.refused),
        }


class LeaseClient:
    """A `SharedLimiter` backed by leases from the limiter actor.

    `send` makes one round trip (in a worker: the actor's `lease` method).
    `rpm`/`tpm`/`ttl` come from `LimiterActor.config()`.
    """

    def __init__(
        self,
        send: Callable[[LeaseRequest], Awaitable[Grant]],
        *,
        rpm: float | None,
        tpm: float | None,
        ttl: float | None = None,
        window: float = 60.0,
        clock: Clock | None = None,
    ) -> None:
        self._send = send
        self._rpm = rpm
        self._tpm = tpm
        self._ttl = lease_ttl(window) if ttl is None else ttl
        self._clock = clock or SystemClock()
        self._lease: Lease | None = None
        self._demand = Demand()
        self._paused_until = -math.inf
        self._lock = asyncio.Lock()
        self._waiting = 0
        # The lease each attempt drew from, how much of it was spent before the
        # attempt, when (seconds into the lease) and its tokens: a refund goes back
        # to the lease's grant time, an observation names the attempt's units.
        self._draw_of: weakref.WeakKeyDictionary[
            asyncio.Task[Any], tuple[Lease, float, float, float, float]
        ] = weakref.WeakKeyDictionary()
        self._observations: list[Observation] = []
        self._refusals: list[Refusal] = []
        self._returns: list[tuple[float, ...]] = []
        self._refunds: defaultdict[float, float] = defaultdict(float)
        self._charge = 0.0
        self._pause = 0.0
        self._wake: asyncio.Event | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._error: FatalError | None = None
        self._closed = False
        self.round_trips = 0

    @property
    def error(self) -> FatalError | None:
        """Set once the limiter could not be reached: the run must stop."""
        return self._error

    # ---- the SharedLimiter protocol -------------------------------------------------

    async def acquire(self, weight: float) -> None:
        """Wait until one attempt of `weight` tokens fits the global limits."""
        # Tokens are counted even without a told limit: the cluster's mirror
        # may learn one from the server's headers.
        need_t = max(0.0, float(weight))
        if self._tpm is not None and need_t > self._tpm:
            raise FatalItem(
                f"item cost {need_t:g} exceeds the per-window token limit "
                f"{self._tpm:g}: it can never be admitted"
            )
        self._start()
        self._waiting += 1
        try:
            async with self._lock:  # FIFO: one waiter renews, the rest queue behind it
                while True:
                    if self._error is not None:
                        raise self._error
                    now = self._clock.now()
                    if now < self._paused_until:
                        await self._clock.sleep(self._paused_until - now)
                        continue
                    lease = self._lease
                    if lease is None:
                        await self._renew(need_t)
                        continue
                    before_r, before_t = lease.spent_requests, lease.spent_tokens
                    if lease.take(now, 1.0, need_t):
                        task = asyncio.current_task()
                        if task is not None:
                            offset = max(0.0, now - lease.started)
                            self._draw_of[task] = (lease, before_r, before_t, offset, need_t)
                        return
                    await self._renew(need_t)
        finally:
            self._waiting -= 1

    def settle(self, estimated: float, actual: float) -> None:
        """Refund or charge tokens; sent with the next round trip."""
        if self._tpm is None:
            return
        delta = float(actual) - float(estimated)
        if delta > 0:
            self._charge += delta
        elif delta < 0:
            draw = self._draw()
            if draw is not None:  # unknown origin: keep the charge, stay safe
                self._refunds[draw[0].granted_at] += -delta

    def observe(self, hint: RateLimitHint) -> None:
        """The server's headers on this attempt's answer: sent with the next round
        trip, for the cluster's one mirror of the server's budget."""
        draw = self._draw()
        if draw is None:
            return
        hints = tuple(
            (scope, limit, remaining, reset)
            for scope, limit, remaining, reset in (
                ("requests", hint.requests_limit, hint.requests_remaining, hint.requests_reset),
                ("tokens", hint.tokens_limit, hint.tokens_remaining, hint.tokens_reset),
            )
            if limit is not None or remaining is not None
        )
        if not hints:
            return
        lease, before_r, before_t, offset, weight = draw
        self._observations.append(
            Observation(
                granted_at=lease.granted_at,
                offset=offset,
                mark_requests=lease.mark_requests,
                mark_tokens=lease.mark_tokens,
                size_requests=lease.requests + lease.spent_requests,
                size_tokens=lease.tokens + lease.spent_tokens,
                before_requests=before_r,
                before_tokens=before_t,
                weight=weight,
                hints=hints,
            )
        )
        del self._observations[:-_MAX_OBSERVATIONS]

    def refused(
        self, scope: str, weight: float, retry_after: float | None, limit: float | None
    ) -> None:
        """A rate-limit refusal of this attempt: sent at once, so the cluster's mirror
        holds back for every worker."""
        draw = self._draw()
        if draw is None:
            return
        lease, _r, _t, offset, _w = draw
        self._refusals.append(
            Refusal(lease.granted_at, offset, scope, float(weight), retry_after, limit)
        )
        if self._wake is not None:
            self._wake.set()

    def pause(self, seconds: float) -> None:
        """Hold back here at once, and tell the limiter so every worker does."""
        if not (seconds > 0 and math.isfinite(seconds)):
            return
        self._paused_until = max(self._paused_until, self._clock.now() + seconds)
        self._pause = max(self._pause, seconds)
        self._retire(self._clock.now())
        if self._wake is not None:
            self._wake.set()

    # ---- lifecycle --------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop the flusher and give back everything unspent."""
        if self._closed:
            return
        self._closed = True
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        self._retire(self._clock.now())
        if self._pending() and self._error is None:
            with contextlib.suppress(Exception):  # the limiter may be gone at shutdown
                await self._round_trip(LeaseRequest())

    # ---- internals --------------------------------------------------------------------

    def _start(self) -> None:
        if self._flusher is None and not self._closed:
            self._wake = asyncio.Event()
            self._flusher = asyncio.get_running_loop().create_task(
                self._flush_loop(), name="conveyor-lease-flusher"
            )

    def _retire(self, now: float) -> None:
        lease, self._lease = self._lease, None
        if lease is None:
            return
        self._demand.observe(lease, now)
        left = lease.leftover()
        if left is not None:
            self._returns.append(left)

    def _draw(self) -> tuple[Lease, float, float, float, float] | None:
        task = asyncio.current_task()
        return self._draw_of.get(task) if task is not None else None

    def _pending(self) -> bool:
        return bool(
            self._returns
            or self._refunds
            or self._charge > 0
            or self._pause > 0
            or self._observations
            or self._refusals
        )

    async def _round_trip(self, base: LeaseRequest) -> Grant:
        req = LeaseRequest(
            base.need_requests,
            base.need_tokens,
            base.want_requests,
            base.want_tokens,
            returns=tuple(self._returns),
            refunds=tuple(self._refunds.items()),
            charge=self._charge,
            pause=self._pause,
            observations=tuple(self._observations),
            refusals=tuple(self._refusals),
        )
        self._observations = []
        self._refusals = []
        self._returns = []
        self._refunds = defaultdict(float)
        self._charge = 0.0
        self._pause = 0.0
        self.round_trips += 1
        try:
            return await self._send(req)
        except BaseException:
            # Put the give-backs back: a later round trip may still deliver them.
            self._returns.extend(req.returns)
            for g, amount in req.refunds:
                self._refunds[g] += amount
            self._charge += req.charge
            self._pause = max(self._pause, req.pause)
            self._observations[:0] = req.observations
            self._refusals[:0] = req.refusals
            raise

    async def _renew(self, need_t: float) -> None:
        asked = self._clock.now()  # before the grant: the lease expires early, never late
        self._retire(asked)
        want_r, want_t = self._demand.want(self._ttl, self._waiting, need_t)
        try:
            grant = await self._round_trip(LeaseRequest(1.0, need_t, want_r, want_t))
        except Exception as exc:
            self._error = _unreachable(exc)
            raise self._error from exc
        now = self._clock.now()
        if grant.impossible:
            raise FatalItem(
                f"item cost {need_t:g} exceeds the global per-window token limit: "
                "it can never be admitted"
            )
        if grant.paused_for > 0:
            self._paused_until = max(self._paused_until, now + grant.paused_for)
            return
        if not grant.granted:
            await self._clock.sleep(min(grant.wait, self._ttl))
            return
        self._lease = Lease(
            granted_at=grant.granted_at,
            requests=grant.requests,
            tokens=grant.tokens,
            started=now,
            expires=asked + self._ttl * (1.0 - _EXPIRY_MARGIN),
            mark_requests=grant.mark_requests,
            mark_tokens=grant.mark_tokens,
        )

    async def _flush_loop(self) -> None:
        wake = self._wake
        assert wake is not None
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_FLUSH_INTERVAL):
                    await wake.wait()
            wake.clear()
            lease = self._lease
            if lease is not None and self._clock.now() >= lease.expires and not self._lock.locked():
                self._retire(self._clock.now())
            if not self._pending():
                continue
            try:
                grant = await self._round_trip(LeaseRequest())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The limiter is gone: every later acquire reports it.
                self._error = _unreachable(exc)
                return
            if grant.paused_for > 0:
                self._paused_until = max(self._paused_until, self._clock.now() + grant.paused_for)


def _unreachable(exc: BaseException) -> FatalError:
    # Without the limiter no worker can keep the global limit: stop the run.
    return FatalError(
        f"the global rate limiter (a Ray actor) is unreachable: {type(exc).__name__}: {exc}. "
        "Check the Ray cluster (`ray status`), then rerun to resume"
    )
