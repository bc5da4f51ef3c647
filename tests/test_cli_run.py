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
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from _procs import cli_env
from conveyor.mock import MockConfig, MockServer, expected_content

CONVEYOR = [sys.executable, "-m", "conveyor.cli"]
KEY = "sk-cli-SECRET-777"


def conveyor(*args: str, env: dict[str, str] | None = None, timeout: float = 60
             ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return subprocess.run([*CONVEYOR, *args], capture_output=True, text=True, timeout=timeout,
                          env=env)  # fmt: skip


@pytest.fixture
def mock_server(start_mock: Callable[..., MockServer]) -> tuple[MockServer, str]:
    srv = start_mock(api_key=KEY, latency=0.02, seed=11)
    return srv, srv.base_url


@pytest.fixture
def env() -> dict[str, str]:
    return cli_env(KEY)


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


@pytest.mark.slow  # stress; the default run keeps test_sink's and test_batchmode's kill -9 tests
def test_kill_9_at_random_moments_then_resume_exactly_once(
    mock_server: tuple[MockServer, str], env: dict[str, str], tmp_path: Path
) -> None:
    """Six kill -9s at random moments (thirty in test_stress, marked slow), then
    a resume: every custom_id is in the output exactly once, with the right answer."""
    srv, url = mock_server
    # ~3 s of work in all (2000 x 30 ms / 20 in flight): every kill lands mid-run.
    srv.config = MockConfig(api_key=KEY, latency=0.03, seed=11)
    bodies = make_input(tmp_path / "in.jsonl", 2000)
    out = tmp_path / "out.jsonl"
    args = [*CONVEYOR, "run", str(tmp_path / "in.jsonl"), "-o", str(out), "--base-url", url,
            "-c", "20", "--no-preflight", "-q"]  # fmt: skip
    rnd = random.Random(5)
    deadline = time.monotonic() + 60
    kills = 0
    while kills < 6 and time.monotonic() < deadline:
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(rnd.uniform(0.3, 0.8))  # a random moment, not a wait for a condition
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=30)
        assert proc.stderr is not None
        proc.stderr.close()
    assert kills >= 6
    final = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert final.returncode == 0, final.stderr
    ids = read_ids(out)
    assert len(ids) == len(set(ids)) == 2000
    for raw in out.read_bytes().splitlines()[::97]:
        line = orjson.loads(raw)
        content = line["response"]["body"]["choices"][0]["message"]["content"]
        assert content == expected_content(bodies[line["custom_id"]])
    assert srv.stats.requests >= 2000


# SIGTERM takes the same path as SIGINT: slow, the default run keeps SIGINT.
@pytest.mark.parametrize(
    "sig", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)]
)
def test_ctrl_c_flushes_and_says_how_to_resume(
    mock_server: tuple[MockServer, str], env: dict[str, str], tmp_path: Path, sig: int
) -> None:
    """SIGINT or SIGTERM: exit 130, the resume command printed, the output
    consistent with the journal; running the same command again finishes."""
    srv, url = mock_server
    srv.config = MockConfig(api_key=KEY, latency=0.02, seed=12)
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
    assert f"{tmp_path / 'in.jsonl'}:101: not valid JSON" in r.stdout  # file and line
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


