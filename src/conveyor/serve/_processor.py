"""`conveyor serve`'s processor: a batch's lines are a `conveyor run` of its input file.

Each batch runs `openai.arun_file` on its stored input, against the upstream, with a
journal and an output file in the batch's work directory (`--data DIR/work/<id>/`): the
same engine, retries, limits and exactly-once output as `conveyor run`, and the same
resume rule, so after a kill the run continues and sends no finished line again. All
batches share one limiter for the upstream (`ray._limiter.LimiterActor`, here in
process): one mirror of the upstream's budget, learned from its headers or told
(`--rpm`/`--tpm`), from which each batch's engine leases, so two batches split the
upstream's rate between them instead of each spending all of it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import orjson

from .._base._exceptions import FatalError
from ..openai._run import RunSettings, arun_file
from ..ray._limiter import LeaseClient, LimiterActor

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from .._batchapi import Job
    from .._core._progress import ProgressSnapshot
    from ..ray._lease import Grant, LeaseRequest

__all__ = ["UpstreamBatches"]

log = logging.getLogger("conveyor.serve")

_OUTPUT = "output.jsonl"
_RETRY_FIRST = 1.0  # seconds before a run that stopped on a fatal error starts again
_RETRY_CAP = 30.0


def _finished_lines(path: Path) -> Iterator[bytes]:
    """Whole lines of a run's output (a kill may have cut the last one short)."""
    if not path.exists():
        return
    with path.open("rb") as handle:
        for raw in handle:
            if raw.endswith(b"\n") and raw.strip():
                yield raw


def _succeeded(raw: bytes) -> bool:
    line = orjson.loads(raw)
    response = line.get("response")
    return (
        line.get("error") is None
        and isinstance(response, dict)
        and 200 <= int(response.get("status_code") or 0) < 300
    )


class UpstreamBatches:
    """The `Processor` that sends each batch's lines to the upstream."""

    def __init__(
        self,
        *,
        upstream: str,
        upstream_key_env: str,
        concurrency: int | str,
        rpm: float | None,
        tpm: float | None,
        timeout: float | None = 600.0,
        retries: int = 5,
    ) -> None:
        self._upstream = upstream
        self._key_env = upstream_key_env
        self._concurrency = concurrency
        self._timeout = timeout
        self._retries = retries
        self.limiter = LimiterActor(rpm, tpm, 60.0)

    def tokens_of(self, body: dict[str, Any]) -> int:
        return 0  # no enqueued-token limit: the upstream's rate limits are the limits

    def expire_after(self) -> float | None:
        return None

    async def validating(self, job: Job) -> None:
        return None

    async def cancelling(self, job: Job) -> None:
        return None

    def _output(self, job: Job) -> Path:
        work = job.work_dir
        assert work is not None, "conveyor serve keeps its batches on disk"
        return work / _OUTPUT

    def finished(self, job: Job) -> Iterator[bytes]:
        return _finished_lines(self._output(job))

    async def _send(self, request: LeaseRequest) -> Grant:
        # In one process a lease costs a call, not a network round trip: lease one
        # attempt at a time, so batches are served in the order they ask (a fair share
        # by demand) instead of one holding a large block the others wait behind.
        one = replace(request, want_requests=request.need_requests, want_tokens=request.need_tokens)
        return self.limiter.lease(one)

    async def run(self, job: Job) -> None:
        output = self._output(job)
        input_path = job.input_path
        assert input_path is not None
        base_ok = base_failed = 0
        for raw in _finished_lines(output):
            ok = _succeeded(raw)
            base_ok, base_failed = base_ok + ok, base_failed + (not ok)
        job.count(completed=base_ok, failed=base_failed)
        job.state["rate_start"] = (time.monotonic(), base_ok + base_failed)

        def progress(snapshot: ProgressSnapshot) -> None:
            counts = snapshot.counts
            failed = counts.get("failed", 0) + counts.get("timed_out", 0)
            job.count(completed=base_ok + counts.get("ok", 0), failed=base_failed + failed)

        rpm, tpm, ttl = self.limiter.config()
        wait = _RETRY_FIRST
        while True:
            lease = LeaseClient(self._send, rpm=rpm, tpm=tpm, ttl=ttl)
            settings = RunSettings(
                output=output,
                base_url=self._upstream,
                api_key_env=self._key_env,
                concurrency=self._concurrency,
                retries=self._retries,
                timeout=self._timeout,
                journal=True,
                batch_id=job.batch.id,
                on_progress=progress,
                progress_interval=0.2,
                shared_limiter=lease,
            )
            try:
                await arun_file(input_path, settings)
                return
            except FatalError as exc:
                # The upstream is down or refuses us: nothing is lost (the journal
                # holds what finished); try again until the batch expires.
                log.warning("batch %s stopped (%s); resuming in %.0fs", job.batch.id, exc, wait)
            finally:
                await lease.aclose()
            await asyncio.sleep(wait)
            wait = min(wait * 2, _RETRY_CAP)
