"""The congestion controller behind ``concurrency="auto"``: a pure policy.

For servers that queue instead of refusing (vLLM, SGLang, Ollama, TGI: no
429, no rate-limit headers), the number in flight that gives the most
throughput is the server's own capacity K: below it the GPU idles, above it
requests only wait (latency grows, throughput does not). The controller finds
it from latency, in the family of TCP Vegas and the gradient limiters of
Netflix's concurrency-limits:

- it is told each finished attempt: ``on_sample(now, latency, ok=, work=)``.
  `work` is the attempt's size when the caller knows it (tokens of
  `max_tokens`): latency is compared per unit of work, like with like;
- samples are gathered in windows, each holding only attempts *started*
  after the last change of the limit (so a window measures one limit), and a
  whole cohort of them (as many as the limit: the first answers are the
  fastest); clear queueing is acted on after a quarter of one. The
  window's mean latency per unit of work (which Little's law ties to the
  queue) is compared with the unloaded latency, the lowest window figure
  seen. Without the work, a wide spread of output lengths makes that lowest
  figure a lucky window of short outputs, and the limit is held too low: pass
  `work` where it is known;
- ``ratio = median / unloaded``: below ``1 + ALPHA`` the queue is empty and
  the limit grows (doubling until the first sign of queueing, as TCP's slow
  start; then +10% a window); above ``1 + BETA`` requests queue, and the limit
  falls to the point that leaves a small queue, ``limit / ratio * (1 + MID)``
  (the gradient step); in between it holds, unless the last step up still
  raised throughput by more than half its size (then it probes up again).
  A share of errors or timeouts above `ERROR_SHARE` multiplies it by
  `ERROR_FACTOR`;
- a window whose in-flight peak stayed well below the limit (the input, not
  the server, was the bottleneck) never raises it.

Oscillation margin: on a server of constant capacity K the limit settles in
the hold band, between ``K * (1 + ALPHA)`` and ``K * (1 + BETA)`` plus one
probing step of 10%: at most about 1.4 K, and not below K once converged, so
throughput stays at the server's maximum and the median latency at most
about 1.3 times unloaded. The tests pin this on a queueing model.
"""

from __future__ import annotations

import math
from collections import deque

from .._base._exceptions import ConfigError

__all__ = ["CongestionController"]

