"""`run_file(..., mode="batch")`: one batch-mode run over the same input
reading, the same journal and the same exactly-once output sink as online
`conveyor run`, so a user switches modes with one flag (and back).

input (the same reader) -> shards (sharder) -> upload + create -> poll ->
merge output/error files -> journal + output (each custom_id once) ->
re-drive what did not finish; with a deadline, the unfinished rest online
through the normal engine (the same limits), whichever path answers first.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..._base._exceptions import ConfigError, Interrupted
from ..._base._types import ErrorInfo, Result, Status
from ..._core._refusals import parse_wait
from ..._core._report import ReportBuilder, new_batch_id
from ..._journal._journal import Journal
from ..._journal._sink import OutputSink
from ..._pipeline import FINISHED
from .._batchfile import BadLine, RequestLine
from .._tokens import estimate_prompt_tokens
from ._api import BatchAPI
from ._cost import cost_split
from ._driver import BatchDriver, check_external_cancel, request_bytes
from ._policy import (
    DeadlinePolicy,
    EnqueueBudget,
    Line,
    PollSchedule,
    Sharder,
    ShardLimits,
    StuckDetector,
    default_margin,
    online_rate,
)
from ._reask import BatchChecks

if TYPE_CHECKING:
    from ..._core._report import BatchReport
    from .._http import Endpoint
    from .._run import RunSettings

__all__ = ["arun_batch", "seconds", "shard_limits"]

log = logging.getLogger("conveyor.batch")


def seconds(name: str, value: float | str | None) -> float | None:
    """A duration setting: a number of seconds or `"6h"`, `"90s"`, `"1h30m"`."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value > 0:
            return float(value)
    else:
        parsed = parse_wait(str(value))
        if parsed is not None and parsed > 0:
            return parsed
    raise ConfigError(name, value, 'a duration > 0: seconds, or "90s", "30m", "6h"')


def shard_limits(s: RunSettings) -> ShardLimits:
    return ShardLimits(max_lines=s.batch_max_lines, max_bytes=s.batch_max_bytes,
                       max_tokens=s.max_enqueued_tokens)  # fmt: skip


def workdir_for(journal_path: str) -> Path:
    """Where shard files wait for upload and re-drive: beside the journal."""
    p = Path(journal_path)
    return p.with_name(p.name + ".batches")


class _Run:
    """The state of one batch-mode run: what is answered, by which path."""

    def __init__(
        self, journal: Journal, sink: OutputSink, batch_id: str, checks: BatchChecks
    ) -> None:
        self.journal = journal
        self.checks = checks
        self.sink = sink
        self.answered: set[str] = set(journal.keys_with_status([st.value for st in FINISHED]))
        self.builder = ReportBuilder(batch_id=batch_id, keep_results=False)
        self.paths: Counter[str] = Counter()
        self.tokens: dict[str, list[int]] = {"batch": [0, 0], "online": [0, 0]}
        self.dropped = 0
        self.stop = asyncio.Event()
        self.online_streams: set[Any] = set()  # the deadline's and the re-asks'
        self.online_at: float | None = None  # when the deadline sent the rest online
        self.started = time.time()
        self.last_progress = 0.0

    def is_answered(self, key: str) -> bool:
        return key in self.answered

    async def commit(self, result: Result[Any]) -> None:
        """One final answer to the journal and the output; a second answer for
        the same key (the other path) is dropped and counted."""
        if result.key in self.answered:
            self.dropped += 1
            return
        path = str(result.meta.get("path") or "input")
        first = None  # the batch answer of a line re-asked online: priced as batch
        if path == "batch":
            checked = self.checks.judge(result)
            if checked is None:
                return  # invalid: re-asked online (`BatchChecks.pending`)
            result = checked
        elif path == "online":
            first = self.checks.batch_usage(result.key)
            result = self.checks.merged(result)
        self.answered.add(result.key)
        self.builder.add(result)
        self.paths[path] += 1
        if result.usage is not None and path in self.tokens:
            fin, fout = (first.input_tokens, first.output_tokens) if first else (0, 0)
            self.tokens["batch"][0] += fin
            self.tokens["batch"][1] += fout
            self.tokens[path][0] += result.usage.input_tokens - fin
            self.tokens[path][1] += result.usage.output_tokens - fout
        await self.sink.add(result)

    # Ctrl+C: the portal's control calls `stop` on what it is attached to.
    def stop_run(self, kind: str = "interrupt") -> None:
        self.stop.set()
        for stream in list(self.online_streams):
            stream.stop(kind)


class _Stopper:
    def __init__(self, run: _Run) -> None:
        self._run = run

    def stop(self, kind: str = "interrupt") -> None:
        self._run.stop_run(kind)


