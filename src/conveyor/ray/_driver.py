"""The driver of a cluster run: items out in chunks, results back, one stream.

Nothing here imports Ray. The driver talks to a `WorkerPool` (Ray's is in
`_ray_pool`; a Dask pool would implement the same five calls) and keeps
everything that must live in one place: the lazy read of the input, keys,
callbacks, the report, fail-fast and the result stream that the journal and
the output sink consume exactly as they consume the local engine's.

No item is lost or emitted twice: every dispatched item sits in exactly one
chunk's `pending` map until its result arrives (then it is emitted and
removed) or its worker is lost (then it goes back to the front of the queue
for another worker). A result for an index no longer pending is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .._base._exceptions import ConveyorError, FatalError, WorkersLost
from .._base._types import ErrorInfo, Result, Status
from .._core._outcome import StopKind
from .._core._output import Output
from .._core._progress import ProgressSnapshot, RateMeter, measure
from ._source import Entry, EntrySource
from ._wire import WireBatch, WireEntry, decode_fatal, decode_result

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, AsyncIterator, Iterable

    from .._core._options import Options
    from .._core._report import BatchReport

__all__ = ["ClusterRun", "ClusterSettings", "WorkerPool", "WorkersLost"]

log = logging.getLogger("conveyor")


class WorkerPool(Protocol):
    """What the driver needs from a cluster engine."""

    async def open(self) -> None:
        """Connect to the cluster and start shared services (the limiter)."""

    async def start_worker(self, worker_id: int, concurrency: int) -> Any:
        """Start one worker; returns its handle."""

    def run_chunk(self, worker: Any, chunk: list[WireEntry]) -> AsyncIterator[WireBatch]:
        """Run a chunk; yields result batches; raises if the worker is lost."""

    def is_worker_lost(self, exc: BaseException) -> bool:
        """True when `exc` (from `run_chunk`) means the worker is gone."""

    def worker_cannot_start(self, exc: BaseException) -> bool:
        """True when a lost worker died while starting (its function does not load):
        starting another would fail the same way."""

    async def stop_worker(self, worker: Any, kind: StopKind) -> None:
        """Ask a worker to stop admitting work (`interrupt` or `abort`)."""

    async def discard_worker(self, worker: Any) -> None:
        """Make sure a lost worker is dead, so it sends nothing more."""

    async def close(self, workers: list[Any]) -> dict[str, Any]:
        """Close the live workers and shared services; figures for the report."""


@dataclass(frozen=True)
class ClusterSettings:
    workers: int
    concurrency: int
    chunk_size: int
    chunks_per_worker: int
    max_restarts: int
    backend: str = "ray"


class _Worker:
    __slots__ = ("alive", "handle", "id", "share")

    def __init__(self, worker_id: int, handle: Any, share: int) -> None:
        self.id = worker_id
        self.handle = handle
        self.share = share
        self.alive = True


def split_concurrency(total: int, workers: int) -> list[int]:
    """Each worker's share of `total`, at least 1, differing by at most one."""
    base, extra = divmod(max(total, workers), workers)
    return [base + (1 if i < extra else 0) for i in range(workers)]


