"""The async engine: items in, one terminal `Result` per item out.

source -> admission (slots, waves, pause, breaker, rate limits) -> attempts
(timeout, retries) -> results. It knows nothing of HTTP, files or terminals:
task functions talk to the outside; the engine only carries out the
decisions of its policies (`_retry`, `_limits`).

Every task it starts is owned: item tasks are tracked until they finish and
are cancelled and awaited when the run ends early, so nothing runs on after
`arun` returns and no error is dropped.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import random
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from .._base._types import ErrorInfo, Result, Status
from ._admission import Admission
from ._callbacks import BatchInfo
from ._gc import RunGC
from ._item import FatalItem, ItemRunner, _ItemState
from ._outcome import StopKind
from ._output import Output
from ._progress import RateMeter
from ._sampler import SamplerPolicy
from ._source import NOT_READY, ThreadedSource, needs_thread
from ._threads import ThreadRunner
from ._watch import EngineWatch

if TYPE_CHECKING:
    from .._base._exceptions import FatalError
    from ._options import Options
    from ._report import BatchReport

__all__ = ["Engine", "FatalItem", "Invoker", "cancels_cleanly", "invoker_for"]

log = logging.getLogger("conveyor")

# An invoker runs one attempt of one item; the engine wraps it with the
# attempt context, the timeout and the retry loop.
Invoker = Callable[[Any, "Engine"], Awaitable[Any]]


def cancels_cleanly(invoker: Invoker) -> bool:
    """True for an invoker that declares (``cancels_cleanly = True``) that its
    calls end promptly when cancelled: conveyor's own (the OpenAI transport),
    never a user's function, which might swallow CancelledError. Its attempts
    time out on the item's own task, with no task and no wait per attempt."""
    return getattr(invoker, "cancels_cleanly", False) is True


def _is_async_callable(fn: Any) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - an async __call__ counts as async
    )


def invoker_for(fn: Callable[[Any], Any]) -> Invoker:
    """Async functions run on the loop; anything else runs on a thread (and
    an awaitable it returns is then awaited on the loop)."""
    if _is_async_callable(fn):

        async def call_async(item: Any, engine: Engine) -> Any:
            return await fn(item)

        return call_async

    def call_sync(item: Any, engine: Engine) -> Awaitable[Any]:
        return engine.run_in_thread(fn, item)

    return call_sync