def test_endpoint_failing_every_request_stops_then_resumes(
    mock_server: tuple[MockServer, str], env: dict[str, str], tmp_path: Path
) -> None:
    """Every POST answered 500: the run ends (exit 3, a clear fatal line, the
    breaker's opening logged) in bounded time, and a rerun against a healthy
    server completes every id once."""
    srv, url = mock_server
    srv.config = MockConfig(api_key=KEY, rate_500=1.0, seed=3)
    make_input(tmp_path / "in.jsonl", 40)
    out = tmp_path / "out.jsonl"
    t = time.monotonic()
    r = conveyor("run", str(tmp_path / "in.jsonl"), "-o", str(out), "--base-url", url,
                 "--retries", "20", "--give-up", "3", "--no-preflight", "-c", "20",
                 env=env, timeout=60)  # fmt: skip
    assert time.monotonic() - t < 30
    assert r.returncode == 3, r.stderr
    assert "every request failed" in r.stderr
    assert "circuit breaker open" in r.stderr
    srv.config = MockConfig(api_key=KEY, seed=4)
    r = conveyor("run", str(tmp_path / "in.jsonl"), "-o", str(out), "--base-url", url,
                 "--no-preflight", "-q", env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    ids = read_ids(out)
    assert len(ids) == len(set(ids)) == 40


def test_kill_9_during_retry_then_retry_again_exactly_once(
    mock_server: tuple[MockServer, str], env: dict[str, str], tmp_path: Path
) -> None:
    """`kill -9` of `conveyor retry` mid-run: the next `retry` picks up what
    the killed one left pending, and the output holds each id exactly once."""
    srv, url = mock_server
    srv.config = MockConfig(api_key=KEY, rate_500=0.5, seed=13)
    make_input(tmp_path / "in.jsonl", 200)
    out = tmp_path / "out.jsonl"
    r = conveyor("run", str(tmp_path / "in.jsonl"), "-o", str(out), "--base-url", url,
                 "--retries", "0", "--no-preflight", "-q", env=env)  # fmt: skip
    assert r.returncode == 1, r.stderr
    journal = str(out) + ".conveyor.db"
    srv.config = MockConfig(api_key=KEY, latency=0.2, seed=14)
    before = srv.stats.requests
    proc = subprocess.Popen([*CONVEYOR, "retry", journal, "-q", "--concurrency", "4"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 30
    while srv.stats.requests - before < 12 and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    srv.config = MockConfig(api_key=KEY, seed=15)
    r = conveyor("retry", journal, "-q", env=env)
    assert r.returncode == 0, r.stderr
    assert "nothing to retry" not in r.stderr
    st = json.loads(conveyor("status", journal, "--json", env=env).stdout)
    assert st["counts"] == {"ok": 200}
    ids = read_ids(out)
    assert len(ids) == len(set(ids)) == 200


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("cause", ["401", "unreachable"])
def test_fatal_stop_then_rerun_completes_every_item(
    mock_server: tuple[MockServer, str], env: dict[str, str], tmp_path: Path, cause: str
) -> None:
    """A 401 or an unreachable endpoint stops the run (exit 3); the item that
    triggered it is not stored as failed, so the same command run again
    completes every item and exits 0, each id once and ok."""
    _, url = mock_server
    make_input(tmp_path / "in.jsonl", 30)
    out = tmp_path / "out.jsonl"
    bad_env = dict(env)
    bad_url = url
    if cause == "401":
        bad_env["OPENAI_API_KEY"] = "sk-bad-one"
    else:
        bad_url = f"http://127.0.0.1:{_free_port()}/v1"
    r = conveyor("run", str(tmp_path / "in.jsonl"), "-o", str(out), "--base-url", bad_url,
                 "--no-preflight", "-q", "--retries", "0", env=bad_env)  # fmt: skip
    assert r.returncode == 3, r.stderr
    journal = str(out) + ".conveyor.db"
    st = json.loads(conveyor("status", journal, "--json", env=env).stdout)
    assert "failed" not in st["counts"], st
    if cause == "401":
        r = conveyor("run", str(tmp_path / "in.jsonl"), "-o", str(out), "--base-url", url,
                     "--no-preflight", "-q", env=env)  # fmt: skip
    else:  # the same command, once the server is up
        port = int(bad_url.rsplit(":", 1)[1].split("/")[0])
        with MockServer(MockConfig(api_key=KEY), port=port).running_in_thread():
            r = conveyor("run", str(tmp_path / "in.jsonl"), "-o", str(out), "--base-url",
                         bad_url, "--no-preflight", "-q", env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    assert sorted(row["custom_id"] for row in rows) == sorted(f"id-{i}" for i in range(30))
    assert all(row["error"] is None for row in rows)


def test_rejected_key_costs_one_request(
    mock_server: tuple[MockServer, str], env: dict[str, str], tmp_path: Path
) -> None:
    """At -c 500 a rejected key is found by the probe: one request, not 500."""
    srv, url = mock_server
    make_input(tmp_path / "in.jsonl", 1000)
    env["OPENAI_API_KEY"] = "sk-bad-one"
    r = conveyor("run", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "o.jsonl"),
                 "--base-url", url, "--no-preflight", "-q", "-c", "500", env=env)  # fmt: skip
    assert r.returncode == 3, r.stderr
    assert srv.stats.requests == 1


@pytest.fixture
def bad_200_server() -> Iterator[str]:
    """A real loopback server answering 200 with bodies that are not a result."""
    import asyncio
    import threading

    from aiohttp import web

    bodies = {
        "html": (b"<html><body>Welcome to the proxy</body></html>", "text/html"),
        "empty": (b"", "application/json"),
        "error": (
            b'{"error": {"message": "model crashed", "type": "server_error"}}',
            "application/json",
        ),
    }

    async def handle(request: web.Request) -> web.Response:
        body = await request.json()
        kind = body["messages"][0]["content"]
        if kind in bodies:
            data, ctype = bodies[kind]
            return web.Response(body=data, content_type=ctype.split(";")[0])
        return web.json_response({"id": "x", "object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"},
             "finish_reason": "stop"}], "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                                                  "total_tokens": 2}})  # fmt: skip

    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_a_200_that_is_not_a_result_is_a_failure(
    bad_200_server: str, env: dict[str, str], tmp_path: Path
) -> None:
    """A 200 whose body is HTML, empty or `{"error": ...}` is not success: those
    items fail (exit 1) with a line saying why; the good one is ok."""
    inp = tmp_path / "in.jsonl"
    with inp.open("wb") as f:
        for kind in ("html", "empty", "error", "good"):
            f.write(orjson.dumps({"custom_id": kind, "method": "POST",
                                  "url": "/v1/chat/completions",
                                  "body": {"model": "m", "messages": [
                                      {"role": "user", "content": kind}]}}) + b"\n")  # fmt: skip
    out = tmp_path / "out.jsonl"
    r = conveyor("run", str(inp), "-o", str(out), "--base-url", bad_200_server, "--retries", "1",
                 "--no-preflight", "-q", env=env)  # fmt: skip
    assert r.returncode == 1, r.stderr
    rows = {row["custom_id"]: row for row in map(orjson.loads, out.read_bytes().splitlines())}
    assert rows["good"]["error"] is None
    for kind in ("html", "empty", "error"):
        assert rows[kind]["error"] is not None, rows[kind]


@pytest.mark.parametrize("force", [False, True])
def test_output_equal_to_input_is_refused(
    mock_server: tuple[MockServer, str], env: dict[str, str], tmp_path: Path, force: bool
) -> None:
    """`-o` naming the input file (even via another path, even with --force)
    is refused with exit 2; the input is untouched and nothing is sent."""
    srv, url = mock_server
    inp = tmp_path / "a.jsonl"
    make_input(inp, 5)
    before = inp.read_bytes()
    (tmp_path / "sub").mkdir()
    same = tmp_path / "sub" / ".." / "a.jsonl"
    flags = ["--force"] if force else []
    r = conveyor("run", str(inp), "-o", str(same), "--base-url", url, "--no-preflight", "-q",
                 *flags, env=env)  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "input" in r.stderr
    assert inp.read_bytes() == before
    assert srv.stats.requests == 0


def test_custom_id_like_a_bad_line_key_does_not_collide(
    mock_server: tuple[MockServer, str], env: dict[str, str], tmp_path: Path
) -> None:
    """A valid custom_id `line:2` and a bad line 2 each get their own result."""
    _, url = mock_server
    inp = tmp_path / "in.jsonl"
    good = {
        "custom_id": "line:2",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}]},
    }
    inp.write_bytes(orjson.dumps(good) + b"\n{not json\n")  # fmt: skip
    out = tmp_path / "out.jsonl"
    r = conveyor("run", str(inp), "-o", str(out), "--base-url", url, "--no-preflight", "-q",
                 env=env)  # fmt: skip
    assert r.returncode == 1, r.stderr
    rows = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    assert len(rows) == 2, rows
    ok = [row for row in rows if row["custom_id"] == "line:2"]
    assert len(ok) == 1 and ok[0]["response"]["status_code"] == 200
    assert any(row["error"] and row["error"].get("line") == 2 for row in rows)


