"""A memo shared by the items of a run: identical sub-calls run once.

Shared context without redundant calls: when every item's pipeline asks for
the same context (the same analysis of the same inputs), with a `Memo` the
first item to ask makes the call, items asking while it is in
flight wait for that same call (single-flight), and items asking later get
the stored answer. It works from sync functions (the run's worker threads)
and async ones (the event loop) alike, and both may share one memo.

    memo = conveyor.Memo()

    async def schedule(creator):
        pool = await memo.acall(("caption_pool", week), lambda: client.chat...create(...))
        ...

    report = conveyor.run(creators, schedule, memo=memo)
    report.extra["memo"]   # calls made, calls saved, tokens saved

A call's usage (an OpenAI response's `usage`, or what `usage=` returns) is
reported to the attempt that made it (`report_usage`: do not report it again
yourself) and counted as saved each time the answer is reused. A failed call
is not stored: callers waiting on it get its exception, later ones try again.

Persistence is a `MemoStore` (the journal's, with `journal=`): entries it
holds are loaded when a run starts, new ones are written as they complete.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import hashlib
import inspect
import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import orjson

from .._base._exceptions import ConfigError
from ._attempt import report_usage

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable

__all__ = ["Memo", "MemoStats", "MemoStore", "memo_key", "usage_of"]

log = logging.getLogger("conveyor")

T = TypeVar("T")


class MemoStore(Protocol):
    """Where a memo's entries outlive the process (the journal's `memo` table)."""

    def load(self) -> Iterable[tuple[str, Any, int, int]]:
        """Every stored entry: (key hash, value, input tokens, output tokens)."""
        ...

    def put(self, key: str, value: Any, input_tokens: int, output_tokens: int) -> bool:
        """Store one entry; False when the value cannot be stored (not picklable)."""
        ...


@dataclass(frozen=True)
class MemoStats:
    """What a memo did: `calls` made, `hits` answered from it, `joined` calls
    that waited for an identical one in flight; tokens spent by its calls and
    saved by its reuse."""

    calls: int = 0
    hits: int = 0
    joined: int = 0
    failures: int = 0
    restored: int = 0
    input_tokens_spent: int = 0
    output_tokens_spent: int = 0
    input_tokens_saved: int = 0
    output_tokens_saved: int = 0

    @property
    def calls_saved(self) -> int:
        return self.hits + self.joined

    def __sub__(self, other: MemoStats) -> MemoStats:
        return MemoStats(
            **{k: getattr(self, k) - getattr(other, k) for k in self.__dataclass_fields__}
        )

    def to_dict(self, *, run_tokens: int | None = None) -> dict[str, Any]:
        """JSON-ready. `tokens_saved_share` is saved / (spent + saved): of the
        memoized calls' tokens, or of the whole run's when `run_tokens` (all it
        spent) is given -- "N% fewer tokens" than without the memo."""
        saved = self.input_tokens_saved + self.output_tokens_saved
        spent = (
            self.input_tokens_spent + self.output_tokens_spent if run_tokens is None else run_tokens
        )
        asked = self.calls + self.calls_saved
        return {
            "calls": self.calls,
            "hits": self.hits,
            "joined": self.joined,
            "calls_saved": self.calls_saved,
            "calls_saved_share": round(self.calls_saved / asked, 4) if asked else 0.0,
            "failures": self.failures,
            "restored": self.restored,
            "tokens_spent": {"input": self.input_tokens_spent, "output": self.output_tokens_spent},
            "tokens_saved": {"input": self.input_tokens_saved, "output": self.output_tokens_saved},
            "tokens_saved_share": round(saved / (spent + saved), 4) if spent + saved else 0.0,
        }


def memo_key(key: Any) -> str:
    """A stable hash of `key`: a string as it is, anything else as canonical JSON
    (tuples, lists, dicts of strings and numbers; dict order does not matter)."""
    if isinstance(key, str):
        raw = b"s" + key.encode()
    else:
        try:
            raw = b"j" + orjson.dumps(key, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
        except (orjson.JSONEncodeError, TypeError):
            try:
                raw = b"j" + json.dumps(key, sort_keys=True, separators=(",", ":")).encode()
            except (TypeError, ValueError):
                raise ConfigError(
                    "memo key",
                    repr(key)[:80],
                    "a string, or JSON-able data (tuples, lists, dicts of strings and numbers)",
                ) from None
    return hashlib.sha256(raw).hexdigest()


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _field(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def usage_of(value: Any) -> tuple[int, int]:
    """(input, output) tokens of a response's `usage` (OpenAI chat, completions,
    responses and embeddings shapes, as objects or dicts); (0, 0) without one."""
    usage = _field(value, "usage")
    if usage is None:
        return 0, 0
    counts = []
    for names in (("prompt_tokens", "input_tokens"), ("completion_tokens", "output_tokens")):
        n = 0
        for name in names:
            v = _field(usage, name)
            if isinstance(v, int) and not isinstance(v, bool):
                n = v
                break
        counts.append(n)
    return counts[0], counts[1]


class _Entry:
    __slots__ = ("input_tokens", "output_tokens", "value")

    def __init__(self, value: Any, input_tokens: int, output_tokens: int) -> None:
        self.value = value
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens


class Memo:
    """Memoized sub-calls shared by the items of a run (threads and asyncio alike).

    `call(key, fn)` from sync code, `await acall(key, fn)` from async code,
    or `wrap(fn)` for a memoized version of `fn` keyed by its arguments.
    `key` is a string or JSON-able data. `usage` maps a value to its
    (input, output) tokens (default: its `usage` field, as OpenAI responses
    carry). `max_entries` bounds the memory (least recently used go first).
    Values are shared, not copied: treat them as read-only.
    """

    def __init__(
        self,
        *,
        usage: Callable[[Any], tuple[int, int]] | None = None,
        max_entries: int | None = None,
    ) -> None:
        if usage is not None and not callable(usage):
            raise ConfigError("usage", usage, "a function value -> (input, output) tokens")
        if max_entries is not None and (
            isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1
        ):
            raise ConfigError("max_entries", max_entries, "a whole number >= 1, or None")
        self._usage = usage or usage_of
        self._max = max_entries
        self._lock = threading.Lock()
        self._values: OrderedDict[str, _Entry] = OrderedDict()
        self._inflight: dict[str, concurrent.futures.Future[_Entry]] = {}
        self._store: MemoStore | None = None
        self._unstorable = False
        self._stats = MemoStats()
        self._waiting = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._values)

    def __repr__(self) -> str:
        return f"Memo({len(self)} entries)"

    @property
    def in_flight(self) -> int:
        """Calls running now."""
        with self._lock:
            return len(self._inflight)

    @property
    def waiting(self) -> int:
        """Callers waiting now for an identical call in flight."""
        with self._lock:
            return self._waiting

    def stats(self) -> MemoStats:
        """Totals since this memo was made (a run's report holds its own share)."""
        with self._lock:
            return self._stats

    def clear(self) -> None:
        """Forget every stored value (calls in flight still complete)."""
        with self._lock:
            self._values.clear()

    # ---- persistence (the run attaches the journal's store) -----------------------

    def attach(self, store: MemoStore) -> int:
        """Load `store`'s entries and write new ones to it; returns how many loaded."""
        loaded = 0
        entries = list(store.load())
        with self._lock:
            for key, value, tin, tout in entries:
                if key not in self._values:
                    self._values[key] = _Entry(value, tin, tout)
                    loaded += 1
            self._evict()
            self._store = store
            self._count(restored=loaded)
        return loaded

    def detach(self) -> None:
        with self._lock:
            self._store = None

    # ---- the calls -------------------------------------------------------------------

    def call(self, key: Any, fn: Callable[[], T]) -> T:
        """`fn()` once per key: later and concurrent callers get its value."""
        if _loop_running():
            raise ConfigError(
                "Memo.call",
                key,
                "from async code use `await memo.acall(key, fn)` (a blocking "
                "wait here would stop the event loop)",
            )
        k = memo_key(key)
        while True:
            found, fut = self._lookup(k)
            if found is not None:
                return found.value  # type: ignore[no-any-return]
            if fut is None:
                return self._lead(k, fn)  # type: ignore[no-any-return]
            try:
                entry = fut.result()
            except concurrent.futures.CancelledError:
                self._left()
                continue  # the caller making it gave up: make it ourselves
            except BaseException:
                self._left()
                raise
            self._joined(entry)
            return entry.value  # type: ignore[no-any-return]

    async def acall(self, key: Any, fn: Callable[[], Awaitable[T]]) -> T:
        """`await fn()` once per key: later and concurrent callers get its value."""
        k = memo_key(key)
        while True:
            found, fut = self._lookup(k)
            if found is not None:
                return found.value  # type: ignore[no-any-return]
            if fut is None:
                return await self._alead(k, fn)  # type: ignore[no-any-return]
            try:
                # shield: a cancelled waiter must not cancel the shared call.
                entry = await asyncio.shield(asyncio.wrap_future(fut))
            except asyncio.CancelledError:
                self._left()
                task = asyncio.current_task()
                if fut.cancelled() and task is not None and not task.cancelling():
                    continue  # the caller making it was cancelled, not us
                raise
            except BaseException:
                self._left()
                raise
            self._joined(entry)
            return entry.value  # type: ignore[no-any-return]

    def wrap(self, fn: Callable[..., Any], *, name: str | None = None) -> Callable[..., Any]:
        """`fn` memoized by its arguments (JSON-able), sync or async as `fn` is.

        `name` (default: `fn`'s qualified name) is part of the key, so two
        wrapped functions never share answers.
        """
        label = name or getattr(fn, "__qualname__", None) or repr(fn)
        target = inspect.unwrap(fn)
        is_async = inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(fn)

        if is_async:

            @functools.wraps(fn)
            async def memoized_async(*args: Any, **kwargs: Any) -> Any:
                return await self.acall([label, args, kwargs], lambda: fn(*args, **kwargs))

            return memoized_async

        @functools.wraps(fn)
        def memoized(*args: Any, **kwargs: Any) -> Any:
            return self.call([label, args, kwargs], lambda: fn(*args, **kwargs))

        return memoized

    # ---- internals -------------------------------------------------------------------

    def _lookup(self, k: str) -> tuple[_Entry | None, concurrent.futures.Future[_Entry] | None]:
        """(entry, None) on a hit; (None, future) to wait; (None, None): lead (registered)."""
        with self._lock:
            entry = self._values.get(k)
            if entry is not None:
                self._values.move_to_end(k)
                self._count(
                    hits=1,
                    input_tokens_saved=entry.input_tokens,
                    output_tokens_saved=entry.output_tokens,
                )
                return entry, None
            fut = self._inflight.get(k)
            if fut is not None:
                self._waiting += 1  # until _joined / _left
                return None, fut
            self._inflight[k] = concurrent.futures.Future()
            return None, None

    def _left(self) -> None:
        with self._lock:
            self._waiting -= 1

    def _joined(self, entry: _Entry) -> None:
        with self._lock:
            self._waiting -= 1
            self._count(
                joined=1,
                input_tokens_saved=entry.input_tokens,
                output_tokens_saved=entry.output_tokens,
            )

    def _lead(self, k: str, fn: Callable[[], Any]) -> Any:
        try:
            value = fn()
        except BaseException as exc:
            self._failed(k, exc)
            raise
        return self._done(k, value).value

    async def _alead(self, k: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        try:
            value = fn()
            if inspect.isawaitable(value):  # a plain function's value is taken as it is
                value = await value
        except BaseException as exc:
            self._failed(k, exc)
            raise
        return self._done(k, value).value

    def _failed(self, k: str, exc: BaseException) -> None:
        with self._lock:
            fut = self._inflight.pop(k)
            if isinstance(exc, Exception):
                self._count(failures=1)
        if isinstance(exc, Exception):
            fut.set_exception(exc)
            fut.exception()  # retrieved: a future nobody waited on logs nothing
        else:
            fut.cancel()  # cancelled: a waiter makes the call itself

    def _done(self, k: str, value: Any) -> _Entry:
        try:
            tin, tout = self._usage(value)
        except Exception as exc:
            log.warning("memo usage= raised %s: %s (counted as 0 tokens)", type(exc).__name__, exc)
            tin, tout = 0, 0
        entry = _Entry(value, int(tin), int(tout))
        report_usage(entry.input_tokens, entry.output_tokens)  # the attempt that spent them
        with self._lock:
            fut = self._inflight.pop(k)
            self._values[k] = entry
            self._evict()
            self._count(calls=1, input_tokens_spent=entry.input_tokens,
                        output_tokens_spent=entry.output_tokens)  # fmt: skip
            store = self._store
        fut.set_result(entry)
        if store is not None and not store.put(k, value, entry.input_tokens, entry.output_tokens):
            with self._lock:
                first, self._unstorable = not self._unstorable, True
            if first:
                log.warning(
                    "memo: a %s value cannot be stored in the journal (not picklable); "
                    "it is kept in memory only",
                    type(value).__name__,
                )
        return entry

    def _evict(self) -> None:
        if self._max is not None:
            while len(self._values) > self._max:
                self._values.popitem(last=False)

    def _count(self, **delta: int) -> None:
        s = self._stats
        self._stats = MemoStats(
            **{f: getattr(s, f) + delta.get(f, 0) for f in MemoStats.__dataclass_fields__}
        )
