"""`--concurrency auto` against fixed settings on servers that queue instead of refusing.

    .venv/bin/python benchmarks/concurrency_auto.py [--seconds S] [--repeat R]
        [--only SERVER ...] [--settings auto 100 ...]

Each server is `conveyor mock --capacity K --service-time S` in its own
process (started afresh for each cell): at most K requests served at once,
the rest queue, no rate-limit headers (a vLLM/Ollama-like server). "-deg"
also slows every request by present/2K once more than 2K are in it
(preemption); "-var" serves each request for S * tokens / 512 with max_tokens
drawn from 32..512 (outputs of 16x different lengths, as on a GPU server).
The client is `conveyor.openai.run_file` in this process, with
`concurrency="auto"` or a fixed number, on N requests sized for about
`--seconds` at the setting's own best rate (min(c, K) / S), so slow settings
do not take minutes. The settings of one server run interleaved, round after
round (`--repeat`), so a noisy neighbour hits them alike.

Columns: throughput over the whole run (auto's ramp included) and steady
(over the last 40% of the run before the input ran out: after that in flight
only drains) as a fraction of the server model's ideal
K / mean service time (from the mock's K and S, not from the client), p50
and p95 latency over the unloaded latency (the mean service time), failed
items, auto's final limit, the seconds auto took to reach a limit >= K, and
to get within 10% of its final throughput (the first 1 s bucket from which a
rolling rate over max(2 s, two unloaded latencies) stays >= 0.9 of the
steady rate).
The verdict per server compares auto with fixed 100 (medians over rounds):
"not worse" when its throughput is >= 0.95 of fixed 100's and its p50 at
most 1.1 times fixed 100's with no more failures.
Targets (issue 13): auto >= 0.95 of ideal with p50 <= 1.5x unloaded on every
server, and within 5% of the best fixed setting; the last lines check them
(the throughput target against the steady rate: over the whole run a ramp of
log2(K / 16) round trips is paid, 5 x 3 s of a 20 s run at K = 512, S = 3;
the comparison with the best fixed setting over the whole run). Beside it, the
bound the server model puts on that comparison for any controller that starts
at 16 in flight and learns nothing before the first answer (`Server.bound`):
about 0.89 at K = 512, S = 3, where the first 3 s run 16 of 512 slots.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from conveyor._core._congestion import START
from conveyor.openai import run_file

MAX_TOKENS = 16
LONGEST = 512  # --completion-tokens of the "-var" servers
LENGTHS = (32, 64, 128, 256, 512)  # their max_tokens, drawn in turn


@dataclass(frozen=True)
class Server:
    name: str
    capacity: int
    service: float
    degrade_after: int | None = None
    varied: bool = False

    @property
    def unloaded(self) -> float:
        """The mean service time: the latency of a request that never queues."""
        if not self.varied:
            return self.service
        return self.service * statistics.fmean(LENGTHS) / LONGEST

    @property
    def best(self) -> float:
        return self.capacity / self.unloaded

    @property
    def first_answer(self) -> float:
        """The soonest any answer can come back: before it, a controller knows
        nothing it did not know at the start (the shortest output on "-var")."""
        return self.service * min(LENGTHS) / LONGEST if self.varied else self.service

    def bound(self, start: int, setting: int, n: int, throughput: float) -> float:
        """The best whole-run throughput, as a share of fixed `setting`'s, that any
        controller starting at `start` in flight can reach on this server.

        From the server model alone: until the first answer nothing can be learned,
        so for `first_answer` seconds `min(setting, K) - min(start, K)` of the K
        slots the fixed setting keeps busy stay idle; the server serves K
        slot-seconds per second, so that is at least `idle * first_answer / K`
        seconds more than the fixed setting's own time over the same N (its
        whole-run `throughput` is a share of the model's K / S).
        """
        idle = max(0, min(setting, self.capacity) - min(start, self.capacity))
        took = n / (throughput * self.best)
        return took / (took + idle * self.first_answer / self.capacity)


SERVERS = (
    Server("K8", 8, 0.5),
    Server("K64", 64, 0.5),
    Server("K512", 512, 3.0),
    Server("K8-deg", 8, 0.5, degrade_after=16),
    Server("K64-deg", 64, 0.5, degrade_after=128),
    Server("K8-var", 8, 1.0, varied=True),
    Server("K64-var", 64, 1.0, varied=True),
    Server("K512-var", 512, 8.0, varied=True),
    Server("K64-deg-var", 64, 1.0, degrade_after=128, varied=True),
)
SETTINGS: tuple[int | str, ...] = ("auto", 100)


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
    if server.varied:
        cmd += ["--scale-by-tokens", "--completion-tokens", str(LONGEST)]
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


def _write_input(path: Path, n: int, varied: bool) -> None:
    with path.open("wb") as f:
        for i in range(n):
            tokens = LENGTHS[i * 7 % len(LENGTHS)] if varied else MAX_TOKENS
            body = {"model": "mock-gpt", "max_tokens": tokens,
                    "messages": [{"role": "user", "content": f"item {i}"}]}  # fmt: skip
            line = {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": body}  # fmt: skip
            f.write(orjson.dumps(line) + b"\n")


def _time_to_final(
    marks: list[tuple[float, int, int, int]], n: int, rtt: float
) -> tuple[float, float]:
    """(seconds to within 10% of the final rate, the final rate).

    The run is cut where the input ran out (every item admitted: from there
    in flight only drains, for up to a service time, whatever the setting),
    unless that was in its first half (a setting above N: all sent at once);
    the final rate is that over the last 40% before the cut; the time is the
    first 1 s bucket from which a rolling rate over max(2 s, 2 round trips)
    stays >= 0.9 of it (a server of S = 3 s answers in waves 3 s apart)."""
    if len(marks) < 4:
        return math.nan, math.nan
    end = next((t for t, done, _, fl in marks if done + fl >= n), marks[-1][0])
    if end >= 0.5 * marks[-1][0]:  # else all were admitted at once (fixed 1000 on K8)
        marks = [m for m in marks if m[0] <= end] or marks
    end = marks[-1][0]
    buckets: dict[int, int] = {}
    prev = 0
    for t, done, _, _ in marks:
        buckets[int(t)] = buckets.get(int(t), 0) + done - prev
        prev = done
    tail = [m for m in marks if m[0] >= 0.6 * end]
    if len(tail) < 2 or tail[-1][0] <= tail[0][0]:
        return math.nan, math.nan
    final = (tail[-1][1] - tail[0][1]) / (tail[-1][0] - tail[0][0])
    width = max(2, math.ceil(2 * rtt))
    last_bad = -1
    for s in range(width - 1, int(end)):
        rolling = sum(buckets.get(s - i, 0) for i in range(width)) / width
        if rolling < 0.9 * final:
            last_bad = s
    return float(last_bad + 1), final


def run_cell(server: Server, setting: int | str, seconds: float, tmp: Path) -> dict[str, Any]:
    rate = (
        server.best if setting == "auto" else min(int(setting), server.capacity) / server.unloaded
    )
    n = max(200, int(rate * seconds))
    inp = tmp / f"in-{server.name}-{setting}.jsonl"
    _write_input(inp, n, server.varied)
    marks: list[tuple[float, int, int, int]] = []

    def progress(s: Any) -> None:
        # The run's own clock: the server's start-up is not the controller's ramp.
        marks.append((s.elapsed, s.done, s.concurrency_limit, s.in_flight))

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
    took, final_rate = _time_to_final(marks, n, server.unloaded)
    knee = next((t for t, _, limit, _ in marks if limit >= server.capacity), math.nan)
    auto = report.extra.get("concurrency_auto") or {}
    return {
        "n": n,
        "throughput": report.throughput_per_second / server.best,
        "steady": final_rate / server.best,
        "p50": report.latency_p50 / server.unloaded,
        "p95": report.latency_p95 / server.unloaded,
        "failed": report.total - report.counts.get("ok", 0),
        "final": auto.get("final"),
        "knee": knee if setting == "auto" else math.nan,
        "took": took if setting == "auto" else math.nan,
    }


def _row(server: str, setting: object, r: dict[str, Any]) -> str:
    final = "" if r["final"] is None else str(r["final"])
    knee = "" if math.isnan(r["knee"]) else f"{r['knee']:.1f}s"
    took = "" if math.isnan(r["took"]) else f"{r['took']:.0f}s"
    return (f"{server:11} {setting!s:>7} {r['n']:>6} {r['throughput']:>8.2f} {r['steady']:>6.2f} "
            f"{r['p50']:>7.2f} {r['p95']:>7.2f} {r['failed']:>6} {final:>5} {knee:>6} "
            f"{took:>6}")  # fmt: skip


def _median(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in rows[0]:
        values = [r[key] for r in rows if r[key] is not None]
        if not values:
            out[key] = None
        elif all(isinstance(v, int) for v in values):
            out[key] = int(statistics.median(values))
        else:
            out[key] = statistics.median(values)
    return out


def verdict(auto: dict[str, Any], fixed: dict[str, Any]) -> str:
    """Auto against fixed 100 on one server (see the module doc)."""
    worse = []
    if auto["throughput"] < 0.95 * fixed["throughput"]:
        worse.append(f"throughput {auto['throughput'] / fixed['throughput']:.2f}x")
    if auto["p50"] > 1.1 * fixed["p50"]:
        worse.append(f"p50 {auto['p50'] / fixed['p50']:.2f}x")
    if auto["failed"] > fixed["failed"]:
        worse.append(f"{auto['failed']} failed")
    if worse:
        return "WORSE: " + ", ".join(worse)
    return (f"not worse: throughput {auto['throughput'] / fixed['throughput']:.2f}x, "
            f"p50 {auto['p50'] / fixed['p50']:.2f}x of fixed 100")  # fmt: skip


def targets(server: Server, auto: dict[str, Any], fixed: dict[int, dict[str, Any]]) -> str:
    """Auto against the issue's targets and the best fixed setting (by
    throughput over the run) on one server."""
    out = [
        f"steady {auto['steady']:.2f} {'>=' if auto['steady'] >= 0.95 else '<'} 0.95",
        f"p50 {auto['p50']:.2f}x {'<=' if auto['p50'] <= 1.5 else '>'} 1.5x",
    ]
    if fixed:
        best = max(fixed, key=lambda c: fixed[c]["throughput"])
        share = auto["throughput"] / fixed[best]["throughput"]
        out.append(f"{share:.2f}x best fixed ({best}) {'ok' if share >= 0.95 else 'WORSE'}")
        bound = server.bound(START, best, fixed[best]["n"], fixed[best]["throughput"])
        out.append(f"bound for a start at {START}: {bound:.2f}x, auto {share / bound:.2f} of it")
    return ", ".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument(
        "--only", nargs="*", help="server names (" + " ".join(s.name for s in SERVERS) + ")"
    )
    ap.add_argument("--settings", nargs="*", help="auto and/or fixed numbers (default: auto 100)")
    args = ap.parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "sk-bench")
    servers = [s for s in SERVERS if not args.only or s.name in args.only]
    chosen = [x if x == "auto" else int(x) for x in args.settings or SETTINGS]
    head = (f"{'server':11} {'setting':>7} {'N':>6} {'thru/max':>8} {'steady':>6} {'p50/unl':>7} "
            f"{'p95/unl':>7} {'failed':>6} {'limit':>5} {'t->K':>6} {'t->90%':>6}")  # fmt: skip
    print(head, flush=True)
    verdicts: list[str] = []
    goals: list[str] = []
    with tempfile.TemporaryDirectory() as d:
        for server in servers:
            cells: dict[object, list[dict[str, Any]]] = {x: [] for x in chosen}
            for round_ in range(args.repeat):
                for setting in chosen if round_ % 2 == 0 else chosen[::-1]:
                    r = run_cell(server, setting, args.seconds, Path(d))
                    cells[setting].append(r)
                    print(_row(server.name, setting, r), flush=True)
            if args.repeat > 1:
                for setting in chosen:
                    print(_row(server.name, f"med:{setting}", _median(cells[setting])), flush=True)
            if "auto" in cells and 100 in cells:
                v = verdict(_median(cells["auto"]), _median(cells[100]))
                verdicts.append(f"{server.name:11} {v}")
                print(f"{server.name:11} auto vs 100: {v}", flush=True)
            if "auto" in cells:
                fixed = {c: _median(cells[c]) for c in chosen if isinstance(c, int)}
                goals.append(f"{server.name:11} {targets(server, _median(cells['auto']), fixed)}")
    print("\nauto against fixed 100 (medians):")
    for line in verdicts:
        print(line)
    print("\nauto against the targets (steady, p50) and the best fixed setting (medians):")
    for line in goals:
        print(line)


if __name__ == "__main__":
    main()
