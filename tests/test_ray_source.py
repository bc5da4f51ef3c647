"""The Ray driver's input (`conveyor.ray._source.EntrySource`), without Ray: items read
lazily into keyed entries; given-back entries go first, in input order; a bad key, an
item finished in an earlier run and a broken input each end as the driver expects."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from conveyor import Status
from conveyor._base._types import Result
from conveyor.ray._source import EntrySource


async def test_chunks_in_input_order_then_done() -> None:
    """take(n) hands out at most n entries, keyed by index, until the input is done."""
    src = EntrySource(range(5), None, lambda r: None)
    first = await src.take(2)
    rest = await src.take(10)
    assert [(e.index, e.key, e.item) for e in first] == [(0, "0", 0), (1, "1", 1)]
    assert [e.index for e in rest] == [2, 3, 4]
    assert await src.take(10) == []
    assert src.done and src.error is None


async def test_given_back_entries_go_first_in_input_order() -> None:
    """A lost worker's entries run again before any new item, lowest index first."""
    src = EntrySource(range(10), None, lambda r: None)
    chunk = await src.take(4)
    src.give_back([chunk[3], chunk[1]])
    assert src.has_requeued
    again = await src.take(4)
    assert [e.index for e in again] == [1, 3]  # only given-back ones: no mixing with new
    assert [e.index for e in await src.take(2)] == [4, 5]


async def test_bad_key_and_finished_items_are_reported_not_run() -> None:
    """A key function that raises fails that item; an item the journal holds as finished
    is reported as resumed with its new index; neither becomes an entry."""
    reported: list[Result[Any]] = []

    def key(item: int) -> str:
        if item == 1:
            raise ValueError("no key")
        return f"k{item}"

    def previous(k: str) -> Result[Any] | None:
        return Result(index=99, key=k, status=Status.OK, value="old") if k == "k2" else None

    src = EntrySource(range(4), key, reported.append, previous=previous)
    entries = await src.take(10)
    assert [e.key for e in entries] == ["k0", "k3"]
    by_index = {r.index: r for r in reported}
    assert by_index[1].status is Status.FAILED and by_index[1].error is not None
    assert by_index[2].meta["resumed"] is True and by_index[2].value == "old"


async def test_broken_input_keeps_what_was_read() -> None:
    """An input that raises stops reading; the entries read before it still come out."""

    def items() -> Any:
        yield 0
        yield 1
        raise RuntimeError("disk gone")

    src = EntrySource(items(), None, lambda r: None)
    assert [e.index for e in await src.take(10)] == [0, 1]
    assert src.done
    assert isinstance(src.error, RuntimeError)


async def test_async_input_is_read_lazily() -> None:
    """An async input is pulled only as far as the chunks asked for."""
    pulled = 0

    async def items() -> AsyncIterator[int]:
        nonlocal pulled
        for i in range(100):
            pulled += 1
            yield i

    src = EntrySource(items(), None, lambda r: None)
    assert [e.index for e in await src.take(3)] == [0, 1, 2]
    assert pulled <= 4  # at most one read ahead
    await src.aclose()
