"""Results journaled per second through `OutputSink` (journal + output file).

    .venv/bin/python benchmarks/journal_throughput.py [--items 100000] [--flush-every 500]

Feeds synthetic `Result`s (a small dict value, usage, timings) from one
coroutine, the way the engine's result stream does, into a fresh journal and
output file in a temporary directory; the time runs from the first `add` to
the end of `close()` (everything committed). Also reports `is_terminal`
latency on the finished journal. Target: >= 20,000 results/s on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from typing import Any

import orjson

from conveyor._base._types import Result, Status, Usage
from conveyor._journal._journal import Journal
from conveyor._journal._sink import OutputSink


def format_line(r: Result[Any]) -> bytes:
    return orjson.dumps(
        {"custom_id": r.key, "status": r.status.value, "response": r.value, "error": None}
    )


def make(i: int) -> Result[Any]:
    now = time.time()
    return Result(
        index=i,
        key=f"request-{i}",
        status=Status.OK,
        value={"id": f"chatcmpl-{i}", "choices": [{"message": {"content": "word " * 20}}]},
        attempts=1,
        started_at=now,
        ended_at=now,
        duration=0.01,
        usage=Usage(120, 40),
    )


async def feed(journal: Journal, out: str, n: int, flush_every: int) -> float:
    results = [make(i) for i in range(n)]
    t0 = time.perf_counter()
    async with OutputSink(journal, out, format_line, flush_every=flush_every) as sink:
        for r in results:
            await sink.add(r)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--flush-every", type=int, default=500)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        path, out = os.path.join(d, "run.journal"), os.path.join(d, "out.jsonl")
        with Journal.open(path, identity={"bench": "journal_throughput"}) as journal:
            elapsed = asyncio.run(feed(journal, out, args.items, args.flush_every))
            counts = journal.status_counts()
            assert counts == {"ok": args.items}, counts
            probes = [f"request-{i}" for i in range(0, args.items, max(1, args.items // 10_000))]
            t0 = time.perf_counter()
            hits = sum(journal.is_terminal(k) for k in probes)
            lookup_us = (time.perf_counter() - t0) / len(probes) * 1e6
            assert hits == len(probes)
        size = os.path.getsize(out)
    print(
        f"{args.items} results in {elapsed:.2f} s: {args.items / elapsed:,.0f} results/s "
        f"(flush_every={args.flush_every}, output {size / 1e6:.1f} MB); "
        f"is_terminal {lookup_us:.1f} us/lookup"
    )


if __name__ == "__main__":
    main()
