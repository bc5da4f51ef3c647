"""The congestion controller behind ``concurrency="auto"``: a pure policy.

For servers that queue instead of refusing (vLLM, SGLang, Ollama, TGI: no
429, no rate-limit headers), the number in flight that gives the most
throughput is the server's own capacity K: below it the GPU idles, above it
requests only wait (latency grows, throughput does not). The controller finds
it from latency, in the family of TCP's slow start, TCP Vegas and the
gradient limiters of Netflix's concurrency-limits:

- it is told each finished attempt: ``on_sample(now, latency, ok=, work=)``.
  `work` is the attempt's size when the caller knows it (its completion
  tokens): latency is then compared per unit of work, like with like.
  Samples are gathered in windows, each holding only attempts *started*
  after the last change of the limit (so a window measures one limit);
- **the queue signal**. With the work: the window's latency per unit of work
  (total latency / total work, which Little's law ties to the queue) over the
  lowest such figure seen. Without it, a wide spread of output lengths makes
  a window's mean a lottery, so the signal is the fast tail instead: queueing
  adds the same wait to every request, so the window's 10th percentile rises
  by that wait while its spread stays small; the wait over the window's mean
  service time gives ``ratio = mean / (mean - wait)``. Either way ``ratio``
  is how much longer requests take than they would unqueued;
- **slow start**: from 16 in flight the limit doubles each time a cohort
  of answers shows no queue (``ratio < 1 + ALPHA``). In a closed loop,
  throughput = in flight / latency (Little's law), so flat latency *is*
  throughput growing in proportion to the limit: one doubling per round trip,
  about log2(K / 16) round trips to the knee. It starts at 16, not at the old
  fixed default of 100: a small server that preempts past 2K would run at a
  fifth of its speed until that first cohort drained. Not told the work, a
  cohort is its fastest half; told it, the cohort is read whole (those sent
  at the change), or, once a quarter of it is in, for `OPENING_WAIT` (2)
  times its fast tail's latency, the least in which a queued short answer
  is back (the ramp is not held to the longest output's pace): its
  answers more than `OPENING_SPREAD` times slower per unit of work than the
  unqueued tail waited in a queue, and the others (with those in flight
  ahead of the cohort) count what the server serves at once. The fast half
  of a cohort never shows that queue (the slots take it first), so without
  the count slow start doubles past the knee, to 4K on a server that answers
  in waves. The first cohort so shows a server smaller than the start, a
  later one the knee; either way the limit falls to that count plus `MID`.
  A later cohort's clear queue never doubles: when the count reads within a
  small queue of the limit (those in flight at the change are counted ahead
  of it, and amid a wave of answers the engine still counts the wave in
  flight), slow start ends and the limit holds for avoidance to read; and a
  cohort whose queued answers have begun to come waits for enough of them,
  even when its count is complete.
  The first sign of queueing ends slow start (after the first cohort it goes
  on: a false alarm there costs one round trip);
- **avoidance** (Vegas/gradient), on windows of a whole cohort (as many
  answers as the limit: the first answers of a window are the fastest):
  above ``1 + BETA`` requests queue and the limit falls to the point that
  leaves a small queue, ``knee * (1 + MID)``: the knee measured, when told
  the work, by Little's law (the work answered per second by the wall clock
  over at least `SPAN_ROUNDS` round trips, times the unloaded latency per
  unit of work), else ``limit / ratio``; a measured knee within a small
  queue of the limit says the ratio read the waves of cohorts, and the limit
  holds; below ``1 + ALPHA`` it
  grows 10% a window, and after `_REOPEN` such windows in a row (the server
  got more capacity) slow start resumes; in between it holds, unless the
  last step up still raised throughput by more than half its size. Clear
  queueing (``ratio > 1 + 3 BETA``) is acted on after a quarter of a window;
- a share of errors or timeouts above `ERROR_SHARE` in a window multiplies
  the limit by `ERROR_FACTOR`, whatever the latency;
- a queue shorter than `MIN_WAIT` (10 ms) is no queue: on a fast endpoint
  that is the client reading answers one after another, and a fall would
  idle the endpoint. A fall keeps at least the knee plus that much queue;
- a window whose in-flight peak stayed well below the limit (the input, not
  the server, was the bottleneck) never raises it.

Every move is recorded in `history` as ``(time, limit, reason)``, the reason
starting with ``grew``, ``backed off: latency rose``, ``backed off: errors``
or ``backed off: timeouts``.

Oscillation margin: on a server of constant capacity K the limit settles in
the hold band, between ``K * (1 + ALPHA)`` and ``K * (1 + BETA)`` plus one
probing step of 10%: at most about 1.45 K, and not below K once converged, so
throughput stays at the server's maximum and the median latency at most
about 1.4 times unloaded. The tests pin this on a queueing model.
"""

