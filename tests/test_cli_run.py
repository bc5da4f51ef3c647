"""`conveyor run/demo/status/retry` as a user runs them: real processes, a real
server on loopback, kill -9 at random moments."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from conveyor.mock import MockConfig, MockServer, expected_content

CONVEYOR = [sys.executable, "-m", "conveyor.cli"]
KEY = "sk-cli-SECRET-777"


def conveyor(*args: str, env: dict[str, str] | None = None, timeout: float = 60
             ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return subprocess.run([*CONVEYOR, *args], capture_output=True, text=True, timeout=timeout,
                          env=env)  # fmt: skip


@pytest.fixture
def mock_server() -> Iterator[tuple[MockServer, str]]:
    srv = MockServer(MockConfig(api_key=KEY, latency=0.02, seed=11))
    with srv.running_in_thread() as url:
        yield srv, url


@pytest.fixture
def env() -> dict[str, str]:
    e = dict(os.environ)
    e["OPENAI_API_KEY"] = KEY
    e.pop("OPENAI_BASE_URL", None)
    return e


def make_input(path: Path, n: int) -> dict[str, dict[str, object]]:
    bodies = {}
    with path.open("wb") as f:
        for i in range(n):
            body = {"model": "mock-gpt", "messages": [{"role": "user", "content": f"q{i}"}],
                    "max_tokens": 8}  # fmt: skip
            bodies[f"id-{i}"] = body
            line = {"custom_id": f"id-{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": body}  # fmt: skip
            f.write(orjson.dumps(line) + b"\n")
    return bodies


def read_ids(out: Path) -> list[str]:
    ids = []
    for raw in out.read_bytes().splitlines():
        ids.append(orjson.loads(raw)["custom_id"])
    return ids


def test_kill_9_at_random_moments_then_resume_exactly_once(
    mock_server: tuple[MockServer, str], env: dict[str, str], tmp_path: Path
) -> None:
    """Ten kill -9s at random moments, then a resume: every custom_id is in
    the output exactly once, with the right answer."""
    srv, url = mock_server
    # ~5 s of work in all (2000 x 50 ms / 20 in flight): every kill lands mid-run.
    srv.config = MockConfig(api_key=KEY, latency=0.05, seed=11)
    bodies = make_input(tmp_path / "in.jsonl", 2000)
    out = tmp_path / "out.jsonl"
    args = [*CONVEYOR, "run", str(tmp_path / "in.jsonl"), "-o", str(out), "--base-url", url,
            "-c", "20", "--no-preflight", "-q"]  # fmt: skip
    rnd = random.Random(5)
    deadline = time.monotonic() + 60
    kills = 0
    while kills < 10 and time.monotonic() < deadline:
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(rnd.uniform(0.3, 0.8))  # a random moment, not a wait for a condition
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=30)
        assert proc.stderr is not None
        proc.stderr.close()
    assert kills >= 10
    final = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert final.returncode == 0, final.stderr
    ids = read_ids(out)
    assert len(ids) == len(set(ids)) == 2000
    for raw in out.read_bytes().splitlines()[::97]:
        line = orjson.loads(raw)
        content = line["response"]["body"]["choices"][0]["message"]["content"]
        assert content == expected_content(bodies[line["custom_id"]])
    assert srv.stats.requests >= 2000


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_flushes_and_says_how_to_resume(
    mock_server: tuple[MockServer, str], env: dict[str, str], tmp_path: Path, sig: int
) -> None:
    """SIGINT or SIGTERM: exit 130, the resume command printed, the output
    consistent with the journal; running the same command again finishes."""
    srv, url = mock_server
    srv.config = MockConfig(api_key=KEY, latency=0.05, seed=12)
    make_input(tmp_path / "in.jsonl", 1500)
    out = tmp_path / "out.jsonl"
    args = [*CONVEYOR, "run", str(tmp_path / "in.jsonl"), "-o", str(out), "--base-url", url,
            "-c", "20", "--no-preflight", "-q"]  # fmt: skip
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    for _ in range(200):  # wait until results are being written
        if out.exists() and out.stat().st_size > 0:
            break
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Resume with the same command" in err
    assert "interrupted" in err
    n_first = len(read_ids(out))
    assert 0 < n_first < 1500
    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=90)
    assert again.returncode == 0, again.stderr
    ids = read_ids(out)
    assert len(ids) == len(set(ids)) == 1500


def test_dry_run_sends_nothing_and_estimates(
    mock_server: tuple[MockServer, str], env: dict[str, str], tmp_path: Path
) -> None:
    """--dry-run: counts, invalid lines with numbers, tokens, cost, duration;
    not one request."""
    srv, url = mock_server
    make_input(tmp_path / "in.jsonl", 100)
    with (tmp_path / "in.jsonl").open("ab") as f:
        f.write(b"not json\n")
    r = conveyor("run", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "o.jsonl"),
                 "--base-url", url, "--dry-run", "--rpm", "60", env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "valid 100" in r.stdout and "invalid 1" in r.stdout
    assert "line 101:" in r.stdout
    assert "tokens:" in r.stdout and "estimated duration" in r.stdout
    assert "rpm limit" in r.stdout  # 100 requests at 60/min: the limit bounds the time
    assert srv.stats.requests == 0


def test_wrong_key_exit_3_one_clear_line(
    mock_server: tuple[MockServer, str], env: dict[str, str], tmp_path: Path
) -> None:
    """A rejected key: exit 3, a line naming the variable, not the key."""
    _, url = mock_server
    make_input(tmp_path / "in.jsonl", 500)
    env["OPENAI_API_KEY"] = "sk-bad-one"
    r = conveyor("run", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "o.jsonl"),
                 "--base-url", url, "--no-preflight", "-q", env=env)  # fmt: skip
    assert r.returncode == 3, r.stderr
    assert "OPENAI_API_KEY" in r.stderr
    assert "sk-bad-one" not in r.stderr


def test_strict_exit_2_lists_bad_lines(
    mock_server: tuple[MockServer, str], env: dict[str, str], tmp_path: Path
) -> None:
    """--strict with bad lines: exit 2, each bad line listed, nothing sent."""
    srv, url = mock_server
    make_input(tmp_path / "in.jsonl", 5)
    with (tmp_path / "in.jsonl").open("ab") as f:
        f.write(b"{bad\n")
    r = conveyor("run", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "o.jsonl"),
                 "--base-url", url, "--strict", "--no-preflight", env=env)  # fmt: skip
    assert r.returncode == 2
    assert ":6:" in r.stderr
    assert srv.stats.requests == 0


def test_failures_exit_1_then_retry_completes(
    mock_server: tuple[MockServer, str], env: dict[str, str], tmp_path: Path
) -> None:
    """Some requests fail for good (exit 1); `conveyor retry` re-runs only
    those and leaves each custom_id once in the output."""
    srv, url = mock_server
    srv.config = MockConfig(api_key=KEY, rate_500=0.3, seed=13)
    make_input(tmp_path / "in.jsonl", 200)
    out = tmp_path / "out.jsonl"
    r = conveyor("run", str(tmp_path / "in.jsonl"), "-o", str(out), "--base-url", url,
                 "--retries", "0", "--no-preflight", "-q", env=env)  # fmt: skip
    assert r.returncode == 1, r.stderr
    journal = str(out) + ".conveyor.db"
    st = json.loads(conveyor("status", journal, "--json", env=env).stdout)
    failed = st["counts"]["failed"]
    assert failed > 0 and st["done"] == 200
    srv.config = MockConfig(api_key=KEY, seed=14)
    before = srv.stats.requests
    r = conveyor("retry", journal, "-q", env=env)
    assert r.returncode == 0, r.stderr
    assert srv.stats.requests - before == failed
    ids = read_ids(out)
    assert len(ids) == len(set(ids)) == 200
    st = json.loads(conveyor("status", journal, "--json", env=env).stdout)
    assert st["counts"] == {"ok": 200}


def test_demo_runs_without_key_or_network(tmp_path: Path) -> None:
    """`conveyor demo` works on a fresh machine: summary printed, exit 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI")}
    r = conveyor("demo", "-n", "300", "--dir", str(tmp_path), "-q", env=env)
    assert r.returncode == 0, r.stderr
    assert "ok 300" in r.stderr and "failed 1" in r.stderr
    assert len(read_ids(tmp_path / "results.jsonl")) == 301