async def arun_batch(
    path: Path, s: RunSettings, endpoint: Endpoint, *, rule: Any = None, _control: Any = None
) -> BatchReport:
    """Run `path` through the provider's batch API (see the module docstring);
    `rule`: the checked `--schema` (`_structured.resolve_schema`), if any."""
    from .._runparts import _identity, _items, _settings_json, default_journal_path, format_line

    if s.journal is False or s.journal is None:
        raise ConfigError("journal", s.journal, "a journal with mode='batch' (it holds batch ids)")
    if s.output is None and s.journal is True:
        raise ConfigError("output", None, "an output path with mode='batch'")
    jpath = default_journal_path(s.output) if s.journal is True else Path(s.journal)  # type: ignore[arg-type]
    poll = seconds("poll", s.poll) or 60.0
    stuck_after = seconds("stuck_after", s.stuck_after) or 6 * 3600.0
    deadline_span = seconds("deadline", s.deadline)
    seconds("completion_window", s.completion_window)
    journal = Journal.open(jpath, identity=_identity(path, s, endpoint), force=s.force)
    try:
        batch_id = s.batch_id or journal.get_meta("batch_id") or new_batch_id()
        s.batch_id = batch_id
        now = time.time()
        deadline_at: float | None = None
        if deadline_span is not None:
            stored = journal.get_meta("batch_deadline_at")
            deadline_at = float(stored) if stored else now + deadline_span
        at = None if deadline_at is None else repr(deadline_at)
        journal.update_meta({"run_settings": _settings_json(path, s), "batch_id": batch_id,
                             "mode": "batch", "batch_deadline_at": at,
                             "concurrency": str(s.concurrency)})  # fmt: skip
        # Cancelled/skipped rows (an interrupted online run) are not finished: send them.
        journal.reset(journal.keys_with_status(["cancelled", "skipped"]))
        sink = OutputSink(journal, s.output, format_line, overwrite=s.force)
        run = _Run(journal, sink, batch_id, BatchChecks(rule, s.reask))
        if _control is not None:
            _control.attach(_Stopper(run))
        margin = seconds("deadline_margin", s.deadline_margin)
        policy = None
        if deadline_at is not None and deadline_span is not None:
            conc = s.concurrency if isinstance(s.concurrency, int) else 64
            keep = margin if margin is not None else default_margin(deadline_span)
            rate = online_rate(concurrency=conc, rpm=s.rpm)
            policy = DeadlinePolicy(deadline_at, rate, keep)
        models: Counter[str] = Counter()
        interrupted = False
        try:
            async with BatchAPI(endpoint) as api:
                driver = BatchDriver(
                    api=api, journal=journal, sink=sink, workdir=workdir_for(journal.path),
                    sharder=Sharder(shard_limits(s)), budget=EnqueueBudget(s.max_enqueued_tokens),
                    polls=PollSchedule(poll), stuck=StuckDetector(stuck_after),
                    window=s.completion_window, max_redrives=s.max_redrives,
                    is_answered=run.is_answered, commit=run.commit,
                )  # fmt: skip
                await driver.recover()
                resumed = await _scan(path, s, run, driver, models, _items, rule)
                interrupted = await _loop(run, driver, policy, s, endpoint, rule)
        finally:
            await sink.close()
        if not interrupted and not driver.live:
            shutil.rmtree(driver.workdir, ignore_errors=True)  # every shard is merged
        report = run.builder.build(interrupted=interrupted,
                                   stop_reason="interrupt" if interrupted else None)  # fmt: skip
        model = models.most_common(1)[0][0] if models else None
        if model:
            report.extra["model"] = model
            journal.set_meta("model", model)
        report.extra["resumed_skipped"] = resumed
        report.extra["journal"] = journal.path
        if s.output is not None:
            report.extra["output"] = str(s.output)
        counts = journal.status_counts()
        report.extra["journal_failed"] = counts.get("failed", 0) + counts.get("timed_out", 0)
        report.extra["batch_mode"] = _section(run, driver, model, deadline_at)
        if interrupted:
            live = len(driver.live)
            raise Interrupted(report, f"{live} batch(es) keep running at the provider: run the "
                              "same command to collect them, or `conveyor cancel "
                              f"{journal.path}` to cancel them")  # fmt: skip
        return report
    finally:
        journal.close()