class Engine(ItemRunner, EngineWatch):
    def __init__(
        self,
        invoker: Invoker,
        options: Options,
        *,
        keep_results: bool,
        deliver: bool,
        length_hint: int | None = None,
    ) -> None:
        self._invoke = invoker
        self._cancels_cleanly = cancels_cleanly(invoker)
        self._deadlines = None  # attempt timeouts (`_deadlines`), made at the first attempt
        self.opts = options
        self._clock = options.clock
        self._deliver = deliver
        self._out = Output(
            options, keep_results=keep_results, deliver=deliver, stop_now=self._stop_now
        )
        self._report = self._out.report
        self._dispatch = self._out.dispatch
        self._loop = asyncio.get_running_loop()
        self._dispatch.on_interrupt = lambda: self._loop.call_soon(self.stop, StopKind.INTERRUPT)
        self._threads: ThreadRunner | None = None
        self._rng = random.Random()
        self._length_hint = length_hint

        self._admission = Admission(options, self._refusing)
        self._give_up = options.breaker.give_up if options.breaker is not None else None
        self._recovered = asyncio.Event()  # set (and replaced) each time the breaker closes
        self._closes_seen = 0

        self._tasks: dict[asyncio.Task[None], _ItemState] = {}
        self._buffer = self._out.buffer
        self._buffer_max = self._out.buffer_max
        self._capacity = self._out.capacity
        self._idle = asyncio.Event()
        self._idle.set()
        self._finished = self._out.finished
        self._producer: asyncio.Task[None] | None = None
        self._reading = False
        self._grace_handle: asyncio.TimerHandle | None = None

        self._wave: list[Result[Any]] | None = [] if options.waves else None
        self._completed = 0
        self._attempts = 0
        self._retrying = 0
        self._t0 = self._clock.now()
        self._meter = RateMeter()
        self._ticker: asyncio.Task[None] | None = None
        self._memo_start = options.memo.stats() if options.memo is not None else None
        self._sampler: SamplerPolicy | None = None
        self._sampling: asyncio.Task[None] | None = None
        self._wave_started = 0  # items started in the current wave
        self._wave_number = 0
        self.max_in_flight = 0
        self._gc = RunGC(options.concurrency)

    # ---- public surface used by the API layer -------------------------------------

    def start(self, items: Iterable[Any] | AsyncIterable[Any]) -> None:
        self._gc.enter()  # fewer, larger GC sweeps until the run ends (`_gc`)
        self._producer = self._loop.create_task(self._produce(items), name="conveyor-producer")
        if self.opts.on_progress is not None:
            self._ticker = self._loop.create_task(
                self._out.tick(self.snapshot), name="conveyor-progress"
            )
        mon = self.opts.monitor
        if mon is not None:
            self._sampler = SamplerPolicy(
                interval=mon.interval,
                limits=mon.limits,
                floors=getattr(mon, "floors", None),
                patience=mon.patience,
                started=self._t0,
            )
            self._sampling = self._loop.create_task(self._sample(), name="conveyor-monitor")

    @property
    def _stop_kind(self) -> StopKind | None:
        """Why admission stopped (see `Output.stop_kind`), None while it runs."""
        return self._out.stop_kind

    @property
    def stopping(self) -> bool:
        return self._stop_kind is not None

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    @property
    def concurrency_limit(self) -> int:
        return self._admission.concurrency_limit(self.opts.concurrency)

    async def next_batch(self, max_items: int = 512) -> list[Result[Any]]:
        """Results in completion order; an empty list means the run is over."""
        return await self._out.next_batch(max_items)

    async def wait(self) -> None:
        await self._finished.wait()

    def stop(self, kind: StopKind | str = StopKind.INTERRUPT) -> None:
        """Stop admitting work.

        `interrupt`: items not yet attempting are cancelled now, attempts in
        progress get `grace` seconds to finish. `abort`: cancel everything now.
        """
        pressed = self._out.press(kind)
        if pressed is None:
            return
        kind = pressed
        self._capacity.set()
        if self._reading and self._producer is not None:
            self._producer.cancel()
        if kind is StopKind.INTERRUPT:
            for task, st in list(self._tasks.items()):
                if not st.attempt_running:
                    task.cancel()
            grace = self.opts.grace
            self._grace_handle = self._loop.call_later(grace, self._cancel_all)
            log.warning(
                "stopping: no new items; %d in flight get %.0fs to finish "
                "(press Ctrl+C again to abort now)",
                len(self._tasks),
                grace,
            )
        else:
            self._cancel_all()

    async def aclose(self) -> None:
        """End the run now if it is still going, and wait for every task."""
        if not self._finished.is_set():
            self.stop(StopKind.ABORT)
            if self._producer is not None:
                self._producer.cancel()
        if self._ticker is not None and not self._finished.is_set():
            self._ticker.cancel()
        if self._sampling is not None and not self._finished.is_set():
            self._sampling.cancel()
        tasks = [
            t for t in (self._producer, self._ticker, self._sampling, *self._tasks) if t is not None
        ]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._shutdown()

    def report(self) -> BatchReport:
        rep = self._out.build_report(
            {"max_in_flight": self.max_in_flight, **self._admission.report_extra()}
        )
        memo = self.opts.memo
        if memo is not None and self._memo_start is not None:
            rep.extra["memo"] = (memo.stats() - self._memo_start).to_dict(
                run_tokens=rep.input_tokens + rep.output_tokens
            )  # the saving against what the whole run spent
        if self._sampler is not None:
            section = self._sampler.to_dict()
            section["unavailable"] = dict(getattr(self.opts.monitor, "unavailable", {}))
            rep.extra["resources"] = section
        return rep

    def outcome(self, report: BatchReport) -> BaseException | None:
        """The error the run ends with, if any, carrying the report."""
        return self._out.outcome(report)

    def run_in_thread(self, fn: Callable[[Any], Any], item: Any) -> asyncio.Future[Any]:
        if self._threads is None:
            self._threads = ThreadRunner(
                self._loop,
                size=self.opts.concurrency,
                init=self.opts.worker_init,
                teardown=self.opts.worker_teardown,
            )
        return self._threads.submit(contextvars.copy_context(), fn, item)

    # ---- the producer: source -> admission into slots ---------------------------------

    async def _produce(self, items: Iterable[Any] | AsyncIterable[Any]) -> None:
        index = 0
        if not isinstance(items, AsyncIterable) and needs_thread(items):
            # A generator may be slow or block: pulled beside the loop, it
            # stalls no item in flight and cannot make Ctrl+C powerless.
            items = ThreadedSource(items)
        try:
            if isinstance(items, AsyncIterable):
                it = aiter(items)
                # Items the source thread has ready are taken without a wait.
                ready = items.ready if isinstance(items, ThreadedSource) else None
                while True:
                    item = ready() if ready is not None else NOT_READY
                    if item is NOT_READY:
                        # While waiting on the source the producer may be cancelled by
                        # stop(): a source that never yields again must not hang it.
                        self._reading = True
                        try:
                            item = await anext(it)
                        except StopAsyncIteration:
                            break
                        finally:
                            self._reading = False
                    if self._room_now():
                        self._admit_at_once(index, item)
                    elif not await self._admit_item(index, item):
                        break
                    index += 1
            else:
                for item in items:
                    if self._room_now():
                        self._admit_at_once(index, item)
                    elif not await self._admit_item(index, item):
                        break
                    index += 1
            if self._wave is not None:
                await self._end_wave()
        except asyncio.CancelledError:
            if self._stop_kind is not None and self._stop_kind.interrupted:
                return  # stopped while waiting on the source: not an error
            raise
        except Exception as exc:
            # A broken input iterator stops admission; what ran is still reported.
            log.error("the items iterable raised %s: %s", type(exc).__name__, exc)
            self._out.source_failed(exc)
        finally:
            if isinstance(items, ThreadedSource):
                await items.aclose()
            await self._idle.wait()
            self._finish()

    def _drain_stopped(self, index: int, item: Any) -> bool:
        if self._stop_kind is not None and self._stop_kind.skips_rest:
            self._emit_skipped(index, item)
            return True  # keep draining: every input item gets a result
        return False

    def _full(self) -> bool:
        """No slot for a new item: attempts in flight (items not waiting out a
        retry) are at the limit, or items alive at twice it (memory stays bounded)."""
        limit = self.concurrency_limit
        if self._wave is not None:
            return len(self._tasks) >= limit  # a wave is a fixed batch of items
        alive = len(self._tasks)
        return alive - self._retrying >= limit or alive >= 2 * limit

    async def _slot_for_retry(self) -> None:
        """Wait until this retrying item may attempt again within the limit."""
        if self._wave is not None:
            return
        while len(self._tasks) - self._retrying >= self.concurrency_limit:
            if self._refusing():
                return  # admission refuses it next, with the right result
            self._capacity.clear()
            await self._capacity.wait()

    def _key_for(self, index: int, item: Any) -> str | None:
        """The item's key; None when the key function raised (the item failed)."""
        try:
            return str(index) if self.opts.key is None else str(self.opts.key(item))
        except Exception as exc:
            self._emit(
                self._result(index, str(index), item, Status.FAILED, ErrorInfo.from_exception(exc))
            )
            return None

    def _admit_at_once(self, index: int, item: Any) -> bool:
        """`_admit_item` for an item that has a slot now (the producer checked:
        not stopping, not full, no waves): the same steps without a coroutine."""
        key = self._key_for(index, item)
        if key is None:
            return True
        earlier = self.opts.previous(key) if self.opts.previous is not None else None
        self._launch(index, key, item, earlier)
        return True

    def _room_now(self) -> bool:
        return (
            self._stop_kind is None
            and self._wave is None
            and len(self._buffer) < self._buffer_max
            and not self._full()
        )

    async def _admit_item(self, index: int, item: Any) -> bool:
        if self._stop_kind is not None:
            return self._drain_stopped(index, item)
        key = self._key_for(index, item)
        if key is None:
            return True
        earlier = self.opts.previous(key) if self.opts.previous is not None else None
        while (earlier is None and self._full()) or len(self._buffer) >= self._buffer_max:
            self._capacity.clear()
            await self._capacity.wait()
            if self.stopping:  # a property: re-read after the await
                return self._drain_stopped(index, item)
        self._launch(index, key, item, earlier)
        if self._wave is not None:
            self._wave_started += 1
            if self._wave_started >= self._wave_size():
                await self._end_wave()
        return True

    def _launch(self, index: int, key: str, item: Any, earlier: Result[Any] | None) -> None:
        """Start the item's task (or report its earlier result)."""
        if earlier is not None:
            # Already done in an earlier run (the journal): report, don't run.
            earlier.index = index
            earlier.item = item
            earlier.meta["resumed"] = True
            self._emit(earlier)
            return
        st = _ItemState(index, key, item)
        task = self._loop.create_task(self._run_item(index, key, item, st))
        st.task = task
        self._tasks[task] = st
        self._idle.clear()
        task.add_done_callback(self._task_done)
        if len(self._tasks) > self.max_in_flight:
            self.max_in_flight = len(self._tasks)

    def _wave_size(self) -> int:
        return self.opts.batch_size or self.opts.concurrency

    async def _end_wave(self) -> None:
        await self._idle.wait()
        if self._wave_started == 0:
            return
        self._wave_number += 1
        results = sorted(self._wave or [], key=lambda r: r.index)
        self._wave = []
        self._wave_started = 0
        total = None
        if self._length_hint is not None:
            total = -(-self._length_hint // self._wave_size())
        info = BatchInfo(self._wave_number, total, results, self._completed)
        log.info(
            "Processed batch %d/%s: %d items complete",
            info.number,
            "?" if total is None else total,
            info.completed,
        )
        await self._dispatch.batch(info)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        st = self._tasks.pop(task, None)
        if task.cancelled() and st is not None and not st.reported:
            # Cancelled before its coroutine ever ran, so it could not report:
            # the item still gets its one terminal result.
            self._emit(
                self._result(
                    st.index,
                    st.key,
                    st.item,
                    Status.CANCELLED,
                    ErrorInfo("Cancelled", "the run stopped before this item started"),
                )
            )
        elif not task.cancelled() and task.exception() is not None:
            # _run_item catches everything; reaching here is a conveyor bug.
            log.error("internal error in an item task", exc_info=task.exception())
        self._capacity.set()
        if not self._tasks:
            self._idle.set()

    def _finish(self) -> None:
        if self._grace_handle is not None:
            self._grace_handle.cancel()
        self._gc.exit()
        self._out.finish()

    def _cancel_all(self) -> None:
        me = asyncio.current_task()
        for task in list(self._tasks):
            if task is not me:  # the item that triggered the stop reports itself
                task.cancel()

    def _shutdown(self) -> None:
        self._gc.exit()
        if self._threads is not None:
            self._threads.shutdown()

    def _stop_fatal(self, exc: FatalError) -> None:
        if self._out.fatal_stop(exc):
            self._stop_now(StopKind.FATAL)

    def _refusing(self) -> bool:
        # A broken input iterator ends admission of new items, but items
        # already admitted still run to their result.
        return self._out.halted

    def _stop_now(self, kind: StopKind) -> None:
        if self._out.halt(kind):
            self._cancel_all()

    # ---- results out ------------------------------------------------------------------

    def _emit_skipped(self, index: int, item: Any) -> None:
        try:
            key = str(index) if self.opts.key is None else str(self.opts.key(item))
        except Exception:
            key = str(index)
        self._emit(self._out.skipped(index, key, item))

    def _emit(self, r: Result[Any]) -> None:
        self._completed += 1
        if self._wave is not None and r.status is not Status.SKIPPED:
            self._wave.append(r)
        self._out.emit(r)