from __future__ import annotations

import math
from collections import deque

from .._base._exceptions import ConfigError

__all__ = ["CongestionController"]

ALPHA = 0.08  # below 1 + ALPHA times unloaded: no queue, grow
BETA = 0.3  # above 1 + BETA: queueing, fall to a small queue
MID = 0.15  # the queue aimed at after a fall, as a share of the limit
FLOOR = 0.5  # one fall keeps at least this share of the limit
GROW = 0.1  # growth per window once queueing has been seen
ERROR_SHARE = 0.1
ERROR_FACTOR = 0.7
TAIL = 0.1  # the quantile whose shift shows the queue when the work is unknown
START = 16  # in flight at the start
# Answers told within this of each other (seconds) are one burst, read one
# after another by the client: the server answered them all at once.
BURST_GAP = 0.005
MIN_WINDOW = 32  # samples per decision in avoidance, at least
SLOW_START_WINDOW = 8
SLOW_START_GAIN = 1.5  # a doubling that raised throughput this much: keep doubling
OPENING_SPREAD = 1.8  # a cohort: unqueued within this of its fast tail
OPENING_WAIT = 2.0  # and waited for at most this many times its fast tail
COHORT_SHARE = 0.25  # once this share of it is in (a queued short one is back by then)
_COHORT_MIN = 8  # after the first, smaller cohorts are too few to count a queue in
SPAN_ROUNDS = 4  # the knee is measured over at least this many round trips
_REOPEN = 3  # clean windows in a row, in avoidance, before slow start resumes
_BINDING = 0.8  # a window whose in-flight peak stayed below this share never grows
_STUCK = 5  # windows at the minimum, still queueing, before unloaded is relearnt
_HISTORY = 512
# A queue shorter than this (seconds) is not worth a fall: on a fast endpoint
# (an internal API answering in 2 ms, a mock) it is the client's own turn-
# taking, answers read one after another by one event loop, and a fall to the
# "knee" there only leaves the endpoint idle. A GPU server's queue is a whole
# service time (tenths of a second to seconds), far above it.
MIN_WAIT = 0.01