def test_rerun_of_a_finished_run_with_failures_exits_1(
    mock_server: tuple[MockServer, str], env: dict[str, str], tmp_path: Path
) -> None:
    """Running a finished run again sends nothing, but its output still holds
    failed lines: exit 1 and a hint to `conveyor retry`, not 0."""
    srv, url = mock_server
    srv.config = MockConfig(api_key=KEY, rate_500=0.3, seed=13)
    make_input(tmp_path / "in.jsonl", 50)
    out = tmp_path / "out.jsonl"
    args = ["run", str(tmp_path / "in.jsonl"), "-o", str(out), "--base-url", url, "--retries",
            "0", "--no-preflight", "-q"]  # fmt: skip
    assert conveyor(*args, env=env).returncode == 1
    before = srv.stats.requests
    r = conveyor(*args, env=env)
    assert srv.stats.requests == before
    assert r.returncode == 1, r.stderr
    assert "conveyor retry" in r.stderr


def test_disk_full_is_a_stop_exit_3(
    mock_server: tuple[MockServer, str], env: dict[str, str], tmp_path: Path
) -> None:
    """Disk full (writes to /dev/full fail with ENOSPC) exits 3, not 2 (which
    means "nothing sent"), with a line saying how to resume."""
    _, url = mock_server
    make_input(tmp_path / "in.jsonl", 3)
    r = conveyor("run", str(tmp_path / "in.jsonl"), "-o", "/dev/full", "--journal",
                 str(tmp_path / "j.db"), "--base-url", url, "--no-preflight", "-q",
                 env=env)  # fmt: skip
    assert r.returncode == 3, r.stderr
    assert "disk full" in r.stderr