def test_help_answers_questions() -> None:
    """--help explains input, output, resume, endpoint and examples."""
    r = conveyor("run", "--help")
    for needle in ("custom_id", "Resume", "OPENAI_BASE_URL", "--rpm", "--dry-run", "Examples"):
        assert needle in r.stdout, needle
    r = conveyor("--help")
    assert "Exit codes" in r.stdout and "demo" in r.stdout


def test_bad_flag_is_a_usage_error() -> None:
    """A wrong flag or value: exit 2 with click's message."""
    r = conveyor("run", "x.jsonl", "-o", "y", "--concurrency", "0")
    assert r.returncode == 2 and "concurrency" in r.stderr


def test_export_rebuilds_a_lost_output(
    mock_server: tuple[MockServer, str], env: dict[str, str], tmp_path: Path
) -> None:
    """`conveyor export JOURNAL OUTPUT` rewrites the output from the journal,
    each custom_id once, in input order."""
    _, url = mock_server
    make_input(tmp_path / "in.jsonl", 50)
    out = tmp_path / "out.jsonl"
    r = conveyor("run", str(tmp_path / "in.jsonl"), "-o", str(out), "--base-url", url,
                 "--no-preflight", "-q", env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    original = sorted(out.read_bytes().splitlines())
    out.unlink()
    r = conveyor("export", str(out) + ".conveyor.db", str(out), env=env)
    assert r.returncode == 0, r.stderr
    assert read_ids(out) == [f"id-{i}" for i in range(50)]
    assert sorted(out.read_bytes().splitlines()) == original


def test_concurrency_auto_against_a_saturating_server(
    mock_server: tuple[MockServer, str], env: dict[str, str], tmp_path: Path
) -> None:
    """`--concurrency auto` on a server serving 8 at once: every item done,
    the limit bounded by --concurrency-max, and the report says how it moved."""
    srv, url = mock_server
    srv.config = MockConfig(api_key=KEY, capacity=8, service_time=0.02, seed=3)
    make_input(tmp_path / "in.jsonl", 300)
    out = tmp_path / "out.jsonl"
    rj = tmp_path / "report.json"
    r = conveyor("run", str(tmp_path / "in.jsonl"), "-o", str(out), "--base-url", url,
                 "--concurrency", "auto", "--concurrency-max", "40", "--no-preflight", "-q",
                 "--report-json", str(rj), env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert len(read_ids(out)) == 300
    assert srv.stats.max_in_flight <= 40
    auto = json.loads(rj.read_text())["extra"]["concurrency_auto"]
    assert 1 <= auto["final"] <= 40
    assert auto["history"][0][2] == "start"
    bad = conveyor("run", "x.jsonl", "-o", "y", "--concurrency", "fast")
    assert bad.returncode == 2 and "auto" in bad.stderr
