"""One journaled run: source -> plan -> run stream -> journal + sinks -> report.

Every journaled front end (`conveyor.run(journal=)` and `stream(journal=)`
on either backend, `conveyor run`, `conveyor exec`) goes through here, so
they share one resume rule:

- **finished** items (`ok`, `failed`, `timed_out` in the journal) are not run
  again; their stored result is reported (with `meta["resumed"] = True`) in
  their place, so `run()` still returns one result per input, in order;
- failed and timed-out items are re-run only by `retry` (`conveyor retry`,
  `retry_commands`), or by an explicit `rerun=` (`run(journal=, rerun="failed")`
  re-runs failed, timed-out and cancelled items);
- **cancelled** and **skipped** items (interrupted, never started, or stopped
  by a fatal condition such as a 401 or an exhausted quota, stored as
  cancelled) are not finished: they run again.

The plan is a lookup the run stream asks for each key before it runs an
item (`previous=`, the same hook on the local engine and on Ray); the sink
commits every new finished result to the journal and the output file,
exactly once per key.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import orjson

from ._base._exceptions import ConveyorError
from ._base._types import Result, Status
from ._core._bloom import BloomFilter
from ._core._outcome import StopKind
from ._core._stream import BatchIterator
from ._journal._memo import JournalMemoStore
from ._journal._resources import add_resource_session
from ._journal._sink import OutputSink

if TYPE_CHECKING:
    import os
    from collections.abc import Callable

    from ._core._memo import Memo
    from ._core._report import BatchReport
    from ._core._stream import RunStream
    from ._journal._journal import Journal

__all__ = ["FINISHED", "JournaledStream", "Plan", "is_finished"]

FINISHED = frozenset({Status.OK, Status.FAILED, Status.TIMED_OUT})
"""Statuses that end an item for good: a resumed run reports them, never re-runs them."""


def is_finished(status: Status, rerun: frozenset[Status] = frozenset()) -> bool:
    """The resume rule for one stored status: True means "report it, don't run it".

    `rerun` names stored statuses to run again all the same (an explicit
    `rerun=`, as `retry` does)."""
    return status in FINISHED and status not in rerun


class Plan:
    """The resume rule over a journal: `previous(key)` is the stored result to
    report instead of running the item, or None to run it (a stored cancelled
    or skipped row is reset to pending first, so the sink may write it again).
    `resumed` counts the items reported from the journal.

    The journal is asked only about keys it may hold: a fixed-size filter
    (`BloomFilter`, 4 MB whatever the input size) holds the keys it had when
    the run started and every key asked about since, so a new key costs no
    SQLite lookup and a key that may be there (a resumed one, a repeat, a
    false positive) is looked up as before."""

    def __init__(self, journal: Journal, *, rerun: frozenset[Status] = frozenset()) -> None:
        self._journal = journal
        self._rerun = rerun
        self.resumed = 0
        self._known = BloomFilter()
        for key in journal.terminal_keys():  # every stored key but pending ones
            self._known.add(key)

    def previous(self, key: str) -> Result[Any] | None:
        if not self._known.add(key):
            return None  # surely not in the journal: run it
        prev = self._journal.get(key)
        if prev is None:
            return None
        if is_finished(prev.status, self._rerun):
            self.resumed += 1
            return prev
        self._journal.reset([key])
        return None


def _line(result: Result[Any]) -> bytes:
    import orjson

    return orjson.dumps(result.to_dict(), option=orjson.OPT_NON_STR_KEYS, default=repr)


class JournaledStream(BatchIterator):
    """A run stream (local engine or Ray) with the journal on both ends.

    `open_journal()` is called on first use (on the loop that runs the
    stream); `make_stream(previous)` builds the run stream with the plan's
    lookup. Every new finished result goes to the `OutputSink` (the journal,
    and `output` if given) before it is handed out; results reported from the
    journal are handed out too, marked `meta["resumed"]`. The journal is
    closed when the stream ends or is closed; `.report` then carries
    `extra["journal"]` and `extra["resumed"]`. `store_values=False` keeps
    values out of the journal where the output line holds them.

    `commit` are the statuses stored (`conveyor exec` stores cancelled and
    skipped jobs too, for its listing; the plan runs them again all the
    same); `store(result)` is the journal's copy of a result (default: the
    result itself); `flush_every` the sink's group-commit size.
    """

    def __init__(
        self,
        open_journal: Callable[[], Journal],
        make_stream: Callable[[Callable[[str], Result[Any] | None]], RunStream],
        *,
        output: str | os.PathLike[str] | None = None,
        format_line: Callable[[Result[Any]], bytes] = _line,
        overwrite: bool = False,
        rerun: frozenset[Status] = frozenset(),
        close_journal: bool = True,
        memo: Memo | None = None,
        commit: frozenset[Status] = FINISHED,
        store: Callable[[Result[Any]], Result[Any]] | None = None,
        flush_every: int = 500,
        store_values: bool = True,
    ) -> None:
        self._open_journal = open_journal
        self._make_stream = make_stream
        self._output = output
        self._format = format_line
        self._overwrite = overwrite
        self._rerun = rerun
        self._close_journal = close_journal
        self._memo = memo
        self._memo_store: JournalMemoStore | None = None
        self._memo_restored = 0
        self._commit = commit
        self._store = store
        self._flush_every = flush_every
        self._store_values = store_values
        self._journal: Journal | None = None
        self._plan: Plan | None = None
        self._sink: OutputSink | None = None
        self._stream: RunStream | None = None
        self._batch: list[Result[Any]] = []
        self._pos = 0
        self._closed = False

    @property
    def journal(self) -> Journal | None:
        return self._journal

    @property
    def resumed(self) -> int:
        return 0 if self._plan is None else self._plan.resumed

    @property
    def report(self) -> BatchReport | None:
        report = None if self._stream is None else self._stream.report
        if report is not None and self._journal is not None:
            report.extra["journal"] = self._journal.path
            report.extra["resumed"] = self.resumed
            if isinstance(report.extra.get("memo"), dict):
                report.extra["memo"]["restored"] = self._memo_restored
        return report

    def _ensure(self) -> RunStream:
        if self._stream is None:
            journal = self._open_journal()
            self._journal = journal
            try:
                if self._memo is not None:
                    # The memo's entries live in the journal: a resumed run reuses them.
                    self._memo_store = JournalMemoStore(journal.path)
                    self._memo_restored = self._memo.attach(self._memo_store)
                self._plan = Plan(journal, rerun=self._rerun)
                self._sink = OutputSink(
                    journal,
                    self._output,
                    self._format,
                    overwrite=self._overwrite,
                    flush_every=self._flush_every,
                    store_values=self._store_values,
                )
                self._stream = self._make_stream(self._plan.previous)
            except BaseException:
                self._close_memo()
                if self._close_journal:
                    journal.close()
                raise
        return self._stream

    @property
    def stream(self) -> RunStream:
        """The run stream underneath (to reach e.g. Ray's `workers`)."""
        return self._ensure()

    def attach_control(self, control: Any) -> None:
        self._ensure().attach_control(control)

    def stop(self, kind: StopKind | str = StopKind.INTERRUPT) -> None:
        self._ensure().stop(kind)

    async def next_batch(self) -> list[Result[Any]]:
        """Every result ready now (at least one), each committed; empty at the end."""
        if self._closed:
            return []
        stream = self._ensure()
        sink = self._sink
        assert sink is not None
        try:
            batch = await stream.next_batch()
            store = self._store
            commit = self._commit
            # The new results of the batch go to the writer as one group: one
            # lock and one wake-up of its thread, not one per result.
            new = [
                r if store is None else store(r)
                for r in batch
                if r.status in commit and not r.meta.get("resumed")
            ]
            if new:
                await sink.add_many(new)
        except BaseException as exc:
            try:
                await self.aclose()
            except BaseException as again:
                self._with_report(again)
                raise
            self._with_report(exc)
            raise
        if not batch:
            await self.aclose()
        return batch

    def _with_report(self, exc: BaseException) -> None:
        """An error that ends a run which had started (the journal or the output
        failing mid-run) carries what finished, as a fatal stop does: the
        command line then says "stopped" (exit 3), not "nothing was sent"."""
        if isinstance(exc, ConveyorError) and exc.report is None:
            exc.report = self.report

    async def aclose(self) -> None:
        """Stop the run (if still going), flush the sink, close the journal."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._stream is not None:
                await self._stream.aclose()
        finally:
            try:
                if self._sink is not None:
                    await self._sink.close()
            finally:
                self._close_memo()
                self._save_resources()
                if self._journal is not None:
                    self._keep_auto(self._journal)
                    if self._close_journal:
                        self._journal.close()

    def _keep_auto(self, journal: Journal) -> None:
        """``concurrency="auto"``: the limit's moves go in the journal, for
        `conveyor report --html` (the latest run's, on a resumed journal)."""
        report = None if self._stream is None else self._stream.report
        auto = None if report is None else report.extra.get("concurrency_auto")
        if not auto:
            return
        try:
            journal.set_meta("concurrency_auto", orjson.dumps(auto).decode())
        except Exception as exc:  # the results are committed; only the chart data is lost
            logging.getLogger("conveyor").warning(
                "could not keep the auto concurrency's moves in %s: %s", journal.path, exc
            )

    def _save_resources(self) -> None:
        """This session's resource samples, kept in the journal for `conveyor report`."""
        report = None if self._stream is None else self._stream.report
        section = None if report is None else report.extra.get("resources")
        if self._journal is None or report is None or not section:
            return
        try:
            add_resource_session(self._journal, report.started_at, section)
        except Exception as exc:  # the results are committed; only the chart data is lost
            logging.getLogger("conveyor").warning(
                "could not keep the resource samples in %s: %s", self._journal.path, exc
            )

    def _close_memo(self) -> None:
        store, self._memo_store = self._memo_store, None
        if store is not None:
            assert self._memo is not None
            self._memo.detach()
            store.close()

    async def __aenter__(self) -> JournaledStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def collect(stream: JournaledStream, control: Any = None) -> BatchReport:
    """Run a journaled stream to the end; the report holds every result in input order."""
    from ._base._exceptions import ConveyorError

    if control is not None:
        stream.attach_control(control)
    collected: list[Result[Any]] = []
    try:
        while batch := await stream.next_batch():
            collected.extend(batch)
    except ConveyorError as exc:
        if exc.report is not None:
            exc.report.results = sorted(collected, key=lambda r: r.index)
        raise
    report = stream.report
    assert report is not None
    report.results = sorted(collected, key=lambda r: r.index)
    return report
