"""Engine overhead, side by side with the bare loops it replaces.

    .venv/bin/python benchmarks/engine_overhead.py [--items 100000] [--stream-items 1000000]

Prints items/s for conveyor and each baseline in one process and the ratio.
Targets: async conveyor >= 0.5x a bare `asyncio.Semaphore` + `gather` loop;
streaming 1,000,000 items keeps peak RSS within 100 MB of the start.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import resource
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import conveyor


async def _noop_async(x: int) -> int:
    return x


def _noop_sync(x: int) -> int:
    return x


def bare_asyncio(n: int, conc: int) -> float:
    async def main() -> None:
        sem = asyncio.Semaphore(conc)

        async def one(x: int) -> int:
            async with sem:
                return await _noop_async(x)

        await asyncio.gather(*(one(i) for i in range(n)))

    t = time.perf_counter()
    asyncio.run(main())
    return time.perf_counter() - t


def bare_threads(n: int, workers: int) -> float:
    t = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(_noop_sync, range(n)))
    return time.perf_counter() - t


def conveyor_run(n: int, conc: int, fn: object) -> float:
    t = time.perf_counter()
    report = conveyor.run(range(n), fn, concurrency=conc, retries=0)  # type: ignore[arg-type]
    elapsed = time.perf_counter() - t
    assert report.counts["ok"] == n, report.counts
    return elapsed


def rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stream_memory(n: int, conc: int) -> tuple[float, float, float]:
    gc.collect()
    before = rss_mb()
    t = time.perf_counter()
    count = 0
    s = conveyor.stream((i for i in range(n)), _noop_async, concurrency=conc, retries=0)
    for _ in s:
        count += 1
    elapsed = time.perf_counter() - t
    assert count == n
    return before, rss_mb(), elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--concurrency", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=32)
    ap.add_argument("--stream-items", type=int, default=1_000_000)
    a = ap.parse_args()
    n = a.items
    print(f"python {sys.version.split()[0]}, {n} no-op items")
    # Memory first, while this process holds nothing else.
    stream_line = ""
    if a.stream_items:
        before, peak, el = stream_memory(a.stream_items, a.concurrency)
        stream_line = (
            f"stream {a.stream_items:,} items: {a.stream_items / el:,.0f}/s, "
            f"peak RSS {peak:.0f} MB (start {before:.0f} MB, growth {peak - before:.0f} MB)"
        )
    rows = []
    b = bare_asyncio(n, a.concurrency)
    c = conveyor_run(n, a.concurrency, _noop_async)
    rows.append((f"async, concurrency {a.concurrency}", "Semaphore+gather", n / b, n / c))
    bt = bare_threads(n, a.threads)
    ct = conveyor_run(n, a.threads, _noop_sync)
    rows.append((f"sync on {a.threads} threads", "ThreadPoolExecutor.map", n / bt, n / ct))
    print(f"{'scenario':26} {'baseline':24} {'baseline/s':>12} {'conveyor/s':>12} {'ratio':>7}")
    for name, base, bs, cs in rows:
        print(f"{name:26} {base:24} {bs:12,.0f} {cs:12,.0f} {cs / bs:7.2f}")
    if stream_line:
        print(stream_line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
