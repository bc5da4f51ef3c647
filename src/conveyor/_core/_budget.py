"""A mirror of one server budget (requests or tokens): how much it holds now.

A pure policy: it is told the time and what happened, and answers "go" or
"wait d seconds". The driver (`_admission`) sleeps and keeps the books.

How servers meter, and so the models this mirror can take
(sources in shared/RATE-LIMITS.md):

- **bucket**: OpenAI and Anthropic describe a bucket refilled continuously at
  the per-minute limit / 60 per second. OpenAI's `x-ratelimit-reset-*` is "the
  time until the rate limit resets to its initial state" (platform.openai.com,
  guides/rate-limits); after one request on a 5,000/min key a real response says
  `remaining 4999, reset 12ms`, i.e. the bucket holds the whole minute. A
  "quantized" limit (60,000/min enforced as 1,000/s) is the same bucket holding
  about a second. Either way ``capacity = remaining + reset * rate``.
- **window**: fixed windows (remaining drops to 0, reset = when the window
  restarts) and sliding windows (a unit comes back a window after it was
  spent). They show themselves by a reset longer than any bucket at that rate
  could need (``remaining + reset * rate > limit``), or by refusing a request
  a bucket would have accepted.
- **told**: no headers, a limit the user set: an exact sliding window of the
  limit plus a pacing bucket of `burst` seconds, since an unknown server may
  quantize.
- **open**: nothing known yet; everything is admitted, and what was sent is
  still counted so that a limit learned later starts from the truth.

Headers, when present, are the truth: a response to the request admitted at
`sent_at` says what the server held when it took that request; what we sent
after it is subtracted, and refill since then is added (bucket) or expected
at the reset (window). Without headers, a refusal that names the limit
(OpenAI's "Limit 6000, Used 6000") gives it; one that names none (Gemini's
RESOURCE_EXHAUSTED, a gateway's bare 429) leaves it to be learned from what
the server accepted (`on_refused`): a long wait shows a window that held what
it accepted within it; a short one (or none) a bucket, whose rate is what it
accepted between refusals, when it was empty at each; refusals with no wait
and nothing accepted between them, a spent window whose restart is tried.
"""

from __future__ import annotations

import enum
import math

from ._limits import RateLimiter

__all__ = ["Budget", "Model"]

