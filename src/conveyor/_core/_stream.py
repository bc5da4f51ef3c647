"""The async iterator every backend's results come out of.

A `RunStream` wraps a run (the local engine, or the Ray driver) that hands
out results in batches; it starts the run on first use, yields one result at
a time, and at the end sets `.report` and raises the error the run ended
with (interrupted, fatal, a broken source).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Protocol

from ._outcome import StopKind

if TYPE_CHECKING:
    from .._base._types import Result
    from ._report import BatchReport

__all__ = ["BatchIterator", "Run", "RunStream"]


class Run(Protocol):
    def start(self, *args: Any) -> None: ...

    async def next_batch(self) -> list[Result[Any]]: ...

    async def aclose(self) -> None: ...

    def stop(self, kind: StopKind | str = StopKind.INTERRUPT) -> None: ...

    def report(self) -> BatchReport: ...

    def outcome(self, report: BatchReport) -> BaseException | None: ...


class BatchIterator(AsyncIterator["Result[Any]"]):
    """An async iterator of results over `next_batch()` (every result ready now;
    empty at the end): one result at a time, one batch in hand."""

    _batch: list[Result[Any]]
    _pos: int

    async def next_batch(self) -> list[Result[Any]]:
        raise NotImplementedError

    async def __anext__(self) -> Result[Any]:
        if self._pos >= len(self._batch):
            self._batch = await self.next_batch()
            self._pos = 0
            if not self._batch:
                raise StopAsyncIteration
        r = self._batch[self._pos]
        self._pos += 1
        return r


class RunStream(BatchIterator):
    """Results in completion order; `.report` is set once iteration ends.

    Use `async with` (or `aclose()`) when you may stop early, so in-flight
    work is cancelled and awaited. `attach_control(control)` routes Ctrl+C
    to a graceful stop; `stop(kind)` does it directly.
    """

    def __init__(self, make: Callable[[], Run]) -> None:
        self._make = make
        self._run: Run | None = None
        self._batch: list[Result[Any]] = []
        self._pos = 0
        self._done = False
        self.report: BatchReport | None = None

    def _ensure(self) -> Run:
        if self._run is None:
            self._run = self._make()  # the factory also starts it
        return self._run

    def attach_control(self, control: Any) -> None:
        control.attach(self._ensure())

    def stop(self, kind: StopKind | str = StopKind.INTERRUPT) -> None:
        """Stop admitting: `interrupt` lets attempts finish within `grace`, `abort` not."""
        self._ensure().stop(kind)

    async def next_batch(self) -> list[Result[Any]]:
        """Every result ready now (at least one); empty at the end."""
        if self._done:
            return []
        run = self._ensure()
        batch = await run.next_batch()
        if not batch:
            await self._finish()
        return batch

    async def _finish(self) -> None:
        self._done = True
        run = self._ensure()
        await run.aclose()
        self.report = run.report()
        err = run.outcome(self.report)
        if err is not None:
            raise err

    async def aclose(self) -> None:
        if not self._done and self._run is not None:
            self._done = True
            await self._run.aclose()
            self.report = self._run.report()
        self._done = True

    async def __aenter__(self) -> RunStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
