"""Identical requests are sent once: a response cache and an in-flight dedupe.

`ResponseCache` keeps responses by a stable hash of (url, canonical JSON
body), in memory (an LRU bounded by `max_entries`) or in a SQLite file shared
across runs (WAL, safe for several processes). `InflightDedupe` makes N
concurrent identical calls into one: every awaiter gets its answer, or its
error. Store only responses worth replaying (the caller decides, typically
2xx); never put secrets in the body or the url, they would be stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import orjson

from .._base._exceptions import CacheError
from .._journal._errors import FileProblem, classify

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Hashable, Iterator

__all__ = [
    "CacheError",
    "CachedResponse",
    "InflightDedupe",
    "ResponseCache",
    "body_tokens",
    "request_key",
]

CACHE_SCHEMA_VERSION = 1
_CACHE_APP_ID = 0x63766361  # "cvca"

K = TypeVar("K", bound="Hashable")
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class CachedResponse:
    """A stored response: HTTP status, raw body and the tokens its `usage` reported."""

    status_code: int
    body: bytes
    tokens: int = 0


def _canonical(body: Any) -> bytes:
    try:
        return orjson.dumps(body, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:
        # e.g. integers past 64 bits: the stdlib encoder is slower but complete.
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return text.encode()


def _digest(url: str, canonical: bytes) -> str:
    digest = hashlib.sha256(url.encode() + b"\n")
    digest.update(canonical)  # not concatenated: a 50 MB body is not copied again
    return digest.hexdigest()


def request_key(url: str, body: Any) -> str:
    """A stable hash of (url, body as canonical JSON): equal requests, equal keys."""
    return _digest(url, _canonical(body))


# In memory, a request up to this size is its own key (no hash); a larger one is hashed.
_PLAIN_KEY_MAX = 2048


def usage_tokens(body: bytes) -> int:
    """Total tokens in a response body's `usage` (OpenAI chat/completions/responses shapes)."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return 0
    return body_tokens(parsed)


def body_tokens(parsed: Any) -> int:
    """`usage_tokens` of a body already parsed."""
    usage = parsed.get("usage") if isinstance(parsed, dict) else None
    if not isinstance(usage, dict):
        return 0
    total = usage.get("total_tokens")
    if isinstance(total, int):
        return total
    parts = ("prompt_tokens", "completion_tokens", "input_tokens", "output_tokens")
    return sum(v for k in parts if isinstance(v := usage.get(k), int))


@contextlib.contextmanager
def _guard(path: str) -> Iterator[None]:
    try:
        yield
    except (sqlite3.Error, OSError) as exc:
        raise _translate(exc, path) from exc


_WHY = {
    FileProblem.CORRUPT: "is not a conveyor response cache or is damaged: delete it "
    "(it only saves calls)",
    FileProblem.FULL: "cannot grow, the disk is full: free space, or run without the cache",
    FileProblem.UNWRITABLE: "cannot be written here: choose a writable cache path",
    FileProblem.BUSY: "stayed busy (another process holds it): wait, or use another cache path",
}


def _translate(exc: sqlite3.Error | OSError, path: str) -> CacheError:
    """The cache's wording of the journal's one reading of the error (`classify`)."""
    why = _WHY.get(classify(exc), "failed: check the disk, or run without the cache")
    return CacheError(f"response cache {path} {why} ({exc})")


