"""The output half of a run, shared by the local engine and the Ray driver.

Results go out through one `Output`: into the report, past the failure log
and `fail_fast`, to the user's callbacks, and (for `stream()`) into a bounded
buffer that `next_batch()` drains. It also keeps why the run stopped (the
double-press rule: a second interrupt is an abort), the progress ticker, and
the report and error the run ends with. The run itself (the engine's
admission, the driver's chunks) only decides *when* to stop; it tells the
`Output` through `press`/`halt`/`fatal_stop` and then carries the stop out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from .._base._types import ErrorInfo, Result, Status
from ._callbacks import Dispatcher
from ._outcome import Ending, StopKind, log_failure
from ._report import ReportBuilder

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._base._exceptions import FatalError
    from ._options import Options
    from ._progress import ProgressSnapshot
    from ._report import BatchReport

__all__ = ["Output"]

log = logging.getLogger("conveyor")

# Enum members read per request, as module constants (on 3.11 `Enum.MEMBER` goes
# through EnumType.__getattr__: ~10x a global; issue 18).
_FAILED, _TIMED_OUT = Status.FAILED, Status.TIMED_OUT


class Output:
    """Results out of one run, and how it ended.

    `stop_now(kind)` is the run's own immediate stop (cancel what is in
    flight), called for `fail_fast`. `deliver`: results are buffered for
    `next_batch()` (a stream); otherwise only the report keeps them.
    """

    def __init__(
        self,
        options: Options,
        *,
        keep_results: bool,
        deliver: bool,
        stop_now: Callable[[StopKind], None],
    ) -> None:
        self.opts = options
        self.deliver = deliver
        self.report = ReportBuilder(batch_id=options.batch_id, keep_results=keep_results)
        self.dispatch = Dispatcher(options.callbacks)
        self.buffer: deque[Result[Any]] = deque()
        self.buffer_max = max(1024, 2 * options.concurrency)
        self.readable = asyncio.Event()
        self.capacity = asyncio.Event()  # set when the consumer took results (or on a stop)
        self.finished = asyncio.Event()
        self.stop_kind: StopKind | None = None
        self.fatal: FatalError | None = None
        self.source_error: BaseException | None = None
        self._stop_now = stop_now
        self._progress_failed = False

    # ---- why the run stops -------------------------------------------------------

    @property
    def halted(self) -> bool:
        """Admission has stopped. A broken input only ends reading: items already
        read still run to their result, so `SOURCE` does not halt."""
        return self.stop_kind is not None and self.stop_kind is not StopKind.SOURCE

    def press(self, kind: StopKind | str) -> StopKind | None:
        """A stop asked from outside (Ctrl+C, `stop()`): the kind to carry out, or
        None when there is nothing more to do. A second `interrupt` is an `abort`."""
        kind = StopKind(kind)
        if kind is StopKind.INTERRUPT and self.stop_kind is StopKind.INTERRUPT:
            kind = StopKind.ABORT  # a second Ctrl+C
        if self.halted and kind is not StopKind.ABORT:
            return None
        if not self.halted:
            self.stop_kind = kind
        return kind

    def halt(self, kind: StopKind) -> bool:
        """Stop admission for `kind` unless already stopped; True if this stopped it."""
        if self.halted:
            return False
        self.stop_kind = kind
        self.capacity.set()
        return True

    def fatal_stop(self, err: FatalError) -> bool:
        """Record the fatal error that stops the run (the first one counts); True if
        the run should now stop at once (`stop_now(StopKind.FATAL)`)."""
        if self.halted:
            return False
        self.fatal = err
        log.error("stopping the run: %s", err)
        return True

    def source_failed(self, exc: BaseException) -> None:
        """The items iterable raised: no new items; those read still run."""
        self.source_error = exc
        if self.stop_kind is None:
            self.stop_kind = StopKind.SOURCE

    # ---- results out -------------------------------------------------------------

    def skipped(self, index: int, key: str, item: Any) -> Result[Any]:
        """The result of an item never run because the run stopped."""
        return Result(
            index=index,
            key=key,
            status=Status.SKIPPED,
            item=item,
            error=ErrorInfo("Skipped", f"not run: the run stopped ({self.stop_kind})"),
        )

    def emit(self, r: Result[Any]) -> None:
        """One terminal result: report, failure log, `fail_fast`, callbacks, buffer."""
        self.report.add(r)
        if r.status is _FAILED or r.status is _TIMED_OUT:
            log_failure(r, self.report.batch_id)
            if self.opts.fail_fast and not self.halted:
                log.error("fail_fast: stopping after item %s %s", r.key, r.status.value)
                self._stop_now(StopKind.FAIL_FAST)
        self.dispatch.result(r)
        if self.deliver:
            self.buffer.append(r)
            self.readable.set()

    @property
    def backlogged(self) -> bool:
        """The consumer is behind: hold back until it takes results."""
        return len(self.buffer) >= self.buffer_max

    async def wait_for_room(self) -> None:
        """Wait until the consumer took results (or the run stopped)."""
        self.capacity.clear()
        await self.capacity.wait()

    async def next_batch(self, max_items: int = 512) -> list[Result[Any]]:
        """Results in completion order; an empty list means the run is over."""
        while not self.buffer:
            if self.finished.is_set():
                return []
            self.readable.clear()
            await self.readable.wait()  # set by each result and by the end of the run
        out: list[Result[Any]] = []
        buf = self.buffer
        while buf and len(out) < max_items:
            out.append(buf.popleft())
        self.capacity.set()
        return out

    def finish(self) -> None:
        """The run is over: wake every reader."""
        self.finished.set()
        self.readable.set()

    # ---- progress ----------------------------------------------------------------

    def progress(self, snapshot: Callable[[], ProgressSnapshot]) -> None:
        """Call `on_progress` once; a callback that raises is logged once and ignored."""
        fn = self.opts.on_progress
        if fn is None:
            return
        try:
            fn(snapshot())
        except Exception as exc:
            if not self._progress_failed:
                self._progress_failed = True
                log.warning("on_progress raised %s: %s (ignored)", type(exc).__name__, exc)

    async def tick(self, snapshot: Callable[[], ProgressSnapshot]) -> None:
        """`on_progress` every `progress_interval` seconds, and once at the end."""
        interval = self.opts.progress_interval
        while not self.finished.is_set():
            self.progress(snapshot)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.finished.wait(), interval)
        self.progress(snapshot)  # the final figures

    # ---- the end -----------------------------------------------------------------

    def ending(self) -> Ending:
        return Ending(self.stop_kind, self.fatal, self.source_error)

    def build_report(self, extra: dict[str, Any]) -> BatchReport:
        """The report so far, with the run's own `extra` figures."""
        end = self.ending()
        rep = self.report.build(interrupted=end.interrupted, stop_reason=end.reason())
        rep.extra.update(extra)
        if self.dispatch.failures:
            rep.extra["callback_errors"] = self.dispatch.failures
        return rep

    def outcome(self, report: BatchReport) -> BaseException | None:
        """The error the run ends with, if any, carrying the report."""
        return self.ending().error(report)
