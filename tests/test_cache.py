"""Identical requests are sent once: the response cache and the in-flight dedupe."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor.openai._cache import (
    CACHE_SCHEMA_VERSION,
    CachedResponse,
    CacheError,
    InflightDedupe,
    ResponseCache,
    request_key,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

URL = "http://127.0.0.1:1/v1/chat/completions"
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
RESPONSE = orjson.dumps({"id": "x", "usage": {"prompt_tokens": 7, "completion_tokens": 5}})


@given(st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=8))
@settings(max_examples=50)
def test_key_ignores_dict_order_property(body: dict[str, Any]) -> None:
    """The key depends on the body's content, not its key order (canonical JSON)."""
    reordered = dict(reversed(list(body.items())))
    assert request_key(URL, body) == request_key(URL, reordered)
    assert request_key(URL, body) != request_key(URL + "x", body)


def test_key_distinguishes_bodies() -> None:
    """Different bodies or urls give different keys; the key is a hex sha256."""
    k = ResponseCache.key(URL, BODY)
    assert len(k) == 64
    assert k != request_key(URL, {**BODY, "temperature": 1})
    assert k == request_key(URL, orjson.loads(orjson.dumps(BODY)))


@given(st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=8))
@settings(max_examples=50)
def test_key_for_in_memory_ignores_dict_order_property(body: dict[str, Any]) -> None:
    """The in-memory key (the canonical request itself, no hash) is equal for
    equal requests in any key order, and differs with the url or the body."""
    cache = ResponseCache()
    reordered = dict(reversed(list(body.items())))
    assert cache.key_for(URL, body) == cache.key_for(URL, reordered)
    assert cache.key_for(URL, body) != cache.key_for(URL + "x", body)
    assert cache.key_for(URL, body) != cache.key_for(URL, {**body, "\x00extra": 1})


def test_key_for_hashes_large_requests_and_every_request_in_a_file(tmp_path: Path) -> None:
    """In memory a large request is hashed (the cache holds no copy of a 50 MB
    body as a key); a file cache keys every request by `request_key`, the same
    in every run."""
    big = {**BODY, "messages": [{"role": "user", "content": "x" * 10_000}]}
    memory = ResponseCache()
    assert memory.key_for(URL, big) == request_key(URL, big)
    assert isinstance(memory.key_for(URL, BODY), bytes)
    with ResponseCache(tmp_path / "c.db") as on_disk:
        assert on_disk.key_for(URL, BODY) == request_key(URL, BODY)
        on_disk.put(on_disk.key_for(URL, BODY), 200, RESPONSE)
    with ResponseCache(tmp_path / "c.db") as again:
        assert again.get(request_key(URL, BODY)) == CachedResponse(200, RESPONSE, 12)


def test_memory_cache_counts_hits_misses_and_tokens() -> None:
    """A hit returns the stored response and adds its usage tokens to `tokens_saved`."""
    cache = ResponseCache()
    key = request_key(URL, BODY)
    assert cache.get(key) is None
    cache.put(key, 200, RESPONSE)
    assert cache.get(key) == CachedResponse(200, RESPONSE, 12)
    assert cache.get(key) is not None
    assert cache.stats() == {"hits": 2, "misses": 1, "tokens_saved": 24}
    cache.put("other", 200, b"not json")
    assert cache.get("other") == CachedResponse(200, b"not json", 0)
    cache.close()


def test_memory_cache_is_bounded_lru() -> None:
    """The in-memory cache keeps at most `max_entries`, evicting the least recently used."""
    cache = ResponseCache(max_entries=3)
    for k in "abc":
        cache.put(k, 200, b"{}")
    assert cache.get("a") is not None  # a is now most recent
    cache.put("d", 200, b"{}")
    assert len(cache) == 3
    assert cache.get("b") is None
    assert {k for k in "acd" if cache.get(k) is not None} == {"a", "c", "d"}


