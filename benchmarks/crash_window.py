"""The crash window: requests re-sent per `kill -9` of `conveyor run`, next to
what was in flight when the kill landed.

    PYTHONPATH=src /work/venv/bin/python benchmarks/crash_window.py [--kills 30] [-c 50]

Runs `conveyor run` against the simulated server on loopback (in this
process, its own thread), kills it with SIGKILL at a random moment once
results are being written, resumes, and repeats; a last run finishes the
file. Every request the server received beyond one per item was sent again
because of a kill: either it was in flight (unavoidable) or its answer had
arrived but was not committed yet (the crash window). The target is
re-sent per kill <= in flight at the kill + 5. In flight is counted as the run
sees it: the run is frozen (SIGSTOP) at the moment, the server answers what it
holds, and the connections with answer bytes the run has not read are counted
(Linux /proc/net/tcp); then SIGKILL. On a loaded machine the server's own
in-flight count undercounts it (answers wait unread in the client's sockets);
it is printed too. Also prints the throughput of
one uninterrupted run at the same settings, as requests/s and as a ratio to
the ideal (concurrency / latency), so a smaller window is not bought with
speed.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from conveyor.mock import MockConfig, MockServer

CONVEYOR = [sys.executable, "-m", "conveyor.cli"]
KEY = "sk-bench-crash-window"


def write_input(path: Path, n: int) -> None:
    with path.open("wb") as f:
        for i in range(n):
            body = {"model": "mock-gpt", "messages": [{"role": "user", "content": f"q{i}"}],
                    "max_tokens": 8}  # fmt: skip
            line = {"custom_id": f"id-{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": body}  # fmt: skip
            f.write(orjson.dumps(line) + b"\n")


def unread_answers(port: int) -> int:
    """Connections to the server on `port` whose client has answer bytes it has
    not read (Linux /proc/net/tcp rx_queue; one request per keep-alive
    connection at a time, so one answer each)."""
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            remote_port = int(f[2].rsplit(":", 1)[1], 16)
            rx_queue = int(f[4].split(":")[1], 16)
            n += remote_port == port and rx_queue > 0
    return n


def count_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--kills", type=int, default=30)
    ap.add_argument("-c", "--concurrency", type=int, default=50)
    ap.add_argument("--latency", type=float, default=0.05, help="server latency, seconds")
    ap.add_argument("--items", type=int, default=0, help="default: enough for every kill")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rate = a.concurrency / a.latency
    n = a.items or int(rate * 0.6 * (a.kills + 2))
    rnd = random.Random(a.seed)
    env = dict(os.environ, OPENAI_API_KEY=KEY)
    srv = MockServer(MockConfig(api_key=KEY, latency=a.latency, seed=a.seed))
    with tempfile.TemporaryDirectory() as tmp, srv.running_in_thread() as url:
        inp, out = Path(tmp) / "in.jsonl", Path(tmp) / "out.jsonl"
        write_input(inp, n)
        args = [*CONVEYOR, "run", str(inp), "-o", str(out), "--base-url", url,
                "-c", str(a.concurrency), "--no-preflight", "-q"]  # fmt: skip
        kills, in_flight, unread = 0, [], []
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        while kills < a.kills:
            before = count_lines(out)
            proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)  # fmt: skip
            deadline = time.monotonic() + 30
            while count_lines(out) <= before and proc.poll() is None:  # results flowing
                if time.monotonic() > deadline:
                    raise SystemExit("no result written within 30 s")
                time.sleep(0.01)
            time.sleep(rnd.uniform(0.0, 0.3))  # a random moment of the run
            if proc.poll() is not None:
                break  # finished before the kill: the file is too short
            # Freeze the run (a kill at this instant, as far as it can tell), let
            # the server answer what it holds, then count the answers the run had
            # not read: those were in flight when it stopped. Every other
            # re-sent request had been read and not committed: the crash window.
            proc.send_signal(signal.SIGSTOP)
            in_flight.append(srv.stats.in_flight)
            drain = time.monotonic() + 10
            while srv.stats.in_flight and time.monotonic() < drain:
                time.sleep(0.005)
            unread.append(unread_answers(port))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        subprocess.run(args, env=env, check=True, capture_output=True)
        lines = out.read_bytes().splitlines()
        ids = {orjson.loads(x)["custom_id"] for x in lines}
        assert len(lines) == len(ids) == n, (len(lines), len(ids), n)
        resent = srv.stats.requests - n
        mean_inflight = sum(in_flight) / max(1, len(in_flight))
        per_kill = resent / max(1, kills)
        print(f"items {n}, concurrency {a.concurrency}, server latency {a.latency * 1000:.0f} ms")
        mean_unread = sum(unread) / max(1, len(unread))
        print(
            f"kills {kills}: re-sent {resent} requests = {per_kill:.1f} per kill; "
            f"in flight at the server at the kill {mean_inflight:.1f} on average "
            f"(max {max(in_flight)}): excess {per_kill - mean_inflight:+.1f} per kill"
        )
        print(f"  in flight as the run saw it (sent, answer not read: the server's plus "
              f"answers waiting unread in its sockets) {mean_unread:.1f} on average "
              f"(max {max(unread)}): excess {per_kill - mean_unread:+.1f} per kill "
              f"(target <= +5)")  # fmt: skip

        one = Path(tmp) / "one.jsonl"
        t0 = time.perf_counter()
        subprocess.run([*CONVEYOR, "run", str(inp), "-o", str(one), "--base-url", url,
                        "-c", str(a.concurrency), "--no-preflight", "-q"],
                       env=env, check=True, capture_output=True)  # fmt: skip
        wall = time.perf_counter() - t0
        print(
            f"one uninterrupted run: {n / wall:.0f} requests/s = {n / wall / rate:.2f} x the "
            f"ideal {rate:.0f}/s (concurrency / latency), {wall:.1f} s with start-up"
        )


if __name__ == "__main__":
    main()
