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
import contextlib
import contextvars
import inspect
import logging
import random
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from .._base._exceptions import EndpointDown, FatalError, QuotaExceeded, ResourceLimitExceeded
from .._base._types import ErrorInfo, Result, Status, Usage
from ._admission import Admission, Refused, Ticket
from ._attempt import Attempt, _current
from ._callbacks import BatchInfo
from ._outcome import StopKind
from ._output import Output
from ._progress import ProgressSnapshot, RateMeter, measure
from ._sampler import SamplerPolicy
from ._source import ThreadedSource, needs_thread
from ._threads import ThreadRunner
from ._validation import Checker, Reask

if TYPE_CHECKING:
    from ._options import Options
    from ._report import BatchReport

__all__ = ["Engine", "Invoker", "invoker_for"]

log = logging.getLogger("conveyor")

# Rate-limit refusals of one item that are waited out without using up its
# retries (unless retries=0); past this many they count (never endless).
_MAX_RATE_REFUSALS = 10

# An invoker runs one attempt of one item; the engine wraps it with the
# attempt context, the timeout and the retry loop.
Invoker = Callable[[Any, "Engine"], Awaitable[Any]]


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


def _add_usage(total: Usage | None, more: Usage | None) -> Usage | None:
    """Tokens over every attempt of an item: each one is billed."""
    if more is None:
        return total
    if total is None:
        return Usage(more.input_tokens, more.output_tokens)
    return Usage(total.input_tokens + more.input_tokens, total.output_tokens + more.output_tokens)


class FatalItem(Exception):
    """Internal: this item can never run (for example its cost exceeds the limit)."""


