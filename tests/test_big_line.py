"""A 50 MB input line costs a small multiple of its size in memory (#12, item 22).

Each run is a real `conveyor` process whose peak RSS the kernel reports when it is
reaped (`getrusage`); a run of a one-line small file is the baseline, so what is
compared is what the big line adds. Reading, parsing (orjson holds the line, its own
copy and the parsed text at once: 3x) and sending (the body and its encoding: 2x)
must stay near 3x; before this was fixed the line's bytes were also held by the
reader while it was parsed and aiohttp joined headers and body into one more copy
(5x for --dry-run, 4x for a run).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from conveyor.mock import MockServer

CONVEYOR = [sys.executable, "-m", "conveyor.cli"]
KEY = "sk-big-line"
LINE_MB = 48
# Parsing needs 3x the line; 3.5x leaves room for allocator noise, and the code of
# before (4x and 5x) fails it.
MAX_RATIO = 3.5


def write_line(path: Path, content_bytes: int) -> int:
    body = {"model": "mock-gpt", "messages": [{"role": "user", "content": "x" * content_bytes}]}
    line = orjson.dumps(
        {"custom_id": "big", "method": "POST", "url": "/v1/chat/completions", "body": body}
    )
    path.write_bytes(line + b"\n")
    return len(line)


# Measured from a small wrapper process: on Linux a child's ru_maxrss starts from its
# parent's peak at the fork (this test process holds the big line too), so the
# wrapper is the parent and reports its only child's peak.
_WRAPPER = """import resource, subprocess, sys
code = subprocess.call(sys.argv[1:], stdout=sys.stderr)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(code)
"""


def peak_rss(args: list[str], env: dict[str, str], log: Path) -> tuple[int, int]:
    """(exit code, peak RSS in bytes) of one process run to a bounded deadline."""
    with log.open("w") as err:
        done = subprocess.run([sys.executable, "-c", _WRAPPER, *args], stdout=subprocess.PIPE,
                              stderr=err, env=env, text=True, timeout=120)  # fmt: skip
    return done.returncode, int(done.stdout.split()[-1]) * 1024  # Linux reports KiB


@pytest.mark.slow  # a 50 MB line: a stress test
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss units: Linux")
def test_a_50_mb_line_costs_about_3x_its_size(
    start_mock: Callable[..., MockServer], tmp_path: Path
) -> None:
    """--dry-run and a real run against the mock each stay within 3.5x the line
    above a one-line small file's peak; the big request reaches the server whole."""
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_BASE_URL"} | {"OPENAI_API_KEY": KEY}
    small, big = tmp_path / "small.jsonl", tmp_path / "big.jsonl"
    write_line(small, 10)
    size = write_line(big, LINE_MB << 20)
    srv = start_mock(api_key=KEY, seed=3)
    peaks: dict[str, int] = {}
    for name, path in (("small", small), ("big", big)):
        code, peaks[f"dry {name}"] = peak_rss(
            [*CONVEYOR, "run", str(path), "--dry-run"], env, tmp_path / f"dry-{name}.log"
        )
        assert code == 0, (tmp_path / f"dry-{name}.log").read_text()
        out = tmp_path / f"out-{name}.jsonl"
        args = [*CONVEYOR, "run", str(path), "-o", str(out), "--base-url", srv.base_url,
                "--no-preflight", "-q"]  # fmt: skip
        code, peaks[f"run {name}"] = peak_rss(args, env, tmp_path / f"run-{name}.log")
        assert code == 0, (tmp_path / f"run-{name}.log").read_text()
        (result,) = [orjson.loads(x) for x in out.read_bytes().splitlines()]
        assert result["response"]["status_code"] == 200, result
    # The server counted the whole prompt: ~4 characters a token.
    usage = orjson.loads((tmp_path / "out-big.jsonl").read_bytes())["response"]["body"]["usage"]
    assert usage["prompt_tokens"] >= (LINE_MB << 20) // 5
    for mode in ("dry", "run"):
        added = peaks[f"{mode} big"] - peaks[f"{mode} small"]
        assert added <= MAX_RATIO * size, (
            f"{mode}: a {size / 2**20:.0f} MiB line added {added / 2**20:.0f} MiB of peak RSS "
            f"({added / size:.1f}x; at most {MAX_RATIO}x): {peaks}"
        )
