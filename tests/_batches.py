"""Helpers for the tests that drive a Batch API (the mock's, `conveyor serve`'s) with the SDK."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import openai
import orjson
from openai.types import Batch

FINAL = {"completed", "failed", "expired", "cancelled"}


async def wait_for(
    client: openai.AsyncOpenAI,
    batch_id: str,
    states: set[str] = FINAL,
    *,
    within: float = 20.0,
) -> Batch:
    """Poll until the batch reaches one of `states`, within `within` seconds."""
    end = time.monotonic() + within
    while True:
        batch = await client.batches.retrieve(batch_id)
        if batch.status in states:
            return batch
        assert time.monotonic() < end, f"batch still {batch.status} after {within}s"
        await asyncio.sleep(0.02)


async def lines_of(client: openai.AsyncOpenAI, file_id: str | None) -> dict[str, dict[str, Any]]:
    """An output/error file's lines by custom_id (each custom_id at most once)."""
    if file_id is None:
        return {}
    content = await client.files.content(file_id)
    rows = [orjson.loads(raw) for raw in content.content.splitlines()]
    by_id = {row["custom_id"]: row for row in rows}
    assert len(by_id) == len(rows), "a custom_id appears twice"
    return by_id
