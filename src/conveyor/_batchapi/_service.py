"""The batch lifecycle, driven for each batch by one task the service owns.

``validating`` (the input is checked, `_validate`) -> ``in_progress`` (the `Processor`
answers the lines) -> ``finalizing`` (the output and error files are written) ->
``completed``; or ``failed`` (the input broke a rule, or the enqueued-token limit),
``expired`` (the completion window passed: the finished lines are kept in the output
file, the others go to the error file with code ``batch_expired``), ``cancelling`` ->
``cancelled`` (the finished lines are kept). As documented in
https://platform.openai.com/docs/guides/batch ("Batch expiration", "Cancel a batch").

A line went right when it has a response with a 2xx status and no error; it goes to
the output file, every other line to the error file (each line
``{id, custom_id, response: {status_code, request_id, body} | null, error}``,
https://platform.openai.com/docs/api-reference/batch/request-output).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

import orjson

from ._errors import ApiError
from ._objects import ACTIVE, FINAL, BatchRecord, LineError, new_id
from ._validate import Checked, check_lines, token_limit_error

if TYPE_CHECKING:
    from collections.abc import Coroutine, Iterable, Iterator
    from pathlib import Path

    from ._store import FileWriter, Store

__all__ = ["ENDPOINTS", "BatchService", "Job", "Limits", "Processor", "window_seconds"]

log = logging.getLogger("conveyor.batchapi")

# https://platform.openai.com/docs/api-reference/batch/create, `endpoint`.
ENDPOINTS: Final = (
    "/v1/responses",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/moderations",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/videos",
)
_WINDOW = re.compile(r"\A(\d+)([smhd])\Z")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SAVE_EVERY = 1.0  # seconds between progress writes of one batch


def window_seconds(window: str) -> int | None:
    """``"24h"`` -> 86400; None when it is not a number and one of s, m, h, d."""
    match = _WINDOW.match(window)
    return None if match is None else int(match[1]) * _UNIT[match[2]]


@dataclass(frozen=True, slots=True)
class Limits:
    """The server's rules: lines and bytes per batch input (OpenAI: 50,000 and 200 MB),
    bytes per upload (OpenAI: 512 MB), prompt tokens enqueued per model (None: none),
    and the completion windows accepted (OpenAI: only "24h"; None: any duration)."""

    max_lines: int = 50_000
    max_bytes: int = 200 * 1024 * 1024
    max_upload_bytes: int = 512 * 1024 * 1024
    enqueued_tokens: int | None = None
    windows: tuple[str, ...] | None = ("24h",)


class Processor(Protocol):
    """What answers a batch's lines; the service drives the lifecycle around it."""

    def tokens_of(self, body: dict[str, Any]) -> int:
        """Prompt tokens of one request body (the enqueued-token limit's charge)."""
        ...

    def expire_after(self) -> float | None:
        """Seconds after which a new batch expires, or None for its completion window."""
        ...

    async def validating(self, job: Job) -> None:
        """Awaited before the input is checked (a simulated server may hold it here)."""
        ...

    async def run(self, job: Job) -> None:
        """Answer the lines (`job.requests`), reporting progress with `job.count`.
        Cancelled when the batch is cancelled, expires, or the server stops."""
        ...

    async def cancelling(self, job: Job) -> None:
        """Awaited while the batch is ``cancelling``, after `run` was stopped."""
        ...

    def finished(self, job: Job) -> Iterable[bytes]:
        """The finished lines (Batch output format, one JSON object each) so far."""
        ...


@dataclass(slots=True)
class Job:
    """One batch while the service drives it."""

    batch: BatchRecord
    service: BatchService
    deadline: float  # time.time() by which the batch expires
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    state: dict[str, Any] = field(default_factory=dict)  # the processor's own
    _saved: float = 0.0

    @property
    def work_dir(self) -> Path | None:
        return self.service.store.work_dir(self.batch.id)

    @property
    def input_path(self) -> Path | None:
        return self.service.store.content_path(self.batch.input_file_id)

    def requests(self) -> Iterator[dict[str, Any]]:
        """The input's request objects with a custom_id, in file order."""
        for raw in self.service.store.iter_lines(self.batch.input_file_id):
            try:
                request = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue  # a batch that expired while validating may hold bad lines
            if isinstance(request, dict) and isinstance(request.get("custom_id"), str):
                yield request

    def count(self, *, completed: int, failed: int) -> None:
        """Lines answered so far; written through at most once a second."""
        self.batch.completed, self.batch.failed = completed, failed
        now = time.monotonic()
        if now - self._saved >= _SAVE_EVERY:
            self._saved = now
            self.service.store.save_batch(self.batch)


def _succeeded(line: dict[str, Any]) -> bool:
    response = line.get("response")
    if line.get("error") is not None or not isinstance(response, dict):
        return False
    status = response.get("status_code")
    return isinstance(status, int) and 200 <= status < 300