class ResponseCache:
    """Responses by `request_key`; in memory when `path` is None, else a SQLite file.

    Counts `hits`, `misses` and `tokens_saved` (the `usage` tokens of every
    response served from the cache instead of the endpoint).
    """

    def __init__(
        self, path: str | os.PathLike[str] | None = None, *, max_entries: int = 10_000
    ) -> None:
        self.hits = 0
        self.misses = 0
        self.tokens_saved = 0
        self._lock = threading.Lock()
        # (status, body, usage tokens or None until the first hit): no object per put.
        self._memory: OrderedDict[str | bytes, tuple[int, bytes, int | None]] = OrderedDict()
        self._max_entries = max_entries
        self._conn: sqlite3.Connection | None = None
        self._path = None if path is None else os.path.abspath(os.fspath(path))
        if self._path is not None:
            self._conn = self._open(self._path)

    @property
    def in_memory(self) -> bool:
        """True for a cache of this process only (no file)."""
        return self._conn is None

    @staticmethod
    def key(url: str, body: Any) -> str:
        return request_key(url, body)

    def key_for(self, url: str, body: Any) -> str | bytes:
        """The key of a request here: `request_key` in a file (a hash, the same in
        every run); in memory, where keys never leave this process, a small
        request's canonical form itself (equal requests, equal keys; no hash)."""
        canonical = _canonical(body)
        if self._conn is not None or len(canonical) > _PLAIN_KEY_MAX:
            return _digest(url, canonical)
        return url.encode() + b"\n" + canonical

    @staticmethod
    def _open(path: str) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = None
        try:
            with _guard(path):
                conn = sqlite3.connect(
                    path, timeout=10.0, isolation_level=None, check_same_thread=False
                )
                app_id = conn.execute("PRAGMA application_id").fetchone()[0]
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                objects = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
                if version == 0 and app_id == 0 and objects == 0:
                    conn.execute(
                        "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, "
                        "status_code INTEGER NOT NULL, body BLOB NOT NULL, "
                        "tokens INTEGER NOT NULL, created_at REAL NOT NULL)"
                    )
                    conn.execute(f"PRAGMA application_id = {_CACHE_APP_ID}")
                    conn.execute(f"PRAGMA user_version = {CACHE_SCHEMA_VERSION}")
                elif app_id != _CACHE_APP_ID:
                    raise CacheError(
                        f"response cache {path} is another kind of SQLite file: "
                        "choose another cache path"
                    )
                elif version > CACHE_SCHEMA_VERSION:
                    raise CacheError(
                        f"response cache {path} was written by a newer conveyor (schema "
                        f"{version} > {CACHE_SCHEMA_VERSION}): upgrade or use another cache path"
                    )
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        return conn

    def get(self, key: str | bytes) -> CachedResponse | None:
        """The stored response for `key` (counted as a hit), or None (a miss)."""
        with self._lock:
            if self._conn is None:
                entry = self._memory.get(key)
                if entry is None:
                    self.misses += 1
                    return None
                self._memory.move_to_end(key)
                status_code, body, tokens = entry
                if tokens is None:  # counted at the first hit, not at every put
                    tokens = usage_tokens(body)
                    self._memory[key] = (status_code, body, tokens)
                found = CachedResponse(status_code, body, tokens)
            else:
                assert self._path is not None
                with _guard(self._path):
                    row = self._conn.execute(
                        "SELECT status_code, body, tokens FROM responses WHERE key = ?", (key,)
                    ).fetchone()
                if row is None:
                    self.misses += 1
                    return None
                found = CachedResponse(row[0], bytes(row[1]), row[2])
            self.hits += 1
            self.tokens_saved += found.tokens
            return found

    def put(
        self, key: str | bytes, status_code: int, body: bytes, *, tokens: int | None = None
    ) -> None:
        """Store a response (replacing any previous one for `key`); `tokens`, when the
        caller knows them, saves parsing `body` again for its `usage`. In memory
        they are counted at the first hit when not given (most responses are
        never hit)."""
        body = bytes(body)
        if self._conn is None:
            memory = self._memory
            with self._lock:
                if key in memory:
                    memory.move_to_end(key)
                memory[key] = (status_code, body, tokens)
                if len(memory) > self._max_entries:
                    while len(memory) > self._max_entries:
                        memory.popitem(last=False)
                return
        tokens = usage_tokens(body) if tokens is None else tokens
        with self._lock:
            conn, path = self._conn, self._path
            if conn is None or path is None:  # closed meanwhile: as an in-memory cache
                self._memory[key] = (status_code, body, tokens)
                return
            with _guard(path):
                conn.execute(
                    "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?)",
                    (key, status_code, body, tokens, time.time()),
                )

    def __len__(self) -> int:
        with self._lock:
            if self._conn is None:
                return len(self._memory)
            assert self._path is not None
            with _guard(self._path):
                return int(self._conn.execute("SELECT count(*) FROM responses").fetchone()[0])

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "tokens_saved": self.tokens_saved}

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
                self._path = None
            self._memory.clear()

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class InflightDedupe(Generic[K, V]):
    """Concurrent calls with the same key share one execution.

    The first caller runs `call()`; callers arriving while it runs await its
    outcome (value or exception) instead of calling again. If that first
    caller is cancelled, a waiter takes over and runs the call itself.
    Waiters get the same value object: treat it as read-only.
    """

    def __init__(self) -> None:
        # key -> the future its waiters await; None while nobody waits (most calls
        # have no twin in flight: no future is made for them).
        self._inflight: dict[K, asyncio.Future[V] | None] = {}
        self.calls = 0
        self.joined = 0

    def __len__(self) -> int:
        return len(self._inflight)

    async def run(self, key: K, call: Callable[[], Awaitable[V]]) -> V:
        while key in self._inflight:
            fut = self._inflight[key]
            if fut is None:
                fut = self._inflight[key] = asyncio.get_running_loop().create_future()
            try:
                # shield: a cancelled waiter must not cancel the shared call.
                value = await asyncio.shield(fut)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if fut.cancelled() and task is not None and not task.cancelling():
                    continue  # the leader was cancelled, not us: lead a new call
                raise
            self.joined += 1
            return value
        led = self.lead(key)
        assert led  # nobody leads it: no await since the check
        try:
            value = await call()
        except Exception as exc:
            self.fail(key, exc)
            raise
        except BaseException:
            self.drop(key)  # cancelled (or BaseException): waiters retry as leaders
            raise
        self.done(key, value)
        return value

    # The leader's side, for a caller that runs the call itself (one coroutine
    # less than `run`): `lead`, then exactly one of `done`, `fail`, `drop`.
    # Only the leader of a key removes it, so these pop it without a check.

    def lead(self, key: K) -> bool:
        """True if the caller leads `key` now; False when another call with `key`
        is in flight (join it with `run`)."""
        if key in self._inflight:
            return False
        self._inflight[key] = None
        self.calls += 1
        return True

    def done(self, key: K, value: V) -> None:
        fut = self._inflight.pop(key, None)
        if fut is not None:
            fut.set_result(value)

    def fail(self, key: K, exc: Exception) -> None:
        fut = self._inflight.pop(key, None)
        if fut is not None:
            fut.set_exception(exc)
            fut.exception()  # retrieved here, so an unawaited future logs nothing

    def drop(self, key: K) -> None:
        fut = self._inflight.pop(key, None)
        if fut is not None and not fut.done():
            fut.cancel()
