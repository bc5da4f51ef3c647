"""User callbacks, called safely: a callback that raises is logged once and
ignored, and never stops the run."""

from __future__ import annotations

import asyncio
import inspect
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from .._base._types import Result

__all__ = ["BatchInfo", "ProgressCallback"]

log = logging.getLogger("conveyor")

_EVENTS = ("on_start", "on_result", "on_error", "on_batch")


@dataclass
class BatchInfo:
    """One finished wave in `waves` mode (a fixed batch of `batch_size` items).

    `number` is 1-based; `total` is the number of waves when the input has a
    length, else None; `completed` counts items finished in all waves so far.
    """

    number: int
    total: int | None
    results: list[Result[Any]] = field(repr=False)
    completed: int = 0

    @property
    def succeeded(self) -> int:
        return sum(1 for r in self.results if r.ok)


class ProgressCallback:
    """Subclass and override what you need; every method is optional.

    Any object with some of these method names works too. Methods run on the
    event loop thread: keep them quick. `on_batch` may be `async`.
    """

    def on_start(self, index: int, key: str, item: Any) -> None:
        """An item is about to make its first attempt."""

    def on_result(self, result: Result[Any]) -> None:
        """An item reached its terminal result (any status)."""

    def on_error(self, result: Result[Any]) -> None:
        """An item ended without success (failed, timed out, cancelled)."""

    def on_batch(self, batch: BatchInfo) -> None:
        """A wave finished (waves mode only), before the next one starts."""


class Dispatcher:
    """Fans events out to every callback, isolating their failures."""

    def __init__(self, targets: Sequence[Any]) -> None:
        self._hooks: dict[str, list[Callable[..., Any]]] = {e: [] for e in _EVENTS}
        for t in targets:
            for event in _EVENTS:
                fn = getattr(t, event, None)
                if callable(fn) and not _is_base_noop(t, event):
                    self._hooks[event].append(fn)
        self._start = self._hooks["on_start"]
        self._result = self._hooks["on_result"]
        self._error = self._hooks["on_error"]
        self._batch = self._hooks["on_batch"]
        self._reported: set[tuple[int, str]] = set()
        self.failures = 0
        # Called when a callback raises KeyboardInterrupt/SystemExit: the run
        # stops as on Ctrl+C instead of the exception escaping the engine.
        self.on_interrupt: Callable[[], object] | None = None

    def _raised(self, fn: Callable[..., Any], event: str, exc: BaseException) -> None:
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            if self.on_interrupt is None:
                raise exc
            log.warning("callback %s raised %s: stopping", event, type(exc).__name__)
            self.on_interrupt()
            return
        self._failed(fn, event, exc)

    def _failed(self, fn: Callable[..., Any], event: str, exc: BaseException) -> None:
        self.failures += 1
        ident = (id(fn), event)
        if ident not in self._reported:
            self._reported.add(ident)
            log.warning(
                "callback %s raised %s: %s (ignored; further errors from it are not logged)",
                getattr(fn, "__qualname__", repr(fn)),
                type(exc).__name__,
                exc,
                extra={"event": event},
            )

    def start(self, index: int, key: str, item: Any) -> None:
        for fn in self._start:
            try:
                fn(index, key, item)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                self._raised(fn, "on_start", exc)

    def result(self, result: Result[Any]) -> None:
        for fn in self._result:
            try:
                fn(result)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                self._raised(fn, "on_result", exc)
        if not result.ok and result.status.value != "skipped":
            for fn in self._error:
                try:
                    fn(result)
                except asyncio.CancelledError:
                    raise
                except BaseException as exc:
                    self._raised(fn, "on_error", exc)

    async def batch(self, info: BatchInfo) -> None:
        for fn in self._batch:
            try:
                out = fn(info)
                if inspect.isawaitable(out):
                    await out
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                self._raised(fn, "on_batch", exc)


def _is_base_noop(target: Any, event: str) -> bool:
    """True when `target` inherits ProgressCallback's empty method unchanged."""
    method = getattr(type(target), event, None)
    return method is not None and method is getattr(ProgressCallback, event)


class FunctionCallbacks:
    """Wraps `on_result=`/`on_batch=`-style keyword functions as one target."""

    def __init__(self, **fns: Callable[..., Any] | None) -> None:
        for name, fn in fns.items():
            if fn is not None:
                setattr(self, name, fn)
