"""`--concurrency auto` against fixed settings on servers that queue instead of refusing.

    .venv/bin/python benchmarks/concurrency_auto.py [--seconds S] [--only SERVER ...]

Each server is `conveyor mock --capacity K --service-time S` in its own
process (started afresh for each cell): at most K requests served at once,
the rest queue, no rate-limit headers (a vLLM/Ollama-like server); "K64-deg"
also slows every request by present/128 once more than 2K are in it
(preemption). The client is `conveyor.openai.run_file` in this process, with
`concurrency="auto"` or a fixed 16 / 100 / 1000, on N requests sized for about
`--seconds` at the setting's own best rate (min(c, K) / S), so slow settings
do not take minutes.

Columns: throughput as a fraction of the server's maximum K/S over the whole
run (auto's ramp included) and steady (over the last 40% of the run), p50
and p95 latency over the unloaded latency S, failed items, auto's final
limit, and the seconds auto took to get within 10% of its final throughput
(the first 1 s bucket from which a 2 s rolling rate stays >= 0.9 of the
rate over the last 40% of the run).
Targets (issue 13): auto >= 0.95 K/S with p50 <= 1.5x unloaded on every
server, and within 5% of the best fixed setting.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from conveyor.openai import run_file

MAX_TOKENS = 16


@dataclass(frozen=True)
class Server:
    name: str
    capacity: int
    service: float
    degrade_after: int | None = None

    @property
    def best(self) -> float:
        return self.capacity / self.service


SERVERS = (
    Server("K8", 8, 0.5),
    Server("K64", 64, 0.5),
    Server("K512", 512, 1.0),
    Server("K64-deg", 64, 0.5, degrade_after=128),
)
SETTINGS: tuple[int | str, ...] = ("auto", 16, 100, 1000)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(server: Server) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    cmd = [sys.executable, "-m", "conveyor", "mock", "--port", str(port),
           "--capacity", str(server.capacity), "--service-time", str(server.service)]  # fmt: skip
    if server.degrade_after is not None:
        cmd += ["--degrade-after", str(server.degrade_after)]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(200):
        try:
            with urllib.request.urlopen(url + "/models", timeout=1):
                return proc, url
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the mock server did not start")


def _write_input(path: Path, n: int) -> None:
    with path.open("wb") as f:
        for i in range(n):
            body = {"model": "mock-gpt", "max_tokens": MAX_TOKENS,
                    "messages": [{"role": "user", "content": f"item {i}"}]}  # fmt: skip
            line = {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": body}  # fmt: skip
            f.write(orjson.dumps(line) + b"\n")


def _time_to_final(marks: list[tuple[float, int]]) -> tuple[float, float]:
    """(seconds to within 10% of the final rate, the final rate)."""
    if len(marks) < 4:
        return math.nan, math.nan
    end = marks[-1][0]
    buckets: dict[int, int] = {}
    prev = 0
    for t, done in marks:
        buckets[int(t)] = buckets.get(int(t), 0) + done - prev
        prev = done
    tail = [t for t, _ in marks if t >= 0.6 * end]
    first_tail = next(d for t, d in marks if t >= 0.6 * end)
    final = (marks[-1][1] - first_tail) / max(1e-9, end - tail[0])
    rolling = {s: (buckets.get(s, 0) + buckets.get(s - 1, 0)) / 2 for s in range(int(end) + 1)}
    last_bad = -1
    for s in range(1, int(end)):
        if rolling[s] < 0.9 * final:
            last_bad = s
    return float(last_bad + 1), final


def run_cell(server: Server, setting: int | str, seconds: float, tmp: Path) -> dict[str, Any]:
    rate = server.best if setting == "auto" else min(int(setting), server.capacity) / server.service
    n = max(200, int(rate * seconds))
    inp = tmp / f"in-{server.name}-{setting}.jsonl"
    _write_input(inp, n)
    marks: list[tuple[float, int]] = []
    t0 = time.monotonic()

    def progress(s: Any) -> None:
        marks.append((time.monotonic() - t0, s.done))

    proc, url = _start(server)
    try:
        extra: dict[str, Any] = {"concurrency": setting}
        if setting == "auto":
            extra["concurrency_max"] = 4096
        report = run_file(inp, base_url=url, api_key="sk-bench", journal=None, timeout=120.0,
                          on_progress=progress, progress_interval=0.25, **extra)  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(10)
    took, final_rate = _time_to_final(marks)
    auto = report.extra.get("concurrency_auto") or {}
    return {
        "n": n,
        "throughput": report.throughput_per_second / server.best,
        "steady": final_rate / server.best,
        "p50": report.latency_p50 / server.service,
        "p95": report.latency_p95 / server.service,
        "failed": report.total - report.counts.get("ok", 0),
        "final": auto.get("final"),
        "took": took if setting == "auto" else math.nan,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--only", nargs="*", help="server names (K8 K64 K512 K64-deg)")
    ap.add_argument("--settings", nargs="*", help="auto and/or fixed numbers")
    args = ap.parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "sk-bench")
    servers = [s for s in SERVERS if not args.only or s.name in args.only]
    print(f"{'server':8} {'setting':>7} {'N':>6} {'thru/max':>8} {'steady':>6} {'p50/unl':>7} "
          f"{'p95/unl':>7} {'failed':>6} {'limit':>5} {'t->90%':>6}")  # fmt: skip
    with tempfile.TemporaryDirectory() as d:
        for server in servers:
            chosen = [x if x == "auto" else int(x) for x in args.settings or SETTINGS]
            for setting in chosen:
                r = run_cell(server, setting, args.seconds, Path(d))
                final = "" if r["final"] is None else str(r["final"])
                took = "" if math.isnan(r["took"]) else f"{r['took']:.0f}s"
                print(f"{server.name:8} {setting!s:>7} {r['n']:>6} {r['throughput']:>8.2f} "
                      f"{r['steady']:>6.2f} "
                      f"{r['p50']:>7.2f} {r['p95']:>7.2f} {r['failed']:>6} {final:>5} "
                      f"{took:>6}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
