"""The Ray backend: CPU scaling over actors, and HTTP at high concurrency.

    .venv/bin/python benchmarks/ray_scaling.py [--cpu-items 64] [--http-items 20000]

1. A CPU-heavy per-item function (pure Python, holds the GIL) on 1 actor vs
   2 actors on this machine: the single-process engine cannot beat one core
   with it, Ray actors are separate processes.
2. The HTTP scenario at concurrency 1,000 against the simulated server (run in
   its own process, latency 50 ms): the single-process engine vs Ray with 2
   actors sharing the same concurrency.

Each Ray run includes starting its actors (about a second); Ray itself is
started once, up front, and its start time is printed apart. Prints items/s
and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from typing import Any

import aiohttp

import conveyor
from conveyor.ray import run_ray


def burn(item: int) -> int:
    """About 20-40 ms of pure-Python work on a typical core."""
    acc = item
    for i in range(300_000):
        acc = (acc * 31 + i) % 1_000_003
    return acc


class ChatCaller:
    """One aiohttp session per process, closed by `aclose()` at the end of the run."""

    def __init__(self, base_url: str) -> None:
        self.url = base_url + "/chat/completions"
        self._session: aiohttp.ClientSession | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.url = state["url"]
        self._session = None

    async def __call__(self, item: int) -> str:
        if self._session is None:
            conn = aiohttp.TCPConnector(limit=0)
            self._session = aiohttp.ClientSession(connector=conn)
        payload = {"model": "mock-gpt", "messages": [{"role": "user", "content": f"item {item}"}]}
        async with self._session.post(self.url, json=payload) as resp:
            if resp.status != 200:
                raise conveyor.RetryableError(f"HTTP {resp.status}", status_code=resp.status)
            data = await resp.json()
        return str(data["choices"][0]["message"]["content"])

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def local_http(url: str, n: int, c: int) -> conveyor.BatchReport:
    caller = ChatCaller(url)
    try:
        return await conveyor.arun(range(n), caller, concurrency=c)
    finally:
        await caller.aclose()  # Ray workers call it themselves; here it is ours to call


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(latency: float) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    code = (
        "from conveyor.mock import MockConfig, serve; "
        f"serve(MockConfig(latency={latency}), port={port}, on_ready=lambda url: None)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"http://127.0.0.1:{port}/v1"
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("the mock server did not start")


def timed(label: str, n: int, call: Any) -> float:
    t = time.perf_counter()
    report = call()
    elapsed = time.perf_counter() - t
    assert report.counts["ok"] == n, report.counts
    rate = n / elapsed
    print(f"  {label:44} {elapsed:7.2f}s {rate:10,.0f} items/s")
    return rate


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cpu-items", type=int, default=200)
    ap.add_argument("--http-items", type=int, default=20_000)
    ap.add_argument("--concurrency", type=int, default=1000)
    ap.add_argument("--latency", type=float, default=0.05)
    a = ap.parse_args()

    import ray

    print(f"python {sys.version.split()[0]}, ray {ray.__version__}, {os.cpu_count()} CPUs")
    t = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    print(f"ray.init (local, 2 CPUs): {time.perf_counter() - t:.2f}s")
    try:
        t = time.perf_counter()
        run_ray([1, 2], abs, actors=2)
        print(
            f"fixed cost of a Ray run (2 actors, 2 trivial items): {time.perf_counter() - t:.2f}s"
        )
        n = a.cpu_items
        print(f"CPU-heavy function, {n} items:")
        local = timed(
            "single process (threads, GIL-bound)",
            n,
            lambda: conveyor.run(range(n), burn, concurrency=2, retries=0),
        )
        one = timed(
            "ray, 1 actor", n, lambda: run_ray(range(n), burn, actors=1, concurrency=1, retries=0)
        )
        two = timed(
            "ray, 2 actors", n, lambda: run_ray(range(n), burn, actors=2, concurrency=2, retries=0)
        )
        print(
            f"  ratio 2 actors / 1 actor: {two / one:.2f}x   2 actors / local: {two / local:.2f}x"
        )

        server, url = start_server(a.latency)
        try:
            n, c = a.http_items, a.concurrency
            print(
                f"HTTP, {n} requests at concurrency {c}, server latency {a.latency * 1000:.0f} ms:"
            )
            local = timed("single process engine", n, lambda: asyncio.run(local_http(url, n, c)))
            remote = timed(
                "ray, 2 actors",
                n,
                lambda: run_ray(range(n), ChatCaller(url), actors=2, concurrency=c),
            )
            print(f"  ratio ray / single process: {remote / local:.2f}x")
        finally:
            server.terminate()
            server.wait(timeout=30)
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
