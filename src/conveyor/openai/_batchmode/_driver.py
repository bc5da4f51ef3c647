"""The batch-mode driver: carries out the policies of `_policy.py` against
the provider's Files and Batches API, with the run's journal and output sink.

Every remote step is preceded by the journal state that lets a killed run
find out what it did (see `conveyor._journal._shards`): a shard's keys are
committed before its file is uploaded, the intent to create its batch before
the create, and a batch's results before the shard is marked merged. A
resumed run therefore never creates a second batch for lines that already
have one: it re-attaches to the recorded batches, looks up (by the shard id
in the batch's metadata) a batch created just before a crash, and re-shards
only lines that no batch holds.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from ..._base._exceptions import ConveyorError, FatalError, HTTPClientError
from ..._journal._shards import ShardRow, ShardStore
from .._batchfile import RequestLine, read_requests
from ._merge import Outcome, classify, to_result
from ._policy import EnqueueBudget, Line, PollSchedule, Shard, Sharder, StuckDetector

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable
    from pathlib import Path

    from ..._base._types import Result
    from ..._journal._journal import Journal
    from ..._journal._sink import OutputSink
    from ._api import BatchAPI

__all__ = ["BatchDriver", "Live", "request_bytes"]

log = logging.getLogger("conveyor.batch")

# A failed batch whose file broke the provider's size limits (lines, bytes).
_SIZE_CODES = frozenset({"too_many_requests", "file_too_large", "max_file_size_exceeded"})
TERMINAL_REMOTE = frozenset({"completed", "failed", "expired", "cancelled"})
METADATA_KEY = "conveyor_shard"


def request_bytes(req: RequestLine) -> bytes:
    """The line a shard file holds for one request (newline included)."""
    return orjson.dumps(
        {"custom_id": req.custom_id, "method": req.method or "POST", "url": req.url,
         "body": req.body},
        option=orjson.OPT_APPEND_NEWLINE,
    )  # fmt: skip


@dataclass
class Live:
    """A shard the driver is following: its row, keys and what it has seen."""

    row: ShardRow
    keys: dict[str, int]
    cancel_reason: str | None = None
    last_seen: dict[str, Any] = field(default_factory=dict)


class BatchDriver:
    """One batch-mode run's remote side. `commit(result)` hands a final
    result to the run (journal + output, each key once); the driver calls it
    for every line a batch answered for good."""

    def __init__(
        self,
        *,
        api: BatchAPI,
        journal: Journal,
        sink: OutputSink,
        workdir: Path,
        sharder: Sharder,
        budget: EnqueueBudget,
        polls: PollSchedule,
        stuck: StuckDetector,
        window: str,
        max_redrives: int,
        is_answered: Callable[[str], bool],
        commit: Callable[[Result[Any]], Awaitable[None]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.api = api
        self.journal = journal
        self.store = ShardStore(journal)
        self.sink = sink
        self.workdir = workdir
        self.sharder = sharder
        self.budget = budget
        self.polls = polls
        self.stuck = stuck
        self.window = window
        self.max_redrives = max_redrives
        self.is_answered = is_answered
        self.commit = commit
        self.clock = clock
        self.live: dict[str, Live] = {}
        # Lines of batches cancelled for the deadline, for the online path.
        self.orphans: list[tuple[RequestLine, int]] = []
        self.ready: list[tuple[ShardRow, dict[str, int]]] = []
        self.submissions: Counter[str] = Counter(self.store.submissions())
        self.last_outcome: dict[str, Outcome] = {}
        self.counters: Counter[str] = Counter()
        self.external_cancel: str | None = None
        self.first_submit: float | None = None
        self.batch_done = 0  # lines answered by batches in this run
        self._seq = self.store.next_seq()

    # -- files ---------------------------------------------------------------

    def shard_path(self, shard_id: str) -> Path:
        return self.workdir / f"shard-{shard_id}.jsonl"

    def read_shard(self, shard_id: str, keys: Iterable[str]) -> list[RequestLine]:
        """The requests of these keys, from the shard's local file."""
        wanted = set(keys)
        path = self.shard_path(shard_id)
        if not path.exists():
            return []
        out = [r for r in read_requests(path, check_duplicates=False)
               if isinstance(r, RequestLine) and r.custom_id in wanted]  # fmt: skip
        return out

    def build(self, shard: Shard, payload: dict[str, bytes]) -> None:
        """Write a shard's file and record it (`built`); it waits in `ready`."""
        shard_id = uuid.uuid4().hex[:20]
        path = self.shard_path(shard_id)
        self.workdir.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            for line in shard.lines:
                f.write(payload.pop(line.key))
            f.flush()
        now = self.clock()
        row = ShardRow(shard_id, self._seq, shard.url, shard.model, "built", len(shard.lines),
                       shard.nbytes, shard.tokens, created_at=now, state_since=now)  # fmt: skip
        self._seq += 1
        keys = {line.key: line.index for line in shard.lines}
        self.store.add(row, keys.items())
        self.ready.append((row, keys))

    def reshard(self, requests: Iterable[tuple[RequestLine, int]]) -> int:
        """Put requests back into new shards (re-drive); returns how many."""
        from .._tokens import estimate_prompt_tokens

        payload: dict[str, bytes] = {}
        n = 0
        for req, idx in requests:
            raw = request_bytes(req)
            payload[req.custom_id] = raw
            line = Line(req.custom_id, idx, req.url, str(req.body.get("model")), len(raw),
                        estimate_prompt_tokens(req.body, req.endpoint))  # fmt: skip
            closed = self.sharder.add(line)
            if closed is not None:
                self.build(closed, payload)
            n += 1
        for shard in self.sharder.finish():
            self.build(shard, payload)
        return n

    # -- resume --------------------------------------------------------------

    async def recover(self) -> None:
        """Re-attach to the batches the journal recorded; drop unsubmitted shards."""
        for row in self.store.shards(("built", "uploaded")):
            self.store.update(row.shard_id, state="dropped", note="never submitted")
            if row.file_id:
                with contextlib.suppress(ConveyorError):
                    await self.api.delete_file(row.file_id)
            self.shard_path(row.shard_id).unlink(missing_ok=True)
            self.counters["shards_dropped_on_resume"] += 1
        creating = self.store.shards(("creating",))
        if creating:
            found = {
                str((b.get("metadata") or {}).get(METADATA_KEY)): b
                for b in await self.api.list_batches()
                if isinstance(b.get("metadata"), dict)
            }
            for row in creating:
                keys = dict(self.store.keys(row.shard_id))
                batch = found.get(row.shard_id)
                if batch is not None:
                    self.counters["batches_found_after_crash"] += 1
                    self._submitted(row, keys, batch)
                else:
                    # The create never reached the provider: create it now.
                    await self._create(Live(row, keys))
        for row in self.store.shards(("submitted",)):
            live = Live(row, dict(self.store.keys(row.shard_id)))
            if row.note and row.note.startswith("cancel: "):
                live.cancel_reason = row.note[len("cancel: ") :]  # we asked for it
            self.live[row.shard_id] = live
            self.budget.add(row.model, row.tokens)
            self.counters["batches_reattached"] += 1

    # -- submit --------------------------------------------------------------

    async def submit_ready(self) -> int:
        """Submit every ready shard the enqueued-token budget admits now."""
        n = 0
        waiting: list[tuple[ShardRow, dict[str, int]]] = []
        for row, keys in self.ready:
            keys = {k: i for k, i in keys.items() if not self.is_answered(k)}
            if not keys:
                self.store.update(row.shard_id, state="dropped", note="answered elsewhere")
                continue
            if not self.budget.admit(row.model, row.tokens):
                waiting.append((row, keys))
                continue
            await self._upload_and_create(row, keys)
            n += 1
        self.ready = waiting
        return n

    async def _upload_and_create(self, row: ShardRow, keys: dict[str, int]) -> None:
        path = self.shard_path(row.shard_id)
        try:
            file_obj = await self.api.upload(path, filename=path.name)
        except HTTPClientError as exc:
            if exc.status_code != 413 or row.lines < 2:
                raise
            # The provider takes smaller files than we were told: split this one.
            self.counters["uploads_too_large"] += 1
            self.sharder.tighten(nbytes=row.bytes // 2)
            self.store.update(row.shard_id, state="dropped", note="413: split")
            reqs = self.read_shard(row.shard_id, keys)
            self.reshard((r, keys[r.custom_id]) for r in reqs)
            path.unlink(missing_ok=True)
            return
        row.file_id = str(file_obj["id"])
        self.store.update(row.shard_id, state="uploaded", file_id=row.file_id)
        row.state = "creating"
        self.store.update(row.shard_id, state="creating")  # intent, before the create
        await self._create(Live(row, keys))

    async def _create(self, live: Live) -> None:
        row = live.row
        assert row.file_id is not None
        endpoint = row.url if row.url.startswith("/v1/") else "/v1" + row.url
        batch = await self.api.create(
            file_id=row.file_id, endpoint=endpoint, window=self.window,
            metadata={METADATA_KEY: row.shard_id},
        )  # fmt: skip
        self.counters["batches_created"] += 1
        self._submitted(row, live.keys, batch)

    def _submitted(self, row: ShardRow, keys: dict[str, int], batch: dict[str, Any]) -> None:
        now = self.clock()
        row.batch_id = str(batch["id"])
        row.remote_status = str(batch.get("status") or "validating")
        row.state = "submitted"
        row.submitted_at = now
        self.store.update(row.shard_id, state="submitted", batch_id=row.batch_id,
                          remote_status=row.remote_status, submitted_at=now)  # fmt: skip
        self.submissions.update(list(keys))
        self.live[row.shard_id] = Live(row, keys)
        self.budget.add(row.model, row.tokens)
        if self.first_submit is None:
            self.first_submit = now

    # -- poll ----------------------------------------------------------------

    def next_due(self) -> float | None:
        now = self.clock()
        dues = [self.polls.due(lv.row.batch_id or sid, now) for sid, lv in self.live.items()]
        return min(dues, default=None)

    async def poll_due(self) -> None:
        now = self.clock()
        for sid, live in list(self.live.items()):
            batch_id = live.row.batch_id
            if batch_id is None or self.polls.due(batch_id, now) > now:
                continue
            batch = await self.api.retrieve(batch_id)
            await self._observe(sid, live, batch)

    async def _observe(self, sid: str, live: Live, batch: dict[str, Any]) -> None:
        row = live.row
        assert row.batch_id is not None
        status = str(batch.get("status"))
        counts = batch.get("request_counts") or {}
        completed = int(counts.get("completed") or 0)
        failed = int(counts.get("failed") or 0)
        now = self.clock()
        progress = (status, completed, failed)
        self.polls.polled(row.batch_id, now, progress)
        row.polls += 1
        self.counters["polls"] += 1
        changed = status != row.remote_status or completed != row.completed
        row.remote_status, row.completed, row.failed = status, completed, failed
        if changed or row.polls % 10 == 0:
            self.store.update(sid, remote_status=status, completed=completed, failed=failed,
                              polls=row.polls)  # fmt: skip
        if status in TERMINAL_REMOTE:
            await self.finish(sid, live, batch)
            return
        if status == "cancelling" and live.cancel_reason is None:
            self.external_cancel = row.batch_id
            return
        if self.stuck.observe(row.batch_id, progress, now):
            if live.cancel_reason is None:
                log.warning("batch %s stuck in %s: cancelling it and re-driving its lines",
                            row.batch_id, status)  # fmt: skip
                await self.cancel(live, "stuck")
            elif status == "cancelling":
                await self.abandon(sid, live, "stuck while cancelling")

    async def cancel(self, live: Live, reason: str) -> None:
        live.cancel_reason = reason
        self.store.update(live.row.shard_id, note=f"cancel: {reason}")
        if live.row.batch_id is not None:
            with contextlib.suppress(HTTPClientError):  # already finished: fine
                await self.api.cancel(live.row.batch_id)
            self.counters[f"cancelled_{reason}"] += 1

    async def abandon(self, sid: str, live: Live, why: str) -> None:
        """Give a batch up: its unanswered lines are re-sharded now."""
        self.live.pop(sid, None)
        self.store.update(sid, state="abandoned", note=why)
        self.budget.release(live.row.model, live.row.tokens)
        await self._redrive(live, {})
        self.counters["batches_abandoned"] += 1

    # -- merge ---------------------------------------------------------------

    async def finish(self, sid: str, live: Live, batch: dict[str, Any]) -> None:
        """Merge a finished batch's files; re-drive what did not finish."""
        row = live.row
        final: dict[str, Outcome] = {}
        # Each result carries its request (its answer is validated against the line's schema).
        requests = {r.custom_id: r for r in self.read_shard(sid, live.keys)}
        for fid in (batch.get("output_file_id"), batch.get("error_file_id")):
            if not fid:
                continue
            async for raw in self.api.content_lines(str(fid)):
                outcome = classify(raw)
                if outcome is None or outcome.custom_id not in live.keys:
                    self.counters["result_lines_unknown"] += 1
                    continue
                await self.merge_line(live, outcome, final, requests.get(outcome.custom_id))
        await self.sink.flush()  # the results are committed before the shard is merged
        status = str(batch.get("status"))
        codes = [str(e.get("code")) for e in ((batch.get("errors") or {}).get("data") or [])
                 if isinstance(e, dict)]  # fmt: skip
        if status == "failed" and "token_limit_exceeded" in codes:
            told = _stated_limit(batch)
            if told is not None:
                self.budget.learn(row.model, told)  # "Limit: 2,000,000 enqueued tokens."
                self.sharder.tighten(tokens=told)
            else:
                self.budget.shrink(row.model)
            self.counters["token_limit_refusals"] += 1
            self.submissions.subtract(list(live.keys))  # refused before running: not an attempt
        elif status == "failed" and any(c in _SIZE_CODES for c in codes):
            # The provider's file limits are lower than ours: cut smaller shards.
            self.sharder.tighten(lines=row.lines // 2 if "too_many_requests" in codes else None,
                                 nbytes=row.bytes // 2 if "too_many_requests" not in codes
                                 else None)  # fmt: skip
            self.counters["size_limit_refusals"] += 1
            self.submissions.subtract(list(live.keys))
        elif status == "failed" and codes:
            self.counters["batches_failed"] += 1
            msgs = [str(e.get("message") or "") for e in (batch.get("errors") or {}).get("data")
                    or [] if isinstance(e, dict)]  # fmt: skip
            log.warning("batch %s failed: %s", row.batch_id, "; ".join(msgs) or ", ".join(codes))
            for key in live.keys:  # what a line says if this is its last submission
                self.last_outcome.setdefault(key, Outcome(key, "failed", code=codes[0],
                                             message=msgs[0] if msgs else codes[0]))  # fmt: skip
        if status == "expired":
            self.counters["batches_expired"] += 1
        self.live.pop(sid, None)
        self.budget.release(row.model, row.tokens)
        if row.batch_id:
            self.polls.forget(row.batch_id)
            self.stuck.forget(row.batch_id)
        self.store.update(sid, state="merged", remote_status=status)
        if status == "cancelled" and live.cancel_reason is None:
            self.external_cancel = row.batch_id  # not ours: the user's (`conveyor cancel`)
            return
        if live.cancel_reason == "deadline":
            # What is left runs online (a resumed run sends it when it goes online).
            left = [k for k in live.keys if k not in final and not self.is_answered(k)]
            self.orphans.extend((r, live.keys[r.custom_id]) for r in self.read_shard(sid, left))
            return
        await self._redrive(live, final)
        if row.file_id:
            with contextlib.suppress(ConveyorError):
                await self.api.delete_file(row.file_id)
        self.shard_path(sid).unlink(missing_ok=True)

    async def merge_line(
        self, live: Live, outcome: Outcome, final: dict[str, Outcome],
        request: RequestLine | None = None,
    ) -> None:  # fmt: skip
        key = outcome.custom_id
        if self.is_answered(key):
            self.counters["answers_dropped"] += 1  # the other path (or an earlier merge) won
            return
        tries = max(1, self.submissions.get(key, 1))
        if outcome.kind == "retry" and tries <= self.max_redrives:
            self.last_outcome[key] = outcome
            self.counters[f"redrive_{outcome.code or outcome.status_code}"] += 1
            return
        now = self.clock()
        result = to_result(outcome, key=key, index=live.keys[key], attempts=tries,
                           started_at=live.row.submitted_at, ended_at=now,
                           meta={"path": "batch", "batch_id": live.row.batch_id})  # fmt: skip
        result.item = request
        final[key] = outcome
        if outcome.kind == "ok":
            self.batch_done += 1
        await self.commit(result)

    async def _redrive(self, live: Live, final: dict[str, Outcome]) -> None:
        left = [k for k in live.keys if k not in final and not self.is_answered(k)]
        if not left:
            return
        exhausted = [k for k in left if self.submissions.get(k, 0) > self.max_redrives]
        for key in exhausted:
            outcome = self.last_outcome.get(key) or Outcome(
                key, "failed", code="batch_no_result",
                message=f"no result after {self.submissions[key]} batch submission(s)",
            )  # fmt: skip
            await self.commit(to_result(outcome, key=key, index=live.keys[key],
                                  attempts=self.submissions[key],
                                  started_at=live.row.submitted_at, ended_at=self.clock(),
                                  meta={"path": "batch"}))  # fmt: skip
        again = [k for k in left if k not in set(exhausted)]
        if not again:
            return
        reqs = self.read_shard(live.row.shard_id, again)
        found = {r.custom_id for r in reqs}
        missing = [k for k in again if k not in found]
        if missing:
            # The local shard file is gone: a rerun re-reads them from the input.
            log.warning("%d line(s) of shard %s have no local copy; rerun to send them",
                        len(missing), live.row.shard_id)  # fmt: skip
            self.counters["redrive_missing"] += len(missing)
        self.counters["lines_redriven"] += self.reshard((r, live.keys[r.custom_id]) for r in reqs)

    # -- queries -------------------------------------------------------------

    def unfinished_keys(self) -> dict[str, int]:
        keys: dict[str, int] = {}
        for live in self.live.values():
            keys.update(live.keys)
        for _, k in self.ready:
            keys.update(k)
        keys.update((r.custom_id, i) for r, i in self.orphans)
        return {k: i for k, i in keys.items() if not self.is_answered(k)}

    def unfinished_requests(self) -> list[tuple[RequestLine, int]]:
        """Every unanswered request of the live and ready shards, from their files."""
        out: list[tuple[RequestLine, int]] = []
        groups = [(lv.row.shard_id, lv.keys) for lv in self.live.values()]
        groups += [(row.shard_id, keys) for row, keys in self.ready]
        for sid, keys in groups:
            left = [k for k in keys if not self.is_answered(k)]
            out.extend((r, keys[r.custom_id]) for r in self.read_shard(sid, left))
        out.extend((r, i) for r, i in self.orphans if not self.is_answered(r.custom_id))
        self.orphans = []
        return out

    def batch_rate(self) -> float | None:
        """Lines per second the batches answered in this run (None before any)."""
        if self.first_submit is None or self.batch_done == 0:
            return None
        return self.batch_done / max(1e-6, self.clock() - self.first_submit)


_LIMIT_RE = re.compile(r"Limit: ([\d,]+) enqueued tokens")


def _stated_limit(batch: dict[str, Any]) -> int | None:
    """The enqueued-token limit OpenAI's refusal states, if it does
    (openai/openai-python#2084 quotes the message)."""
    for e in (batch.get("errors") or {}).get("data") or []:
        m = _LIMIT_RE.search(str(e.get("message") or "")) if isinstance(e, dict) else None
        if m:
            return int(m.group(1).replace(",", ""))
    return None


def check_external_cancel(driver: BatchDriver) -> None:
    if driver.external_cancel is not None:
        raise FatalError(
            f"batch {driver.external_cancel} was cancelled outside this run (conveyor cancel?): "
            "stopping. What finished is kept; run the same command again to send the rest."
        )


__all__ += ["METADATA_KEY", "TERMINAL_REMOTE", "check_external_cancel"]
