"""A sync items iterator pulled beside the event loop, not on it.

A generator may be slow (it reads a socket, a pipe, a database) or block for
good. Pulled on the loop, each `next()` stalls every item in flight (their
answers, their timeouts, the progress display) and a blocked one makes
Ctrl+C powerless. So an iterator that is not an in-memory collection is
pulled on its own daemon thread, at most `LOOKAHEAD` items ahead; the loop
awaits the items, so `stop()` can cancel that wait at any moment. A thread
blocked in `next()` forever is abandoned (a daemon: it does not keep the
process alive).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import AsyncIterator, Collection, Iterable, Iterator
from typing import Any

__all__ = ["LOOKAHEAD", "NOT_READY", "ThreadedSource", "needs_thread"]

LOOKAHEAD = 256
"""Items a generator is pulled ahead of the engine at most: enough that the
thread wakes once per half of it (a fast generator keeps its speed, and the
two threads hand over the GIL once per 128 items, not per 16), few enough
that memory stays bounded by concurrency and this buffer (a few hundred KB
of request lines)."""

_END = object()
NOT_READY = object()
"""What `ThreadedSource.ready` returns when no item is ready (await the next one)."""


def needs_thread(items: Iterable[Any]) -> bool:
    """False for in-memory collections (a list, a range, a dict): their items are
    ready at once; True for iterators and generators, which may take their time."""
    return not isinstance(items, Collection)


class _Failed:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class ThreadedSource(AsyncIterator[Any]):
    """`async for` over a sync iterable whose `next()` runs on a daemon thread."""

    def __init__(self, items: Iterable[Any], *, lookahead: int = LOOKAHEAD) -> None:
        self._items = items
        self._lookahead = max(1, lookahead)
        self._ready: deque[Any] = deque()
        self._cond = threading.Condition()
        self._waiter: asyncio.Future[None] | None = None
        self._waking = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._waiting = False  # the thread waits for room (set and cleared under the lock)

    def _start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._pull, name="conveyor-source", daemon=True)
        self._thread.start()

    def _pull(self) -> None:
        try:
            it: Iterator[Any] = iter(self._items)
            while True:
                with self._cond:
                    # Full: wait until the loop has taken half (one wake-up
                    # per half-buffer, not one per item).
                    while len(self._ready) >= self._lookahead and not self._closed:
                        self._waiting = True
                        self._cond.wait()
                        self._waiting = False
                    if self._closed:
                        return
                try:
                    item = next(it)
                except StopIteration:
                    self._push(_END)
                    return
                self._push(item)
        except BaseException as exc:  # the iterator raised: the engine reports it
            self._push(_Failed(exc))

    def _push(self, item: Any) -> None:
        with self._cond:
            self._ready.append(item)
            # Wake the loop only when it waits (one wake-up per batch of items).
            wake = self._waiter is not None and not self._waking
            self._waking = self._waking or wake
        loop = self._loop
        if wake and loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        with self._cond:
            waiter, self._waiter = self._waiter, None
            self._waking = False
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def ready(self) -> Any:
        """The next item if the thread has it ready, else `NOT_READY` (then await
        `__anext__`, which also ends the iteration and raises the source's error)."""
        if self._thread is None or not self._ready:
            return NOT_READY
        item = self._ready[0]
        if item is _END or isinstance(item, _Failed):
            return NOT_READY  # left for __anext__
        self._ready.popleft()
        self._room()
        return item

    def _room(self) -> None:
        """Wake the thread waiting for room once half the buffer is free. Never
        blocks the loop on the lock (the thread holds it while it pushes, and a
        blocked loop thread waits for the GIL too): if it is taken, the next
        item taken tries again (the thread, once it waits, holds it no more)."""
        if (
            self._waiting
            and len(self._ready) <= self._lookahead // 2
            and self._cond.acquire(blocking=False)
        ):
            try:
                self._cond.notify()
            finally:
                self._cond.release()

    def __aiter__(self) -> ThreadedSource:
        return self

    async def __anext__(self) -> Any:
        if self._thread is None:
            self._start()
        while True:
            if self._ready:  # deque ends are thread-safe: no lock on the fast path
                item = self._ready.popleft()
                self._room()
                break
            with self._cond:
                if self._ready:
                    continue
                assert self._loop is not None
                self._waiter = self._loop.create_future()
                waiter = self._waiter
                self._cond.notify()  # (a reader waiting for room: there is room)
            await waiter
        if item is _END:
            self._ready.appendleft(_END)  # every later call ends too
            raise StopAsyncIteration
        if isinstance(item, _Failed):
            raise item.exc
        return item

    async def aclose(self) -> None:
        """Stop pulling (a thread blocked in `next()` is left to finish on its own)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
