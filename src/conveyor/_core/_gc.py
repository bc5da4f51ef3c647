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
"""

from __future__ import annotations

import gc
import threading

__all__ = ["RUN_GEN0", "RunGC"]

RUN_GEN0 = 10_000
"""The youngest generation's threshold during a run (CPython's default is 700)."""


class _Shared:
    """The process's thresholds, held for every run at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs = 0
        self.saved: tuple[int, int, int] | None = None
        self.ours: tuple[int, int, int] | None = None

    def enter(self) -> None:
        with self.lock:
            self.runs += 1
            if self.runs > 1:
                return
            current = gc.get_threshold()
            if 0 < current[0] < RUN_GEN0:
                self.saved = current
                self.ours = (RUN_GEN0, current[1], current[2])
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
    (each further call does nothing, so both may sit on several end paths)."""

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held = False

    def enter(self) -> None:
        if not self._held:
            self._held = True
            _SHARED.enter()

    def exit(self) -> None:
        if self._held:
            self._held = False
            _SHARED.exit()