def test_sqlite_cache_persists_and_is_shared(tmp_path: Path) -> None:
    """A cache file keeps responses across runs and is readable by a second open at once."""
    path = tmp_path / "cache.sqlite"
    key = request_key(URL, BODY)
    with ResponseCache(path) as a, ResponseCache(path) as b:
        a.put(key, 200, RESPONSE)
        got = b.get(key)
        assert got is not None
        assert got.body == RESPONSE
    with ResponseCache(path) as c:
        assert len(c) == 1
        assert c.get(key) == CachedResponse(200, RESPONSE, 12)
        assert c.tokens_saved == 12
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_bad_cache_files_are_refused(tmp_path: Path) -> None:
    """Garbage, a foreign database or a newer schema raise CacheError, never sqlite3 errors."""
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x00junk" * 1000)
    with pytest.raises(CacheError, match="not a conveyor response cache or is damaged"):
        ResponseCache(garbage)
    foreign = tmp_path / "foreign"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(CacheError, match="another kind of SQLite file"):
        ResponseCache(foreign)
    newer = tmp_path / "newer"
    ResponseCache(newer).close()
    conn = sqlite3.connect(newer)
    conn.execute(f"PRAGMA user_version = {CACHE_SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(CacheError, match="newer conveyor"):
        ResponseCache(newer)
    with pytest.raises(CacheError, match="choose a writable cache path"):
        ResponseCache(tmp_path / "missing-dir" / "cache.sqlite")


# -- in-flight dedupe ----------------------------------------------------------


async def test_concurrent_identical_calls_run_once() -> None:
    """N concurrent calls with one key make one call; all N get its value."""
    dedupe: InflightDedupe[str, int] = InflightDedupe()
    gate = asyncio.Event()
    calls = 0

    async def call() -> int:
        nonlocal calls
        calls += 1
        await gate.wait()
        return 42

    tasks = [asyncio.create_task(dedupe.run("k", call)) for _ in range(20)]
    await asyncio.sleep(0)
    assert len(dedupe) == 1
    gate.set()
    assert await asyncio.gather(*tasks) == [42] * 20
    assert (calls, dedupe.calls, dedupe.joined, len(dedupe)) == (1, 1, 19, 0)
    assert await dedupe.run("k", call) == 42  # finished calls are not reused
    assert calls == 2


async def test_failure_reaches_every_waiter() -> None:
    """If the shared call fails, every awaiter gets the error."""
    dedupe: InflightDedupe[str, int] = InflightDedupe()
    gate = asyncio.Event()

    async def call() -> int:
        await gate.wait()
        raise ConnectionError("refused")

    tasks = [asyncio.create_task(dedupe.run("k", call)) for _ in range(5)]
    await asyncio.sleep(0)
    gate.set()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(o, ConnectionError) for o in outcomes)
    assert dedupe.calls == 1


async def test_cancelled_leader_hands_over_and_waiter_cancel_is_local() -> None:
    """Cancelling the caller running the call lets a waiter redo it; a waiter's cancel is local."""
    dedupe: InflightDedupe[str, str] = InflightDedupe()
    gate = asyncio.Event()

    async def call() -> str:
        await gate.wait()
        return "v"

    leader = asyncio.create_task(dedupe.run("k", call))
    await asyncio.sleep(0)
    waiters = [asyncio.create_task(dedupe.run("k", call)) for _ in range(3)]
    await asyncio.sleep(0)
    leader.cancel()
    waiters[0].cancel()
    for _ in range(100):  # until a waiter has taken over the call
        if dedupe.calls == 2:
            break
        await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(leader, *waiters, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert isinstance(results[1], asyncio.CancelledError)
    assert results[2:] == ["v", "v"]
    assert dedupe.calls == 2
    assert len(dedupe) == 0


# -- against a real loopback server -----------------------------------------


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, list[bytes]]]:
    seen: list[bytes] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(await request.read())
        await asyncio.sleep(0.05)  # long enough for the identical calls to overlap
        return web.Response(body=RESPONSE, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}/v1/chat/completions", seen
    await runner.cleanup()


async def test_identical_requests_reach_the_server_once(
    server: tuple[str, list[bytes]], tmp_path: Path
) -> None:
    """Cache + dedupe: 10 concurrent and 5 later identical requests make one HTTP call."""
    url, seen = server
    cache = ResponseCache(tmp_path / "cache.sqlite")
    dedupe: InflightDedupe[str, bytes] = InflightDedupe()

    async with aiohttp.ClientSession() as session:

        async def send(body: dict[str, Any]) -> bytes:
            key = request_key(url, body)
            if (hit := cache.get(key)) is not None:
                return hit.body

            async def call() -> bytes:
                async with session.post(url, json=body) as resp:
                    data = await resp.read()
                    cache.put(key, resp.status, data)
                    return data

            return await dedupe.run(key, call)

        first = await asyncio.gather(*(send(dict(BODY)) for _ in range(10)))
        later = [await send(dict(reversed(list(BODY.items())))) for _ in range(5)]
    cache.close()
    assert first + later == [RESPONSE] * 15
    assert len(seen) == 1
    assert cache.tokens_saved == 5 * 12
