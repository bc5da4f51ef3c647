"""The driver's input: items read lazily into keyed entries, chunk by chunk.

Entries given back by a lost worker wait in a queue in front of the input,
so they run again first and in input order. An async input that is slow to
produce does not hold a chunk back for long: once a chunk has items, the
next read waits at most `linger` seconds (the read in progress is kept for
the next chunk, never cancelled, since cancelling would end an async generator).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from typing import Any

from .._base._types import ErrorInfo, Result, Status

__all__ = ["Entry", "EntrySource"]

log = logging.getLogger("conveyor")

_LINGER = 0.05  # seconds an async input may take to fill a chunk once it has begun


class Entry:
    """One input item on its way: its index, its key, and whether it was started."""

    __slots__ = ("index", "item", "key", "started")

    def __init__(self, index: int, key: str, item: Any) -> None:
        self.index = index
        self.key = key
        self.item = item
        self.started = False


class EntrySource:
    def __init__(
        self,
        items: Iterable[Any] | AsyncIterable[Any],
        key: Callable[[Any], Any] | None,
        on_bad_key: Callable[[Result[Any]], None],
        *,
        linger: float = _LINGER,
        previous: Callable[[str], Result[Any] | None] | None = None,
    ) -> None:
        self._iter: Iterator[Any] | None = None
        self._aiter: AsyncIterator[Any] | None = None
        if isinstance(items, AsyncIterable):
            self._aiter = aiter(items)
        else:
            self._iter = iter(items)
        self._key = key
        self._on_bad_key = on_bad_key
        self._previous = previous
        self._linger = linger
        self._next: asyncio.Task[Any] | None = None
        self._index = 0
        self._lock = asyncio.Lock()
        self._requeued: deque[Entry] = deque()
        self.exhausted = False
        self.error: BaseException | None = None

    @property
    def has_requeued(self) -> bool:
        return bool(self._requeued)

    @property
    def done(self) -> bool:
        """Nothing left to hand out, now or later (unless entries are given back)."""
        return self.exhausted and not self._requeued

    def give_back(self, entries: list[Entry]) -> None:
        """Put entries first in line again, in input order."""
        self._requeued.extendleft(sorted(entries, key=lambda e: e.index, reverse=True))

    async def take(self, n: int) -> list[Entry]:
        """Up to `n` entries: given-back ones first, else fresh ones from the input."""
        out: list[Entry] = []
        while self._requeued and len(out) < n:
            out.append(self._requeued.popleft())
        if out or self.exhausted:
            return out
        async with self._lock:  # one reader of the input at a time
            if not self.exhausted:
                out = await self._read(n)
        return out

    async def _read(self, n: int) -> list[Entry]:
        out: list[Entry] = []
        try:
            while len(out) < n:
                if self._aiter is not None:
                    got, item = await self._anext(linger=bool(out))
                    if not got:
                        break
                else:
                    assert self._iter is not None
                    try:
                        item = next(self._iter)
                    except StopIteration:
                        self.exhausted = True
                        break
                entry = self._entry(item)
                if entry is not None:
                    out.append(entry)
        except Exception as exc:
            # A broken input stops reading; what was read still runs.
            self.error = exc
            self.exhausted = True
            log.error("the items iterable raised %s: %s", type(exc).__name__, exc)
        return out

    async def _anext(self, *, linger: bool) -> tuple[bool, Any]:
        assert self._aiter is not None
        if self._next is None:
            self._next = asyncio.get_running_loop().create_task(_anext(self._aiter))
        task = self._next
        done, _ = await asyncio.wait({task}, timeout=self._linger if linger else None)
        if not done:
            return False, None
        self._next = None
        try:
            return True, task.result()
        except StopAsyncIteration:
            self.exhausted = True
            return False, None

    def _entry(self, item: Any) -> Entry | None:
        index = self._index
        self._index += 1
        try:
            key = str(index) if self._key is None else str(self._key(item))
        except Exception as exc:
            self._on_bad_key(
                Result(
                    index=index,
                    key=str(index),
                    status=Status.FAILED,
                    item=item,
                    error=ErrorInfo.from_exception(exc),
                )
            )
            return None
        earlier = self._previous(key) if self._previous is not None else None
        if earlier is not None:
            # Finished in an earlier run (the journal): report it, don't run it.
            earlier.index = index
            earlier.item = item
            earlier.meta["resumed"] = True
            self._on_bad_key(earlier)
            return None
        return Entry(index, key, item)

    async def aclose(self) -> None:
        """Cancel a read still waiting on an async input."""
        task, self._next = self._next, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def _anext(it: AsyncIterator[Any]) -> Any:
    return await it.__anext__()
