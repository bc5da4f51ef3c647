"""Time as an injected dependency, so limiters and the engine can be tested
without sleeping."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

__all__ = ["Clock", "FakeClock", "SystemClock"]


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real monotonic clock and `asyncio.sleep`."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class FakeClock:
    """A virtual clock: `sleep` advances time instead of waiting.

    Sleepers wake in deadline order, each after yielding to the loop, so
    work that is runnable now runs before virtual time moves on. Only waits
    taken through this clock are virtual; real I/O timeouts still use the
    loop's own time.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += max(0.0, seconds)

    async def sleep(self, seconds: float) -> None:
        deadline = self._now + max(0.0, seconds)
        # Let everything runnable at the current instant run first.
        for _ in range(3):
            await asyncio.sleep(0)
        # Concurrent sleepers overlap: time moves to the latest deadline reached,
        # not to the sum of all waits.
        self._now = max(self._now, deadline)