async def _scan(
    path: Path, s: RunSettings, run: _Run, driver: BatchDriver, models: Counter[str], items: Any,
    rule: Any,
) -> int:  # fmt: skip
    """Read the input once: bad lines answered now, the rest cut into shards."""
    from .._runparts import item_key

    active = driver.store.active_keys()
    payload: dict[str, bytes] = {}
    resumed = pending = 0
    for idx, item in enumerate(items(path, s, rule)):
        key = item_key(item)
        if isinstance(item, RequestLine) and len(models) < 64:
            models[str(item.body.get("model"))] += 1
        if run.is_answered(key):
            resumed += 1
            continue
        if key in active:
            continue
        if isinstance(item, BadLine):
            err = ErrorInfo("InputError", item.reason)
            await run.commit(Result(index=idx, key=key, status=Status.FAILED, item=item,
                                    error=err, meta={"path": "input"}))  # fmt: skip
            continue
        if s.limit is not None and pending >= s.limit:
            break
        pending += 1
        raw = request_bytes(item)
        payload[key] = raw
        line = Line(key, idx, item.url, str(item.body.get("model")), len(raw),
                    estimate_prompt_tokens(item.body, item.endpoint))  # fmt: skip
        closed = driver.sharder.add(line)
        if closed is not None:
            driver.build(closed, payload)
    for shard in driver.sharder.finish():
        driver.build(shard, payload)
    return resumed