# A bucket's capacity can never exceed the per-minute limit; a reset longer
# than that would need (beyond rounding) means the server is not a bucket.
_BUCKET_SLACK = 0.05
# A refusal whose wait is longer than this many refill intervals of the
# refused weight (plus a fixed part for network time) is not a bucket that is
# briefly empty but a window that is spent.
_SHORT_RETRY_UNITS = 3.0
_SHORT_RETRY_FIXED = 0.1
_SHORT_RETRY_WHOLE_SECONDS = 2.0
_EPS = 1e-9
_HUGE = 1e18
# A window learned without headers is fixed (full again at its reset) or
# sliding (a unit comes back a window after it was spent): the refusals do not
# say which. At the reset, at most this many admissions go beyond what a
# sliding window would have freed by then; the first answer to one of them
# tells: accepted, fixed (the rest go); refused, sliding (paced as units age
# out). Without it a sliding window answered 429 to the whole concurrency sent
# at its supposed reset (25 of 100 at -c 100, tokens/sliding/nohdr/untold).
_RESET_TRIAL = 10
# While that answer is awaited, a wait is at most this long: the answer may
# show a fixed window with everything free.
_RESET_TRIAL_POLL = 0.05
# Refusals that name neither a limit nor a wait (a gateway's bare 429): when
# nothing at all was accepted since the first one, over a time in which a
# bucket refilling at the least rate it could have would have taken at least
# this many more, the server is a window that is spent, not a bucket briefly
# empty (which would be paced at its rate into the window until it restarts).
# When it restarts is unknown: one admission tries it, first this long after,
# then twice as long after each refusal of a try, up to `_PROBE_MAX`.
_SPENT_UNITS = 3.0
_SPENT_REFUSALS = 3
_PROBE_FIRST = 1.0
_PROBE_MAX = 4.0
# A guess learned from refusals that named no limit is a lower bound when it
# is not refused: a server that accepted less than it allows while we learned
# (a key still partly spent by someone else, a per-second window read as a
# bucket whose refills stopped, a limit raised mid-run) would be paced at the
# guess for the rest of the run (a 40/s fixed window of a second, bare 429s
# with `Retry-After: 1`: 2 requests a second). So a bucket's guess that was
# used in full for `_GROW_AFTER` s without a refusal is raised by half; a
# refusal of the raised rate restores the one before it, and each raise that
# ends in a refusal doubles the quiet time the next one needs (up to
# `_GROW_AFTER_MAX`), so that a guess that is right costs a few refusals a
# minute at most. (x2 a step recovered a per-second window 10% sooner but
# refused 4.05% against 3.70% on a bucket of the minute, tokens, in
# tests/test_budget.py's simulation; x1.5 is the balance.)
_GROW = 1.5
_GROW_AFTER = 0.5
_GROW_AFTER_MAX = 60.0
_GROW_BACKOFF = 2.0  # the quiet time a raise needs grows so at each overshoot
_GROW_USED = 0.8  # share of the guess spent over the quiet time: it was binding
# A refusal before the server accepted anything of ours within its window (a
# key another run or client had already spent: a rerun right after a run, a
# key shared by jobs) says when the budget is spent, not how big it is: a
# limit learned from it was what we had got accepted, nothing, so the first
# guess was one request a second (or one a window) for the rest of the run.
# Such a budget is shut instead: nothing goes until the refusal's wait is
# over (or, naming none, `_PROBE_FIRST`, doubling to `_PROBE_MAX` at each
# refusal of a try); then one request tries it, `_RESET_TRIAL` at its
# answer, and everything at the first answer to one of those. What the
# server then accepts is ours, and its next refusal is learned from.
_SHUT_TRY_LOST = 60.0  # s after which a try no answer came back for is let go


def _pad(now: float) -> float:
    # More than the clock's own resolution at `now`, so that sleeping exactly
    # the wait always crosses the boundary.
    return max(_EPS, 4 * math.ulp(now))


class Model(enum.StrEnum):
    """How the mirror believes the server meters this budget."""

    OPEN = "open"
    SPENT = "spent"  # refused before it accepted any of ours: its size unknown
    TOLD = "told"
    BUCKET = "bucket"
    WINDOW = "window"


# Members as module constants: on 3.11 `EnumClass.MEMBER` goes through EnumType.__getattr__
# (~10x a global), and these are read several times per request (issue 18).
_OPEN = Model.OPEN
_SPENT = Model.SPENT
_TOLD = Model.TOLD
_BUCKET = Model.BUCKET
_WINDOW = Model.WINDOW


