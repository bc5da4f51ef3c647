"""A larger youngest GC generation while runs are going.

CPython's cyclic collector scans its youngest generation every 700 net
container allocations. A run allocates a few hundred per request (its
coroutines, futures, tasks, results and the HTTP client's objects), nearly
all freed by reference counting as soon as the request ends, so at thousands
of requests a second the collector ran every few requests and scanned the
objects in flight for nothing: 7% of the instructions of `conveyor run` per
request (issue 18, measured under callgrind).

While at least one run is going in the process, the first threshold is at
least `RUN_GEN0` (the other two are left as they are); when the last run
ends the thresholds it found come back, unless something else changed them
meanwhile (then they are left alone). Cycles are still collected, only in
larger, rarer sweeps; a threshold the user set higher, or collection turned
off (`gc.disable()`, threshold 0), is kept.

The threshold grows with the run's concurrency (`gen0_for`): every attempt
in flight holds about 75 young containers (measured at concurrency 1,000:
135,000 objects against 60,000 idle), all alive when a collection comes. Below
that live set, each collection of the youngest generation scans thousands of
live objects, promotes them all and frees none: at concurrency 1,000 and
10,000 the collector took 1.4 s of a 6 s run (60 sweeps of 20 ms, and 70 ms
for each of the next generation's); at 100,000, two sweeps, 70 ms (issue 18).
"""

from __future__ import annotations

import gc
import threading

__all__ = ["RUN_GEN0", "RunGC", "gen0_for"]

RUN_GEN0 = 10_000
"""The youngest generation's least threshold during a run (CPython's default is 700)."""
PER_SLOT = 100
"""Young containers counted for each attempt the run may have in flight."""
RUN_GEN0_MAX = 200_000
"""At most this: cyclic garbage (rare on the hot path) waits at most this long."""


def gen0_for(concurrency: int) -> int:
    """The youngest generation's threshold for a run of this concurrency."""
    return min(RUN_GEN0_MAX, max(RUN_GEN0, PER_SLOT * concurrency))


class _Shared:
    """The process's thresholds, held for every run at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs = 0
        self.saved: tuple[int, int, int] | None = None
        self.ours: tuple[int, int, int] | None = None

    def enter(self, gen0: int) -> None:
        """A run starts: the first threshold is raised to `gen0` unless it is
        higher (or 0), or someone else set it since we did; never lowered."""
        with self.lock:
            self.runs += 1
            current = gc.get_threshold()
            if self.ours is not None and current != self.ours:
                return  # changed meanwhile by someone else: theirs
            base = current if self.saved is None else self.saved
            if not 0 < base[0] < gen0 or (self.ours is not None and self.ours[0] >= gen0):
                return
            if self.saved is None:
                self.saved = current
            self.ours = (gen0, base[1], base[2])
            gc.set_threshold(*self.ours)

    def exit(self) -> None:
        with self.lock:
            self.runs -= 1
            if self.runs > 0 or self.saved is None:
                return
            if gc.get_threshold() == self.ours:
                gc.set_threshold(*self.saved)
            self.saved = self.ours = None


_SHARED = _Shared()


class RunGC:
    """One run's hold on the larger threshold: `enter()` once, `exit()` once
    (each further call does nothing, so both may sit on several end paths).
    `concurrency`: the most attempts the run may have in flight (`gen0_for`)."""

    __slots__ = ("_gen0", "_held")

    def __init__(self, concurrency: int = 0) -> None:
        self._held = False
        self._gen0 = gen0_for(concurrency)

    def enter(self) -> None:
        if not self._held:
            self._held = True
            _SHARED.enter(self._gen0)

    def exit(self) -> None:
        if self._held:
            self._held = False
            _SHARED.exit()
