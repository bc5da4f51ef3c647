"""One worker: a Ray actor running conveyor's engine over the chunks it is sent.

The actor keeps one long-lived `Engine` with its share of the concurrency,
fed from a queue: every chunk's items go into the same engine, so the share
holds across chunks and adaptive concurrency and the breaker keep their
state. A router task hands each result back to the chunk it came from; each
`run(chunk)` call is a streaming generator yielding batches of results as
they finish, so the driver knows which items are done if this actor dies.

The class is plain Python; `_ray_pool` wraps it with `ray.remote`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._base._exceptions import FatalError
from .._core._attempt import current_attempt
from .._core._engine import Engine, invoker_for
from .._core._options import build_options
from .._core._outcome import StopKind
from ._limiter import LeaseClient
from ._wire import Control, WireBatch, WireEntry, WireResult, encode_fatal, encode_result

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from .._core._options import Breaker
    from .._core._retry import RetryPolicy

__all__ = ["WorkerActor", "WorkerSettings"]

_END = object()


@dataclass(frozen=True)
class WorkerSettings:
    """The engine options a worker runs with (the driver keeps the rest)."""

    worker_id: int
    concurrency: int
    timeout: float | None
    retry: RetryPolicy
    breaker: Breaker | None
    adaptive: bool
    grace: float
    cost: Callable[[Any], float | tuple[float, float]] | None
    validate: Callable[[Any, Any], Any] | None = None  # `validate(item, value)`: re-asks here
    reask: int = 2


def _on_item(
    validate: Callable[[Any, Any], Any] | None,
) -> Callable[[Any, Any], Any] | None:
    """The validator over the worker's `(index, key, item)` entries."""
    if validate is None:
        return None
    check = validate
    return lambda entry, value: check(entry[2], value)


class WorkerActor:
    """Runs chunks of `(index, key, item)` through one engine; see the module doc."""

    def __init__(self, fn: Callable[[Any], Any], settings: WorkerSettings, limiter: Any) -> None:
        # The driver logs each failed item once, with the run's context.
        logging.getLogger("conveyor").setLevel(logging.ERROR)
        self._fn = fn
        self._settings = settings
        self._limiter = limiter
        self._client: LeaseClient | None = None
        self._engine: Engine | None = None
        self._feed: asyncio.Queue[Any] = asyncio.Queue()
        self._routes: dict[int, asyncio.Queue[Any]] = {}
        self._ids = itertools.count()
        self._router: asyncio.Task[None] | None = None
        self._start_lock = asyncio.Lock()
        self._fatal: Control | None = None
        self._stop_seen = False
        self._finished = False

    async def _ensure(self) -> Engine:
        async with self._start_lock:
            if self._engine is not None:
                return self._engine
            s = self._settings
            if self._limiter is not None:
                rpm, tpm, ttl = await self._limiter.config.remote()
                handle = self._limiter
                self._client = LeaseClient(
                    lambda req: handle.lease.remote(req), rpm=rpm, tpm=tpm, ttl=ttl
                )
            user = invoker_for(self._fn)

            async def invoke(entry: WireEntry, engine: Engine) -> Any:
                attempt = current_attempt()
                if attempt is not None:
                    attempt.index = entry[0]  # the input index, not the position in this worker
                return await user(entry[2], engine)

            cost = s.cost
            opts = build_options(
                concurrency=s.concurrency,
                timeout=s.timeout,
                retries=s.retry,
                breaker=s.breaker,
                adaptive=s.adaptive,
                grace=s.grace,
                key=_entry_key,
                cost=(lambda e: cost(e[2])) if cost is not None else None,
                shared_limiter=self._client,
                validate_item=_on_item(s.validate),
                reask=s.reask,
            )
            engine = Engine(invoke, opts, keep_results=False, deliver=True)
            engine.start(self._source())
            self._engine = engine
            self._router = asyncio.get_running_loop().create_task(
                self._route(engine), name="conveyor-ray-router"
            )
            return engine

    async def _source(self) -> AsyncIterator[Any]:
        while True:
            entry = await self._feed.get()
            if entry is _END:
                return
            yield entry

    async def _route(self, engine: Engine) -> None:
        try:
            while True:
                batch = await engine.next_batch()
                if not batch:
                    break
                for r in batch:
                    index, _key, _item, chunk = r.item
                    q = self._routes.get(chunk)
                    if q is not None:
                        q.put_nowait(encode_result(index, r))
        finally:
            self._finished = True
            for q in self._routes.values():
                q.put_nowait(_END)

    def _control(self) -> Control | None:
        """A fatal error to pass on to the driver, once."""
        if self._fatal is not None:
            return None
        engine = self._engine
        err: BaseException | None = None
        if self._client is not None and self._client.error is not None:
            err = self._client.error
        elif engine is not None and engine.stopping and not self._stop_seen:
            self._stop_seen = True  # building a report is not free: look once
            outcome = engine.outcome(engine.report())
            if isinstance(outcome, FatalError):
                err = outcome
        if err is None:
            return None
        self._fatal = encode_fatal(err)
        return self._fatal

    async def run(self, chunk: list[WireEntry]) -> AsyncIterator[WireBatch]:
        """Yield batches of results for `chunk` as they finish.

        Ends early (with some items unanswered) only when this worker was
        stopped; the driver decides what those items become.
        """
        await self._ensure()
        if self._finished:
            return
        cid = next(self._ids)
        q: asyncio.Queue[Any] = asyncio.Queue()
        self._routes[cid] = q
        try:
            for index, key, item in chunk:
                self._feed.put_nowait((index, key, item, cid))
            left = len(chunk)
            ended = False
            while left > 0 and not ended:
                first = await q.get()
                if first is _END:
                    break
                out: list[WireResult] = [first]
                while not q.empty():
                    nxt = q.get_nowait()
                    if nxt is _END:
                        ended = True
                        break
                    out.append(nxt)
                left -= len(out)
                yield out, self._control()
            if left > 0:
                control = self._control()
                if control is not None:
                    yield [], control
        finally:
            self._routes.pop(cid, None)

    async def stop(self, kind: str) -> None:
        """Stop admitting work: `interrupt` lets attempts finish within the grace, `abort` not."""
        engine = self._engine
        if engine is not None:
            engine.stop(StopKind.INTERRUPT if kind == StopKind.INTERRUPT else StopKind.ABORT)

    async def close(self) -> dict[str, Any]:
        """Finish the engine, give back unspent leases, call the function's `aclose()`."""
        stats: dict[str, Any] = {"worker": self._settings.worker_id, "pid": os.getpid()}
        engine = self._engine
        if engine is not None:
            self._feed.put_nowait(_END)
            await engine.wait()
            await engine.aclose()
            stats["max_in_flight"] = engine.max_in_flight
        if self._router is not None:
            with contextlib.suppress(Exception):
                await self._router
        if self._client is not None:
            await self._client.aclose()
            stats["lease_round_trips"] = self._client.round_trips
        closer = getattr(self._fn, "aclose", None)
        if callable(closer):
            out = closer()
            if inspect.isawaitable(out):
                await out
        return stats


def _entry_key(entry: tuple[int, str, Any, int]) -> str:
    return entry[1]