def test_resume_hint_hides_header_values(
    mock_server: tuple[MockServer, str], env: dict[str, str], tmp_path: Path
) -> None:
    """The Ctrl+C resume hint never prints a -H header's value (a key)."""
    srv, url = mock_server
    srv.config = MockConfig(api_key=KEY, latency=0.05, seed=12)
    make_input(tmp_path / "in.jsonl", 1500)
    out = tmp_path / "out.jsonl"
    args = [*CONVEYOR, "run", str(tmp_path / "in.jsonl"), "-o", str(out), "--base-url", url,
            "-c", "20", "--no-preflight", "-q", "-H", "api-key: sk-HEADER-SECRET-1",
            "--header=X-Token: sk-HEADER-SECRET-2"]  # fmt: skip
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    for _ in range(200):
        if out.exists() and out.stat().st_size > 0:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Resume with the same command" in err
    assert "sk-HEADER-SECRET" not in err
    assert "api-key:" in err


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


def test_monitor_gauges_and_a_live_limit_on_the_command_line(
    mock_server: tuple[MockServer, str], env: dict[str, str], tmp_path: Path
) -> None:
    """`--monitor --gauge NAME=MODULE:FUNC` puts memory, CPU and the gauge in the report
    JSON (and the summary says the GPU was not sampled here); `--resource-max NAME=MAX`
    over it stops the run (exit 3, says which limit); the same command without the
    limit resumes and every custom_id is written once."""
    _srv, url = mock_server
    (tmp_path / "mygauges.py").write_text("def pool_in_use():\n    return 9\n")
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    make_input(tmp_path / "in.jsonl", 40)
    out = tmp_path / "out.jsonl"
    rj = tmp_path / "report.json"
    base = ["run", str(tmp_path / "in.jsonl"), "-o", str(out), "--base-url", url,
            "--no-preflight", "-q", "--gauge", "pool=mygauges:pool_in_use"]  # fmt: skip
    stopped = conveyor(*base, "--resource-max", "pool=8", env=env)
    assert stopped.returncode == 3, stopped.stderr
    assert "resource limit exceeded: pool = 9 > 8" in stopped.stderr
    again = conveyor(*base, "--monitor-interval", "0.1", "--report-json", str(rj), env=env)
    assert again.returncode == 0, again.stderr
    assert sorted(read_ids(out)) == sorted(f"id-{i}" for i in range(40))
    res = json.loads(rj.read_text())["extra"]["resources"]
    assert res["metrics"]["pool"]["max"] == 9
    assert res["metrics"]["process_rss_mb"]["max"] > 1
    assert "not sampled (gpu)" in again.stderr
    fresh = [*base[:3], str(tmp_path / "out2.jsonl"), *base[4:]]
    floor = conveyor(*fresh, "--resource-min", "pool=10", env=env)
    assert floor.returncode == 3 and "pool = 9 < 10" in floor.stderr
    bad = conveyor(*base, "--resource-max", "pool", env=env)
    assert bad.returncode == 2 and "NAME=VALUE" in bad.stderr


