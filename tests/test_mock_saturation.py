"""The simulated server's saturating mode (`--capacity`), over real loopback HTTP."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson
import pytest

from conveyor._base._exceptions import ConfigError
from conveyor.mock import MockConfig, MockServer
from conveyor.mock._saturation import Saturation


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}], **extra}


async def timed_post(client: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any, float]:
    t0 = time.monotonic()
    async with client.post(url, data=orjson.dumps(body)) as resp:
        status, headers = resp.status, resp.headers.copy()
        await resp.read()
    return status, headers, time.monotonic() - t0


async def test_at_most_k_served_the_rest_queue_without_rate_headers() -> None:
    """With capacity 2 and 0.1 s of service, 6 requests take three rounds: the
    last answers wait >= 0.3 s, and no rate-limit header is ever sent."""
    cfg = MockConfig(capacity=2, service_time=0.1, rpm=1)  # rpm is ignored in this mode
    async with MockServer(cfg) as server, aiohttp.ClientSession() as client:
        url = server.base_url + "/chat/completions"
        answers = await asyncio.gather(*(timed_post(client, url, chat()) for _ in range(6)))
    assert [a[0] for a in answers] == [200] * 6
    waits = sorted(a[2] for a in answers)
    assert waits[0] >= 0.1
    assert waits[-1] >= 0.3
    assert server.stats.admitted == 6
    for _, headers, _ in answers:
        assert not any(h.lower().startswith("x-ratelimit") for h in headers)


async def test_service_time_scales_with_the_tokens_generated() -> None:
    """`scale_by_tokens`: `service_time` is for a whole completion of
    `completion_tokens` (served at least that long); one that max_tokens cuts
    to a quarter says so in its usage, the work a client compares per token."""
    cfg = MockConfig(capacity=8, service_time=0.4, scale_by_tokens=True, completion_tokens=64)
    async with MockServer(cfg) as server, aiohttp.ClientSession() as client:
        url = server.base_url + "/chat/completions"
        status, _, long = await timed_post(client, url, chat(max_tokens=64))
        async with client.post(url, data=orjson.dumps(chat(max_tokens=16))) as resp:
            short_body = orjson.loads(await resp.read())
    assert status == 200
    assert long >= 0.4
    assert short_body["usage"]["completion_tokens"] == 16
    assert server.stats.admitted == 2


async def test_degradation_slows_everyone_past_the_threshold() -> None:
    """Past `degrade_after` requests present, a service starting then slows by
    present/N: of 6 on 2 slots (threshold 2), the second round starts with 4
    present and takes 0.2 s, so the last answer takes >= 0.4 s where three
    rounds of 0.1 s would take 0.3 s."""
    cfg = MockConfig(capacity=2, service_time=0.1, degrade_after=2)
    async with MockServer(cfg) as server, aiohttp.ClientSession() as client:
        url = server.base_url + "/chat/completions"
        await asyncio.gather(*(timed_post(client, url, chat()) for _ in range(2)))  # warm up
        answers = await asyncio.gather(*(timed_post(client, url, chat()) for _ in range(6)))
    assert [a[0] for a in answers] == [200] * 6
    assert max(a[2] for a in answers) >= 0.4


async def test_queue_deadline_answers_503() -> None:
    """A request that waited `queue_timeout` in the queue is answered 503."""
    cfg = MockConfig(capacity=1, service_time=0.3, queue_timeout=0.05)
    async with MockServer(cfg) as server, aiohttp.ClientSession() as client:
        url = server.base_url + "/chat/completions"
        answers = await asyncio.gather(*(timed_post(client, url, chat()) for _ in range(3)))
    assert sorted(a[0] for a in answers) == [200, 503, 503]


async def test_gate_never_serves_more_than_capacity_and_keeps_fifo() -> None:
    """The gate admits at most K at once, in arrival order, and a capacity
    raised while running lets more in at the next release."""
    gate = Saturation()
    order: list[int] = []
    peak = 0

    async def one(i: int, capacity: list[int]) -> None:
        nonlocal peak
        assert await gate.acquire(capacity[0], None)
        order.append(i)
        peak = max(peak, gate.busy)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        gate.release(capacity[0])

    cap = [3]
    await asyncio.gather(*(one(i, cap) for i in range(20)))
    assert peak == 3
    assert order == list(range(20))
    assert gate.busy == 0
    assert gate.present == 0


async def test_gate_timeout_leaves_no_slot_behind() -> None:
    """A waiter that times out leaves the queue; the slot count stays exact."""
    gate = Saturation()
    assert await gate.acquire(1, None)
    assert not await gate.acquire(1, 0.01)
    assert gate.present == 1
    gate.release(1)
    assert gate.busy == 0
    assert await gate.acquire(1, 0.01)


def test_degradation_and_deadline_need_a_capacity() -> None:
    """`degrade_after`/`queue_timeout` without `capacity` is a configuration error."""
    with pytest.raises(ConfigError):
        MockConfig(degrade_after=4)
    with pytest.raises(ConfigError):
        MockConfig(capacity=0)
    assert MockConfig(capacity=4, degrade_after=8, queue_timeout=1.0).capacity == 4