class _Bucket:
    """A continuously refilled bucket: `level` units at `t`, at most `capacity`."""

    __slots__ = ("capacity", "level", "rate", "t")

    def __init__(self, rate: float, capacity: float, level: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.level = level
        self.t = now

    def refill(self, now: float) -> float:
        if now > self.t:
            self.level = min(self.capacity, self.level + (now - self.t) * self.rate)
            self.t = now
        return self.level

    def wait(self, now: float, weight: float) -> float:
        need = min(weight, self.capacity)
        level = self.refill(now)
        if level >= need - _EPS:
            return 0.0
        return (need - level) / self.rate + _pad(now)


class Budget:
    """One budget (requests or tokens) as the server meters it.

    `told` is the user's limit per `window` seconds: without headers an exact
    limit (sliding window plus a pacing bucket of `burst` seconds); once the
    server's headers are read, a ceiling on the rate whose burst the server's
    bucket may lift. `window` is the period servers state limits for (a
    minute for OpenAI and Anthropic); `margin` pads our own sliding log so
    that a unit is counted free a little after the server frees it.
    """

    def __init__(
        self,
        name: str,
        *,
        told: float | None = None,
        window: float = 60.0,
        burst: float = 1.0,
        margin: float = 0.0,
        refunds: bool = True,
    ) -> None:
        self.name = name
        self.refunds = refunds
        self.window = float(window)
        self.burst = float(burst)
        self.told = float(told) if told else None
        self.server_limit: float | None = None
        self.model = _OPEN
        self.why = "no limit known"
        # Units we sent, cumulative: a request's mark is this after its own
        # charge, so what was sent after it is `charged - mark`.
        self.charged = 0.0
        self._log = RateLimiter(_HUGE, self.window + margin, burst=_HUGE)
        self._told: RateLimiter | None = None
        self._ceiling: _Bucket | None = None
        self._bucket: _Bucket | None = None
        # The window model: `_level` now, restored to capacity at `_full_at`.
        self._level = 0.0
        self._full_at: float | None = None
        self._capacity = 0.0
        # Fixed or sliding, for a window no header describes: None until shown;
        # meanwhile, from the supposed reset `_trial_at`, the marks of the
        # admissions sent beyond what a sliding window would hold (`_RESET_TRIAL`).
        self._sliding: bool | None = None
        self._trial_at: float | None = None
        self._beyond: set[float] = set()
        self._headers = False  # a header described this budget
        self._basis = -math.inf  # send time of the newest answer applied
        self._estimated = False  # server_limit guessed from what was accepted
        # Learning a limit no refusal names (`on_refused`): when we first sent,
        # the refused weight so far, and (send time, mark, refused weight) at
        # the first refusal, when the server was known to be empty.
        self._first_at: float | None = None
        self._refused = 0.0
        self._refusals = 0
        self._empty: tuple[float, float, float] | None = None
        # What the server held then, the least rate a bucket could refill
        # at, and the refusals counted until then.
        self._empty_held = 0.0
        self._floor = 0.0
        self._empty_refusals = 0
        # A spent window whose restart is unknown: tried every `_probe_every` s.
        self._probing = False
        self._probe_every = _PROBE_FIRST
        # Spent by someone else (`_PROBE_FIRST` note): shut until `_shut_until`,
        # then at most `_shut_allowed` admissions (their marks) until one is answered.
        self._shut_until: float | None = None
        self._shut_allowed = 1
        self._shut_marks: dict[float, float] = {}  # mark -> when it was sent
        self._shut_every = _PROBE_FIRST
        # A guess's growth (`_GROW`): since when, and from what was charged, it has
        # not been refused; the quiet time a raise needs; whether one is on trial.
        self._quiet_from = 0.0
        self._quiet_charged = 0.0
        self._grow_after = _GROW_AFTER
        self._grown: float | None = None  # the rate before a raise on trial
        self._implied_min = math.inf  # tightest capacity bound the headers gave
        self._implied_for: float | None = None
        if self.told is not None:
            rate = self.told / self.window
            self._told = RateLimiter(
                self.told, self.window + margin, burst=max(1.0, self.burst * rate)
            )
            self.model = _TOLD
            self.why = f"told {self.told:g} per {self.window:g}s, burst {self.burst:g}s"

    # ---- what it admits ---------------------------------------------------------

    @property
    def limit(self) -> float | None:
        """The per-window limit in force: the lower of told and server's."""
        known = [x for x in (self.told, self.server_limit) if x]
        return min(known) if known else None

    @property
    def rate(self) -> float:
        """Units per second the budget refills at (inf when unknown)."""
        limit = self.limit
        return limit / self.window if limit else math.inf

    @property
    def capacity(self) -> float:
        """Units that may be spent at once, as far as is known."""
        if self.model is _BUCKET and self._bucket is not None:
            return self._bucket.capacity
        if self.model is _WINDOW:
            return self._capacity
        if self.model is _TOLD and self._told is not None:
            return self._told._burst
        return math.inf

    def fits(self, weight: float) -> bool:
        limit = self.limit
        return limit is None or weight <= limit

    def level(self, now: float) -> float:
        """Units the server would accept now, as far as this mirror knows."""
        levels = [math.inf]
        if self.model is _TOLD and self._told is not None:
            levels.append(self._told.available(now))
        elif self.model is _BUCKET and self._bucket is not None:
            levels.append(self._bucket.refill(now))
        elif self.model is _WINDOW:
            levels.append(self._window_level(now))
        if self._ceiling is not None:
            levels.append(self._ceiling.refill(now))
        return min(levels)

    def wait_time(self, now: float, weight: float) -> float:
        """Seconds until `weight` units could be spent; 0.0 means now."""
        if weight <= 0:
            return 0.0
        wait = 0.0
        m = self.model
        if m is _TOLD and self._told is not None:
            wait = self._told.wait_time(now, weight)
        elif m is _BUCKET and self._bucket is not None:
            wait = self._bucket.wait(now, weight)
            if wait > 0 and self._estimated and not self._headers and self._grow(now):
                wait = self._bucket.wait(now, weight)
        elif m is _WINDOW:
            wait = self._window_wait(now, weight)
        elif m is _SPENT:
            wait = self._shut_wait(now)
        if self._ceiling is not None:
            wait = max(wait, self._ceiling.wait(now, weight))
        return wait

    def _shut_wait(self, now: float) -> float:
        assert self._shut_until is not None
        if now < self._shut_until:
            return self._shut_until - now + _pad(now)
        marks = self._shut_marks
        if len(marks) >= self._shut_allowed:
            # A try whose answer never came back here (failed otherwise, cancelled):
            # after `_SHUT_TRY_LOST` another may go.
            for mark, at in list(marks.items()):
                if now - at > _SHUT_TRY_LOST:
                    del marks[mark]
        if len(marks) < self._shut_allowed:
            return 0.0
        return _RESET_TRIAL_POLL  # the answer to a try is awaited

    def tried(self, mark: float) -> None:
        """A try of a shut budget failed otherwise than by a rate refusal (a 5xx,
        a timeout): it showed nothing, and another may go."""
        self._shut_marks.pop(mark, None)

    def commit(self, now: float, weight: float) -> float:
        """Spend `weight` now; returns the mark to hand back with its answer."""
        if weight <= 0:
            return self.charged
        # (`_trial_at` is set only while the model is a window.)
        beyond = self._trial_at is not None and self._sliding_level(now) < weight
        if self._first_at is None:
            self._first_at = now
        self.charged += weight
        if beyond:
            self._beyond.add(self.charged)
        if self._shut_until is not None:
            self._shut_marks[self.charged] = now
        self._log.commit(now, weight)
        if self.model is _TOLD and self._told is not None:
            self._told.commit(now, weight)
        elif self.model is _BUCKET and self._bucket is not None:
            self._bucket.refill(now)
            self._bucket.level -= weight
        elif self.model is _WINDOW:
            self._window_level(now)
            self._level -= weight
        if self._ceiling is not None:
            self._ceiling.refill(now)
            self._ceiling.level -= weight
        return self.charged

    def refund(self, admitted_at: float, weight: float) -> None:
        """Give back a spend the server never charged (answered locally)."""
        if weight <= 0:
            return
        self._log.settle(admitted_at, weight, 0.0)
        if self.model is _TOLD and self._told is not None:
            self._told.settle(admitted_at, weight, 0.0)
        elif self.model is _BUCKET and self._bucket is not None:
            b = self._bucket
            b.level = min(b.capacity, b.level + weight)
        elif self.model is _WINDOW:
            self._level = min(self._capacity, self._level + weight)
        if self._ceiling is not None:
            c = self._ceiling
            c.level = min(c.capacity, c.level + weight)

    def settle(self, admitted_at: float, estimated: float, actual: float) -> None:
        """The real cost of a spend is known (a response's `usage`).

        Only a told limit without headers is kept by our own books; where the
        server's headers are read, they say what it charged. A cost above the
        estimate is always charged; one below it is refunded only with
        `refunds` (the Python API's own cost units): OpenAI counts a request's
        completion cap (`max_tokens`) at admission and keeps it counted
        (guides/rate-limits), so giving back the unused part of a request's
        reservation would spend more than that server allows.
        """
        if actual < estimated and not self.refunds:
            return
        if self.model is _TOLD and self._told is not None:
            self._told.settle(admitted_at, estimated, actual)
            self._log.settle(admitted_at, estimated, actual)

    # ---- what the server said ---------------------------------------------------

    def observe(
        self,
        now: float,
        sent_at: float,
        mark: float,
        *,
        limit: float | None,
        remaining: float | None,
        reset: float | None,
    ) -> None:
        """Apply one response's headers for this budget.

        `sent_at`/`mark` identify the request answered: the server held
        `remaining` when it took that request, and `reset` later it is full
        again. An answer older than one already applied tells only the limit
        and the model.
        """
        if limit is not None and limit > 0:
            self.server_limit = float(limit)
        if remaining is None or self.server_limit is None:
            return
        self._headers = True
        self._trial_at = None
        remaining = max(0.0, float(remaining))
        server_rate = self.server_limit / self.window
        implied = remaining + (reset * server_rate if reset is not None else self.server_limit)
        slack = self.server_limit * _BUCKET_SLACK + 1.0 + 0.002 * server_rate
        if implied > self.server_limit + slack:
            if self.model is not _WINDOW:
                self._enter_window(now, "its reset is longer than a bucket would need")
        elif self.model is not _WINDOW:
            # Every answer bounds the capacity from above (rounded figures,
            # Anthropic's whole-second resets, only ever overstate it): keep
            # the tightest bound seen for this limit.
            if self._implied_for != self.server_limit:
                self._implied_for, self._implied_min = self.server_limit, math.inf
            self._implied_min = min(self._implied_min, implied)
            capacity = min(max(self._implied_min, remaining, 1.0), self.server_limit)
            if self._bucket is None or self.model is not _BUCKET:
                self._enter_bucket(now, capacity)
            assert self._bucket is not None
            self._bucket.capacity = capacity
            self._bucket.rate = server_rate
        self._lift_ceiling(now)
        if sent_at < self._basis:
            return
        self._basis = sent_at
        after = max(0.0, self.charged - mark)
        if self.model is _BUCKET and self._bucket is not None:
            b = self._bucket
            held = min(b.capacity, remaining + b.rate * max(0.0, now - sent_at))
            b.level = held - after
            b.t = now
        elif self.model is _WINDOW:
            self._capacity = self.server_limit
            self._level = remaining - after
            self._full_at = sent_at + reset if reset is not None else None

    def on_refused(
        self,
        now: float,
        sent_at: float,
        weight: float,
        *,
        retry_after: float | None,
        limit: float | None = None,
        mark: float | None = None,
    ) -> None:
        """A rate-limit refusal for this budget: the server did not charge it.

        `limit` is one the refusal named ("Limit 3, Used 3"). With none named
        (Gemini's RESOURCE_EXHAUSTED, a gateway's bare 429) and none known, it
        is learned from what the server accepted (`mark` is the refused
        admission's `commit` mark): a window's limit is what it accepted
        within the window before refusing; a bucket's rate is at least that
        over the window plus the time we had been sending (a bucket holds at
        most the window's worth, so it refilled the rest), and from the first
        refusal on (the server empty then, and empty again at each later
        one) it is what it accepted in between, per second.
        """
        if self.model is not _TOLD:
            self._log.settle(sent_at, weight, 0.0)
        if self._shut_until is not None or self._spent_by_others(now, weight, limit, mark):
            self._shut(now, sent_at, retry_after)
            return
        if limit is not None and limit > 0:
            self.server_limit = float(limit)
            self._estimated = False
        elif (
            self.told is None
            and not self._headers
            and (self.server_limit is None or self._estimated)
        ):
            self._learn(now, sent_at, weight, self.charged if mark is None else mark, retry_after)
        rate = self.rate
        # Anthropic's retry-after is whole seconds: a wait of a second or two
        # is still a bucket briefly empty, not a window that is spent.
        short = retry_after is None or retry_after <= max(
            _SHORT_RETRY_UNITS * max(weight, 1.0) / rate + _SHORT_RETRY_FIXED,
            _SHORT_RETRY_WHOLE_SECONDS,
        )
        m = self.model
        if m is _OPEN or (m is _BUCKET and not short):
            if short:
                # A bucket briefly empty: pace at its rate from empty; no
                # headers will say how big it is, so assume `burst` seconds.
                self._enter_bucket(now, max(1.0, self.burst * rate), level=0.0)
            else:
                # Spent until the wait is over. A fixed window is full again
                # then; a sliding one only frees what it took a window ago,
                # which the first refusal after the wait shows (see below).
                self._enter_window(now, "a refusal with a long wait")
                self._level = 0.0
                self._full_at = now + (retry_after or 0.0)
        elif m is _BUCKET and self._bucket is not None:
            self._bucket.refill(now)
            self._bucket.level = min(self._bucket.level, 0.0)
        elif m is _WINDOW:
            if self._estimated and not self._headers and mark is not None:
                # It held at most what it had accepted of ours within the window
                # (else each refusal, freeing its own unit in our log, let the
                # next one go at once: 270 refusals for 120 requests, bare 429s
                # of a 40/s window).
                held = self._log.in_window(now) - max(0.0, self.charged - mark)
                if weight <= held < self._capacity:
                    self._capacity = held
                    self.server_limit = held
            if self._trial_at is not None and sent_at >= self._trial_at and self._probing:
                # Its restart is unknown: not yet; try again later.
                self._trial_at = None
                self._beyond.clear()
                self._probe_every = min(2.0 * self._probe_every, _PROBE_MAX)
                self._full_at = now + self._probe_every
            elif self._trial_at is not None and sent_at >= self._trial_at:
                # Refused after the supposed reset: the window slides.
                self._sliding, self._trial_at = True, None
                self._beyond.clear()
            self._window_level(now)
            self._level = min(self._level, 0.0)
            if retry_after is not None and self._full_at is not None:
                self._full_at = max(self._full_at, now + retry_after)
        elif m is _TOLD and self._told is not None and self.limit:
            # The server's limit is below the one told.
            self._told.set_limit(self.limit)

    def _spent_by_others(
        self, now: float, weight: float, limit: float | None, mark: float | None
    ) -> bool:
        """Refused before anything of ours was accepted within the window,
        with nothing known of the limit (see `_PROBE_FIRST`)."""
        if limit is not None or self.told is not None or self._headers or self.model is not _OPEN:
            return False
        after = max(0.0, self.charged - mark) if mark is not None else 0.0
        return self._log.in_window(now) - after < weight

    def _shut(self, now: float, sent_at: float, retry_after: float | None) -> None:
        if self._shut_until is None:
            self._shut_every = _PROBE_FIRST
        elif sent_at < self._shut_until:
            # Sent before the shut (in flight then): only its wait counts.
            if retry_after is not None:
                self._shut_until = max(self._shut_until, now + retry_after)
            return
        else:
            # A try refused: the budget is still spent.
            self._shut_every = min(2.0 * self._shut_every, _PROBE_MAX)
        wait = retry_after if retry_after is not None else self._shut_every
        self._shut_until = now + wait
        self._shut_allowed, self._shut_marks = 1, {}
        self.model = _SPENT
        # What is learned later is from what the server accepts of ours from now on.
        self._first_at, self._refused, self._refusals, self._empty = None, 0.0, 0, None
        self.why = "spent before it accepted any of ours: its size is not known yet"

    @property
    def shut(self) -> bool:
        """Spent by someone else, its size unknown (see `_PROBE_FIRST`)."""
        return self.model is _SPENT

    def _learn(
        self, now: float, sent_at: float, weight: float, mark: float, retry_after: float | None
    ) -> None:
        """Guess the limit from what was accepted (see `on_refused`)."""
        self._refused += weight
        self._refusals += 1
        if self._overshot(now, sent_at, mark):
            return
        # Accepted within the window before this request (what was sent after
        # it is still in flight: answers come in order).
        held = max(weight, self._log.in_window(now) - max(0.0, self.charged - mark))
        if self._empty is None:
            self._empty = (sent_at, mark, self._refused)
            self._empty_held, self._empty_refusals = held, self._refusals
            # A bucket holds at most the window's worth: it refilled the rest.
            # And it may be one of a second ("quantized"): then the rate is
            # what it accepted within the last second. Too high a guess costs
            # one round of refusals and is then measured; too low, time.
            first = self._first_at if self._first_at is not None else sent_at
            floor = held / (self.window + min(max(0.0, sent_at - first), self.window))
            self._floor = floor
            # At least one request's worth a second: a first request refused
            # with nothing accepted yet (a key already at its limit) would
            # otherwise pace the run at one request a window.
            rate = max(floor, self._log.in_since(now - 1.0, now), weight)
        else:
            since, mark0, refused0 = self._empty
            span = sent_at - since
            if span <= 0:
                return
            # The server was empty at both refusals: what it accepted in
            # between is what it refilled, give or take one weight; the more
            # is taken, so that a guess too high is refused (and measured
            # again) rather than one too low kept.
            accepted = max(0.0, (mark - mark0) - (self._refused - refused0))
            rate = (accepted + weight) / span
            if (
                self.model is _BUCKET
                and retry_after is None
                and accepted < weight
                and self._refusals - self._empty_refusals >= _SPENT_REFUSALS
                and span * self._floor >= _SPENT_UNITS * weight
            ):
                self._enter_spent_window(now)
        self._estimated = True
        if self.model is _WINDOW:
            return  # its limit was what it held at the first refusal
        short = retry_after is None or retry_after <= max(
            _SHORT_RETRY_UNITS * max(weight, 1.0) / rate + _SHORT_RETRY_FIXED,
            _SHORT_RETRY_WHOLE_SECONDS,
        )
        if self.model is _OPEN and not short:
            self.server_limit = held  # entering a window: what it held
            return
        self.server_limit = rate * self.window
        if self._bucket is not None:
            self._bucket.rate = rate
            self._bucket.capacity = max(1.0, self.burst * rate)
            if self.model is _BUCKET:
                self.why = f"the server's bucket: {self._bucket.capacity:.3g} at once, {rate:.3g}/s"

    def _grow(self, now: float) -> bool:
        """Raise a bucket's guess that was used in full, unrefused (`_GROW`)."""
        quiet = now - self._quiet_from
        b = self._bucket
        if b is None or quiet < self._grow_after:
            return False
        if self.charged - self._quiet_charged + 1.0 < _GROW_USED * b.rate * quiet:
            return False  # not binding: nothing shows the server would take more
        if self._grown is not None:
            self._grow_after = _GROW_AFTER  # the last raise was taken: the limit is higher
        self._grown = b.rate
        rate = b.rate * _GROW
        b.refill(now)
        b.rate, b.capacity = rate, max(1.0, self.burst * rate)  # refilled faster, no burst
        self.server_limit = rate * self.window
        self._quiet_from, self._quiet_charged = now, self.charged
        # The next refusal measures afresh: what it accepted before this is a lower bound.
        self._empty = None
        self.why = f"the server's bucket: {b.capacity:.3g} at once, {rate:.3g}/s (not refused)"
        return True

    def _overshot(self, now: float, sent_at: float, mark: float) -> bool:
        """A refusal while a raise is on trial: back to the rate before it,
        measured afresh from this refusal on; the next raise waits longer."""
        self._quiet_from, self._quiet_charged = now, self.charged
        before, b = self._grown, self._bucket
        if before is None or b is None or self.model is not _BUCKET:
            return False
        self._grown = None
        self._grow_after = min(_GROW_BACKOFF * self._grow_after, _GROW_AFTER_MAX)
        b.refill(now)
        b.rate, b.capacity = before, max(1.0, self.burst * before)
        b.level = min(b.level, 0.0)
        self.server_limit = before * self.window
        self._empty = (sent_at, mark, self._refused)
        self._empty_refusals = self._refusals
        self.why = f"the server's bucket: {b.capacity:.3g} at once, {before:.3g}/s"
        return True

    @property
    def guessing(self) -> bool:
        """The server's limit is a guess from refusals that named none."""
        return self._estimated and not self._headers

    # ---- model changes ----------------------------------------------------------

    def _enter_spent_window(self, now: float) -> None:
        # A window that is spent, its restart unknown (`_SPENT_UNITS`).
        self.server_limit = self._empty_held
        self._enter_window(now, "refused with no wait, nothing accepted since")
        self._level = 0.0
        self._probing, self._probe_every = True, _PROBE_FIRST
        self._full_at = now + self._probe_every

    def _enter_bucket(self, now: float, capacity: float, *, level: float | None = None) -> None:
        if level is None:
            level = capacity - min(capacity, self._recent(now))
        self._bucket = _Bucket(self.server_rate(), capacity, level, now)
        self.model = _BUCKET
        self._trial_at = None  # a reset is tried only by a window
        self.why = f"the server's bucket: {capacity:g} at once, {self.server_rate():g}/s"

    def _enter_window(self, now: float, why: str) -> None:
        self._capacity = self.server_limit or self.limit or 0.0
        self._level = self._capacity - self._log.in_window(now)
        self._full_at = None
        self.model = _WINDOW
        self.why = f"the server's window: {self._capacity:g} per {self.window:g}s ({why})"

    def _lift_ceiling(self, now: float) -> None:
        # The user's limit stays a ceiling on the rate; the server's bucket
        # may lift its burst up to what the server holds (never above told).
        if self.told is None:
            return
        capacity = min(self.told, max(self.capacity, 1.0))
        rate = self.told / self.window
        if self._ceiling is None:
            spent = self._recent(now)
            self._ceiling = _Bucket(rate, capacity, capacity - min(capacity, spent), now)
        else:
            self._ceiling.refill(now)
            self._ceiling.capacity = capacity
            self._ceiling.rate = rate

    def server_rate(self) -> float:
        limit = self.server_limit or self.limit
        return limit / self.window if limit else math.inf

    def _recent(self, now: float) -> float:
        # What we spent within the last second of refill: a bucket learned
        # mid-run has not had time to refill it.
        return self._log.in_since(now - 1.0, now)

    def accepted(self, now: float, mark: float) -> None:
        """An admission (its `commit` mark) was answered, not refused: one sent
        beyond what a sliding window held shows a fixed window, full again;
        a try of a shut budget opens it (see `_PROBE_FIRST`)."""
        if self._shut_until is not None and mark in self._shut_marks:
            if self._shut_allowed == 1:
                self._shut_allowed, self._shut_marks = _RESET_TRIAL, {}
            else:
                self._shut_until, self._shut_marks = None, {}
                self.model, self.why = _OPEN, "no limit known"
            return
        if self._trial_at is not None and mark in self._beyond:
            self._sliding, self._beyond = False, set()
            self._level = self._capacity - self._log.in_since(self._trial_at, now)
            self._trial_at = None
            self._probing = False

    @property
    def trying(self) -> bool:
        """A reset is being tried (see `_RESET_TRIAL`), or a shut budget
        (`_PROBE_FIRST`): answers are wanted."""
        return self._trial_at is not None or self._shut_until is not None

    def _sliding_level(self, now: float) -> float:
        return self._capacity - self._log.in_window(now)

    def _window_level(self, now: float) -> float:
        if self._full_at is not None and now >= self._full_at:
            if self._sliding is None and not self._headers:
                # Which kind of window is not known: try the reset (`_RESET_TRIAL`).
                self._trial_at = self._full_at
                self._beyond = set()
            elif self._sliding:
                self._level = 0.0  # a sliding window frees only what aged out
            else:
                # Full again by the reset: what we sent since is still spent.
                self._level = self._capacity - self._log.in_since(self._full_at, now)
            self._full_at = None
        sliding = self._sliding_level(now)
        if self._trial_at is not None:
            if len(self._beyond) < (1 if self._probing else _RESET_TRIAL):
                fixed = self._capacity - self._log.in_since(self._trial_at, now)
                return max(fixed, sliding)
            return sliding
        return max(self._level, sliding)

    def _window_wait(self, now: float, weight: float) -> float:
        need = min(weight, self._capacity) if self._capacity > 0 else weight
        if self._window_level(now) >= need - _EPS:
            return 0.0
        waits = [self._log.time_until_room(now, self._capacity, need)]
        if self._full_at is not None:
            waits.append(self._full_at - now)
        if self._trial_at is not None:
            waits.append(_RESET_TRIAL_POLL)
        return max(0.0, min(waits)) + _pad(now)
