"""Attempt timeouts without a timer per attempt.

`asyncio.timeout()` arms and cancels one loop timer per attempt and runs an
async context manager around it: at thousands of attempts a second that is a
few per cent of the loop's time. Every attempt of a run has the same timeout,
so attempts that start within the same short slice of time (`grain`) share
one timer, armed for the earliest deadline among them. When it fires, the
attempts of that slice still running past their own deadline are cancelled
(and their attempt raises TimeoutError, see `ItemRunner._attempt`); any
still inside their time get a timer for the earliest of their deadlines.
An attempt that ends leaves its slice at once, so a slice holds only the
attempts in flight, and at most timeout/grain + 1 slices have a timer.

Only for invokers that end promptly when cancelled (`cancels_cleanly`): the
cancellation is delivered to the item's own task, as `asyncio.timeout` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

__all__ = ["Deadlines"]

# A slice is at most this long, and at most this share of the timeout.
_GRAIN_MAX = 0.25
_GRAIN_SHARE = 0.125
_EARLY = 0.001


class Deadlines:
    """The deadlines of the attempts in flight, for one loop and one timeout."""

    __slots__ = ("_grain", "_loop", "_slice", "_slice_end", "_timeout", "expired")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._loop = loop
        self._timeout = timeout
        self._grain = min(_GRAIN_MAX, timeout * _GRAIN_SHARE)
        self._slice: dict[asyncio.Task[Any], float] = {}
        self._slice_end = float("-inf")
        # Tasks cancelled for their deadline whose attempt has not seen it yet.
        self.expired: set[asyncio.Task[Any]] = set()

    def enter(self, task: asyncio.Task[Any]) -> dict[asyncio.Task[Any], float]:
        """Start `task`'s attempt now; returns the slice to `leave` it from."""
        now = self._loop.time()
        deadline = now + self._timeout
        if now >= self._slice_end:
            self._slice = {}
            self._slice_end = now + self._grain
            self._loop.call_at(deadline, self._fire, self._slice)
        self._slice[task] = deadline
        return self._slice

    def _fire(self, slice_: dict[asyncio.Task[Any], float]) -> None:
        # A loop may run a timer a little early (its clock's resolution).
        now = self._loop.time() + _EARLY
        later: float | None = None
        for task, deadline in list(slice_.items()):
            if deadline <= now:
                del slice_[task]
                self.expired.add(task)
                task.cancel()
            elif later is None or deadline < later:
                later = deadline
        if later is not None:
            self._loop.call_at(later, self._fire, slice_)
