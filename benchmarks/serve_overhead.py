"""`conveyor serve` against `conveyor run` on the same file and the same simulated upstream.

    PYTHONPATH=src python benchmarks/serve_overhead.py [--lines 5000] [--latency 0.05]

Both send every line of one Batch file to a fresh simulated server (`conveyor.mock`)
with the same concurrency: once with `openai.arun_file` directly, once through
`conveyor serve` driven by the official SDK (upload, create, poll every 0.1 s,
download). Reported as ratios in one run: serve's wall time over run's (the cost of
the Batch API front: upload, validation, finalize, polling), and the ideal
(lines x latency / concurrency) over each. Then two batches of half the lines at once
against an upstream with an exact request limit: each batch's share of the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import openai
import orjson

from conveyor.mock import MockConfig, MockServer
from conveyor.openai import RunSettings, arun_file
from conveyor.serve import BatchServer, ServeSettings

CONCURRENCY = 50


def write_input(path: Path, lines: int, start: int = 0) -> bytes:
    data = b"".join(
        orjson.dumps({
            "custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "mock-gpt", "messages": [{"role": "user", "content": f"q{i}"}]},
        }) + b"\n"
        for i in range(start, start + lines)
    )  # fmt: skip
    path.write_bytes(data)
    return data


async def through_serve(
    client: openai.AsyncOpenAI, data: bytes, name: str = "in.jsonl"
) -> tuple[str, float]:
    start = time.perf_counter()
    file = await client.files.create(file=(name, data), purpose="batch")
    batch = await client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        await asyncio.sleep(0.1)
        batch = await client.batches.retrieve(batch.id)
    assert batch.status == "completed", batch
    assert batch.output_file_id is not None
    await client.files.content(batch.output_file_id)
    return batch.id, time.perf_counter() - start


async def main(lines: int, latency: float, window: float) -> None:
    os.environ["BENCH_UPSTREAM_KEY"] = "x"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        source = root / "in.jsonl"
        data = write_input(source, lines)
        async with MockServer(MockConfig(latency=latency)) as mock:
            start = time.perf_counter()
            await arun_file(source, RunSettings(
                output=root / "run.jsonl", base_url=mock.base_url,
                api_key_env="BENCH_UPSTREAM_KEY", concurrency=CONCURRENCY,
            ))  # fmt: skip
            direct = time.perf_counter() - start
        async with MockServer(MockConfig(latency=latency)) as mock:
            settings = ServeSettings(
                upstream=mock.base_url, data=root / "data", port=0, api_key=None,
                upstream_key_env="BENCH_UPSTREAM_KEY", concurrency=CONCURRENCY,
            )  # fmt: skip
            async with BatchServer(settings) as server:
                client = openai.AsyncOpenAI(base_url=server.base_url, api_key="x")
                _, served = await through_serve(client, data)
                await client.close()
        ideal = lines * latency / CONCURRENCY
        print(f"{lines} lines, latency {latency}s, concurrency {CONCURRENCY}")
        print(f"  conveyor run:   {direct:6.2f}s  ideal/actual {ideal / direct:.2f}")
        print(f"  conveyor serve: {served:6.2f}s  ideal/actual {ideal / served:.2f}")
        print(f"  serve / run wall time: {served / direct:.2f}")

        limit = 200  # requests per second, exact (a sliding log over `window` seconds)
        cfg = MockConfig(
            latency=0.01, rpm=int(limit * window), limit_window=window, limit_model="sliding"
        )
        half = lines // 2
        async with MockServer(cfg) as mock:
            settings = ServeSettings(
                upstream=mock.base_url, data=root / "data2", port=0, api_key=None,
                upstream_key_env="BENCH_UPSTREAM_KEY", concurrency=CONCURRENCY,
            )  # fmt: skip
            async with BatchServer(settings) as server:
                client = openai.AsyncOpenAI(base_url=server.base_url, api_key="x")
                start = time.perf_counter()
                (_, a), (_, b) = await asyncio.gather(
                    through_serve(client, write_input(root / "a.jsonl", half), "a.jsonl"),
                    through_serve(client, write_input(root / "b.jsonl", half, 10**6), "b.jsonl"),
                )
                both = time.perf_counter() - start
                await client.close()
            refused = mock.stats.refused["rate"]
        ideal = 2 * half / limit
        print(f"two batches of {half} at once, upstream limit {limit}/s over {window:g}s:")
        print(f"  {a:.2f}s and {b:.2f}s (ratio {min(a, b) / max(a, b):.2f}); "
              f"ideal/actual {ideal / both:.2f}; 429s {refused}")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=5000)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--window", type=float, default=1.0, help="the limit's window, s")
    args = parser.parse_args()
    asyncio.run(main(args.lines, args.latency, args.window))
    sys.exit(0)
