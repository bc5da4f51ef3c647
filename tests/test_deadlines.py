"""Attempt timeouts of invokers that cancel cleanly (`_core/_deadlines.py`): one
timer shared by the attempts that start together, the same outcomes as
`asyncio.timeout` (issue 18: the hot path)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import conveyor
from conveyor import Status
from conveyor._api import AsyncStream
from conveyor._core._deadlines import Deadlines


class _Clean:
    """An invoker that declares it ends promptly when cancelled (as the OpenAI
    transport does): its attempts time out through `Deadlines`."""

    cancels_cleanly = True

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def __call__(self, item: Any, engine: Any) -> Any:
        return self.fn(item)


async def _results(items: Any, fn: Any, **options: Any) -> dict[int, Any]:
    out: dict[int, Any] = {}
    async with AsyncStream(items, _Clean(fn), options) as stream:
        async for r in stream:
            assert r.index not in out  # exactly one result each
            out[r.index] = r
    return out


async def test_slow_attempts_time_out_and_quick_ones_do_not() -> None:
    """Items 0..59 start within one slice; the slow ones (every third) time
    out with the attempt's message, the others answer; the item's task is not
    left cancelled (the next attempt runs and answers)."""
    tries: dict[int, int] = {}

    async def fn(i: int) -> int:
        tries[i] = tries.get(i, 0) + 1
        if i % 3 == 0 and tries[i] == 1:
            await asyncio.sleep(5)
        else:
            await asyncio.sleep(0.01 * (i % 5))
        return i

    out = await _results(range(60), fn, timeout=0.3, retries=1, concurrency=60)
    assert len(out) == 60
    for i, r in out.items():
        assert r.status is Status.OK and r.value == i, (i, r.status, r.error)
        assert r.attempts == (2 if i % 3 == 0 else 1)


async def test_a_timed_out_attempt_is_timed_out_with_the_timeout_in_its_message() -> None:
    async def fn(i: int) -> int:
        await asyncio.sleep(5 if i == 1 else 0)
        return i

    out = await _results(range(3), fn, timeout=0.2, retries=0)
    assert [out[i].status for i in range(3)] == [Status.OK, Status.TIMED_OUT, Status.OK]
    err = out[1].error
    assert err is not None and "exceeded the timeout of 0.2s" in err.message


async def test_attempts_started_later_get_their_own_full_timeout() -> None:
    """Attempts that start one after another (concurrency 1) each get the whole
    timeout from their own start, not from their slice's first attempt."""
    loop = asyncio.get_running_loop()
    spans: list[float] = []

    async def fn(i: int) -> int:
        t0 = loop.time()
        try:
            await asyncio.sleep(5)
        finally:
            spans.append(loop.time() - t0)
        return i

    out = await _results(range(4), fn, timeout=0.15, retries=0, concurrency=1)
    assert all(r.status is Status.TIMED_OUT for r in out.values())
    assert len(spans) == 4
    assert all(s >= 0.149 for s in spans), spans


async def test_deadlines_fire_each_attempt_at_its_own_deadline() -> None:
    """Two tasks in one slice, started 40 ms apart: each is cancelled at its own
    deadline, and one that ended is never cancelled."""
    loop = asyncio.get_running_loop()
    d = Deadlines(loop, 0.5)  # a slice of 62 ms
    ended: dict[str, float] = {}
    t0 = loop.time()

    async def hang(name: str) -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            ended[name] = loop.time() - t0
            raise

    a = loop.create_task(hang("a"))
    s1 = d.enter(a)
    await asyncio.sleep(0.04)
    b = loop.create_task(hang("b"))
    s2 = d.enter(b)
    c = loop.create_task(asyncio.sleep(0.01))
    s3 = d.enter(c)
    assert s1 is s2 is s3  # one slice, one timer
    await c
    del s3[c]  # ended: it leaves its slice
    done, _ = await asyncio.wait({a, b}, timeout=5)
    assert done == {a, b}
    assert d.expired == {a, b} and c not in d.expired
    assert 0.49 <= ended["a"] < ended["b"]
    assert ended["b"] - ended["a"] >= 0.03


async def test_a_stop_during_an_attempt_is_a_cancellation_not_a_timeout() -> None:
    """The run's own cancellation of an attempt in flight (abort) stays a
    cancellation: only a deadline becomes TimeoutError."""
    started = asyncio.Event()

    async def fn(i: int) -> int:
        started.set()
        await asyncio.sleep(10)
        return i

    stream = AsyncStream(range(2), _Clean(fn), {"timeout": 30, "retries": 0})
    out: list[Any] = []

    async def stop_soon() -> None:
        await started.wait()
        stream.stop("abort")

    async def drain() -> None:
        async with stream:
            async for r in stream:
                out.append(r)

    stopper = asyncio.ensure_future(stop_soon())
    with pytest.raises(conveyor.Interrupted):
        await drain()
    await stopper
    assert sorted(r.index for r in out) == [0, 1]
    assert all(r.status is Status.CANCELLED for r in out)
