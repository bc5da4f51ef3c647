"""Saturation of a self-hosted server: at most K served at once, the rest queue.

`Saturation` is the mock's GPU: a counting gate with a FIFO queue. It is told
the capacity at each call, so a server whose `MockConfig` is swapped while
running takes the new capacity at the next admission or release.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

__all__ = ["Saturation"]


class Saturation:
    """A FIFO gate: `busy` requests served, the rest waiting in order."""

    def __init__(self) -> None:
        self.busy = 0
        self._queue: deque[asyncio.Future[None]] = deque()

    @property
    def present(self) -> int:
        """Requests in the server: served plus queued."""
        return self.busy + len(self._queue)

    async def acquire(self, capacity: int, deadline: float | None) -> bool:
        """Wait for a slot; False when `deadline` seconds passed in the queue."""
        if self.busy < capacity and not self._queue:
            self.busy += 1
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(fut)
        try:
            async with asyncio.timeout(deadline):
                await fut
        except BaseException as exc:
            with contextlib.suppress(ValueError):
                self._queue.remove(fut)
            if fut.done() and not fut.cancelled():
                self.release(capacity)  # granted in the same instant: give it back
            if isinstance(exc, TimeoutError):
                return False
            raise
        return True

    def release(self, capacity: int) -> None:
        """One served request left; wake the next waiters that now fit."""
        self.busy -= 1
        while self._queue and self.busy < capacity:
            fut = self._queue.popleft()
            if fut.done():
                continue
            self.busy += 1
            fut.set_result(None)