class CongestionController:
    """Finds the in-flight limit of a server that queues; see the module doc."""

    def __init__(
        self, minimum: int = 1, maximum: int = 1000, *, initial: int | None = None
    ) -> None:
        for name, value in (("concurrency_min", minimum), ("concurrency_max", maximum)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(name, value, "a whole number >= 1")
        if maximum < minimum:
            raise ConfigError("concurrency_max", maximum, f">= concurrency_min ({minimum})")
        self.minimum = minimum
        self.maximum = maximum
        start = initial if initial is not None else START
        self._limit = float(max(minimum, min(maximum, start)))
        self.reason = "start"
        self.changes = 0
        self.history: deque[tuple[float, int, str]] = deque(maxlen=_HISTORY)
        self.slow_start = True
        self._base_mean: float | None = None  # latency per unit of work, unloaded
        self._base_tail: float | None = None  # the TAIL quantile of latency, unloaded
        self._base_unit_tail: float | None = None  # that of latency per unit of work
        self._changed_at = -math.inf
        self._x: list[float] = []  # latency per unit of work, this window
        self._sizes: list[float] = []
        self._sizes_lat: list[float] = []
        self._lat = 0.0
        self._work = 0.0
        self._unsized = 0  # samples without a work size
        self._errors = 0
        self._timeouts = 0
        self._peak = 0
        self._stuck = 0
        self._clean = 0
        self._first: float | None = None
        self._grew = False  # the last move was up
        self._rate: float | None = None  # throughput of the last binding window
        self._ceiling = 0.0  # the limit at which queueing was last seen
        # The last limit slow start read a whole cohort of without a queue: the
        # knee is at least that, for the falls that end slow start.
        self._served_at = 0.0
        self._opening = True  # the first decision is still to come
        self._in_flight = 0  # as last told
        self._ahead = 0  # in flight at the last change, sent before it
        self._burst = False  # the answers read at the change still come
        self._last_at = -math.inf  # when the last answer was told
        self._by_tail = math.inf  # the last window's queue read from its fast tail
        self._cohort_from = math.inf  # when the first counted attempt started
        self._starts: list[float] = []  # when this window's answered attempts started
        self._span_from: float | None = None  # the first answer since the last change
        self._span_work = 0.0  # the work answered since then (after the first)

    @property
    def limit(self) -> int:
        return int(self._limit)

    @property
    def unloaded(self) -> float | None:
        """The unloaded latency the controller compares with (per unit of
        work when it is told the work), or None before the first window."""
        return self._base_mean if self._base_mean is not None else self._base_tail

    @property
    def per_token(self) -> bool:
        """Whether latency is compared per unit of work (the work was told)."""
        return self._base_mean is not None

    def _need(self) -> int:
        if self.slow_start and self._unsized == 0:
            # The whole cohort: those sent at the change, not the ones after
            # them (sent as those ahead are answered: a round trip later).
            return max(SLOW_START_WINDOW, self.limit - self._ahead)
        if self.slow_start:
            return max(SLOW_START_WINDOW, self.limit // 2)
        return max(MIN_WINDOW, self.limit)

    def on_sample(
        self,
        now: float,
        latency: float,
        *,
        ok: bool = True,
        work: float | None = None,
        in_flight: int | None = None,
        timeout: bool = False,
    ) -> None:
        """One finished attempt: its latency, whether it succeeded (a failure
        that was a timeout says so), its size when known."""
        if ok:
            # The server's rate by the wall clock counts every answer, of
            # whichever limit: the knee is that rate times the unloaded latency.
            if self._span_from is None:
                self._span_from = now
            else:
                self._span_work += work if work is not None and work > 0 else 1.0
        if in_flight is not None:
            self._in_flight = in_flight
        last, self._last_at = self._last_at, now
        if now - latency < self._changed_at:
            # Started under an older limit: it measures that one. But one of
            # a burst the change came amid (the engine counts a wave of
            # answers in flight until it has read them all) had left the
            # server already: it is not ahead of the new cohort.
            if self._burst and now - last < BURST_GAP:
                self._ahead = max(0, self._ahead - 1)
            else:
                self._burst = False
            return
        self._burst = False
        if self._first is None:
            self.history.append((now, self.limit, self.reason))
            self._first = now
        self._cohort_from = min(self._cohort_from, now - latency)
        if ok:
            unit = work if work is not None and work > 0 else None
            if unit is None:
                self._unsized += 1
            self._x.append(latency / (unit or 1.0))
            self._sizes.append(unit or 1.0)
            self._sizes_lat.append(latency)
            self._starts.append(now - latency)
            self._lat += latency
            self._work += unit or 1.0
        else:
            self._errors += 1
            self._timeouts += timeout
        self._peak = max(self._peak, in_flight if in_flight is not None else self.limit)
        seen = len(self._x) + self._errors
        full = seen >= self._need() and not self._burst_begun(seen)
        if full or self._cohort_done(now, seen):
            self._decide(now)
        elif self._early(seen):
            self._decide(now, early=True)

    def _cohort_done(self, now: float, seen: int) -> bool:
        """In slow start, told the work, a cohort is waited for whole (its
        late answers are the queue, if any), but not past twice its fast
        tail's latency once a quarter of it is in: a request that queued
        waited at least until the first slot freed (a fast tail), so a short
        one among the queued is back by then, twice as slow per unit of work;
        the rest are long outputs, whose wait for the slowest would tie the
        ramp's cadence to the longest output (8 s a doubling on a server
        whose outputs take 0.5 to 8 s). Unless its queued answers have begun
        to come (they come in a burst, from the slots freed at once): then it
        waits for enough of them to count."""
        if not self.slow_start or self._unsized or len(self._x) < SLOW_START_WINDOW // 2:
            return False
        if seen < max(SLOW_START_WINDOW, int(COHORT_SHARE * (self.limit - self._ahead))):
            return False
        lat = sorted(self._sizes_lat)
        # From when the bulk of it was sent (its median start), not its first:
        # the driver's probe goes a round trip ahead of the first cohort, and
        # timed from the probe the cohort's unqueued half would pass for all.
        sent = sorted(self._starts)[len(self._starts) // 2]
        if now - sent < OPENING_WAIT * lat[int(TAIL * (len(lat) - 1))]:
            return False
        queued = self._queued_share()[1]
        return queued == 0 or queued >= max(2, len(self._x) // 10)

    def _burst_begun(self, seen: int) -> bool:
        """In slow start, told the work, the cohort's queued answers have begun
        to come but are still too few to count: they come in a burst (the slots
        freed at once), so the whole cohort waits for enough of them, as
        `_cohort_done` does (up to twice the cohort). The count of the cohort
        (the limit less those in flight at the change) is short when the change
        came amid a wave of answers: the wave's other attempts were still in
        flight to the client, answered by the server, so the first queued
        answer completed the count and a cohort with most of its second half
        queued read as a small queue (K64-deg doubled to 4K)."""
        if not self.slow_start or self._unsized or len(self._x) < SLOW_START_WINDOW // 2:
            return False
        if seen >= 2 * self._need():
            return False
        queued = self._queued_share()[1]
        return 0 < queued < max(2, len(self._x) // 10)

    def _queued_share(self) -> tuple[float, int, int]:
        """(the fast tail per unit of work, the answers queued past it, those
        served at once) of this window: queued is slower than
        `OPENING_SPREAD` times the tail."""
        x = sorted(self._x)
        tail = x[int(TAIL * (len(x) - 1))]
        if self._base_unit_tail is not None:
            # Against the unqueued tail learnt before: when those ahead took
            # most slots, most of the cohort queued, its own tail too.
            tail = min(tail, self._base_unit_tail)
        ref = OPENING_SPREAD * tail
        served = sum(
            1
            for v, u in zip(self._x, self._sizes, strict=True)
            if v <= ref or (v - tail) * u < MIN_WAIT
        )
        return tail, len(x) - served, served

    def _early(self, seen: int) -> bool:
        # Clear queueing need not wait for the whole cohort.
        quarter = SLOW_START_WINDOW if self.slow_start else max(SLOW_START_WINDOW, self.limit // 4)
        return seen >= quarter and seen % SLOW_START_WINDOW == 0

    def _ratio(self, *, learn: bool = True) -> tuple[float, float, float]:
        """(how much longer than unloaded this window's requests took, the
        window's figure that the unloaded one is the lowest of, its mean
        latency per unit of work). A partial window (`learn=False`: its first
        answers, the fastest) leaves the unloaded figures alone."""
        x = self._x
        tail = sorted(x)[int(TAIL * (len(x) - 1))]
        mean = sum(x) / len(x)
        if self._unsized:
            # Not told the work: the shift of the fast tail is the queue's wait.
            if self._base_tail is None or tail < self._base_tail:
                if not learn:
                    return 1.0, tail, mean  # nothing to compare with yet
                self._base_tail = tail
            wait = tail - self._base_tail
            return mean / max(mean - wait, self._base_tail, 1e-12), tail, mean
        # Told the work: latency per unit of work, over the window. The
        # unloaded figure is the lowest seen, each raised by two of its
        # standard errors: the lowest of many noisy windows is a lucky one,
        # and would read a queue into every later window.
        per = self._lat / self._work
        # Learnt from the answers that did not queue (a limit that leaves a
        # small queue, or cohorts answered in waves, would hold it in a mean).
        ref = OPENING_SPREAD * min(tail, self._base_unit_tail or tail)
        pairs = [(t, u) for t, u in zip(self._sizes_lat, self._sizes, strict=True) if t <= ref * u]
        if len(pairs) < SLOW_START_WINDOW // 2:
            pairs = list(zip(self._sizes_lat, self._sizes, strict=True))
        work = sum(u for _, u in pairs)
        clean = sum(t for t, _ in pairs) / work
        square = sum((t - clean * u) ** 2 for t, u in pairs)
        bound = clean + 2 * math.sqrt(square) / work
        if self._base_mean is None or bound < self._base_mean:
            if not learn:
                return 1.0, per, per
            self._base_mean = bound
        # A window that started queued (a server smaller than the start) has
        # no unqueued mean to learn, but its fastest answers were unqueued:
        # their shift, per unit of work, is the queue's wait too.
        if learn and (self._base_unit_tail is None or tail < self._base_unit_tail):
            self._base_unit_tail = tail
        base_tail = self._base_unit_tail if self._base_unit_tail is not None else tail
        wait = max(0.0, tail - base_tail)
        by_tail = per / max(per - wait, base_tail, 1e-12)
        self._by_tail = by_tail
        return max(per / self._base_mean, by_tail), per, per

    def _relearn(self, figure: float) -> None:
        if self._unsized == 0:
            self._base_mean = figure
            self._base_unit_tail = None
        else:
            self._base_tail = figure

    def _decide(self, now: float, *, early: bool = False) -> None:
        errors, peak, old = self._errors, self._peak, self._limit
        share = errors / (len(self._x) + errors)
        if share > ERROR_SHARE and (not early or errors >= SLOW_START_WINDOW):
            self._grew, self._clean, self.slow_start = False, 0, False
            what = "timeouts" if 2 * self._timeouts >= errors else "errors"
            self._set(now, old * ERROR_FACTOR, f"backed off: {what} {share:.0%} of a window")
            return
        if len(self._x) < SLOW_START_WINDOW // 2:
            if not early:
                self._restart()
            return
        counted = self._opening or self._limit >= _COHORT_MIN
        cohort = self.slow_start and not self._unsized and counted
        if cohort and self._cohort_queued(now, early=early):
            return
        if not early:
            self._opening = False
        self._by_tail = math.inf
        ratio, figure, mean = self._ratio(learn=not early)
        latency = self._lat / len(self._x)  # the window's mean, in seconds
        if ratio > 1 and latency * (1 - 1 / ratio) < MIN_WAIT:
            ratio = 1.0  # a queue of a few milliseconds: no queue to act on
        if early and ratio <= 1 + 3 * BETA:
            return  # only clear queueing is decided before the cohort is in
        binding = peak >= _BINDING * old and old < self.maximum
        if ratio > 1 + BETA:
            self.slow_start, self._clean, self._grew = False, 0, False
            if old <= self.minimum:
                self._stuck += 1
                if self._stuck >= _STUCK:  # the server itself got slower
                    self._relearn(figure)
                    self._stuck = 0
                self._restart()
                return
            self._ceiling = old  # queueing was seen here
            # Back to the knee plus a small queue. The knee is measured, by
            # the wall-clock rate, when told the work: the ratio reads a window
            # short (its first answers are its fastest) or long (cohorts sent
            # at once wait a whole service time for the last slots).
            # A measured knee that the limit is within a small queue of says
            # the reading was the waves of cohorts, not a queue: hold.
            measured = self._knee(now)
            waves = self._by_tail <= 1 + BETA  # the fast tail did not wait
            if measured is not None and waves and measured * (1 + MID) >= old:
                self._restart()
                return
            knee = measured if measured is not None else old / ratio
            # Just after slow start the knee is at least the limit whose cohort
            # was served at once (a window read amid the waves of a doubling
            # past the knee holds the doubling's queue: K512 fell from 788 to
            # 471, and grew back 10% a round trip of 3 s). Used once: a server
            # that lost capacity since is followed by the next fall.
            knee, self._served_at = max(knee, self._served_at), 0.0
            target = max(old * FLOOR, knee) * (1 + MID)
            # At least the knee plus a queue of MIN_WAIT (answers per second
            # by Little's law, times it): a fast endpoint keeps enough in
            # flight to stay busy between the client's turns.
            target = max(target, knee + old / latency * MIN_WAIT)
            self._set(now, min(target, old - 1), f"backed off: latency rose x{ratio:.2f}")
            return
        self._stuck = 0
        # Throughput by Little's law: in flight over latency (per unit of work).
        rate, before = old / mean, self._rate
        self._rate = rate if binding else None
        gain = rate / before if before is not None and binding else None
        if self.slow_start:
            proportional = gain is not None and gain >= SLOW_START_GAIN and ratio < 1 + BETA / 2
            if binding and (ratio < 1 + ALPHA or proportional):
                why = f"grew: slow start, latency x{ratio:.2f}"
                if gain is not None:
                    why += f", throughput x{gain:.2f}"
                self._served_at = old if ratio < 1 + ALPHA else 0.0
                self._set(now, old * 2, why)
                self._grew = True
            else:
                # Throughput no longer grows in proportion: the knee.
                self.slow_start = not binding
                self._restart()
            return
        self._served_at = 0.0  # a window without a fall: the next is read alone
        step: str | None = None
        if self._grew and gain is not None and gain > 1 + GROW / 2:
            # The last step up still raised throughput by more than half its
            # size: below the knee, whatever the latency read.
            step = f"grew: throughput x{gain:.2f}"
        elif ratio < 1 + ALPHA and binding:
            step = f"grew: latency x{ratio:.2f}"
        if step is not None:
            self._clean += 1
            if self._clean >= _REOPEN and old > self._ceiling:
                # Room for many steps (the server got more capacity): double again.
                self.slow_start, self._clean = True, 0
                self._set(now, old * 2, step + ", slow start again")
            else:
                self._set(now, max(old + 1, old * (1 + GROW)), step + ", probing up")
            self._grew = True
            return
        self._grew, self._clean = False, 0
        self._restart()

    def _cohort_queued(self, now: float, *, early: bool = False) -> bool:
        """A slow-start cohort, sent at once, against itself: a server serving
        fewer at once answers the rest a service time or more later (a FIFO
        queue: twice the fast tail for a like answer, where the unqueued spread,
        per unit of work, stays within 1.8 of it). The fast half of a cohort
        never shows it, and before the first window nothing is learnt to
        compare with. True when it backed off (to the count served at once,
        at least half the limit, plus a small queue). After the first cohort
        slow start goes on and the unloaded figures are left to the next
        window (a false alarm costs a round trip); after a later one, the
        knee is found."""
        tail, queued, served = self._queued_share()
        served += self._ahead  # those ahead were served before the cohort
        # Before the cohort is in (its first answers), only a clear queue.
        enough = max(4, len(self._x) // 4) if early else max(2, len(self._x) // 10)
        if queued < enough:
            return False
        if served * (1 + BETA) > self._limit:
            if self._opening or early:
                return False
            # A clear queue, yet as many served as within a small queue of the
            # limit (those in flight at the change are counted ahead of the
            # cohort, some of them answered already): no doubling past a queue.
            # Slow start ends and the limit holds; avoidance reads the next
            # window (a fall to the knee if it queues).
            self.slow_start, self._ceiling, self._grew = False, self._limit, False
            self._restart()
            return True
        # With outputs of mixed lengths the answers do not come in waves (a
        # short one frees its slot early): `served` is then no count of the
        # slots, so one fall keeps half.
        if self._opening:
            # Its fast tail was unqueued: the next windows' queue is read against it.
            self._base_unit_tail = tail
        else:
            self.slow_start, self._ceiling, self._grew = False, self._limit, False
        self._opening = False
        target = max(served, self._limit * FLOOR) * (1 + MID)
        first = len(self._x)
        self._set(now, target, f"backed off: latency rose, {queued} of the first {first} queued")
        return True

    def _set(self, now: float, value: float, reason: str) -> None:
        value = max(float(self.minimum), min(float(self.maximum), value))
        if value < self._limit:
            self._rate = None  # a fall is not a step to measure a gain against
        if int(value) != self.limit:
            self.changes += 1
            self.reason = reason
            self.history.append((now, int(value), reason))
            self._changed_at = now
            self._span_from, self._span_work = None, 0.0
            # Still in flight, sent before the change: ahead of the new cohort.
            self._ahead = max(0, self._in_flight - 1)
            self._burst = True
        self._limit = value
        self._restart()

    def _restart(self) -> None:
        self._x = []
        self._sizes = []
        self._sizes_lat = []
        self._starts = []
        self._lat = 0.0
        self._work = 0.0
        self._unsized = 0
        self._errors = 0
        self._timeouts = 0
        self._peak = 0
        self._cohort_from = math.inf

    def _knee(self, now: float) -> float | None:
        """How many the server serves at once, by Little's law: the work it
        answers per second (by the wall clock: every answer since the last
        change, of whichever limit) times the unloaded latency per unit of
        work. Only when told the work: without it, a window's mean is that of
        its first answers, the short ones. None while the span is too short."""
        span = now - self._span_from if self._span_from is not None else 0.0
        if self._unsized or self._base_mean is None or self._span_work < 8 or not self._x:
            return None
        # Answers come in bursts (a cohort's, slot by slot): a span of a few
        # round trips, or one burst too many is counted as the rate.
        fastest = sorted(self._sizes_lat)
        if span < SPAN_ROUNDS * fastest[int(TAIL * (len(fastest) - 1))]:
            return None
        unloaded = self._base_mean
        if self._base_unit_tail is not None:
            # A mean first learnt queued (a server smaller than the start) is
            # too long; an unqueued mean stays within 1 + BETA of its fast tail.
            unloaded = min(unloaded, (1 + BETA) * self._base_unit_tail)
        # Better, this window's own unqueued answers (as a cohort's are told
        # apart): a base learnt at a limit that left a small queue holds it.
        ref = OPENING_SPREAD * self._queued_share()[0]
        lat = work = 0.0
        for t, u in zip(self._sizes_lat, self._sizes, strict=True):
            if t <= ref * u:
                lat, work = lat + t, work + u
        if work > 0 and len(self._x) >= SLOW_START_WINDOW:
            unloaded = min(unloaded, lat / work)
        return self._span_work / span * unloaded

    def figures(self) -> dict[str, object]:
        """For the progress snapshot and the report."""
        return {
            "concurrency_auto": True,
            "concurrency_reason": self.reason,
            "concurrency_changes": self.changes,
            "unloaded_latency": self.unloaded,
        }
