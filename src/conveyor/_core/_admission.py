"""Admission: the driver that carries out the policies for one run.

Before each attempt: wait out a pause (a rate-limit refusal's wait), every
budget the server meters (requests, tokens, and Anthropic's input and output
tokens: `_budget.Budget`, a mirror of the server's own bucket or window),
the circuit breaker and, across processes, a shared limiter. After it: feed
what the server said (headers, a classified refusal) back to the budgets,
settle token reservations, and tell the breaker and the adaptive concurrency.
The policies decide; this module only waits and keeps their books.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._budget import Budget, Model
from ._congestion import CongestionController
from ._limits import AdaptiveConcurrency, BreakerState, CircuitBreaker
from ._refusals import Refusal, RefusalKind, classify_exception

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._base._types import Usage
    from ._attempt import Attempt, RateLimitHint
    from ._options import Options

__all__ = ["Admission", "Refused", "Ticket", "Verdict"]

log = logging.getLogger("conveyor")

# Our clock counts a unit when it is sent, the server when it arrives: our own
# sliding log keeps a unit a little longer (1%, at least 50 ms) than a window.
_WINDOW_MARGIN = 0.01
_WINDOW_MARGIN_MIN = 0.05
# A pause at least this long gets a log line when it starts.
_LOUD_PAUSE = 5.0
# Anthropic's retry-after is whole seconds ("retry-after: 1" for a bucket empty for a
# few ms, docs.anthropic.com/en/api/rate-limits): while the mirror is a bucket that
# knows its refill exactly (requests: token figures come rounded to thousands), a
# whole-second wait up to this long pauses everyone only until the
# mirror has room again (each admission still waits for the mirror itself, which a
# refusal has just emptied): a quantized bucket is not paced at one burst a second.
_WHOLE_SECOND_RETRY = 2.0
_SCOPES = ("requests", "tokens", "input_tokens", "output_tokens")
# A refusal pauses everyone only when the budget is known to be spent, or
# when refusals are frequent among recent answers; a sporadic one (a hiccup,
# another tenant's burst) delays its own item only.
_RECENT = 50
_FREQUENT_SHARE = 0.2
_FREQUENT_MIN = 3
_FREQUENT_FLOOR = 20
# Answers over which the quickest admission-to-answer time is taken.
_ANSWER_WINDOW = 256
# Attempts the probe's answer lets go per turn of the loop: each then runs to
# its connect (~0.1-0.3 ms), and the turn ends so those sent go on the wire.
_WAKE_BATCH = 64
# When the probe's answer told nothing of the server's limits (no rate-limit
# headers, no limit told), this many attempts go next, and the rest once one
# of them is answered. A server that meters without saying so (Gemini sends no
# rate-limit headers and answers 429 RESOURCE_EXHAUSTED on per-minute quotas;
# OpenAI's limits "may be quantized" to a bucket of a second, RATE-LIMITS.md)
# then refuses at most these instead of the whole concurrency at once: at
# -c 100 under 300,000 tokens/min metered per second (~9 requests of 516
# tokens), 91 of the first 100 were refused. The price is one round trip more
# before the whole window is out, on servers that say nothing. The size of
# TCP's initial window (RFC 6928) for the same reason: about 10.
_FIRST_WINDOW = 10
# Under ``concurrency="auto"`` the probe goes alone for at most this long (loop
# time, like an I/O timeout), then the controller's first cohort goes. What the
# probe is for comes back without generating: a rejected key's 401 or a 429 is
# answered in a network round trip, an answer only after the server has
# generated it (a service time: 3 s at K = 512 on the benchmark's server, where
# waiting for it cost a whole round trip of a ramp of five, 15% of a 20 s run).
# A fixed concurrency keeps the whole wait: its first window (`_FIRST_WINDOW`)
# is sized by what the probe's answer says, auto's by its own start (16).
_PROBE_PATIENCE = 0.25

# Enum members read per request, as module constants (on 3.11 `Enum.MEMBER` goes
# through EnumType.__getattr__: ~10x a global; issue 18).
_CLOSED = BreakerState.CLOSED
_OPEN = Model.OPEN


# What `_through_probe` let an attempt through as.
_THROUGH, _PROBE, _PASS = 0, 1, 2


class Refused(Exception):
    """Admission refused because the run is stopping."""


@dataclass(slots=True)
class Ticket:
    """One admission: when, what it spent, and each budget's mark after it."""

    at: float
    weight: float
    split: tuple[float, float] | None
    marks: dict[str, float]

    def spent(self, scope: str) -> float:
        if scope == "requests":
            return 1.0
        if scope == "tokens":
            return self.weight
        if self.split is None:
            return self.weight
        return self.split[0] if scope == "input_tokens" else self.split[1]


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a failed attempt was: its refusal class, if any, and whether the
    whole budget waits (`shared`) or only the item that was refused."""

    refusal: Refusal | None
    shared: bool = False

    @property
    def kind(self) -> str | None:
        return self.refusal.kind.value if self.refusal is not None else None


class Admission:
    def __init__(self, options: Options, refusing: Callable[[], bool]) -> None:
        self._opts = options
        self._clock = options.clock
        self._refusing = refusing
        self.congestion = CongestionController(*options.auto) if options.auto is not None else None
        self._t0 = self._clock.now()  # the controller's history is shown from here
        self._fixed: int | None = None  # set when the default "auto" gave way
        self.auto_dropped: str | None = None
        adaptive = options.adaptive and self.congestion is None
        self.adaptive = AdaptiveConcurrency(options.concurrency) if adaptive else None
        w = options.limit_window
        margin = max(w * _WINDOW_MARGIN, _WINDOW_MARGIN_MIN)
        self._budget_args: dict[str, Any] = {
            "window": w,
            "burst": options.burst,
            "margin": margin,
            "refunds": options.refund_unused,
        }
        self.budgets: dict[str, Budget] = {
            "requests": Budget("requests", told=options.rpm, **self._budget_args)
        }
        self._weighted = options.cost is not None
        if self._weighted:
            self.budgets["tokens"] = Budget("tokens", told=options.tpm, **self._budget_args)
        b = options.breaker
        self.breaker = (
            CircuitBreaker(b.threshold, b.cooldown, b.max_cooldown) if b is not None else None
        )
        self.shared = options.shared_limiter
        self.paused_until = -1.0
        self._lock = asyncio.Lock()
        self.rate_limited = 0
        self.refusals: dict[str, int] = {}
        self.answered_locally = 0
        self._told_about: set[str] = set()
        self._recent: deque[bool] = deque(maxlen=_RECENT)  # True: a rate refusal
        self._answer_times: deque[float] = deque(maxlen=_ANSWER_WINDOW)  # admission to answer, s
        self._quickest = 0.0
        self._learned = 0
        self._windows = False  # a budget became a window or shut (answers then go to `accepted`)
        # One request first, the rest after its answer: the server's headers
        # (or a rejected key) are known before a whole window of requests is
        # spent on a budget or a key we know nothing of. The rest wait behind
        # it, not in the lock (one admission per turn of the loop: 1,000 turns
        # to open a window of 1,000), and its answer wakes them `_WAKE_BATCH`
        # a turn, so the first go on the wire while the next are still starting.
        # `_probe` stays True through the first window (`_FIRST_WINDOW`): then
        # `_window_left` counts the attempts it still lets pass (None before).
        self._probe = options.probe_first
        self._probe_out = False
        self._window_left: int | None = None
        self._probe_waiters: deque[asyncio.Future[bool]] = deque()

    # ---- compatibility views (progress panel, tests) -------------------------------

    @property
    def rpm(self) -> Budget:
        return self.budgets["requests"]

    @property
    def tpm(self) -> Budget | None:
        return self.budgets.get("tokens")

    def concurrency_limit(self, maximum: int) -> int:
        if self.congestion is not None and self._fixed is None:
            return min(maximum, self.congestion.limit)
        if self._fixed is not None:
            maximum = min(maximum, self._fixed)
        return maximum if self.adaptive is None else min(maximum, self.adaptive.limit)

    def _limits_shown(self, why: str) -> None:
        """The server meters a rate: the default "auto" gives way to a fixed
        concurrency driven by the server's budget (`Options.auto_until_limits`)."""
        fixed = self._opts.auto_until_limits
        if fixed is None or self.congestion is None or self._fixed is not None:
            return
        self.auto_dropped = f"{why}: concurrency {fixed}, paced by the server's limits"
        log.info("the server %s: concurrency %d, paced by its limits, not found", why, fixed)
        self._fixed = fixed
        self.congestion.history.append((self._clock.now(), fixed, f"gave way: {self.auto_dropped}"))
        if self._opts.adaptive:
            self.adaptive = AdaptiveConcurrency(fixed)

    def observe(
        self,
        latency: float,
        *,
        ok: bool,
        in_flight: int,
        usage: Usage | None = None,
        timeout: bool = False,
    ) -> None:
        """An attempt's latency for the congestion controller (``concurrency="auto"``).

        Its size is the output tokens it reported (a server's time grows with
        the tokens it generates), so latency is compared per token."""
        c = self.congestion
        if c is not None and self._fixed is None:
            work = usage.output_tokens if usage is not None and usage.output_tokens > 0 else None
            now = self._clock.now()
            c.on_sample(now, latency, ok=ok, work=work, in_flight=in_flight, timeout=timeout)

    def never_fits(self, weight: float) -> str | None:
        """Why an item of this weight can never be admitted, or None."""
        tpm = self.tpm
        if tpm is not None and tpm.told is not None and not tpm.fits(weight):
            return (
                f"item cost {weight:g} exceeds the per-window token limit "
                f"{tpm.limit:g}: it can never be admitted"
            )
        return None

    # ---- before an attempt -----------------------------------------------------------

    async def admit(self, weight: float, split: tuple[float, float] | None = None) -> Ticket:
        """Wait until every limit allows one attempt; returns its ticket."""
        ticket = await self._admit_local(weight, split)
        if self.shared is not None:
            await self.shared.acquire(weight)
            if self._refusing():
                raise Refused
        return ticket

    def _amounts(self, weight: float, split: tuple[float, float] | None) -> dict[str, float]:
        out = {}
        for name in self.budgets:
            if name == "requests":
                out[name] = 1.0
            elif name == "tokens" or split is None:
                out[name] = weight
            else:
                out[name] = split[0] if name == "input_tokens" else split[1]
        return out

    def _open(self) -> bool:
        if self._probe or self.paused_until >= 0:
            return False
        if self.breaker is not None and self.breaker.state is not _CLOSED:
            return False
        for b in self.budgets.values():  # noqa: SIM110 - a loop: no generator per admission
            if b.model is not _OPEN:
                return False
        return True

    def _commit(self, now: float, amounts: dict[str, float], weight: float, split: Any) -> Ticket:
        marks = {name: self.budgets[name].commit(now, amt) for name, amt in amounts.items()}
        return Ticket(now, weight, split, marks)

    def admit_now(self, weight: float, split: tuple[float, float] | None = None) -> Ticket | None:
        """The ticket of an attempt every limit lets through at once (every budget
        open, no pause, probe, open breaker, shared limiter or queue), or None:
        then `admit` waits for it. What it books is what `admit` would."""
        if self.shared is not None or self._lock.locked() or not self._open() or self._refusing():
            return None
        now = self._clock.now()
        marks = {}
        for name, budget in self.budgets.items():
            if name == "requests":
                amount = 1.0
            elif name == "tokens" or split is None:
                amount = weight
            else:
                amount = split[0] if name == "input_tokens" else split[1]
            marks[name] = budget.commit(now, amount)
        return Ticket(now, weight, split, marks)

    async def _admit_local(self, weight: float, split: tuple[float, float] | None) -> Ticket:
        if self._refusing():
            raise Refused
        # The probe, a pass of the first window, or (once they are answered)
        # any attempt: the limits as for any.
        gate = await self._through_probe() if self._probe else _THROUGH
        try:
            return await self._admit_limits(weight, split)
        except BaseException:
            if gate is _PROBE:
                self._probe_abandoned()
            elif gate is _PASS:
                self._pass_abandoned()
            raise

    async def _through_probe(self) -> int:
        """While the probe (the first attempt), then the first window, is out,
        wait for an answer.

        `_PROBE`: this attempt is the probe. `_PASS`: one of the first window.
        `_THROUGH`: they have been answered (or given up), so this attempt is
        admitted as any other."""
        while self._probe:
            if not self._probe_out:
                self._probe_out = True
                if self.congestion is not None and self._fixed is None:
                    loop = asyncio.get_running_loop()
                    loop.call_later(_PROBE_PATIENCE, self._probe_patience_over)
                return _PROBE
            if self._window_left:
                self._window_left -= 1
                return _PASS
            waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            self._probe_waiters.append(waiter)
            try:
                passed = await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    # Woken (to be the probe, or with a pass), then cancelled: hand it on.
                    self._wake_waiters(1, waiter.result())
                raise
            if self._refusing():
                raise Refused
            if passed:
                return _PASS if self._probe else _THROUGH
        return _THROUGH

    def _wake_waiters(self, n: int, passed: bool = True) -> int:
        """Wake up to `n` attempts waiting behind the probe, each let through
        (`passed`) or to look again (to take over the probe); how many woke."""
        woken, waiters = 0, self._probe_waiters
        while waiters and woken < n:
            w = waiters.popleft()
            if not w.done():
                w.set_result(passed)
                woken += 1
        return woken

    def _open_window(self) -> None:
        """The probe was answered: the waiters go, `_WAKE_BATCH` a turn of the loop."""
        self._wake_waiters(_WAKE_BATCH)
        if self._probe_waiters:
            asyncio.get_running_loop().call_soon(self._open_window)

    def _probe_patience_over(self) -> None:
        """Auto's probe is still out after `_PROBE_PATIENCE`: no quick refusal,
        so the server is generating; the first cohort goes without its answer."""
        if self._probe and self._window_left is None and not self._blind():
            self._probe = False
            self._open_window()

    def _probe_abandoned(self) -> None:
        """The probe was never sent (its admission was refused or cancelled):
        the next waiter becomes the probe."""
        self._probe_out = False
        if self._probe:
            self._wake_waiters(1, False)

    def _pass_abandoned(self) -> None:
        """A pass of the first window was never used: the next waiter takes it."""
        if self._probe and self._window_left is not None and not self._wake_waiters(1):
            self._window_left += 1

    def _blind(self) -> bool:
        """Nothing is known of how the server meters: no limit told, none in
        headers, and a fixed concurrency above the first window (``auto``
        starts at 16 and grows by what the answers show)."""
        if self.congestion is not None and self._fixed is None:
            return False
        if self.concurrency_limit(self._opts.concurrency) <= _FIRST_WINDOW:
            return False
        for b in self.budgets.values():  # noqa: SIM110 - as `_open`
            if b.model is not _OPEN:
                return False
        return True

    def _probe_answered(self) -> None:
        if not self._probe:
            return
        if self._window_left is None and self._blind():
            # The probe's answer told nothing: the first window goes, the rest
            # at the first answer to it (any answer: a refusal teaches the budget).
            self._window_left = _FIRST_WINDOW
            self._window_left -= self._wake_waiters(_FIRST_WINDOW)
            return
        self._probe = False
        self._window_left = None
        self._open_window()

    async def _admit_limits(self, weight: float, split: tuple[float, float] | None) -> Ticket:
        amounts = self._amounts(weight, split)
        clock, brk = self._clock, self.breaker
        if self._open() and not self._lock.locked():
            return self._commit(clock.now(), amounts, weight, split)
        async with self._lock:  # FIFO: one waiter polls, the rest queue behind it
            while True:
                if self._refusing():
                    raise Refused
                now = clock.now()
                wait = self.paused_until - now
                if wait <= 0:
                    for name, amount in amounts.items():
                        wait = max(wait, self.budgets[name].wait_time(now, amount))
                if wait <= 0 and brk is not None:
                    wait = brk.wait_time(now)  # last: it may claim the half-open probe
                if wait <= 0:
                    return self._commit(now, amounts, weight, split)
                await clock.sleep(wait)

    # ---- after an attempt ------------------------------------------------------------

    def on_success(self, ticket: Ticket | None = None) -> None:
        self._probe_answered()
        if ticket is not None and self._windows:
            # A window no header describes may be trying its reset (`Budget.accepted`).
            now = self._clock.now()
            for name, mark in ticket.marks.items():
                b = self.budgets.get(name)
                if b is not None and b.trying:
                    b.accepted(now, mark)
        self._recent.append(False)
        if self.breaker is not None:
            self.breaker.record_success()
        if self.adaptive is not None:
            self.adaptive.on_success()

    def on_failure(self, exc: BaseException, ticket: Ticket | None, *, transient: bool) -> Verdict:
        """What a failed attempt means for everyone: its refusal class, and
        whether everyone now waits (True) or only this item (False)."""
        now = self._clock.now()
        # A rate refusal of the probe or of the first window is no hiccup: the
        # server's budget held less than these few. It is learned from before
        # the rest are let go (else, naming no limit, it was passed over as
        # sporadic and the rest refused: 90 of the first 100 under 300,000
        # tokens/min metered per second, tokens/bucket_1s/nohdr/untold/gemini).
        early = self._probe
        self._probe_answered()  # any answer (or failure) ends the probe
        refusal = getattr(exc, "refusal", None)
        if not isinstance(refusal, Refusal):
            refusal = classify_exception(exc)
        # `overload=True`: the caller knows the shared budget is spent.
        overload = getattr(exc, "overload", False) is True
        if overload and (refusal is None or refusal.kind is not RefusalKind.RATE):
            hint = getattr(exc, "retry_after", None)
            wait = float(hint) if isinstance(hint, int | float) else None
            refusal = Refusal(RefusalKind.RATE, wait=wait, message=str(exc))
        if refusal is not None:
            self.refusals[refusal.kind.value] = self.refusals.get(refusal.kind.value, 0) + 1
        shared = False
        rated = False
        if refusal is not None and refusal.kind is RefusalKind.RATE:
            rated = True
            self._limits_shown("refused a request for its rate (429)")
            self.rate_limited += 1
            self._recent.append(True)
            shared = self._on_rate_limited(now, refusal, ticket, spent=overload or early)
        elif getattr(exc, "status_code", None) is not None:
            self._recent.append(False)
        if ticket is not None and self._windows and not rated:
            # A try of a shut budget that failed otherwise showed nothing (`Budget.tried`).
            for name, mark in ticket.marks.items():
                b = self.budgets.get(name)
                if b is not None and b.shut:
                    b.tried(mark)
        capacity = refusal is not None and refusal.kind is RefusalKind.CAPACITY
        if capacity and self.adaptive is not None:
            # Busy, not our rate: fewer in flight for a while, limits untouched.
            self.adaptive.on_overload(now)
        if self.breaker is not None:
            answered = refusal is not None and refusal.kind is not RefusalKind.CAPACITY
            if transient and not answered:
                self.breaker.record_failure(now)
            else:
                # The endpoint answered (a refusal or a non-transient error is
                # an answer): it is up, which also releases a half-open probe.
                self.breaker.record_success()
        return Verdict(refusal, shared)

    def _frequent(self) -> bool:
        # The share is of at least 20 answers, so a clump of sporadic refusals
        # among the very first answers does not pause everyone.
        hits = sum(self._recent)
        seen = max(len(self._recent), _FREQUENT_FLOOR)
        return hits >= _FREQUENT_MIN and hits >= _FREQUENT_SHARE * seen

    def _on_rate_limited(
        self, now: float, refusal: Refusal, ticket: Ticket | None, *, spent: bool = False
    ) -> bool:
        """Book a rate refusal; True when it pauses everyone sharing the budget."""
        scope = refusal.scope if refusal.scope in _SCOPES else None
        if scope is None:
            scope = self._guess_scope(now, ticket)
        budget = self._budget(scope)
        need = ticket.spent(scope) if ticket is not None else 1.0
        # Across processes the one mirror of the server's budget is the shared
        # limiter's: it hears every refusal, and keeps every process to it.
        forward = getattr(self.shared, "refused", None)
        if forward is not None:
            forward(scope, need, refusal.wait, refusal.limit)
        # Spent for everyone: the mirror (just updated from this answer's
        # headers, if it had any) holds less than this request needed.
        spent = spent or (
            budget is not None
            and budget.model is not Model.OPEN
            and budget.level(now) < min(need, budget.capacity)
        )
        # A limit guessed from refusals that named none learns from each one
        # (`Budget.on_refused`): a sporadic refusal may be the guess too high.
        guessing = budget is not None and budget.guessing
        if not (spent or self._frequent() or refusal.limit is not None or guessing):
            return False
        if budget is not None and ticket is not None and forward is None:
            budget.on_refused(
                now,
                ticket.at,
                need,
                retry_after=refusal.wait,
                limit=refusal.limit,
                mark=ticket.marks.get(scope),
            )
            self._announce(budget)
            self._windows = self._windows or budget.model is Model.WINDOW or budget.shut
        if not (spent or self._frequent()):
            return False
        wait = refusal.wait
        if (
            wait is not None
            and budget is not None
            and scope == "requests"  # exact counts; token figures come rounded to thousands
            and self.shared is None  # across processes the pause is the server's, as it said
            and budget.model is Model.BUCKET
            and float(wait).is_integer()
            and wait <= _WHOLE_SECOND_RETRY
        ):
            wait = min(wait, budget.wait_time(now, min(need, budget.capacity)))
        if wait is not None and wait > 0:
            if wait >= _LOUD_PAUSE and now + wait > self.paused_until + 1.0:
                log.warning("rate limited on %s: pausing %.0fs as the server asked", scope, wait)
            self.paused_until = max(self.paused_until, now + wait)
            if self.shared is not None:
                self.shared.pause(wait)
        return True

    def _guess_scope(self, now: float, ticket: Ticket | None) -> str:
        # A refusal that does not name its budget: the emptiest one we know.
        best, lowest = "requests", float("inf")
        for name, b in self.budgets.items():
            if b.model is Model.OPEN:
                continue
            spent = ticket.spent(name) if ticket is not None else 1.0
            room = b.level(now) / max(spent, 1.0)
            if room < lowest:
                best, lowest = name, room
        return best

    def _budget(self, scope: str) -> Budget | None:
        b = self.budgets.get(scope)
        if b is None and scope in ("input_tokens", "output_tokens") and self._weighted:
            b = self.budgets[scope] = Budget(scope, **self._budget_args)
        return b

    def _announce(self, budget: Budget) -> None:
        key = f"{budget.name}:{budget.model.value}"
        if budget.model is not Model.OPEN and key not in self._told_about:
            self._told_about.add(key)
            log.info("%s budget: %s", budget.name, budget.why)

    def settle(self, attempt: Attempt, ticket: Ticket | None) -> None:
        """Book what the attempt really cost and what the server announced."""
        if ticket is None:
            return
        if attempt.limits is not None:
            self._limits_shown("sends rate-limit headers")
            self._learn(attempt.limits, ticket)
        weight = ticket.weight
        if attempt.cached:
            # Answered locally: give the reservations back.
            self.answered_locally += 1
            for name, budget in self.budgets.items():
                budget.refund(ticket.at, ticket.spent(name))
            if self.shared is not None:
                self.shared.settle(weight, 0.0)
            return
        if attempt.usage is None:
            return
        actual = float(attempt.usage.total_tokens)
        tokens = self.tpm
        if tokens is not None:
            tokens.settle(ticket.at, weight, actual)
        if self.shared is not None:
            # The cluster's budget keeps the same rule as ours: no refund
            # below the estimate where the server counts the reservation.
            charged = actual if self._opts.refund_unused else max(actual, weight)
            self.shared.settle(weight, charged)

    def _learn(self, hint: RateLimitHint, ticket: Ticket) -> None:
        forward = getattr(self.shared, "observe", None)
        if forward is not None:
            # The shared limiter mirrors the server for every process; a local
            # mirror would believe the whole budget is this process's.
            forward(hint)
            return
        now = self._clock.now()
        # When did the server take it? Not before we admitted it, and not
        # earlier than the quickest recent answer allows: a busy event loop
        # (or a slow network) sends later than admission, and counting the
        # refill from admission would overstate what the server holds.
        took = now - ticket.at
        times = self._answer_times
        times.append(took)
        # The minimum over the recent answers, recomputed once per window of
        # them rather than on every answer (this runs for every response).
        if took < self._quickest or len(times) == 1:
            self._quickest = took
        elif self._learned % _ANSWER_WINDOW == 0:
            self._quickest = min(times)
        self._learned += 1
        quickest = self._quickest
        taken_at = max(ticket.at, now - quickest)
        for scope in _SCOPES:
            limit = getattr(hint, f"{scope}_limit", None)
            remaining = getattr(hint, f"{scope}_remaining", None)
            if limit is None and remaining is None:
                continue
            if scope != "requests" and not self._weighted:
                continue  # no cost function: token budgets cannot be kept
            budget = self._budget(scope)
            if budget is None:
                continue
            mark = ticket.marks.get(scope)
            if mark is None:
                # A budget first seen now: this request was not booked in it.
                mark = budget.charged
            budget.observe(
                now,
                taken_at,
                mark,
                limit=limit,
                remaining=remaining,
                reset=getattr(hint, f"{scope}_reset", None),
            )
            self._announce(budget)

    # ---- figures ---------------------------------------------------------------------

    def figures(self, now: float) -> dict[str, Any]:
        """For the progress snapshot and the report."""
        rpm, tpm, brk = self.rpm, self.tpm, self.breaker
        return {
            "rpm_limit": rpm.limit,
            "tpm_limit": tpm.limit if tpm is not None else None,
            "rpm_in_window": rpm._log.in_window(now),
            "tpm_in_window": tpm._log.in_window(now) if tpm is not None else 0.0,
            "rate_limited": self.rate_limited,
            "paused_for": max(0.0, self.paused_until - now),
            "breaker": brk.state.value if brk is not None else "off",
            "budgets": {
                name: b.why for name, b in self.budgets.items() if b.model is not Model.OPEN
            },
            **self._congestion_figures(),
        }

    def _congestion_figures(self) -> dict[str, Any]:
        c = self.congestion
        if c is None:
            return {}
        return {"concurrency_reason": c.reason, "concurrency_history": self._moves()}

    def _moves(self) -> tuple[tuple[float, int, str], ...]:
        """The controller's moves, timed in seconds since the run started."""
        c = self.congestion
        if c is None:
            return ()
        return tuple((max(0.0, t - self._t0), n, why) for t, n, why in c.history)

    def report_extra(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.breaker is not None and self.breaker.opened:
            extra["breaker_opened"] = self.breaker.opened
        if self.adaptive is not None and self.adaptive.decreases:
            extra["concurrency_decreases"] = self.adaptive.decreases
        c = self.congestion
        if c is not None:
            extra["concurrency_auto"] = {
                "final": self._fixed or c.limit,
                "reason": c.reason,
                "changes": c.changes,
                "unloaded_latency": c.unloaded,
                "compared": "per output token" if c.per_token else "per request",
                "gave_way": self.auto_dropped,
                "history": [[round(t, 3), n, why] for t, n, why in self._moves()],
            }
        if self.rate_limited:
            extra["rate_limited"] = self.rate_limited
        for kind, n in sorted(self.refusals.items()):
            extra[f"refused_{kind}"] = n
        if self.answered_locally:
            extra["answered_locally"] = self.answered_locally
        budgets = {n: b.why for n, b in self.budgets.items() if b.model is not Model.OPEN}
        if budgets:
            extra["budgets"] = budgets
        return extra