async def _loop(
    run: _Run, driver: BatchDriver, policy: DeadlinePolicy | None, s: RunSettings,
    endpoint: Endpoint, rule: Any = None,
) -> bool:  # fmt: skip
    """Submit, poll, merge until every line is answered; True if interrupted."""
    online: asyncio.Task[None] | None = None
    reasks: asyncio.Task[None] | None = None  # invalid batch answers, asked again online
    try:
        while not run.stop.is_set():
            reasks = _reask_step(run, s, endpoint, rule, reasks)
            check_external_cancel(driver)
            await driver.poll_due()
            check_external_cancel(driver)
            now = driver.clock()
            if online is None and policy is not None:
                left = driver.unfinished_keys()
                # Once the deadline sent the rest online, a resumed run keeps it there.
                decided = run.journal.get_meta("batch_online_at") is not None
                rate = driver.batch_rate()
                if decided or policy.go_online(now=now, unfinished=len(left), batch_rate=rate):
                    online = await _go_online(run, driver, s, endpoint, rule)
            if online is None:
                await driver.submit_ready()  # after the deadline check: none past it
            if online is not None and online.done():
                online.result()  # raises what the online path raised
                for sid, live in list(driver.live.items()):
                    await driver.abandon(sid, live, "answered online")
                break
            if online is None and driver.orphans and policy is None:
                # Cancelled for a deadline this run does not have: back into batches.
                driver.reshard(driver.orphans)
                driver.orphans = []
                continue
            if online is not None and driver.orphans:
                driver.orphans = []  # the online path already holds them
            if online is None and not driver.live and not driver.ready and not driver.orphans:
                break
            wake = [driver.next_due() or now + 1.0]
            if policy is not None and online is None:
                wake.append(policy.next_check(now=now, unfinished=len(driver.unfinished_keys())))
            if online is not None:
                wake.append(now + 0.5)
            _progress(run, driver, s)
            timeout = max(0.01, min(wake) - driver.clock())
            waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(run.stop.wait())]
            if online is not None:
                waits.append(online)
            if reasks is not None:
                waits.append(reasks)
            await asyncio.wait(waits, timeout=timeout,
                                                return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
            waits[0].cancel()
        while not run.stop.is_set():  # the batches are done: the last re-asks
            reasks = _reask_step(run, s, endpoint, rule, reasks)
            if reasks is None:
                break
            await asyncio.wait([reasks])
        for task in (online, reasks):
            if task is not None and not task.done():
                await task  # stopped by the same Ctrl+C: lets its in-flight requests end
        return run.stop.is_set()
    finally:
        for task in (online, reasks):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task


def _reask_step(
    run: _Run, s: RunSettings, endpoint: Endpoint, rule: Any, task: asyncio.Task[None] | None
) -> asyncio.Task[None] | None:
    """The running re-ask stream, a new one over the waiting re-asks, or None.

    One stream at a time, so the re-asks share one set of the run's limits."""
    if task is not None and task.done():
        task.result()  # raises what the online path raised
        task = None
    if task is None and run.checks.pending and not run.stop.is_set():
        todo = run.checks.take()
        log.info("re-asking %d invalid batch answer(s) online", len(todo))
        task = asyncio.ensure_future(_online(run, s, endpoint, todo, rule, s.reask - 1))
    return task


def _progress(run: _Run, driver: BatchDriver, s: RunSettings, *, final: bool = False) -> None:
    """A progress snapshot for the display: lines done, the batches' states, an ETA."""
    if s.on_progress is None:
        return
    now = time.time()
    if not final and now - run.last_progress < s.progress_interval:
        return
    run.last_progress = now
    from ..._core._progress import ProgressSnapshot

    states = Counter(str(lv.row.remote_status) for lv in driver.live.values())
    text = ", ".join(f"{n} {st}" for st, n in sorted(states.items())) or "none running"
    if driver.ready:
        text += f", {len(driver.ready)} waiting to be submitted"
    if run.online_at is not None:
        text += ", the rest online (deadline)"
    elapsed = now - run.started
    done = sum(run.builder.counts.values())
    rate = driver.batch_rate() or (done / elapsed if elapsed > 0 else 0.0)
    in_batches = sum(len(lv.keys) for lv in driver.live.values())
    snap = ProgressSnapshot(
        elapsed=elapsed, total=done + len(driver.unfinished_keys()), done=done,
        counts=dict(run.builder.counts), in_flight=in_batches, retrying=0,
        attempts=done, requests_per_second=rate, tokens_in_per_minute=0.0,
        tokens_out_per_minute=0.0, concurrency_limit=0, rpm_limit=None, tpm_limit=None,
        rpm_in_window=0.0, tpm_in_window=0.0, rate_limited=0, paused_for=0.0,
        breaker="off", finished=final, extra={"batches": text, "done_per_second": rate},
    )  # fmt: skip
    try:
        s.on_progress(snap)
    except Exception:  # a display that fails never stops the run
        log.exception("progress callback failed")


async def _go_online(
    run: _Run, driver: BatchDriver, s: RunSettings, endpoint: Endpoint, rule: Any
) -> asyncio.Task[None]:
    """The deadline is near: cancel the batches and send what is left online."""
    requests = driver.unfinished_requests()
    run.online_at = time.time()
    if run.journal.get_meta("batch_online_at") is None:
        run.journal.set_meta("batch_online_at", repr(run.online_at))
    log.warning("deadline: sending %d unfinished line(s) online and cancelling %d batch(es)",
                len(requests), len(driver.live))  # fmt: skip
    for live in list(driver.live.values()):
        await driver.cancel(live, "deadline")
    for row, _keys in driver.ready:
        driver.store.update(row.shard_id, state="dropped", note="deadline: sent online")
    driver.ready = []
    return asyncio.ensure_future(_online(run, s, endpoint, requests, rule))


async def _online(
    run: _Run, s: RunSettings, endpoint: Endpoint, requests: list[tuple[RequestLine, int]],
    rule: Any = None, reask: int | None = None,
) -> None:  # fmt: skip
    """The normal engine over these requests, under the run's limits (`reask`:
    the re-asks left, when these are re-asks of invalid batch answers)."""
    from ..._api import AsyncStream
    from .._http import OpenAIClient
    from .._runparts import _Caller, _invoke, engine_options_for

    index = {req.custom_id: idx for req, idx in requests}
    opts = engine_options_for(s, rule)
    opts["on_progress"] = None
    if reask is not None:
        opts["reask"] = reask
    pool = s.concurrency if isinstance(s.concurrency, int) else s.concurrency_max or 1024
    todo = (req for req, _ in requests if not run.is_answered(req.custom_id))
    async with OpenAIClient(endpoint, concurrency=pool) as client:
        stream = AsyncStream(todo, _invoke(_Caller(client, None)), opts)
        run.online_streams.add(stream)
        try:
            async for r in stream:
                if r.status in FINISHED:
                    meta = {**r.meta, "path": "online"}
                    await run.commit(dataclasses.replace(r, index=index[r.key], meta=meta))
        finally:
            run.online_streams.discard(stream)
            await stream.aclose()


def _section(
    run: _Run, driver: BatchDriver, model: str | None, deadline_at: float | None
) -> dict[str, Any]:
    rows = driver.store.shards()
    return {
        "lines_batch": run.paths.get("batch", 0),
        "lines_online": run.paths.get("online", 0),
        "lines_invalid": run.paths.get("input", 0),
        "answers_dropped": run.dropped + driver.counters.get("answers_dropped", 0),
        # A batch's answer for a line already answered (online, or an earlier merge);
        # an online answer for a line a batch answered first.
        "batch_answers_dropped": driver.counters.get("answers_dropped", 0),
        "online_answers_dropped": run.dropped,
        "shards": len(rows),
        "shard_states": dict(Counter(r.state for r in rows)),
        "counters": dict(driver.counters),
        "api_calls": dict(driver.api.calls),
        "deadline_at": deadline_at,
        "online_at": run.online_at,
        "cost": cost_split(model, run.tokens["batch"], run.tokens["online"]),
    }
