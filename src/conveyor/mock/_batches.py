"""The simulated server's batch processor: answers a batch's lines as the online routes do.

Each line gets the answer ``POST <url>`` with its body would get online (the same
validation and builders, `mock._api`), not charged to the online limits: OpenAI runs
batches in a separate pool (https://platform.openai.com/docs/guides/batch, "Rate
limits"). What a test can set (`MockConfig`): the speed in lines per second, a rate of
lines that fail (chosen by a hash of the ``custom_id``, so the same lines fail every
time), a batch that expires after N seconds, a batch stuck in ``validating`` or
``in_progress``, the line, byte and enqueued-token limits, and how long ``cancelling``
lasts. Each batch keeps the configuration in force when it was created.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import TYPE_CHECKING, Any, Final

import orjson

from .._batchapi import ApiError, Job, Limits, error_body
from .._batchapi._objects import new_id
from ._api import build_answer, shape_answer, validate
from ._content import count_prompt_tokens
from ._structured import plan_and_count

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from ._config import MockConfig, MockStats

__all__ = ["MockBatches", "batch_limits", "fails_in_batch"]

_KINDS: Final = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
    "/v1/responses": "responses",
}
_MIN_SLEEP = 0.005  # pace in steps of at least this long (a sleep per line is too slow)
_YIELD_EVERY = 256  # lines between yields to the loop at unlimited speed


def batch_limits(cfg: MockConfig) -> Limits:
    return Limits(
        max_lines=cfg.batch_max_lines,
        max_bytes=cfg.batch_max_bytes,
        enqueued_tokens=cfg.batch_enqueued_tokens,
        max_upload_bytes=cfg.max_upload_bytes,
    )


def fails_in_batch(custom_id: str, rate: float, seed: int = 0) -> bool:
    """Whether the line with `custom_id` is one the simulated server fails at `rate`."""
    if rate <= 0:
        return False
    digest = hashlib.sha256(f"{seed}:{custom_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate


def _line(custom_id: str, status: int, body: Any) -> bytes:
    response = {"status_code": status, "request_id": f"req_{new_id('')}", "body": body}
    line = {"id": new_id("batch_req_"), "custom_id": custom_id, "response": response, "error": None}
    return orjson.dumps(line)


def answer_line(
    request: dict[str, Any], cfg: MockConfig, stats: MockStats | None = None
) -> tuple[bytes, bool]:
    """One output line for one input request, and whether it succeeded."""
    custom_id, body = request["custom_id"], request["body"]
    kind = _KINDS.get(request["url"])
    if fails_in_batch(custom_id, cfg.batch_error_rate, cfg.seed):
        message = (
            "The server had an error while processing your request "
            "(injected by the conveyor mock server)."
        )
        body = orjson.loads(error_body(message, "server_error", None, None))
        return _line(custom_id, 500, body), False
    try:
        if kind is None:
            raise ApiError(404, f"Invalid URL (POST {request['url']})")
        validate(kind, body)
        if body["model"] not in cfg.models:
            raise ApiError(
                404,
                f"The model `{body['model']}` does not exist or you do not have access to it.",
                code="model_not_found",
            )
    except ApiError as err:
        return _line(custom_id, err.status, orjson.loads(err.body())), False
    prompt = count_prompt_tokens(body)
    each, _n, finish, _asked = shape_answer(kind, body, cfg.completion_tokens)
    rid = new_id("")
    reply = None if stats is None else plan_and_count(cfg, stats, kind, body)
    payload = build_answer(kind, rid, int(time.time()), body, prompt, each, finish, reply)
    return _line(custom_id, 200, payload), True


class MockBatches:
    """The `Processor` of `conveyor mock`; `config` gives the configuration in force."""

    def __init__(
        self,
        config: Callable[[], MockConfig],
        on_line: Callable[[], None],
        stats: MockStats | None = None,
    ) -> None:
        self._config = config
        self._on_line = on_line
        self._stats = stats  # structured answers are counted here, as online ones are

    def tokens_of(self, body: dict[str, Any]) -> int:
        return count_prompt_tokens(body)

    def expire_after(self) -> float | None:
        return self._config().batch_expire_after

    def _cfg(self, job: Job) -> MockConfig:
        cfg: MockConfig = job.state.setdefault("cfg", self._config())
        return cfg

    async def validating(self, job: Job) -> None:
        if self._cfg(job).batch_stuck == "validating":
            await asyncio.Event().wait()  # until cancelled or expired

    async def run(self, job: Job) -> None:
        cfg = self._cfg(job)
        if cfg.batch_stuck == "in_progress":
            await asyncio.Event().wait()
        lines: list[bytes] = job.state.setdefault("lines", [])
        completed = failed = 0
        speed = cfg.batch_speed
        start = time.monotonic()
        for done, request in enumerate(job.requests(), 1):
            line, ok = answer_line(request, cfg, self._stats)
            lines.append(line)
            completed, failed = completed + ok, failed + (not ok)
            job.count(completed=completed, failed=failed)
            self._on_line()
            if speed is not None:
                delay = start + done / speed - time.monotonic()
                if delay >= _MIN_SLEEP:
                    await asyncio.sleep(delay)
            elif done % _YIELD_EVERY == 0:
                await asyncio.sleep(0)

    async def cancelling(self, job: Job) -> None:
        delay = self._cfg(job).batch_cancel_delay
        if delay > 0:
            await asyncio.sleep(delay)

    def finished(self, job: Job) -> Iterable[bytes]:
        lines: list[bytes] = job.state.get("lines", [])
        return list(lines)
