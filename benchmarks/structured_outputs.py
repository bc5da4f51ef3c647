"""Structured outputs: what validating every answer and re-asking the invalid ones costs.

    .venv/bin/python benchmarks/structured_outputs.py [--n 2000] [--latency 0.1]

The simulated server runs in its own process (`conveyor mock`), answering
after `--latency` seconds; `conveyor run` sends N chat requests at
concurrency 100 three ways: plain (no schema), `--schema` with every answer
valid, and `--schema` with 10% invalid first answers (5% cut-off JSON, 5%
schema violations) and `--reask 2`. For each: wall time as a ratio to the
ideal (requests sent / concurrency x latency, re-asks included), the
client's CPU per request, and the validation figures from `--report-json`.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

SCHEMA = {
    "type": "object",
    "properties": {
        "label": {"enum": ["pos", "neg", "neutral"]},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
        "topics": {"type": "array", "items": {"type": "string"}, "minItems": 1},
    },
    "required": ["label", "score", "topics"],
    "additionalProperties": False,
}
CONVEYOR = [sys.executable, "-m", "conveyor.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_up(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("the mock server did not start")


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def one_run(work: Path, n: int, latency: float, *, schema: bool, bad: float) -> dict[str, Any]:
    port = _free_port()
    mock = [
        *CONVEYOR,
        "mock",
        "--port",
        str(port),
        "--latency",
        str(latency),
        "--seed",
        "3",
        "--invalid-json-rate",
        str(bad / 2),
        "--schema-violation-rate",
        str(bad / 2),
    ]
    server = subprocess.Popen(mock, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_up(port, time.monotonic() + 30)
        out = work / f"out-{schema}-{bad}.jsonl"
        report = work / f"report-{schema}-{bad}.json"
        for stale in (out, Path(f"{out}.conveyor.db")):
            stale.unlink(missing_ok=True)
        args = [
            *CONVEYOR,
            "run",
            str(work / "in.jsonl"),
            "-o",
            str(out),
            "-q",
            "-c",
            "100",
            "--base-url",
            f"http://127.0.0.1:{port}/v1",
            "--no-preflight",
            "--report-json",
            str(report),
        ]
        if schema:
            args += ["--schema", str(work / "schema.json"), "--reask", "2"]
        env = {**os.environ, "OPENAI_API_KEY": "bench"}
        cpu0 = _children_cpu()
        t0 = time.monotonic()
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
        wall = time.monotonic() - t0
        cpu = _children_cpu() - cpu0
        if done.returncode != 0:
            raise SystemExit(done.stderr)
        data = orjson.loads(report.read_bytes())
        v = data.get("validation") or {}
        sent = data["attempts"]
        return {
            "wall": wall,
            "ideal": sent / 100 * latency,
            "cpu_ms": 1000 * cpu / sent,
            "sent": sent,
            "v": v,
        }
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--latency", type=float, default=0.1)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="conveyor-bench-schema-"))
    (work / "schema.json").write_bytes(orjson.dumps(SCHEMA))
    with (work / "in.jsonl").open("wb") as f:
        for i in range(a.n):
            body = {
                "model": "mock-gpt",
                "messages": [{"role": "user", "content": f"classify comment {i}"}],
            }
            f.write(
                orjson.dumps(
                    {
                        "custom_id": f"c{i}",
                        "method": "POST",
                        "url": "/v1/chat/completions",
                        "body": body,
                    }
                )
                + b"\n"
            )
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"structured_outputs: N={a.n}, latency {a.latency * 1000:.0f} ms, concurrency 100, "
        f"{os.cpu_count()} cpu(s), load {load}"
    )
    print(
        f"{'run':<34} {'sent':>5} {'wall s':>7} {'x ideal':>8} {'CPU ms/req':>11} "
        f"{'valid 1st':>9} {'valid end':>9} {'re-asks':>7} {'re-ask tok in/out':>18}"
    )
    runs = [
        ("plain (no schema)", False, 0.0),
        ("--schema, all valid", True, 0.0),
        ("--schema, 10% invalid, --reask 2", True, 0.1),
    ]
    for name, schema, bad in runs:
        r = one_run(work, a.n, a.latency, schema=schema, bad=bad)
        v = r["v"]
        tok = v.get("reask_tokens") or {}
        first = f"{v['valid_rate_first_try']:.1%}" if v else "-"
        end = f"{v['valid_rate_final']:.1%}" if v else "-"
        toks = f"{tok.get('input', 0)}/{tok.get('output', 0)}" if v else "-"
        print(
            f"{name:<34} {r['sent']:>5} {r['wall']:>7.2f} {r['wall'] / r['ideal']:>8.2f} "
            f"{r['cpu_ms']:>11.2f} {first:>9} {end:>9} {v.get('reasks', 0):>7} {toks:>18}"
        )
        for e in (v.get("top_errors") or [])[:3]:
            example = re.sub(r"\s+", " ", e["example"])[:70]
            print(f"    {e['count']:>5}  {e['error']}: {example}")


if __name__ == "__main__":
    main()
