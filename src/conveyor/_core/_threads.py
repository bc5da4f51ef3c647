"""Threads for sync task functions.

Unlike `ThreadPoolExecutor`, the pool never lets a stuck call starve the run:
a thread is started whenever queued calls outnumber the threads not busy. The
engine never has more than `concurrency` calls outstanding, so the pool stays
at that size plus any threads stuck in calls the engine gave up on (timeouts).
Python cannot kill a thread: a stuck one finishes whenever its call returns,
its result is dropped, and it is reused. Threads are daemons, so a call that
never returns does not keep the process alive at exit.

Completions reach the event loop in batches: one loop wake-up carries every
call that finished since the last one, which matters at high item rates.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["ThreadRunner"]

_Work = tuple[asyncio.Future[Any], contextvars.Context, Callable[[Any], Any], Any]


class ThreadRunner:
    def __init__(self, loop: asyncio.AbstractEventLoop, name: str = "conveyor") -> None:
        self._loop = loop
        self._name = name
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._alive = 0
        self._busy = 0
        self._pending = 0
        self._done: deque[tuple[asyncio.Future[Any], bool, Any]] = deque()
        self._wake_pending = False
        self._closed = False
        self._threads: set[threading.Thread] = set()

    @property
    def threads_started(self) -> int:
        return self._alive

    def submit(
        self, ctx: contextvars.Context, fn: Callable[[Any], Any], arg: Any
    ) -> asyncio.Future[Any]:
        """Run `fn(arg)` in `ctx` on a thread; the future resolves on the loop."""
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._work.put((fut, ctx, fn, arg))
        with self._lock:
            self._pending += 1
            spawn = self._alive - self._busy < self._pending
            if spawn:
                self._alive += 1
                n = self._alive
        if spawn:
            t = threading.Thread(target=self._worker, name=f"{self._name}-{n}", daemon=True)
            self._threads.add(t)
            t.start()
        return fut

    def _worker(self) -> None:
        try:
            while True:
                work = self._work.get()
                if work is None:
                    return
                fut, ctx, fn, arg = work
                with self._lock:
                    self._pending -= 1
                    self._busy += 1
                try:
                    if fut.cancelled():
                        continue  # given up on while still queued
                    try:
                        value, ok = ctx.run(fn, arg), True
                    except BaseException as exc:
                        value, ok = exc, False
                    self._complete(fut, ok, value)
                finally:
                    with self._lock:
                        self._busy -= 1
        finally:
            self._threads.discard(threading.current_thread())

    def _complete(self, fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
        self._done.append((fut, ok, value))
        if not self._wake_pending:
            self._wake_pending = True
            # A closed loop raises RuntimeError: nobody waits for this result any more.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        # Clear the flag first: a completion racing with this drain schedules
        # another drain rather than being left behind.
        self._wake_pending = False
        done = self._done
        while done:
            fut, ok, value = done.popleft()
            if fut.done():
                continue  # cancelled: the engine gave up on this call
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

    def shutdown(self, timeout: float | None = None) -> None:
        """Let idle threads exit; wait up to `timeout` seconds for busy ones."""
        if self._closed:
            return
        self._closed = True
        for _ in range(len(self._threads) + 1):
            self._work.put(None)
        if timeout:
            end = time.monotonic() + timeout
            for t in list(self._threads):
                t.join(max(0.0, end - time.monotonic()))