def _consume(task: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned attempt's outcome so asyncio does not log it."""
    if not task.cancelled():
        task.exception()


class _BaseExceptionRaised(Exception):
    """Internal: fn raised a BaseException that is not an Exception."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(str(original) or type(original).__name__)
        self.original = original


class _ItemState:
    __slots__ = ("attempt_running", "index", "item", "key", "reported")

    def __init__(self, index: int, key: str, item: Any) -> None:
        self.index = index
        self.key = key
        self.item = item
        self.attempt_running = False
        self.reported = False  # set once the coroutine ran (it always reports)


class Engine:
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

    # ---- public surface used by the API layer -------------------------------------

    def start(self, items: Iterable[Any] | AsyncIterable[Any]) -> None:
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

    def snapshot(self) -> ProgressSnapshot:
        """The live figures of this run (cheap; call as often as you like)."""
        now = self._clock.now()
        return measure(
            self._meter,
            self._report,
            now=now,
            started=self._t0,
            total=self._length_hint,
            attempts=self._attempts,
            in_flight=len(self._tasks),
            retrying=self._retrying,
            concurrency_limit=self.concurrency_limit,
            finished=self._finished.is_set(),
            limits=self._admission.figures(now),
            resources=None if self._sampler is None else self._sampler.latest,
            extra=None if self._memo_start is None else {"memo": self._memo_figures()},
        )

    def _memo_figures(self) -> dict[str, Any]:
        memo, start = self.opts.memo, self._memo_start
        assert memo is not None
        assert start is not None
        return (memo.stats() - start).to_dict()

    @property
    def _stop_kind(self) -> StopKind | None:
        """Why admission stopped (see `Output.stop_kind`), None while it runs."""
        return self._out.stop_kind

    async def _sample(self) -> None:
        """The monitor's driver: probe when the policy says, stop on a breach."""
        mon, policy = self.opts.monitor, self._sampler
        assert policy is not None
        failed = False
        while True:
            finished = self._finished.is_set()  # then one last sample, for the report
            if finished or policy.due(self._clock.now()):
                try:
                    values = await asyncio.to_thread(mon.sample)
                except Exception as exc:
                    values = {}
                    if not failed:
                        failed = True
                        log.warning("monitor: sampling raised %s: %s", type(exc).__name__, exc)
                breach = policy.record(self._clock.now(), values)
                if breach is not None and not finished:
                    self._stop_fatal(
                        ResourceLimitExceeded(
                            breach.metric, breach.value, breach.limit, breach.message()
                        )
                    )
            if finished:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._finished.wait(), max(0.01, policy.wait(self._clock.now()))
                )

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
                while True:
                    # While waiting on the source the producer may be cancelled by
                    # stop(): a source that never yields again must not hang it.
                    self._reading = True
                    try:
                        item = await anext(it)
                    except StopAsyncIteration:
                        break
                    finally:
                        self._reading = False
                    if not await self._admit_item(index, item):
                        break
                    index += 1
            else:
                for item in items:
                    if not await self._admit_item(index, item):
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

    async def _admit_item(self, index: int, item: Any) -> bool:
        if self._stop_kind is not None:
            return self._drain_stopped(index, item)
        try:
            key = str(index) if self.opts.key is None else str(self.opts.key(item))
        except Exception as exc:
            self._emit(
                self._result(index, str(index), item, Status.FAILED, ErrorInfo.from_exception(exc))
            )
            return True
        earlier = self.opts.previous(key) if self.opts.previous is not None else None
        while (earlier is None and self._full()) or len(self._buffer) >= self._buffer_max:
            self._capacity.clear()
            await self._capacity.wait()
            if self.stopping:  # a property: re-read after the await
                return self._drain_stopped(index, item)
        if earlier is not None:
            # Already done in an earlier run (the journal): report, don't run.
            earlier.index = index
            earlier.item = item
            earlier.meta["resumed"] = True
            self._emit(earlier)
            return True
        st = _ItemState(index, key, item)
        task = self._loop.create_task(self._run_item(index, key, item, st))
        self._tasks[task] = st
        self._idle.clear()
        task.add_done_callback(self._task_done)
        if len(self._tasks) > self.max_in_flight:
            self.max_in_flight = len(self._tasks)
        if self._wave is not None:
            self._wave_started += 1
            if self._wave_started >= self._wave_size():
                await self._end_wave()
        return True

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
        self._out.finish()

    def _cancel_all(self) -> None:
        me = asyncio.current_task()
        for task in list(self._tasks):
            if task is not me:  # the item that triggered the stop reports itself
                task.cancel()

    def _shutdown(self) -> None:
        if self._threads is not None:
            self._threads.shutdown()

    # ---- one item: admission, attempts, retries -------------------------------------

    async def _run_item(self, index: int, key: str, item: Any, st: _ItemState) -> None:
        try:
            await self._run_item_inner(index, key, item, st)
        finally:
            st.reported = True

    async def _run_item_inner(self, index: int, key: str, item: Any, st: _ItemState) -> None:
        clock = self._clock
        t0 = clock.now()
        wall0 = time.time()
        attempts = 0
        error: ErrorInfo | None = None
        usage: Usage | None = None
        checker = Checker(self.opts.reask) if self.opts.validate is not None else None
        reask: Reask | None = None
        try:
            self._dispatch.start(index, key, item)
            weight = 0.0
            split: tuple[float, float] | None = None
            if self.opts.cost is not None:
                try:
                    raw = self.opts.cost(item)
                    if isinstance(raw, tuple):
                        # (input, output): budgets that meter them apart get each.
                        split = (float(raw[0]), float(raw[1]))
                        weight = split[0] + split[1]
                    else:
                        weight = float(raw)
                except Exception as exc:
                    # A cost function may reject an item outright (an invalid
                    # input line): it fails without an attempt or a rate slot.
                    self._emit(
                        self._result(index, key, item, Status.FAILED, ErrorInfo.from_exception(exc))
                    )
                    return
                why = self._admission.never_fits(weight)
                if why is not None:
                    raise FatalItem(why)
            refusals = 0  # rate-limit refusals: waited out, not counted as retries
            while True:
                ticket = await self._admission.admit(weight, split)
                attempts += 1
                self._attempts += 1
                attempt = Attempt(index, key, attempts, reask=reask)
                st.attempt_running = True
                sent = clock.now()
                try:
                    try:
                        value = await self._attempt(item, attempt)
                    except (KeyboardInterrupt, SystemExit):
                        # Ctrl+C semantics from inside fn: stop the run, this
                        # item is cancelled (a resume runs it again).
                        st.attempt_running = False
                        self._admission.settle(attempt, ticket)
                        log.warning("the task function raised KeyboardInterrupt/SystemExit")
                        self.stop(StopKind.INTERRUPT)
                        raise asyncio.CancelledError from None
                    except asyncio.CancelledError:
                        raise
                    except BaseException as base:
                        if isinstance(base, Exception):
                            raise
                        # Not an Exception (pytest outcomes, GreenletExit...):
                        # the item fails, not retried, and never vanishes.
                        raise _BaseExceptionRaised(base) from base
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    st.attempt_running = False
                    usage = _add_usage(usage, attempt.usage)
                    self._admission.settle(attempt, ticket)
                    reasked = checker.reasks if checker is not None else 0
                    delay, refused = self._on_failure(
                        exc, attempts - refusals - reasked, ticket, refusals
                    )
                    self._note_recovery()  # an answer that is a refusal closes it too
                    if refused != "rate" and self.opts.retry.is_retryable(exc):
                        # Timeouts, 5xx, capacity refusals: signs of overload.
                        self._admission.observe(
                            clock.now() - sent,
                            ok=False,
                            in_flight=len(self._tasks),
                            timeout=isinstance(exc, TimeoutError),
                        )
                    if refused == "rate":
                        refusals += 1
                    retryable = delay is not None
                    error = ErrorInfo.from_exception(
                        exc.original if isinstance(exc, _BaseExceptionRaised) else exc,
                        retryable=retryable,
                    )
                    if delay is None or self._refusing():
                        status = (
                            Status.TIMED_OUT if isinstance(exc, TimeoutError) else Status.FAILED
                        )
                        if (
                            refused in ("quota", "outage")
                            or isinstance(exc, FatalError)
                            or getattr(exc, "resumable", False) is True
                        ):
                            # Not this item's fault: a resume sends it again.
                            status = Status.CANCELLED
                        r = self._result(
                            index, key, item, status, error, attempts, wall0, t0, usage
                        )
                        meta = getattr(exc, "meta", None)
                        if isinstance(meta, dict):
                            r.meta = dict(meta)  # e.g. the HTTP response of a refused request
                        self._emit(r)
                        return
                    log.debug(
                        "retrying item %s after %s (attempt %d), waiting %.2fs",
                        key,
                        error.type,
                        attempts,
                        delay,
                        extra={
                            "batch_id": self._report.batch_id,
                            "key": key,
                            "attempt": attempts,
                            "error_type": error.type,
                        },
                    )
                    # Waiting out a backoff or a Retry-After holds no slot: the
                    # limit is on attempts in flight, so others go ahead, and
                    # this item takes a slot again before its next attempt.
                    self._retrying += 1
                    self._capacity.set()
                    try:
                        await self._wait_retry(delay, refused)
                        await self._slot_for_retry()
                    finally:
                        self._retrying -= 1
                    continue
                st.attempt_running = False
                usage = _add_usage(usage, attempt.usage)
                self._admission.settle(attempt, ticket)
                self._admission.on_success()
                self._note_recovery()
                if not attempt.cached:
                    self._admission.observe(
                        clock.now() - sent, ok=True, in_flight=len(self._tasks), usage=usage
                    )
                verdict = None
                if checker is not None and self.opts.validate is not None:
                    verdict = checker.judge(self.opts.validate, item, value, attempt)
                    if verdict.reask is not None:  # invalid: ask again (same limits)
                        reask = verdict.reask
                        log.debug("item %s: invalid answer, re-ask %d", key, reask.number)
                        continue
                    value = verdict.value
                bad = verdict.error if verdict is not None else None
                status = Status.OK if bad is None else Status.FAILED
                info = None if bad is None else ErrorInfo.from_exception(bad)
                r = self._result(index, key, item, status, info, attempts, wall0, t0, usage)
                if bad is None:
                    r.value = value
                if verdict is not None and verdict.meta is not None:
                    r.meta["validation"] = verdict.meta
                if attempt.cached:
                    r.meta["cached"] = True  # answered locally: tokens saved, not spent
                self._emit(r)
                return
        except (asyncio.CancelledError, Refused):
            self._emit(
                self._result(
                    index,
                    key,
                    item,
                    Status.CANCELLED,
                    error or ErrorInfo("Cancelled", "the run stopped before this item finished"),
                    attempts,
                    wall0,
                    t0,
                    usage,
                )
            )
        except Exception as exc:
            if not isinstance(exc, FatalItem):
                # A bug in a callback path or the engine: still exactly one result.
                log.exception("internal error while running item %s", key)
            self._emit(
                self._result(
                    index,
                    key,
                    item,
                    Status.FAILED,
                    ErrorInfo.from_exception(exc),
                    attempts,
                    wall0,
                    t0,
                    usage,
                )
            )

    async def _call(self, item: Any) -> Any:
        value = await self._invoke(item, self)
        if inspect.isawaitable(value):
            # A plain function that returns an awaitable (a lambda around an
            # async call): await it here, on the loop, within the timeout.
            value = await value
        return value

    async def _attempt(self, item: Any, attempt: Attempt) -> Any:
        _current.set(attempt)
        timeout = self.opts.timeout
        if timeout is None:
            return await self._call(item)
        # The call runs as its own task: a function that swallows
        # CancelledError is abandoned at the timeout instead of hanging us.
        task = asyncio.ensure_future(self._call(item))
        try:
            done, _ = await asyncio.wait((task,), timeout=timeout)
        except asyncio.CancelledError:
            task.cancel()
            task.add_done_callback(_consume)
            raise
        if done:
            return task.result()
        task.cancel()
        task.add_done_callback(_consume)
        raise TimeoutError(f"attempt {attempt.number} exceeded the timeout of {timeout:g}s")

    def _on_failure(
        self, exc: Exception, attempts: int, ticket: Ticket | None, refusals: int = 0
    ) -> tuple[float | None, str | None]:
        """Apply what a failed attempt means to the run.

        Returns the retry delay (None: give up) and the refusal class
        ("rate", "quota", "capacity") if the server refused it.
        """
        if isinstance(exc, FatalError):
            self._stop_fatal(exc)
            return None, None
        if isinstance(exc, _BaseExceptionRaised):
            return None, None
        retryable = self.opts.retry.is_retryable(exc)
        verdict = self._admission.on_failure(exc, ticket, transient=retryable)
        refusal, kind = verdict.refusal, verdict.kind
        if kind == "quota" and refusal is not None:
            self._stop_fatal(QuotaExceeded(refusal.message or str(exc), wait=refusal.wait))
            return None, kind
        brk, give_up = self._admission.breaker, self._give_up
        if brk is not None and give_up is not None:
            down = brk.outage(self._clock.now())
            if down >= give_up:
                # Total failure for too long: stop, resumable, instead of
                # probing forever with every item in flight.
                last = f"{type(exc).__name__}: {exc}"
                self._stop_fatal(EndpointDown(down, last[:300]))
                return None, "outage"
        keeps_retries = self.opts.retry.retries > 0 and refusals < _MAX_RATE_REFUSALS
        if kind == "rate" and retryable and keeps_retries:
            # A rate refusal does not use up the item's retries. When the
            # budget is spent, admission waits for it (no backoff on top);
            # a sporadic one waits out its own Retry-After (or a backoff).
            if verdict.shared:
                return 0.0, kind
            return self.opts.retry.delay(refusals + 1, exc, self._rng), kind
        return self.opts.retry.decide(attempts, exc, self._rng), kind

    def _note_recovery(self) -> None:
        """Wake the items waiting out a backoff when the breaker closes again."""
        brk = self._admission.breaker
        if brk is not None and brk.closes != self._closes_seen:
            self._closes_seen = brk.closes
            self._recovered.set()
            self._recovered = asyncio.Event()

    async def _wait_retry(self, delay: float, refused: str | None) -> None:
        # A backoff after a failure of the endpoint ends early once the
        # endpoint answers again (the breaker closed): an outage's end is
        # not followed by seconds of idle backoffs. Rate refusals keep
        # their wait (the server asked for it).
        if self._admission.breaker is None or refused == "rate" or delay <= 0:
            await self._clock.sleep(delay)
            return
        sleep = asyncio.ensure_future(self._clock.sleep(delay))
        woken = asyncio.ensure_future(self._recovered.wait())
        try:
            await asyncio.wait((sleep, woken), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleep.cancel()
            woken.cancel()

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

    def _result(
        self,
        index: int,
        key: str,
        item: Any,
        status: Status,
        error: ErrorInfo | None,
        attempts: int = 0,
        wall0: float | None = None,
        t0: float | None = None,
        usage: Any = None,
    ) -> Result[Any]:
        end = self._clock.now()
        return Result(
            index=index,
            key=key,
            status=status,
            item=item,
            error=error,
            attempts=attempts,
            started_at=wall0,
            ended_at=(wall0 + (end - t0)) if wall0 is not None and t0 is not None else None,
            duration=(end - t0) if t0 is not None else 0.0,
            usage=usage,
        )

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
