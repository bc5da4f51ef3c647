"""Batch mode (issue 14) against the simulated Files + Batch API, in this process.

    PYTHONPATH=src /work/venv/bin/python benchmarks/batch_mode.py [--lines N] [--poll S]

1. Limits: N lines (default 120,000), a per-file limit of 50,000 lines and an
   enqueued-token limit of half the input's prompt tokens, on the server and
   told to the client. Prints the shards (lines, tokens as a fraction of the
   limit), the lines in the output (unique), any batch the server refused
   (413 / token_limit_exceeded / failed), and the polls per batch against the
   ideal (the batch's lifetime over the poll interval, + 1).
2. Deadline: 3,000 lines in 3 batches answering 5 lines/s each (200 s of
   work), a 60 s deadline: when the run went online, when it finished, the
   lines per path and each custom_id once.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx2
import orjson

from conveyor._journal._journal import Journal
from conveyor._journal._shards import ShardStore
from conveyor.mock import MockConfig, MockServer, count_prompt_tokens
from conveyor.openai import run_file

KEY = "sk-bench"


def make_input(path: Path, n: int) -> int:
    tokens = 0
    with path.open("wb") as f:
        for i in range(n):
            content = f"question {i} about queues"
            body = {"model": "mock-gpt", "max_tokens": 8,
                    "messages": [{"role": "user", "content": content}]}  # fmt: skip
            tokens += count_prompt_tokens(body)
            line = {"custom_id": f"id-{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": body}  # fmt: skip
            f.write(orjson.dumps(line) + b"\n")
    return tokens


def server_batches(url: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = None
    for _ in range(1000):
        q = f"{url}/batches?limit=100" + (f"&after={after}" if after else "")
        page = httpx2.get(q, headers={"Authorization": f"Bearer {KEY}"}).json()
        out.extend(page["data"])
        if not page["has_more"]:
            break
        after = page["last_id"]
    return out


def unique_ids(out: Path) -> tuple[int, int]:
    ids = [orjson.loads(raw)["custom_id"] for raw in out.read_bytes().splitlines()]
    return len(ids), len(set(ids))


def limits_case(work: Path, n: int, poll: float) -> None:
    tokens = make_input(work / "in.jsonl", n)
    half = tokens // 2
    cfg = MockConfig(api_key=KEY, batch_speed=20_000, batch_max_lines=50_000,
                     batch_enqueued_tokens=half)  # fmt: skip
    srv = MockServer(cfg)
    out = work / "out.jsonl"
    with srv.running_in_thread() as url:
        t0 = time.monotonic()
        report = run_file(work / "in.jsonl", output=out, base_url=url, api_key=KEY,
                          mode="batch", poll=poll, max_enqueued_tokens=half)  # fmt: skip
        took = time.monotonic() - t0
        made = server_batches(url)
    with Journal.open_readonly(work / "out.jsonl.conveyor.db") as j:
        rows = ShardStore(j).shards()
    lines, unique = unique_ids(out)
    print(f"1. limits: {n:,} lines, {tokens:,} prompt tokens, per-file limit 50,000, "
          f"enqueued-token limit {half:,} (half), poll {poll:g}s; {took:.1f}s")  # fmt: skip
    print(f"   shards {len(rows)}: " + ", ".join(
        f"{r.lines:,} lines / {r.tokens / half:.2f} of the token limit" for r in rows))  # fmt: skip
    print(f"   output lines {lines:,}, unique custom_ids {unique:,}, ok {report.successful:,}")
    statuses = Counter(b["status"] for b in made)
    codes = Counter(e["code"] for b in made for e in ((b.get("errors") or {}).get("data") or []))
    print(f"   server batches {dict(statuses)}; refusals {dict(codes) or 'none'} "
          f"(413 / token_limit_exceeded / failed: {codes.get('token_limit_exceeded', 0)} token, "
          f"{statuses.get('failed', 0)} failed)")  # fmt: skip
    for b in sorted(made, key=lambda b: b["created_at"]):
        times = srv.stats.batch_polls.get(b["id"], [])
        gaps = [y - x for x, y in itertools.pairwise(times)]
        span = times[-1] - times[0] if len(times) > 1 else 0.0
        print(f"   batch {b['id']}: {len(times)} polls (server side) over {span:.1f}s; "
              f"shortest gap {min(gaps, default=0):.2f}s = {min(gaps, default=0) / poll:.2f} "
              f"x the interval; at most {span / poll + 1:.1f} allowed")  # fmt: skip
    del rows
    print(f"   api calls {report.extra['batch_mode']['api_calls']}")


def deadline_case(work: Path) -> None:
    make_input(work / "in.jsonl", 3000)
    srv = MockServer(MockConfig(api_key=KEY, batch_speed=5, batch_max_lines=1000))  # 3 batches
    out = work / "out.jsonl"
    with srv.running_in_thread() as url:
        t0 = time.time()
        report = run_file(work / "in.jsonl", output=out, base_url=url, api_key=KEY,
                          mode="batch", poll=1.0, deadline=60.0, concurrency=200,
                          batch_max_lines=1000)  # fmt: skip
        took = time.time() - t0
    bm = report.extra["batch_mode"]
    lines, unique = unique_ids(out)
    online_at = (bm["online_at"] - t0) if bm["online_at"] else None
    print(
        "2. deadline: 3,000 lines in 3 batches at 5 lines/s each (200 s of work), deadline "
        "60 s, concurrency 200 online"
    )
    print(f"   went online at {online_at:.1f}s, finished at {took:.1f}s "
          f"({took / 60:.2f} of the deadline)")  # fmt: skip
    print(
        f"   lines by batch {bm['lines_batch']:,}, online {bm['lines_online']:,}, "
        f"answers dropped {bm['answers_dropped']} ({bm['batch_answers_dropped']} by batch, "
        f"{bm['online_answers_dropped']} online); output {lines:,} lines, {unique:,} unique"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=120_000)
    ap.add_argument("--poll", type=float, default=1.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "a").mkdir()
        (Path(d) / "b").mkdir()
        limits_case(Path(d) / "a", args.lines, args.poll)
        deadline_case(Path(d) / "b")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