class ClusterRun:
    """One run on a cluster: start, then read `next_batch()` until it is empty."""

    def __init__(
        self,
        pool: WorkerPool,
        items: Iterable[Any] | AsyncIterable[Any],
        settings: ClusterSettings,
        options: Options,
        *,
        keep_results: bool,
        deliver: bool,
        length_hint: int | None = None,
    ) -> None:
        self._pool = pool
        self._set = settings
        self.opts = options
        self._deliver = deliver
        self._length_hint = length_hint
        self._out = Output(
            options, keep_results=keep_results, deliver=deliver, stop_now=self._stop_now
        )
        self._report = self._out.report
        self._dispatch = self._out.dispatch
        self._loop = asyncio.get_running_loop()
        self._source = EntrySource(items, options.key, self._emit, previous=options.previous)
        self._changed = asyncio.Event()
        self._workers: list[_Worker] = []
        self._worker_ids = 0
        self._lanes: set[asyncio.Task[None]] = set()
        self._aux: set[asyncio.Task[None]] = set()
        self._main: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._capacity = self._out.capacity
        self._finished = self._out.finished
        self._chunks_out = 0
        self._in_flight = 0
        self.max_in_flight = 0
        self._attempts = 0
        self._crash: BaseException | None = None
        self._lost = 0
        self._restarts = 0
        self._pool_stats: dict[str, Any] = {}
        self._t0 = options.clock.now()
        self._meter = RateMeter()

    # ---- public surface ----------------------------------------------------------------

    def start(self) -> None:
        self._main = self._loop.create_task(self._run(), name="conveyor-cluster-driver")
        if self.opts.on_progress is not None:
            self._ticker = self._loop.create_task(
                self._out.tick(self.snapshot), name="conveyor-cluster-progress"
            )

    @property
    def stopping(self) -> bool:
        return self._stop_kind is not None

    @property
    def _stop_kind(self) -> StopKind | None:
        return self._out.stop_kind

    @property
    def _halted(self) -> bool:
        # A broken input only ends reading: items already read (or given back by a
        # lost worker) still run to their result, as on one machine.
        return self._out.halted

    @property
    def workers(self) -> list[Any]:
        """Handles of the workers alive now (Ray actor handles on Ray)."""
        return [w.handle for w in self._workers if w.alive]

    async def next_batch(self, max_items: int = 512) -> list[Result[Any]]:
        """Results in completion order; an empty list means the run is over."""
        return await self._out.next_batch(max_items)

    async def wait(self) -> None:
        await self._finished.wait()

    def stop(self, kind: StopKind | str = StopKind.INTERRUPT) -> None:
        """Stop dispatching. `interrupt` gives attempts in progress the grace; `abort` not."""
        pressed = self._out.press(kind)
        if pressed is None:
            return
        kind = pressed
        if kind is StopKind.INTERRUPT:
            log.warning(
                "stopping: no new items; %d in flight on the workers get %.0fs to finish "
                "(press Ctrl+C again to abort now)",
                self._in_flight,
                self.opts.grace,
            )
        self._wake_all()
        self._stop_workers(StopKind.INTERRUPT if kind is StopKind.INTERRUPT else StopKind.ABORT)

    async def aclose(self) -> None:
        """End the run now if it is still going, and wait for it to wind down."""
        if self._main is not None and not self._finished.is_set():
            self.stop(StopKind.ABORT)
            try:
                async with asyncio.timeout(self.opts.grace + 30.0):
                    await asyncio.shield(self._main)
            except TimeoutError:
                self._main.cancel()
        if self._main is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._main
        if self._ticker is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker

    def report(self) -> BatchReport:
        extra: dict[str, Any] = {
            "backend": self._set.backend,
            "workers": self._set.workers,
            "workers_lost": self._lost,
            "worker_restarts": self._restarts,
            "max_in_flight": self.max_in_flight,
        }
        if self._pool_stats:
            extra["cluster"] = self._pool_stats
        return self._out.build_report(extra)

    def outcome(self, report: BatchReport) -> BaseException | None:
        """The error the run ends with, if any, carrying the report."""
        if self._crash is not None:
            if isinstance(self._crash, ConveyorError):
                self._crash.report = report
            return self._crash
        return self._out.outcome(report)

    def snapshot(self) -> ProgressSnapshot:
        """The live figures, as seen from the driver."""
        alive = [w for w in self._workers if w.alive]
        return measure(
            self._meter,
            self._report,
            now=self.opts.clock.now(),
            started=self._t0,
            total=self._length_hint,
            attempts=self._attempts,
            in_flight=self._in_flight,
            retrying=0,
            concurrency_limit=sum(w.share for w in alive),
            finished=self._finished.is_set(),
            limits={"rpm_limit": self.opts.rpm, "tpm_limit": self.opts.tpm},
            extra={"backend": self._set.backend, "workers": len(alive), "workers_lost": self._lost},
        )

    # ---- the run -----------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._pool.open()
            shares = split_concurrency(self._set.concurrency, self._set.workers)
            ids = [self._new_id() for _ in shares]
            handles = await asyncio.gather(
                *(self._pool.start_worker(i, s) for i, s in zip(ids, shares, strict=True))
            )
            for wid, handle, share in zip(ids, handles, shares, strict=True):
                self._add_worker(_Worker(wid, handle, share))
            while self._lanes:
                done, _ = await asyncio.wait(self._lanes, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    self._lanes.discard(task)
                    if not task.cancelled() and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
            if self._stop_kind is not None and self._stop_kind.skips_rest:
                await self._skip_rest()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._crash = exc
            if self._out.stop_kind is None:
                self._out.stop_kind = StopKind.ABORT
        finally:
            await self._wind_down()

    async def _wind_down(self) -> None:
        for task in self._lanes:
            task.cancel()
        lanes = list(self._lanes)
        if lanes:
            await asyncio.gather(*lanes, return_exceptions=True)
        await self._source.aclose()
        if self._aux:
            await asyncio.gather(*self._aux, return_exceptions=True)
        try:
            self._pool_stats = await self._pool.close([w.handle for w in self._workers if w.alive])
        except Exception as exc:
            log.warning("closing the cluster workers failed: %s: %s", type(exc).__name__, exc)
        self._out.finish()

    def _new_id(self) -> int:
        self._worker_ids += 1
        return self._worker_ids - 1

    def _add_worker(self, w: _Worker) -> None:
        self._workers.append(w)
        for n in range(self._set.chunks_per_worker):
            task = self._loop.create_task(self._lane(w), name=f"conveyor-lane-{w.id}-{n}")
            self._lanes.add(task)

    async def _lane(self, w: _Worker) -> None:
        while w.alive and not self._halted:
            chunk = await self._take(w)
            if chunk is None:
                return
            await self._run_chunk(w, chunk)

    # ---- reading the input -------------------------------------------------------------

    def _wake_all(self) -> None:
        self._changed.set()
        self._capacity.set()

    async def _take(self, w: _Worker) -> list[Entry] | None:
        source = self._source
        while True:
            if self._halted or not w.alive:
                return None
            if self._deliver and self._out.backlogged:
                await self._out.wait_for_room()  # the consumer is behind: hold back
                continue
            out = await source.take(self._set.chunk_size)
            if source.error is not None and self._stop_kind is None:
                self._out.source_failed(source.error)  # no new items; those read still run
            if out and not self._halted and w.alive:
                self._chunks_out += 1
                return out
            if out:  # stopped, or this worker was lost, while reading: not run yet
                source.give_back(out)
                self._changed.set()
                return None
            if source.done and self._chunks_out == 0:
                self._changed.set()  # let every other lane see the end too
                return None
            self._changed.clear()
            await self._changed.wait()

    async def _skip_rest(self) -> None:
        """After fail_fast or a fatal error: every item not run is reported skipped."""
        source = self._source
        while not source.done:
            for entry in await source.take(self._set.chunk_size):
                self._emit_skipped(entry)
            while self._deliver and self._out.backlogged:
                await self._out.wait_for_room()

    # ---- running chunks ----------------------------------------------------------------

    async def _run_chunk(self, w: _Worker, chunk: list[Entry]) -> None:
        pending = {e.index: e for e in chunk}
        for e in chunk:
            if not e.started:
                e.started = True
                self._dispatch.start(e.index, e.key, e.item)
        self._in_flight += len(chunk)
        self.max_in_flight = max(self.max_in_flight, self._in_flight)
        wire: list[WireEntry] = [(e.index, e.key, e.item) for e in chunk]
        lost: BaseException | None = None
        try:
            async for results, control in self._pool.run_chunk(w.handle, wire):
                for wr in results:
                    entry = pending.pop(wr[0], None)
                    if entry is None:
                        continue  # already answered: never emit an item twice
                    self._in_flight -= 1
                    self._emit(decode_result(wr, entry.key, entry.item))
                if control is not None:
                    self._fatal_stop(decode_fatal(control))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self._pool.is_worker_lost(exc):
                lost = exc
            else:
                # The chunk itself cannot be run (a value that does not pickle, ...):
                # running it elsewhere would fail the same way.
                info = ErrorInfo.from_exception(exc)
                self._in_flight -= len(pending)
                for e in pending.values():
                    self._emit(_failed(e, info))
                pending.clear()
        finally:
            self._in_flight -= len(pending)
            self._chunks_out -= 1
            self._changed.set()
        if pending and lost is None and not self._halted:
            lost = ConveyorError(f"worker {w.id} stopped before answering every item")
        if pending:
            self._unanswered(pending)
        if lost is not None:
            await self._lose(w, lost)

    def _unanswered(self, pending: dict[int, Entry]) -> None:
        entries = sorted(pending.values(), key=lambda e: e.index)
        if not self._halted:
            self._source.give_back(entries)  # first in line, in input order
            self._changed.set()
        elif self._stop_kind is not None and self._stop_kind.skips_rest:
            for e in entries:
                self._emit_skipped(e)
        # interrupted: items that never ran have no result, as on one machine

    async def _lose(self, w: _Worker, exc: BaseException) -> None:
        if not w.alive:
            return
        w.alive = False
        self._lost += 1
        log.warning(
            "worker %d was lost (%s); its unfinished items run again on another worker",
            w.id,
            _last_line(exc),
        )
        with contextlib.suppress(Exception):
            await self._pool.discard_worker(w.handle)
        if self._pool.worker_cannot_start(exc):
            self._fatal_stop(
                WorkersLost(
                    f"a worker could not start: {_last_line(exc)}. The function and the "
                    "modules it uses must load on every Ray node: install them there, define "
                    "the function in the script you run, or ship them with "
                    "actor_options={'runtime_env': {...}}"
                )
            )
            return
        if not self._halted and self._restarts < self._set.max_restarts:
            self._restarts += 1
            wid = self._new_id()
            try:
                handle = await self._pool.start_worker(wid, w.share)
            except Exception as start_exc:
                log.warning("could not start a replacement worker: %s", start_exc)
            else:
                self._add_worker(_Worker(wid, handle, w.share))
                return
        if not any(x.alive for x in self._workers) and not self._halted:
            err = WorkersLost(
                f"all workers were lost ({self._lost} lost, {self._restarts} restarted); "
                f"last cause: {_last_line(exc)}. Check the cluster (`ray status`), "
                "then rerun to resume the items without a result"
            )
            self._fatal_stop(err)

    # ---- results out -------------------------------------------------------------------

    def _fatal_stop(self, err: FatalError) -> None:
        if self._out.fatal_stop(err):
            self._stop_now(StopKind.FATAL)

    def _stop_now(self, kind: StopKind) -> None:
        if self._out.halt(kind):
            self._wake_all()
            self._stop_workers(StopKind.ABORT)

    def _stop_workers(self, kind: StopKind) -> None:
        for w in self._workers:
            if w.alive:
                task = self._loop.create_task(self._stop_one(w, kind))
                self._aux.add(task)
                task.add_done_callback(self._aux.discard)

    async def _stop_one(self, w: _Worker, kind: StopKind) -> None:
        try:
            await self._pool.stop_worker(w.handle, kind)
        except Exception as exc:
            if not self._pool.is_worker_lost(exc):
                log.warning("could not stop worker %d: %s", w.id, exc)

    def _emit_skipped(self, e: Entry) -> None:
        self._emit(self._out.skipped(e.index, e.key, e.item))

    def _emit(self, r: Result[Any]) -> None:
        self._attempts += r.attempts
        self._out.emit(r)


def _last_line(exc: BaseException) -> str:
    """The telling line of a long (Ray) error: its last, stripped of colour codes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"


def _failed(e: Entry, info: ErrorInfo) -> Result[Any]:
    return Result(index=e.index, key=e.key, status=Status.FAILED, item=e.item, error=info)
