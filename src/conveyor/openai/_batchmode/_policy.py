"""The decisions of batch mode, as pure objects over plain numbers and an
injected clock: how to cut lines into shards, when a shard may be submitted,
when to poll a batch, when a batch is stuck, and when the deadline says to
finish online. The driver (`_driver.py`) only carries them out.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..._base._exceptions import ConfigError

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_LINES",
    "DeadlinePolicy",
    "EnqueueBudget",
    "Line",
    "PollSchedule",
    "Shard",
    "ShardLimits",
    "Sharder",
    "StuckDetector",
]

DEFAULT_MAX_LINES = 50_000  # OpenAI: requests per batch
DEFAULT_MAX_BYTES = 200 * 1000 * 1000  # OpenAI: bytes per batch input file (200 MB)


@dataclass(frozen=True, slots=True)
class Line:
    """One request line as the sharder sees it: its key, its place, its group
    (endpoint URL and model: a batch holds one of each), its size in the
    file (newline included) and its estimated prompt tokens."""

    key: str
    index: int
    url: str
    model: str
    nbytes: int
    tokens: int


@dataclass
class Shard:
    """Lines that go into one file and one batch."""

    url: str
    model: str
    lines: list[Line] = field(default_factory=list)
    nbytes: int = 0
    tokens: int = 0


@dataclass(frozen=True)
class ShardLimits:
    """A provider's limits on one batch: lines, file bytes, and the enqueued
    prompt tokens per model (None: no token limit).

    A shard never holds more than `max_tokens` (else it could never be
    submitted); a single line over any limit gets a shard of its own (the
    provider then fails that one line, not its neighbours)."""

    max_lines: int = DEFAULT_MAX_LINES
    max_bytes: int = DEFAULT_MAX_BYTES
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.max_lines < 1:
            raise ConfigError("batch_max_lines", self.max_lines, "a whole number >= 1")
        if self.max_bytes < 1:
            raise ConfigError("batch_max_bytes", self.max_bytes, "a number of bytes >= 1")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ConfigError("max_enqueued_tokens", self.max_tokens, "a whole number >= 1")


class Sharder:
    """Cuts a stream of lines into shards under `ShardLimits`, one open shard
    per (url, model). `add` returns the shard it closed, if the line did not
    fit; `finish` returns the open ones."""

    def __init__(self, limits: ShardLimits) -> None:
        self.limits = limits
        self._open: dict[tuple[str, str], Shard] = {}

    def _fits(self, shard: Shard, line: Line) -> bool:
        lim = self.limits
        if not shard.lines:
            return True
        if len(shard.lines) + 1 > lim.max_lines or shard.nbytes + line.nbytes > lim.max_bytes:
            return False
        return lim.max_tokens is None or shard.tokens + line.tokens <= lim.max_tokens

    def add(self, line: Line) -> Shard | None:
        group = (line.url, line.model)
        shard = self._open.get(group)
        closed = None
        if shard is not None and not self._fits(shard, line):
            closed = shard
            shard = None
        if shard is None:
            shard = self._open[group] = Shard(line.url, line.model)
        shard.lines.append(line)
        shard.nbytes += line.nbytes
        shard.tokens += line.tokens
        return closed

    def tighten(
        self, *, lines: int | None = None, nbytes: int | None = None, tokens: int | None = None
    ) -> None:
        """Lower the limits (the provider refused a shard as too big); never below 1."""
        lim = self.limits
        max_tokens = lim.max_tokens
        if tokens:
            max_tokens = max(1, min(max_tokens or tokens, tokens))
        self.limits = ShardLimits(
            max_lines=max(1, min(lim.max_lines, lines)) if lines else lim.max_lines,
            max_bytes=max(1, min(lim.max_bytes, nbytes)) if nbytes else lim.max_bytes,
            max_tokens=max_tokens,
        )

    def finish(self) -> list[Shard]:
        out = [s for s in self._open.values() if s.lines]
        self._open.clear()
        return out

    def split(self, lines: Iterable[Line]) -> list[Shard]:
        """Every shard of `lines`, in the order they close."""
        out = [s for s in (self.add(line) for line in lines) if s is not None]
        return out + self.finish()


class EnqueueBudget:
    """The enqueued-token limit per model: tokens in batches not yet finished.

    `admit(model, tokens)` is True when a shard of `tokens` may be submitted
    now; `add`/`release` follow the batches. A shard alone always fits when
    nothing of its model is enqueued (the sharder keeps it under the limit).
    `shrink(model)` lowers the limit after the provider refused a batch for
    its enqueued tokens (our estimate was low, or other batches of the same
    organisation use the quota)."""

    def __init__(self, limit: int | None) -> None:
        self._limit = limit
        self._scale: dict[str, float] = {}
        self.enqueued: Counter[str] = Counter()

    def limit_for(self, model: str) -> float | None:
        if self._limit is None:
            return None
        return self._limit * self._scale.get(model, 1.0)

    def admit(self, model: str, tokens: int) -> bool:
        limit = self.limit_for(model)
        if limit is None:
            return True
        used = self.enqueued[model]
        return used == 0 or used + tokens <= limit

    def add(self, model: str, tokens: int) -> None:
        self.enqueued[model] += tokens

    def release(self, model: str, tokens: int) -> None:
        self.enqueued[model] = max(0, self.enqueued[model] - tokens)

    def learn(self, model: str, limit: int) -> None:
        """The provider stated its limit for `model`: use it from now on."""
        base = self._limit if self._limit is not None else limit
        self._limit = base
        self._scale[model] = min(self._scale.get(model, 1.0), limit / base)

    def shrink(self, model: str, factor: float = 0.8) -> None:
        self._scale[model] = max(0.05, self._scale.get(model, 1.0) * factor)


class PollSchedule:
    """When to poll each batch: never sooner than `interval` after the last
    poll; the gap doubles while nothing changes, up to `max_interval`, and is
    back to `interval` as soon as the batch moves."""

    def __init__(self, interval: float = 60.0, *, max_interval: float | None = None) -> None:
        if not interval > 0:
            raise ConfigError("poll", interval, "a number of seconds > 0")
        self.interval = interval
        self.max_interval = max(interval, max_interval or 5 * interval)
        self._gap: dict[str, float] = {}
        self._last: dict[str, float] = {}
        self._seen: dict[str, tuple[object, ...]] = {}

    def due(self, batch: str, now: float) -> float:
        """The time of the next poll of `batch` (a new batch waits one interval)."""
        last = self._last.get(batch)
        if last is None:
            self._last[batch] = now
            return now + self.interval
        return last + self._gap.get(batch, self.interval)

    def polled(self, batch: str, now: float, progress: tuple[object, ...]) -> None:
        """Record a poll and what it saw (status and counts)."""
        if self._seen.get(batch) == progress:
            self._gap[batch] = min(self.max_interval, self._gap.get(batch, self.interval) * 2)
        else:
            self._gap[batch] = self.interval
        self._seen[batch] = progress
        self._last[batch] = now

    def forget(self, batch: str) -> None:
        for d in (self._gap, self._last, self._seen):
            d.pop(batch, None)


class StuckDetector:
    """A batch is stuck when neither its status nor its request counts changed
    for `after` seconds (`validating`, `in_progress`, `finalizing`,
    `cancelling` alike)."""

    def __init__(self, after: float) -> None:
        if not after > 0:
            raise ConfigError("stuck_after", after, "a number of seconds > 0")
        self.after = after
        self._since: dict[str, tuple[tuple[object, ...], float]] = {}

    def observe(self, batch: str, progress: tuple[object, ...], now: float) -> bool:
        """Record what a poll saw; True when the batch is stuck."""
        seen = self._since.get(batch)
        if seen is None or seen[0] != progress:
            self._since[batch] = (progress, now)
            return False
        return now - seen[1] >= self.after

    def forget(self, batch: str) -> None:
        self._since.pop(batch, None)


@dataclass(frozen=True)
class DeadlinePolicy:
    """When to stop waiting for the batches and send what is left online.

    `online_rate` is the lines per second the online path is expected to
    sustain (from the run's limits); `margin` the seconds to keep in hand.
    The switch waits as long as it safely can (every line the batches answer
    first costs half): it happens when sending the rest online would take,
    with `safety` to spare, all the time left but the margin, unless the
    batches' own observed rate says they finish before that."""

    deadline: float
    online_rate: float
    margin: float
    safety: float = 1.5

    def online_seconds(self, unfinished: int) -> float:
        return unfinished / max(self.online_rate, 1e-9) * self.safety

    def go_online(self, *, now: float, unfinished: int, batch_rate: float | None) -> bool:
        """True when the unfinished lines must go online now to make the deadline."""
        if unfinished <= 0:
            return False
        left = self.deadline - now
        if left > self.online_seconds(unfinished) + self.margin:
            return False
        if batch_rate is not None and batch_rate > 0:
            batch_eta = unfinished / batch_rate * self.safety
            if batch_eta <= left - self.margin:
                return False  # the batches finish in time on their own
        return True

    def next_check(self, *, now: float, unfinished: int) -> float:
        """The latest time to look again (so the driver can sleep until then)."""
        return max(now, self.deadline - self.margin - self.online_seconds(unfinished))


def default_margin(span: float) -> float:
    """Seconds kept in hand before a deadline `span` seconds away: a tenth of
    it, at least 2 s, at most 30 min."""
    return min(1800.0, max(2.0, span / 10))


def online_rate(*, concurrency: int, rpm: float | None, latency: float = 1.0) -> float:
    """Lines per second the online path sustains: the concurrency over an
    assumed latency, capped by the requests-per-minute limit."""
    rate = concurrency / max(latency, 1e-3)
    if rpm:
        rate = min(rate, rpm / 60)
    return rate if math.isfinite(rate) else 1.0