def test_two_runs_on_one_output_with_different_journals_refuse(
    mock_server: tuple[MockServer, str], env: dict[str, str], tmp_path: Path
) -> None:
    """Same -o, different --journal, started 0.2 s apart: one run writes, the
    other exits 2 before sending anything, naming the first run's journal and
    what to do; the output holds each id once (#12.5)."""
    srv, url = mock_server
    srv.config = MockConfig(api_key=KEY, latency=0.05, seed=13)
    make_input(tmp_path / "in.jsonl", 300)
    out = tmp_path / "out.jsonl"
    procs = []
    for name in ("a", "b"):
        args = [*CONVEYOR, "run", str(tmp_path / "in.jsonl"), "-o", str(out), "--base-url", url,
                "-c", "10", "--no-preflight", "-q",
                "--journal", str(tmp_path / f"{name}.db")]  # fmt: skip
        procs.append(subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True))  # fmt: skip
        time.sleep(0.2)  # the gap between the two starts
    errs = [p.communicate(timeout=60)[1] for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], errs
    winner = "ab"[[p.returncode for p in procs].index(0)]
    loser = errs["ab".index(winner) ^ 1]
    assert "being written by another conveyor run" in loser
    assert f"{winner}.db" in loser and "Wait for that run to finish" in loser
    ids = read_ids(out)
    assert len(ids) == len(set(ids)) == 300


