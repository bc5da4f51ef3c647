"""Plumbing of an exec run: delivering outcomes to `on_job`, and stopping on Ctrl+C/SIGTERM
even while the source waits for its next input."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from typing import TYPE_CHECKING, Any

from .._core._outcome import StopKind
from ._jobs import JobOutcome, T, log

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator

    from .._core._portal import Control


class _Deliver:
    """Calls `on_job` one outcome at a time, in completion or input order.

    On a worker thread: printing to a slow pipe must not stall the event
    loop, where timeouts and Ctrl+C are handled.
    """

    def __init__(self, on_job: Callable[[JobOutcome], Any] | None, keep_order: bool) -> None:
        self._on_job = on_job
        self._keep_order = keep_order and on_job is not None
        self._pending: dict[int, JobOutcome] = {}
        self._next = 0
        self._failed = False

    async def push(self, index: int, outcome: JobOutcome) -> None:
        if not self._keep_order:
            await self._call(outcome)
            return
        self._pending[index] = outcome
        while self._next in self._pending:
            await self._call(self._pending.pop(self._next))
            self._next += 1

    async def drain(self) -> None:
        for i in sorted(self._pending):
            await self._call(self._pending.pop(i))

    async def _call(self, outcome: JobOutcome) -> None:
        if self._on_job is None:
            return
        try:
            await asyncio.to_thread(self._on_job, outcome)
        except Exception as exc:
            if not self._failed:
                self._failed = True
                log.warning("on_job raised %s: %s (ignored)", type(exc).__name__, exc)


class _StopRelay:
    """Stands between Ctrl+C and the engine, so a source waiting for input ends too.

    The engine stops admitting on Ctrl+C but waits for its source's next
    item; with `tail -f | conveyor exec` that item never comes.
    """

    def __init__(self, control: Control | None) -> None:
        self._control = control
        self._engine: Any = None
        self.stopped = asyncio.Event()

    def attach(self, engine: Any) -> None:  # called by AsyncStream.attach_control
        self._engine = engine
        if self._control is not None:
            self._control.attach(self)  # presses so far are replayed as stop() calls

    def stop(self, kind: StopKind | str = StopKind.INTERRUPT) -> None:
        self.stopped.set()
        self._engine.stop(kind)


async def _until(source: AsyncIterator[T], stopped: asyncio.Event) -> AsyncGenerator[T, None]:
    """Items of `source` until a stop is requested, even one waiting for its next item."""
    stop = asyncio.ensure_future(stopped.wait())
    nxt: asyncio.Future[T] | None = None
    try:
        while not stopped.is_set():
            nxt = asyncio.ensure_future(anext(source))
            await asyncio.wait((nxt, stop), return_when=asyncio.FIRST_COMPLETED)
            if not nxt.done():
                return
            try:
                item = nxt.result()
            except StopAsyncIteration:
                return
            nxt = None
            yield item
    finally:
        stop.cancel()
        if nxt is not None and not nxt.done():
            nxt.cancel()
            # Let the source run its cleanup (close a pipe) before we go on.
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, Exception):
                await nxt


@contextlib.contextmanager
def _stop_signals(control: Control | None) -> Iterator[None]:
    """SIGTERM and SIGHUP abort at once: left alone they would orphan every job's group."""
    if control is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()

    def abort() -> None:
        log.warning("terminated: killing every running job now")
        control.interrupt()
        control.interrupt()

    installed: list[tuple[signal.Signals, Any]] = []
    for sig in (signal.SIGTERM, signal.SIGHUP):
        previous = signal.getsignal(sig)
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, abort)
            installed.append((sig, previous))
    try:
        yield
    finally:
        for sig, previous in installed:
            loop.remove_signal_handler(sig)
            if previous is not None:
                signal.signal(sig, previous)