def _add_usage(total: Counter[str], line: dict[str, Any]) -> None:
    """Add a line's token usage (Chat Completions or Responses names) to `total`."""
    body = (line.get("response") or {}).get("body")
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return
    total["input"] += int(usage.get("prompt_tokens") or usage.get("input_tokens") or 0)
    total["output"] += int(usage.get("completion_tokens") or usage.get("output_tokens") or 0)
    given = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
    taken = usage.get("completion_tokens_details") or usage.get("output_tokens_details") or {}
    total["cached"] += int(given.get("cached_tokens") or 0) if isinstance(given, dict) else 0
    total["reasoning"] += int(taken.get("reasoning_tokens") or 0) if isinstance(taken, dict) else 0


def _expired_line(custom_id: str) -> bytes:
    # https://platform.openai.com/docs/guides/batch, "Batch expiration".
    error = {
        "code": "batch_expired",
        "message": "This request could not be executed before the completion window expired.",
    }
    line = {"id": new_id("batch_req_"), "custom_id": custom_id, "response": None, "error": error}
    return orjson.dumps(line) + b"\n"


class BatchService:
    """Files and batches over a `Store`, each batch answered by the `Processor`."""

    def __init__(self, store: Store, processor: Processor, limits: Limits | None = None) -> None:
        self.store = store
        self.processor = processor
        self.limits = Limits() if limits is None else limits
        self.jobs: dict[str, Job] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    # -- lifecycle of the service ------------------------------------------------

    def resume(self) -> None:
        """Drive again every batch a previous process left unfinished (on disk)."""
        for batch in sorted(self.store.batches.values(), key=lambda b: b.created_at):
            if batch.status in ACTIVE and batch.id not in self._tasks:
                self._start(batch, float(batch.expires_at))

    async def close(self) -> None:
        """Stop driving; unfinished batches keep their status (a restart resumes them)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._tasks.clear()

    # -- batches ------------------------------------------------------------------

    def create(
        self,
        *,
        input_file_id: str,
        endpoint: str,
        completion_window: str,
        metadata: dict[str, str] | None,
    ) -> BatchRecord:
        """A new batch in ``validating``; 400 for a bad endpoint, window or file."""
        if endpoint not in ENDPOINTS:
            raise ApiError(
                400,
                f"Invalid value for 'endpoint': {endpoint!r}. Supported: {', '.join(ENDPOINTS)}.",
                param="endpoint",
                code="invalid_value",
            )
        allowed = self.limits.windows
        seconds = window_seconds(completion_window)
        if (
            seconds is None
            or seconds <= 0
            or (allowed is not None and completion_window not in allowed)
        ):
            shown = ", ".join(allowed) if allowed is not None else "a duration such as 24h or 90m"
            raise ApiError(
                400,
                f"Invalid value for 'completion_window': {completion_window!r}. Use {shown}.",
                param="completion_window",
                code="invalid_value",
            )
        file = self.store.file(input_file_id)
        if file.purpose != "batch":
            raise ApiError(
                400,
                f"The input file {input_file_id} has purpose {file.purpose!r}; a batch's "
                "input file must be uploaded with purpose 'batch'.",
                param="input_file_id",
            )
        now = time.time()
        batch = BatchRecord(
            id=new_id("batch_"),
            endpoint=endpoint,
            input_file_id=input_file_id,
            completion_window=completion_window,
            created_at=int(now),
            expires_at=int(now) + seconds,
            metadata=metadata,
        )
        self.store.save_batch(batch)
        expire_after = self.processor.expire_after()
        self._start(batch, now + (seconds if expire_after is None else expire_after))
        return batch

    def cancel(self, batch_id: str) -> BatchRecord:
        batch = self.store.batch(batch_id)
        if batch.status in ("cancelling", "cancelled", "finalizing"):
            return batch  # already on its way (a finalizing batch completes)
        if batch.status in FINAL:
            raise ApiError(
                409,
                f"Cannot cancel a batch with status {batch.status!r}.",
                param="batch_id",
            )
        batch.status, batch.cancelling_at = "cancelling", int(time.time())
        self.store.save_batch(batch)
        job = self.jobs.get(batch_id)
        if job is not None:
            job.cancel.set()
        return batch

    def active_tokens(self, *, excluding: str) -> Counter[str]:
        """Prompt tokens per model of the batches not finished yet."""
        used: Counter[str] = Counter()
        for batch in self.store.batches.values():
            if batch.status in ACTIVE and batch.id != excluding:
                used.update(batch.tokens)
        return used

    # -- driving one batch ----------------------------------------------------

    def _start(self, batch: BatchRecord, deadline: float) -> None:
        job = Job(batch=batch, service=self, deadline=deadline)
        if batch.status == "cancelling":
            job.cancel.set()
        self.jobs[batch.id] = job
        task = asyncio.get_running_loop().create_task(self._drive(job), name=batch.id)
        self._tasks[batch.id] = task
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        if self._tasks.get(task.get_name()) is task:
            del self._tasks[task.get_name()]

    async def _drive(self, job: Job) -> None:
        batch = job.batch
        try:
            outcome = "completed"
            if batch.status == "validating":
                outcome = await self._race(self.processor.validating(job), job)
                if outcome == "completed":
                    checked = await asyncio.to_thread(self._check, batch)
                    if not self._admit(batch, checked):
                        return
            if batch.status == "in_progress":
                outcome = await self._race(self.processor.run(job), job)
            elif batch.status == "cancelling":
                outcome = "cancelled"
            if outcome == "cancelled":
                await self.processor.cancelling(job)
            await asyncio.to_thread(self._finalize, job, outcome)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a processor's bug must not leave a batch running forever
            log.exception("batch %s failed inside the server", batch.id)
            self._fail(batch, [LineError("server_error", f"The server failed: {exc!r}")])
        finally:
            self.jobs.pop(batch.id, None)

    def _fail(self, batch: BatchRecord, errors: list[LineError]) -> None:
        batch.status, batch.failed_at, batch.errors = "failed", int(time.time()), errors
        self.store.save_batch(batch)

    def _check(self, batch: BatchRecord) -> Checked | LineError:
        """Read the input through (in a worker thread: it may be 200 MB on disk)."""
        limits = self.limits
        file = self.store.file(batch.input_file_id)
        if file.bytes > limits.max_bytes:
            return LineError(
                "file_too_large",
                f"The input file is {file.bytes:,} bytes, more than the maximum of "
                f"{limits.max_bytes:,} per batch; split it into several batches.",
                "input_file_id",
            )
        return check_lines(
            self.store.iter_lines(batch.input_file_id),
            endpoint=batch.endpoint,
            max_lines=limits.max_lines,
            tokens_of=self.processor.tokens_of,
        )

    def _admit(self, batch: BatchRecord, checked: Checked | LineError) -> bool:
        """Fail the batch, or start it (on the loop: `cancel` may have run meanwhile)."""
        if isinstance(checked, LineError):
            self._fail(batch, [checked])
            return False
        batch.tokens = dict(checked.tokens)
        batch.model = checked.models[0] if checked.models else None
        batch.total = checked.lines
        if checked.errors:
            self._fail(batch, checked.errors)
            return False
        limit = self.limits.enqueued_tokens
        if limit is not None:
            used = self.active_tokens(excluding=batch.id)
            for model, tokens in checked.tokens.items():
                if used[model] + tokens > limit:
                    self._fail(batch, [token_limit_error(model, limit)])
                    return False
        if batch.status == "validating":
            batch.status, batch.in_progress_at = "in_progress", int(time.time())
        self.store.save_batch(batch)
        return True

    async def _race(self, work: Coroutine[Any, Any, None], job: Job) -> str:
        """Run `work` until it ends ("completed"), the batch is cancelled, or it expires."""
        run = asyncio.ensure_future(work)
        cancelled = asyncio.ensure_future(job.cancel.wait())
        try:
            timeout = max(0.0, job.deadline - time.time())
            done, _ = await asyncio.wait(
                {run, cancelled}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for task in (run, cancelled):
                if not task.done():
                    task.cancel()
            await asyncio.wait({run, cancelled})
        if run in done and not run.cancelled():
            run.result()  # a processor's failure fails the batch
            return "completed"
        return "cancelled" if cancelled in done else "expired"

    def _finalize(self, job: Job, outcome: str) -> None:
        """Split the finished lines into the output and error files; set the end state."""
        batch, store = job.batch, self.store
        if outcome == "completed":
            batch.status, batch.finalizing_at = "finalizing", int(time.time())
            store.save_batch(batch)
        out = store.new_file(filename=f"{batch.id}_output.jsonl", purpose="batch_output")
        err = store.new_file(filename=f"{batch.id}_error.jsonl", purpose="batch_output")
        seen: set[str] = set()
        completed = failed = 0
        usage: Counter[str] = Counter()
        for raw in self.processor.finished(job):
            line = orjson.loads(raw)
            custom_id = line.get("custom_id")
            if not isinstance(custom_id, str) or custom_id in seen:
                continue  # each custom_id once, whatever the processor repeated
            seen.add(custom_id)
            ok = _succeeded(line)
            completed, failed = completed + ok, failed + (not ok)
            _add_usage(usage, line)
            (out if ok else err).write(orjson.dumps(line) + b"\n")
        if outcome == "expired":
            for request in job.requests():
                if request["custom_id"] not in seen:
                    err.write(_expired_line(request["custom_id"]))
        batch.completed, batch.failed = completed, failed
        batch.usage = {k: usage[k] for k in ("input", "cached", "output", "reasoning")}
        batch.output_file_id = _keep(out)
        batch.error_file_id = _keep(err)
        now = int(time.time())
        if outcome == "completed":
            batch.status, batch.completed_at = "completed", now
        elif outcome == "expired":
            batch.status, batch.expired_at = "expired", now
        else:
            batch.status, batch.cancelled_at = "cancelled", now
        store.save_batch(batch)


def _keep(writer: FileWriter) -> str | None:
    """Commit a file that got lines; an empty one is no file (its id stays null)."""
    if writer.record.bytes == 0:
        writer.discard()
        return None
    return writer.commit().id