ALPHA = 0.08  # below 1 + ALPHA times unloaded: no queue, grow
BETA = 0.3  # above 1 + BETA: queueing, fall to a small queue
MID = 0.15  # the queue aimed at after a fall, as a share of the limit
GROW = 0.1  # growth per window once queueing has been seen
ERROR_SHARE = 0.1
ERROR_FACTOR = 0.7
MIN_WINDOW = 32  # samples per decision, at least
SLOW_START_WINDOW = 8  # before the first sign of queueing
_BINDING = 0.8  # a window whose in-flight peak stayed below this share never grows
_STUCK = 5  # windows at the minimum, still queueing, before unloaded is relearnt
_HISTORY = 512


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
        start = initial if initial is not None else min(4, maximum)
        self._limit = float(max(minimum, min(maximum, start)))
        self.unloaded: float | None = None  # per unit of work
        self.reason = "start"
        self.changes = 0
        self.history: deque[tuple[float, int, str]] = deque(maxlen=_HISTORY)
        self._congested = False
        self._changed_at = -math.inf
        self._latencies: list[float] = []
        self._work = 0.0
        self._total = 0.0
        self._errors = 0
        self._peak = 0
        self._stuck = 0
        self._first: float | None = None
        self._window_start: float | None = None
        self._rate: float | None = None  # answers/s of the last full window
        self._grew = False  # the last move was up

    @property
    def limit(self) -> int:
        return int(self._limit)

    def _need(self) -> int:
        # A whole cohort: the first answers of a window are the fastest ones.
        # Slow start decides on smaller windows: a wrong doubling is seen at once.
        return max(MIN_WINDOW if self._congested else SLOW_START_WINDOW, self.limit)

    def on_sample(
        self,
        now: float,
        latency: float,
        *,
        ok: bool = True,
        work: float = 1.0,
        in_flight: int | None = None,
    ) -> None:
        """One finished attempt: its latency, whether it succeeded, its size."""
        if now - latency < self._changed_at:
            return  # started under an older limit: it measures that one
        if self._first is None:
            self.history.append((now, self.limit, self.reason))
            self._first = now
        if self._window_start is None:
            self._window_start = now
        if ok:
            unit = work if work > 0 else 1.0
            self._latencies.append(latency)
            self._work += unit
            self._total += latency
        else:
            self._errors += 1
        self._peak = max(self._peak, in_flight if in_flight is not None else self.limit)
        seen = len(self._latencies) + self._errors
        if seen >= self._need():
            self._decide(now)
        elif seen >= max(MIN_WINDOW, self.limit // 4) and seen % MIN_WINDOW == 0:
            self._decide(now, early=True)

    def _decide(self, now: float, *, early: bool = False) -> None:
        lat, errors, peak = self._latencies, self._errors, self._peak
        share = errors / (len(lat) + errors)
        old = self._limit
        if share > ERROR_SHARE and (not early or errors >= MIN_WINDOW // 2):
            self._grew = False
            self._set(now, old * ERROR_FACTOR, f"errors {share:.0%} of a window: backing off")
            return
        if len(lat) < SLOW_START_WINDOW // 2:
            if not early:
                self._restart(now)
            return
        # Latency per unit of work over the window: by Little's law it grows
        # in proportion to the queue, whatever the spread of the samples.
        # Latency per unit of work over the window: by Little's law its mean
        # grows in proportion to the queue.
        median = self._total / self._work
        if self.unloaded is None or median < self.unloaded:
            self.unloaded = median
        ratio = median / self.unloaded
        if early and ratio <= 1 + 3 * BETA:
            return  # only clear queueing is decided before the cohort is in
        if ratio > 1 + BETA:
            self._congested = True
            if old <= self.minimum:
                self._stuck += 1
                if self._stuck >= _STUCK:  # the server itself got slower
                    self.unloaded, self._stuck = median, 0
                self._restart(now)
                return
            self._grew = False
            target = old * max(0.5, 1 / ratio) * (1 + MID)
            self._set(now, min(target, old - 1), f"latency x{ratio:.2f} unloaded: queueing")
            return
        self._stuck = 0
        start = self._window_start if self._window_start is not None else now
        rate = len(lat) / max(now - start, 1e-9)
        before, self._rate = self._rate, rate
        binding = peak >= _BINDING * old and old < self.maximum
        if self._grew and before is not None and binding and rate > before * (1 + GROW / 2):
            # Latency rose a little but throughput still grows: not the knee yet.
            self._set(now, max(old + 1, old * (1 + GROW)), f"throughput +{rate / before - 1:.0%}")
            self._grew = True
            return
        if ratio < 1 + ALPHA and binding:
            if self._congested:
                grown = max(old + 1, old * (1 + GROW))
                self._set(now, grown, f"latency x{ratio:.2f} unloaded: probing up")
            else:
                self._set(now, old * 2, f"latency x{ratio:.2f} unloaded: slow start")
            self._grew = True
            return
        self._grew = False
        self._restart(now)

    def _set(self, now: float, value: float, reason: str) -> None:
        value = max(float(self.minimum), min(float(self.maximum), value))
        if int(value) != self.limit:
            self.changes += 1
            self.reason = reason
            self.history.append((now, int(value), reason))
            self._changed_at = now
        self._limit = value
        self._restart(now)

    def _restart(self, now: float) -> None:
        del now
        self._window_start = None
        self._latencies = []
        self._work = 0.0
        self._total = 0.0
        self._errors = 0
        self._peak = 0

    def figures(self) -> dict[str, object]:
        """For the progress snapshot and the report."""
        return {
            "concurrency_auto": True,
            "concurrency_reason": self.reason,
            "concurrency_changes": self.changes,
            "unloaded_latency": self.unloaded,
        }
