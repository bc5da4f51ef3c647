"""Threads for sync task functions.

The pool holds exactly `size` worker threads (the run's `concurrency`),
started as work arrives, like `ThreadPoolExecutor(max_workers=size)`. Each
worker calls `init()` once when it starts and `teardown()` once when the pool
closes (one database connection per worker, for example).

A stuck call never starves the run: when the engine gives up on a call that
is still running (a timeout), its thread is abandoned and a replacement is
started (which runs `init()` too), so `size` threads keep serving. Python
cannot kill a thread: an abandoned one finishes whenever its call returns,
its result is dropped, and it either goes back to serving (if the pool is
short of a worker) or runs `teardown()` and exits. Threads are daemons, so a
call that never returns does not keep the process alive at exit.

Completions reach the event loop in batches: one loop wake-up carries every
call that finished since the last one, which matters at high item rates.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["ThreadRunner", "WorkerInitError"]

log = logging.getLogger("conveyor")

_Work = tuple[asyncio.Future[Any], contextvars.Context, Callable[[Any], Any], Any]

# How long closing the pool waits for idle workers to run `teardown()`.
_TEARDOWN_WAIT = 30.0


class WorkerInitError(RuntimeError):
    """`worker_init` raised in a worker thread; the call it was to serve fails
    with this error (the worker tries `worker_init` again before its next call)."""


class ThreadRunner:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        name: str = "conveyor",
        *,
        size: int = 16,
        init: Callable[[], Any] | None = None,
        teardown: Callable[[], Any] | None = None,
    ) -> None:
        self._loop = loop
        self._name = name
        self._size = max(1, size)
        self._init = init
        self._teardown = teardown
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._alive = 0  # threads started and not exited
        self._serving = 0  # alive threads not stuck in an abandoned call
        self._started = 0
        self._running: dict[asyncio.Future[Any], threading.Thread] = {}
        self._abandoned: set[threading.Thread] = set()
        self._done: deque[tuple[asyncio.Future[Any], bool, Any]] = deque()
        self._wake_pending = False
        self._closed = False
        self._threads: set[threading.Thread] = set()

    @property
    def threads_started(self) -> int:
        """Threads started over the pool's life (replacements included)."""
        return self._started

    @property
    def size(self) -> int:
        return self._size

    def submit(
        self, ctx: contextvars.Context, fn: Callable[[Any], Any], arg: Any
    ) -> asyncio.Future[Any]:
        """Run `fn(arg)` in `ctx` on a thread; the future resolves on the loop."""
        fut: asyncio.Future[Any] = self._loop.create_future()
        fut.add_done_callback(self._on_done)
        self._work.put((fut, ctx, fn, arg))
        self._grow()
        return fut

    def _grow(self) -> None:
        with self._lock:
            if self._closed or self._serving >= self._size:
                return
            self._serving += 1
            self._alive += 1
            self._started += 1
            n = self._started
        t = threading.Thread(target=self._worker, name=f"{self._name}-{n}", daemon=True)
        self._threads.add(t)
        t.start()

    def _on_done(self, fut: asyncio.Future[Any]) -> None:
        # On the loop: a future cancelled while its call runs abandons that thread.
        if not fut.cancelled():
            return
        with self._lock:
            t = self._running.get(fut)
            if t is None or t in self._abandoned:
                return
            self._abandoned.add(t)
            self._serving -= 1
        self._grow()  # a replacement serves the queue meanwhile

    def _worker(self) -> None:
        me = threading.current_thread()
        ready = self._init is None
        init_error: BaseException | None = None
        if not ready:
            ready, init_error = self._run_init()
        try:
            while True:
                work = self._work.get()
                if work is None:
                    return
                fut, ctx, fn, arg = work
                if fut.cancelled():
                    continue  # given up on while still queued
                if not ready:
                    if init_error is None:
                        ready, init_error = self._run_init()
                    if not ready:
                        err = WorkerInitError(
                            f"worker_init failed in {me.name}: {init_error!r};"
                            " fix worker_init (it is tried again before the next call)"
                        )
                        err.__cause__ = init_error
                        init_error = None
                        self._complete(fut, False, err)
                        continue
                with self._lock:
                    if fut.cancelled():
                        continue  # given up on just now
                    self._running[fut] = me
                try:
                    value, ok = ctx.run(fn, arg), True
                except BaseException as exc:
                    value, ok = exc, False
                with self._lock:
                    self._running.pop(fut, None)
                    was_abandoned = me in self._abandoned
                    if was_abandoned:
                        self._abandoned.discard(me)
                        if self._serving < self._size and not self._closed:
                            self._serving += 1  # the pool is short: serve again
                            was_abandoned = False
                if was_abandoned:
                    return  # the replacement serves; this one retires
                self._complete(fut, ok, value)
        finally:
            if ready and self._teardown is not None:
                try:
                    self._teardown()
                except Exception:
                    log.exception("worker_teardown raised in %s (ignored)", me.name)
            with self._lock:
                self._alive -= 1
            self._threads.discard(me)

    def _run_init(self) -> tuple[bool, BaseException | None]:
        assert self._init is not None
        try:
            self._init()
        except Exception as exc:
            log.warning("worker_init raised in %s: %r", threading.current_thread().name, exc)
            return False, exc
        return True, None

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
        """Close the pool: idle workers run `teardown()` and exit.

        Waits up to `timeout` seconds for busy workers; with a `teardown`, waits
        (up to 30 s) for the workers not stuck in abandoned calls, so teardown has
        run when this returns. Stuck ones tear down when their call returns.
        """
        if self._closed:
            return
        with self._lock:
            self._closed = True
            stuck = set(self._abandoned)
        for _ in range(len(self._threads) + 1):
            self._work.put(None)
        wait = timeout
        if self._teardown is not None:
            wait = max(timeout or 0.0, _TEARDOWN_WAIT)
        if wait:
            end = time.monotonic() + wait
            for t in list(self._threads):
                if t in stuck or t is threading.current_thread():
                    continue
                t.join(max(0.0, end - time.monotonic()))
