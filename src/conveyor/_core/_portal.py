"""Running the async engine from sync code, as `trio.run` does.

With no event loop in the calling thread, the portal owns a fresh loop and
runs it right here, with Ctrl+C routed to a graceful stop. When a loop is
already running in this thread (Jupyter, an async web handler calling sync
code), blocking it would deadlock, so the portal runs its own loop on a helper
thread and waits for it; Ctrl+C still reaches the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from typing import TYPE_CHECKING, Any, TypeVar

from .._base._exceptions import ConfigError
from ._outcome import StopKind

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

__all__ = ["Control", "Portal"]

T = TypeVar("T")

# Seconds leftover tasks get to honour cancellation when the portal closes.
_LEFTOVER_WAIT = 2.0


class Control:
    """Routes Ctrl+C to the engine: first press stops, second aborts."""

    def __init__(self) -> None:
        self._engine: Any = None
        self.presses = 0

    def attach(self, engine: Any) -> None:
        self._engine = engine
        for _ in range(self.presses):
            engine.stop(StopKind.INTERRUPT)

    def interrupt(self) -> None:
        self.presses += 1
        if self._engine is not None:
            self._engine.stop(StopKind.INTERRUPT)


def new_loop() -> asyncio.AbstractEventLoop:
    """A fresh event loop: uvloop's when it is installed (`conveyor[fast]`), else asyncio's.

    `CONVEYOR_LOOP=asyncio` (or `uvloop`) chooses explicitly."""
    choice = os.environ.get("CONVEYOR_LOOP", "auto").strip().lower()
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise ConfigError(
                    "CONVEYOR_LOOP", choice, "'asyncio', or install uvloop (conveyor[fast])"
                ) from None
        else:
            # Typed here: without uvloop installed (CI), mypy sees the module as Any.
            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
            return loop
    return asyncio.new_event_loop()


class Portal:
    def __init__(self, signals: tuple[signal.Signals, ...] = (signal.SIGINT,)) -> None:
        self.control = Control()
        self._signals = signals
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def threaded(self) -> bool:
        return self._thread is not None

    def __enter__(self) -> Portal:
        try:
            asyncio.get_running_loop()
            running = True
        except RuntimeError:
            running = False
        loop = new_loop()
        self._loop = loop
        if running:
            ready = threading.Event()

            def serve() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            self._thread = threading.Thread(target=serve, name="conveyor-portal", daemon=True)
            self._thread.start()
            ready.wait()
        return self

    def call(self, make: Callable[[Control], Coroutine[Any, Any, T]]) -> T:
        loop = self._loop
        if loop is None:
            raise RuntimeError("Portal used outside its with-block")
        coro = make(self.control)
        if self._thread is not None:
            fut = asyncio.run_coroutine_threadsafe(coro, loop)
            while True:
                try:
                    return fut.result()
                except KeyboardInterrupt:
                    loop.call_soon_threadsafe(self.control.interrupt)
        installed: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in self._signals:
                try:
                    previous = signal.getsignal(sig)
                    loop.add_signal_handler(sig, self.control.interrupt)
                    installed[sig] = previous
                except (NotImplementedError, RuntimeError, ValueError):
                    pass
        try:
            return loop.run_until_complete(coro)
        finally:
            for sig, previous in installed.items():
                loop.remove_signal_handler(sig)
                if previous is not None:
                    signal.signal(sig, previous)

    def __exit__(self, *exc: object) -> None:
        loop, self._loop = self._loop, None
        if loop is None:
            return
        if self._thread is not None:

            async def drain() -> None:
                await _cancel_leftovers()
                await loop.shutdown_asyncgens()

            asyncio.run_coroutine_threadsafe(drain(), loop).result()
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join()
            self._thread = None
        else:
            loop.run_until_complete(_cancel_leftovers())
            loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


async def _cancel_leftovers() -> None:
    me = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not me]
    for t in tasks:
        t.cancel()
    if tasks:
        # Bounded: a task function that swallows CancelledError must not
        # keep the run from returning; it is abandoned with a warning.
        done, stuck = await asyncio.wait(tasks, timeout=_LEFTOVER_WAIT)
        for t in done:
            if not t.cancelled():
                t.exception()
        if stuck:
            logging.getLogger("conveyor").warning(
                "%d task(s) ignored cancellation (a task function swallowing "
                "CancelledError?); abandoned",
                len(stuck),
            )
            _close_abandoned(stuck)


_ABANDONED = " (ignored cancellation; closed with its loop)"


def _close_abandoned(stuck: set[asyncio.Task[Any]]) -> None:
    """End tasks that outlive their loop now, not at interpreter exit.

    The loop is about to close, so they can never resume: their coroutines are
    closed here (``finally`` blocks run now), and asyncio's "Task was destroyed
    but it is pending!" for them, which would otherwise be printed whenever
    they are collected (at exit, long after the run), is not repeated: the
    warning above said it once."""
    loop = asyncio.get_running_loop()
    for task in stuck:
        task.set_name(task.get_name() + _ABANDONED)
        with contextlib.suppress(RuntimeError):  # a coroutine that ignores GeneratorExit
            task.get_coro().close()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        task = context.get("task")
        if isinstance(task, asyncio.Task) and task.get_name().endswith(_ABANDONED):
            return
        loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