@pytest.mark.parametrize("name", ["-", "/dev/stdin"])
def test_stdin_is_an_input_and_resumes(
    mock_server: tuple[MockServer, str], env: dict[str, str], tmp_path: Path, name: str
) -> None:
    """`cat in.jsonl | conveyor run - -o out` (or /dev/stdin, a pipe) runs
    every line, preflight included; the same pipe again resumes: nothing is
    sent twice (#12.13)."""
    srv, url = mock_server
    make_input(tmp_path / "in.jsonl", 40)
    data = (tmp_path / "in.jsonl").read_bytes()
    out = tmp_path / "out.jsonl"
    args = [*CONVEYOR, "run", name, "-o", str(out), "--base-url", url, "-q"]
    first = subprocess.run(args, input=data, env=env, capture_output=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert sorted(read_ids(out)) == sorted(f"id-{i}" for i in range(40))
    sent = srv.stats.by_path["/v1/chat/completions"]
    again = subprocess.run(args, input=data, env=env, capture_output=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert srv.stats.by_path["/v1/chat/completions"] == sent
    assert len(read_ids(out)) == 40


def test_a_fifo_is_an_input_and_preflight_does_not_read_it(
    mock_server: tuple[MockServer, str], env: dict[str, str], tmp_path: Path
) -> None:
    """A named pipe (what `<(...)` gives) is read once, as the run's input:
    preflight does not consume or block on it (#12.13)."""
    _, url = mock_server
    make_input(tmp_path / "in.jsonl", 30)
    fifo = tmp_path / "requests.fifo"
    os.mkfifo(fifo)
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen([*CONVEYOR, "run", str(fifo), "-o", str(out), "--base-url", url, "-q"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        with fifo.open("wb") as w:  # blocks until conveyor opens it for reading
            w.write((tmp_path / "in.jsonl").read_bytes())
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert len(set(read_ids(out))) == 30


def test_a_device_that_never_ends_is_refused_at_once(env: dict[str, str], tmp_path: Path) -> None:
    """/dev/zero is neither a file nor a pipe: exit 2 with what to give instead,
    instead of hanging (#12.13)."""
    r = conveyor("run", "/dev/zero", "-o", str(tmp_path / "o.jsonl"), "--base-url",
                 "http://127.0.0.1:9/v1", env=env, timeout=30)  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "is a device" in r.stderr and "- for stdin" in r.stderr


def test_truncated_bodies_are_retried_not_a_stop(
    mock_server: tuple[MockServer, str], env: dict[str, str], tmp_path: Path
) -> None:
    """Every answer is cut off halfway through its body: that is a server that
    answers badly, not one that cannot be reached. Each item fails after its
    attempts with a message saying the body was cut off; the run is not
    stopped as "cannot reach ... is the server running?" (#12.16)."""
    srv, url = mock_server
    srv.config = MockConfig(api_key=KEY, rate_truncate=1.0, seed=16)
    make_input(tmp_path / "in.jsonl", 4)  # 8 attempts: below the breaker's threshold
    out = tmp_path / "out.jsonl"
    r = conveyor("run", str(tmp_path / "in.jsonl"), "-o", str(out), "--base-url", url,
                 "--retries", "1", "--no-preflight", "-q", env=env)  # fmt: skip
    assert "cannot reach" not in r.stderr and "is the server running" not in r.stderr
    assert r.returncode == 1, r.stderr
    lines = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    assert len(lines) == 4
    assert all("cut off" in line["error"]["message"] for line in lines), lines[0]
    assert srv.stats.faults["truncate"] == 8  # two attempts each


def test_a_deeply_nested_line_in_dry_run_and_strict(env: dict[str, str], tmp_path: Path) -> None:
    """A line nested 1,000 deep: --dry-run reports it as bad line 2 (no
    RecursionError traceback); --strict refuses the file naming line 2 (#12.17)."""
    make_input(tmp_path / "in.jsonl", 3)
    lines = (tmp_path / "in.jsonl").read_text().splitlines()
    deep = "[" * 1000 + "]" * 1000
    lines.insert(1, '{"custom_id": "deep", "method": "POST", "url": "/v1/chat/completions", '
                    f'"body": {{"model": "mock-gpt", "messages": {deep}}}}}')  # fmt: skip
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    dry = conveyor("run", str(tmp_path / "in.jsonl"), "--dry-run", env=env)
    assert "Traceback" not in dry.stderr and "RecursionError" not in dry.stderr, dry.stderr
    assert dry.returncode == 0, dry.stderr
    assert "nested more than" in dry.stdout and "2" in dry.stdout
    strict = conveyor("run", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "o.jsonl"),
                      "--strict", "--no-preflight", "--base-url", "http://127.0.0.1:9/v1",
                      env=env)  # fmt: skip
    assert strict.returncode == 2, strict.stderr
    assert "in.jsonl:2: JSON nested more than" in strict.stderr


def test_preflight_sends_the_h_headers_azure_api_key(
    mock_server: tuple[MockServer, str], env: dict[str, str], tmp_path: Path
) -> None:
    """The key in an -H header (Azure's `api-key`) with no OPENAI_API_KEY:
    preflight sends the headers the run sends, so it passes, and the run
    succeeds; the header's value is never printed (#12.18)."""
    _, url = mock_server
    make_input(tmp_path / "in.jsonl", 5)
    env.pop("OPENAI_API_KEY")
    out = tmp_path / "out.jsonl"
    r = conveyor("run", str(tmp_path / "in.jsonl"), "-o", str(out), "--base-url", url,
                 "-H", f"api-key: {KEY}", env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert KEY not in r.stderr
    assert len(read_ids(out)) == 5


def test_a_key_echoed_back_by_the_server_is_redacted_everywhere(
    mock_server: tuple[MockServer, str], env: dict[str, str], tmp_path: Path
) -> None:
    """A server that words its 401 with the key in clear: the key appears in
    no message, log line, output, journal or report (#12.18, invariant 7)."""
    srv, url = mock_server
    srv.config = MockConfig(api_key=KEY, echo_key=True, seed=18)
    make_input(tmp_path / "in.jsonl", 5)
    wrong = "sk-wrong-ECHOED-123456789"
    env["OPENAI_API_KEY"] = wrong
    out, rj = tmp_path / "out.jsonl", tmp_path / "report.json"
    for extra in ([], ["--no-preflight", "-v", "--log-json"]):
        r = conveyor("run", str(tmp_path / "in.jsonl"), "-o", str(out), "--base-url", url,
                     "--report-json", str(rj), *extra, env=env)  # fmt: skip
        assert r.returncode in (2, 3), r.stderr
        assert "Incorrect API key provided" in r.stderr or "refused the key" in r.stderr
        assert wrong not in r.stderr + r.stdout
    for f in tmp_path.iterdir():
        if f.is_file():
            assert wrong.encode() not in f.read_bytes(), f


# 7 s of outage: slow; the default run keeps test_endpoint_failing_every_request_stops_then_resumes.
@pytest.mark.slow
def test_after_an_outage_the_run_resumes_soon_and_says_so(
    mock_server: tuple[MockServer, str], env: dict[str, str], tmp_path: Path
) -> None:
    """The server fails every request for ~5 s, then is back: the run sends
    its next successful request within 3 s of the server's return (probes stay
    frequent, items waiting out a backoff are woken when the breaker closes),
    says so in a log line, and finishes every item once (#12.20)."""
    srv, url = mock_server
    ok = MockConfig(api_key=KEY, latency=0.02, seed=20)
    srv.config = ok
    make_input(tmp_path / "in.jsonl", 600)
    out = tmp_path / "out.jsonl"
    args = [*CONVEYOR, "run", str(tmp_path / "in.jsonl"), "-o", str(out), "--base-url", url,
            "-c", "8", "--retries", "30", "--no-preflight"]  # fmt: skip
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while srv.stats.admitted < 50 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert srv.stats.admitted >= 50, "the run did not start"
        srv.config = MockConfig(api_key=KEY, latency=0.02, seed=20, rate_500=1.0)
        time.sleep(5.0)  # the outage (a scenario, not a wait for a condition)
        srv.config = ok
        back = time.monotonic()
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    first_after = min(t for t, _ in srv.stats.admissions if t >= back)
    assert first_after - back <= 3.0, f"resumed {first_after - back:.1f} s after the server"
    assert "endpoint answered again" in err
    ids = read_ids(out)
    assert len(ids) == len(set(ids)) == 600


def test_report_json_and_log_json_when_a_run_stops(
    mock_server: tuple[MockServer, str], env: dict[str, str], tmp_path: Path
) -> None:
    """A run stopped by a fatal error (a rejected key) still writes
    --report-json; with --log-json every stderr line but the final error is a
    JSON object (no plain progress lines) (#12.22)."""
    _, url = mock_server
    make_input(tmp_path / "in.jsonl", 5)
    env["OPENAI_API_KEY"] = "sk-wrong-key-22222222"
    env["PYTHONWARNINGS"] = "ignore"  # a library's own warnings are not conveyor's log
    rj = tmp_path / "report.json"
    r = conveyor("run", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "o.jsonl"),
                 "--base-url", url, "--no-preflight", "--log-json", "--report-json", str(rj),
                 env=env)  # fmt: skip
    assert r.returncode == 3, r.stderr
    assert json.loads(rj.read_text())["total_items"] == 5
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert lines[-1].startswith("conveyor: stopped:")
    for line in lines[:-1]:
        json.loads(line)  # raises on a plain line


def test_a_missing_id_column_is_refused_once_before_sending(
    mock_server: tuple[MockServer, str], env: dict[str, str], tmp_path: Path
) -> None:
    """--id-column naming a column the CSV does not have: one clear refusal
    (exit 2) naming the columns there are, nothing sent, instead of a failed
    line per row (#12.22)."""
    srv, url = mock_server
    (tmp_path / "t.toml").write_text('model = "mock-gpt"\nuser = "Label: {{ text }}"\n')
    (tmp_path / "rows.csv").write_text("rid,text\n1,hello\n2,world\n")
    r = conveyor("run", str(tmp_path / "rows.csv"), "--template", str(tmp_path / "t.toml"),
                 "--id-column", "reddit_id", "-o", str(tmp_path / "o.jsonl"), "--base-url", url,
                 "--no-preflight", env=env)  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "'reddit_id'" in r.stderr and "rid, text" in r.stderr and "--id-column" in r.stderr
    assert r.stderr.count("reddit_id") <= 2
    assert srv.stats.requests == 0


def test_utf16_input_gets_a_hint(env: dict[str, str], tmp_path: Path) -> None:
    """A UTF-16 file (what some editors and PowerShell write): each bad line
    says the file looks UTF-16 and how to convert it (#12.22)."""
    make_input(tmp_path / "in8.jsonl", 2)
    text = (tmp_path / "in8.jsonl").read_text()
    (tmp_path / "in.jsonl").write_bytes(text.encode("utf-16"))
    r = conveyor("run", str(tmp_path / "in.jsonl"), "--dry-run", env=env)
    assert "UTF-16" in r.stdout + r.stderr and "iconv" in r.stdout + r.stderr


def test_a_bad_csv_header_is_one_cli_error(env: dict[str, str], tmp_path: Path) -> None:
    """A CSV header naming a column twice: one line, in CLI words, exit 2,
    before anything runs (not the Python API's "items iterable raised ...
    results are in .report", not twice) (#12.22)."""
    (tmp_path / "t.toml").write_text('model = "mock-gpt"\nuser = "x {{ a }}"\n')
    (tmp_path / "dup.csv").write_text("a,a\n1,2\n")
    r = conveyor("run", str(tmp_path / "dup.csv"), "--template", str(tmp_path / "t.toml"),
                 "-o", str(tmp_path / "o.jsonl"), "--base-url", "http://127.0.0.1:9/v1",
                 "--no-preflight", env=env)  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("CSV header names 'a' twice") == 1, r.stderr
    assert ".report" not in r.stderr and "items iterable" not in r.stderr


def test_status_of_a_stopped_run_shows_no_rate_or_eta(
    mock_server: tuple[MockServer, str], env: dict[str, str], tmp_path: Path
) -> None:
    """A run that stopped before the end (a rejected key) and that nothing is
    writing: `conveyor status` says it is not running and how to resume, with
    no rate and no ETA (#12.22)."""
    _, url = mock_server
    make_input(tmp_path / "in.jsonl", 50)
    out = tmp_path / "out.jsonl"
    bad = {**env, "OPENAI_API_KEY": "sk-wrong-key-33333333"}
    r = conveyor("run", str(tmp_path / "in.jsonl"), "-o", str(out), "--base-url", url,
                 "--no-preflight", "-q", env=bad)  # fmt: skip
    assert r.returncode == 3, r.stderr
    journal = f"{out}.conveyor.db"
    st = json.loads(conveyor("status", journal, "--json", env=env).stdout)
    assert st["state"] == "stopped"
    assert st["eta_seconds"] is None and st["rate_per_second"] == 0
    text = conveyor("status", journal, env=env).stdout
    assert "not running" in text and "eta" not in text


def test_no_command_declares_a_flag_twice() -> None:
    """Every subcommand's flags are unique: a flag declared twice (the staged
    rollout's `--limit N` and a resource `--limit NAME=MAX` once) makes click warn
    on every run and silently breaks one of the two."""
    import click

    from conveyor.cli import COMMANDS, main

    ctx = click.Context(main)
    for name in COMMANDS:
        cmd = main.get_command(ctx, name)
        assert cmd is not None, name
        flags = [opt for p in cmd.params for opt in (*p.opts, *p.secondary_opts)]
        dupes = sorted({f for f in flags if flags.count(f) > 1})
        assert not dupes, f"conveyor {name}: {dupes} declared twice"
