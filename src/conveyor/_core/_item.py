"""One item in the engine: its attempts (each with the timeout), its retries, its one result.

`ItemRunner` is the half of `Engine` that runs inside each item's task;
the engine (`_engine.py`) owns the producer, the slots, stopping and the
result stream, and mixes this in.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from typing import TYPE_CHECKING, Any, cast

from .._base._exceptions import EndpointDown, FatalError, QuotaExceeded
from .._base._types import ErrorInfo, Result, Status, Usage
from ._admission import Refused
from ._attempt import Attempt, _current
from ._deadlines import Deadlines
from ._outcome import StopKind
from ._validation import Checker, Reask

if TYPE_CHECKING:
    import random
    from collections.abc import Callable

    from .._base._clock import Clock
    from ._admission import Admission, Ticket
    from ._callbacks import Dispatcher
    from ._engine import Engine, Invoker
    from ._options import Options
    from ._report import ReportBuilder

__all__ = ["FatalItem", "ItemRunner"]

log = logging.getLogger("conveyor")

# Rate-limit refusals of one item that are waited out without using up its
# retries (unless retries=0); past this many they count (never endless).
_MAX_RATE_REFUSALS = 10

# Enum members read per request, as module constants (on 3.11 `Enum.MEMBER` goes
# through EnumType.__getattr__: ~10x a global; issue 18).
_OK = Status.OK


def _add_usage(total: Usage | None, more: Usage | None) -> Usage | None:
    """Tokens over every attempt of an item: each one is billed."""
    if more is None:
        return total
    if total is None:
        return Usage(more.input_tokens, more.output_tokens)
    return Usage(total.input_tokens + more.input_tokens, total.output_tokens + more.output_tokens)


def _applies(validate: Any, item: Any) -> bool:
    """False when `validate` says (its optional `applies(item)`) that it leaves
    every answer to `item` as it is: the item's answers then skip it."""
    applies = getattr(validate, "applies", None)
    return True if applies is None else bool(applies(item))


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
    __slots__ = ("attempt_running", "index", "item", "key", "reported", "task")

    def __init__(self, index: int, key: str, item: Any) -> None:
        self.index = index
        self.key = key
        self.item = item
        self.attempt_running = False
        self.reported = False  # set once the coroutine ran (it always reports)
        self.task: asyncio.Task[None] | None = None  # the item's task, once created


class ItemRunner:
    """The per-item half of `Engine` (mixed in; the state it reads is the engine's)."""

    if TYPE_CHECKING:
        opts: Options
        _clock: Clock
        _invoke: Invoker
        _admission: Admission
        _dispatch: Dispatcher
        _report: ReportBuilder
        _rng: random.Random
        _give_up: float | None
        _tasks: dict[asyncio.Task[None], _ItemState]
        _capacity: asyncio.Event
        _attempts: int
        _retrying: int
        _recovered: asyncio.Event
        _closes_seen: int
        _cancels_cleanly: bool
        _deadlines: Deadlines | None

        def stop(self, kind: StopKind | str = StopKind.INTERRUPT) -> None: ...
        def _emit(self, r: Result[Any]) -> None: ...
        def _refusing(self) -> bool: ...
        def _stop_fatal(self, exc: FatalError) -> None: ...
        async def _slot_for_retry(self) -> None: ...

    async def _run_item(self, index: int, key: str, item: Any, st: _ItemState) -> None:
        clock = self._clock
        t0 = clock.now()
        wall0 = time.time()
        attempts = 0
        error: ErrorInfo | None = None
        usage: Usage | None = None
        validate = self.opts.validate
        if validate is not None and not _applies(validate, item):
            validate = None  # this item's answers are not checked: no checker, no verdicts
        checker = Checker(self.opts.reask) if validate is not None else None
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
            admission = self._admission
            while True:
                ticket = admission.admit_now(weight, split)
                if ticket is None:
                    ticket = await admission.admit(weight, split)
                attempts += 1
                self._attempts += 1
                attempt = Attempt(index, key, attempts, reask=reask)
                st.attempt_running = True
                sent = clock.now()
                try:
                    try:
                        value = await self._attempt(item, attempt, st.task)
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
                    if refused != "rate" and _overload(exc, self.opts.retry.is_retryable):
                        # Timeouts, 503/504/529, capacity refusals: signs of overload.
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
                self._admission.on_success(ticket)
                self._note_recovery()
                if not attempt.cached and admission.congestion is not None:
                    admission.observe(
                        clock.now() - sent, ok=True, in_flight=len(self._tasks), usage=usage
                    )
                verdict = None
                if checker is not None and validate is not None:
                    verdict = checker.judge(validate, item, value, attempt)
                    if verdict.reask is not None:  # invalid: ask again (same limits)
                        reask = verdict.reask
                        log.debug("item %s: invalid answer, re-ask %d", key, reask.number)
                        continue
                    value = verdict.value
                bad = verdict.error if verdict is not None else None
                status = _OK if bad is None else Status.FAILED
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
        finally:
            st.reported = True  # the coroutine ran, so it reported (see `Engine._task_done`)

    async def _call(self, item: Any) -> Any:
        value = await self._invoke(item, cast("Engine", self))
        if inspect.isawaitable(value):
            # A plain function that returns an awaitable (a lambda around an
            # async call): await it here, on the loop, within the timeout.
            value = await value
        return value

    async def _attempt(
        self, item: Any, attempt: Attempt, task: asyncio.Task[Any] | None = None
    ) -> Any:
        _current.set(attempt)
        timeout = self.opts.timeout
        if timeout is None:
            return await self._call(item)
        if self._cancels_cleanly:
            # Our own calls end when cancelled and return no awaitable to
            # await again: the timeout cancels this task, from a timer shared
            # with the attempts that started about when this one did
            # (`_deadlines`), not a task, a wait or a timer per attempt.
            deadlines = self._deadlines
            if deadlines is None:
                deadlines = self._deadlines = Deadlines(asyncio.get_running_loop(), timeout)
            if task is None:  # the item's own task (`_ItemState.task`)
                task = cast("asyncio.Task[Any]", asyncio.current_task())
            cancelling = task.cancelling()
            slice_ = deadlines.enter(task)
            try:
                return await self._invoke(item, cast("Engine", self))
            except asyncio.CancelledError:
                expired = deadlines.expired
                if task in expired:
                    expired.discard(task)
                    if task.uncancel() <= cancelling:  # ours alone, as asyncio.timeout
                        raise TimeoutError(
                            f"attempt {attempt.number} exceeded the timeout of {timeout:g}s"
                        ) from None
                raise
            finally:
                if slice_.pop(task, None) is None and task in deadlines.expired:
                    # Cancelled for its deadline, yet it ended otherwise: the
                    # cancellation is withdrawn, as asyncio.timeout does.
                    deadlines.expired.discard(task)
                    task.uncancel()
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


# Answers that say the server is overloaded (RFC 9110 503 Service Unavailable,
# 504 from a gateway, Anthropic's 529 overloaded_error). A quick 500 or 502 is a
# fault of that request, not a queue: the auto limit does not back off for it.
_OVERLOAD_STATUS = frozenset({503, 504, 529})


def _overload(exc: BaseException, retryable: Callable[[BaseException], bool]) -> bool:
    if not retryable(exc):
        return False
    status = getattr(exc, "status_code", None)
    return status is None or status in _OVERLOAD_STATUS
