"""Every exit code of every command, as README's table says: real processes, the
mock server on loopback, real signals.

0 all succeeded (or nothing to do); 1 some items failed; 2 bad usage or input
refused, nothing sent; 3 stopped by a fatal error after it started (resumable);
130 interrupted. `mock`, `serve` and `status --watch` end 0 on Ctrl+C (their
normal stop); `demo` ends 0 when it ran to the end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from _procs import cli_env, eventually, ready_line
from conveyor._journal._journal import Journal
from conveyor.mock import MockConfig, MockServer

CONVEYOR = [sys.executable, "-m", "conveyor.cli"]
KEY = "sk-exit-codes-1"


def conveyor(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None
             ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return subprocess.run([*CONVEYOR, *args], capture_output=True, text=True, timeout=120,
                          env=env, cwd=cwd)  # fmt: skip


def interrupt(args: list[str], ready: Callable[[subprocess.Popen[str]], object],
              env: dict[str, str] | None = None, sig: int = signal.SIGINT,
              ) -> tuple[int, str]:  # fmt: skip
    """Start `conveyor ARGS`, wait (bounded) until `ready(proc)` holds, send `sig`,
    return the exit code and stderr."""
    proc = subprocess.Popen([*CONVEYOR, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    try:
        assert eventually(lambda: ready(proc) or proc.poll() is not None, within=60)
        assert proc.poll() is None, "it ended before it could be interrupted"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode, err


@pytest.fixture
def srv(start_mock: Callable[..., MockServer]) -> MockServer:
    return start_mock(api_key=KEY, latency=0.01, seed=3)


@pytest.fixture
def env() -> dict[str, str]:
    return cli_env(KEY)


def requests_file(path: Path, n: int, *, model: str = "mock-gpt", bad: bool = False) -> Path:
    with path.open("wb") as f:
        for i in range(n):
            body = {"model": model, "messages": [{"role": "user", "content": f"q{i}"}],
                    "max_tokens": 4}  # fmt: skip
            line = {"custom_id": f"id-{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": body}  # fmt: skip
            f.write(orjson.dumps(line) + b"\n")
        if bad:
            f.write(b'{"custom_id": "broken", "method": "POST"\n')
    return path


def run_args(inp: Path, out: Path, srv: MockServer, *more: str) -> list[str]:
    return ["run", str(inp), "-o", str(out), "--base-url", srv.base_url, "--no-preflight",
            "-q", *more]  # fmt: skip


def has_results(out: Path) -> Callable[[object], bool]:
    return lambda _proc: out.exists() and out.stat().st_size > 0


# -- run -------------------------------------------------------------------------------


def test_run_0_1_and_rerun(srv: MockServer, env: dict[str, str], tmp_path: Path) -> None:
    good = requests_file(tmp_path / "good.jsonl", 3)
    assert conveyor(*run_args(good, tmp_path / "g.jsonl", srv), env=env).returncode == 0
    bad = requests_file(tmp_path / "bad.jsonl", 3, bad=True)
    r = conveyor(*run_args(bad, tmp_path / "b.jsonl", srv), env=env)
    assert r.returncode == 1, r.stderr
    # Rerunning a finished run whose output still holds a failed line: still 1.
    r = conveyor(*run_args(bad, tmp_path / "b.jsonl", srv), env=env)
    assert r.returncode == 1, r.stderr
    assert "conveyor retry" in r.stderr


def test_run_2_nothing_sent(srv: MockServer, env: dict[str, str], tmp_path: Path) -> None:
    inp = requests_file(tmp_path / "in.jsonl", 2, bad=True)
    assert conveyor("run", "--bogus", env=env).returncode == 2
    r = conveyor(*run_args(tmp_path / "missing.jsonl", tmp_path / "o.jsonl", srv), env=env)
    assert r.returncode == 2 and "missing.jsonl" in r.stderr, r.stderr
    r = conveyor("run", str(inp), "--dry-run", "--strict", env=env)
    assert r.returncode == 2, r.stderr
    # A rejected key found by the preflight: refused before anything is sent.
    r = conveyor("run", str(inp), "-o", str(tmp_path / "p.jsonl"), "--base-url", srv.base_url,
                 "-q", env={**env, "OPENAI_API_KEY": "sk-wrong"})  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "nothing was sent" in r.stderr


def test_run_3_fatal_stop(srv: MockServer, env: dict[str, str], tmp_path: Path) -> None:
    inp = requests_file(tmp_path / "in.jsonl", 3)
    r = conveyor(*run_args(inp, tmp_path / "o.jsonl", srv),
                 env={**env, "OPENAI_API_KEY": "sk-wrong"})  # fmt: skip
    assert r.returncode == 3, r.stderr
    assert "rejected" in r.stderr
    r = conveyor("run", str(inp), "-o", "/dev/full", "--journal", str(tmp_path / "j.db"),
                 "--base-url", srv.base_url, "--no-preflight", "-q", env=env)  # fmt: skip
    assert r.returncode == 3, r.stderr


def test_run_3_when_the_output_fails_mid_run(
    srv: MockServer, env: dict[str, str], tmp_path: Path
) -> None:
    """Another program writes to the output while the run goes: the run stops.
    Things were sent, so it is 3 (resumable), not 2 ("nothing sent")."""
    srv.config = MockConfig(api_key=KEY, latency=0.05, seed=3)
    inp = requests_file(tmp_path / "in.jsonl", 3000)
    out = tmp_path / "o.jsonl"
    proc = subprocess.Popen([*CONVEYOR, *run_args(inp, out, srv, "-c", "4")], env=env,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert eventually(lambda: has_results(out)(None) or proc.poll() is not None, within=60)
        with out.open("ab") as f:
            f.write(b"another program's line\n")
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 3, err
    assert "conveyor: stopped: output" in err and "changed under this run" in err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_run_130_interrupted(srv: MockServer, env: dict[str, str], tmp_path: Path,
                             sig: int) -> None:  # fmt: skip
    srv.config = MockConfig(api_key=KEY, latency=0.05, seed=3)
    inp = requests_file(tmp_path / "in.jsonl", 3000)
    out = tmp_path / "o.jsonl"
    code, err = interrupt(run_args(inp, out, srv, "-c", "4"), has_results(out), env, sig)
    assert code == 130, err
    assert "Resume with the same command:\n  conveyor run " in err


# -- retry -----------------------------------------------------------------------------


def test_retry_0_1_3(srv: MockServer, env: dict[str, str], tmp_path: Path) -> None:
    """A model the server does not serve yet: items fail (1); retry with a rejected
    key stops (3); once the server serves it, retry succeeds (0); then nothing to
    retry (0)."""
    inp = requests_file(tmp_path / "in.jsonl", 3, model="later-model")
    out = tmp_path / "o.jsonl"
    r = conveyor(*run_args(inp, out, srv), env=env)
    assert r.returncode == 1, r.stderr
    journal = f"{out}.conveyor.db"
    r = conveyor("retry", journal, "-q", env=env)
    assert r.returncode == 1, r.stderr  # still not served: still failed
    r = conveyor("retry", journal, "-q", env={**env, "OPENAI_API_KEY": "sk-wrong"})
    assert r.returncode == 3, r.stderr
    srv.config = MockConfig(api_key=KEY, latency=0.01, models=("mock-gpt", "later-model"))
    r = conveyor("retry", journal, "-q", env=env)
    assert r.returncode == 0, r.stderr
    r = conveyor("retry", journal, "-q", env=env)
    assert r.returncode == 0 and "nothing to retry" in r.stderr, r.stderr
    assert conveyor("retry", str(tmp_path / "missing.db"), env=env).returncode == 2
    assert conveyor("retry", journal, "--status", "bogus", env=env).returncode == 2


def test_retry_130_interrupted(srv: MockServer, env: dict[str, str], tmp_path: Path) -> None:
    inp = requests_file(tmp_path / "in.jsonl", 2000, model="later-model")
    out = tmp_path / "o.jsonl"
    assert conveyor(*run_args(inp, out, srv, "-c", "50"), env=env).returncode == 1
    srv.config = MockConfig(api_key=KEY, latency=0.05, models=("mock-gpt", "later-model"))
    journal = Path(f"{out}.conveyor.db")

    def some_ok(_proc: object) -> bool:
        with Journal.open_readonly(journal) as j:
            return bool(j.status_counts().get("ok"))

    code, err = interrupt(["retry", str(journal), "-q", "-c", "4"], some_ok, env)
    assert code == 130, err
    assert "conveyor retry " in err


def test_retry_nothing_to_retry_says_what_is_unfinished(
    srv: MockServer, env: dict[str, str], tmp_path: Path
) -> None:
    """A run stopped by --limit has nothing failed: retry exits 0 but says the
    rest of the input is sent by `conveyor run`, not by retry."""
    inp = requests_file(tmp_path / "in.jsonl", 5)
    out = tmp_path / "o.jsonl"
    assert conveyor(*run_args(inp, out, srv, "--limit", "2"), env=env).returncode == 0
    r = conveyor("retry", f"{out}.conveyor.db", "-q", env=env)
    assert r.returncode == 0, r.stderr
    assert "nothing to retry" in r.stderr and "3 of 5 input lines" in r.stderr, r.stderr


# -- status, report, export ------------------------------------------------------------


def test_status_report_export(srv: MockServer, env: dict[str, str], tmp_path: Path) -> None:
    inp = requests_file(tmp_path / "in.jsonl", 2)
    out = tmp_path / "o.jsonl"
    assert conveyor(*run_args(inp, out, srv), env=env).returncode == 0
    journal = f"{out}.conveyor.db"
    assert conveyor("status", journal).returncode == 0
    assert conveyor("report", journal).returncode == 0
    assert conveyor("export", journal, str(tmp_path / "x.jsonl")).returncode == 0
    for cmd in ("status", "report"):
        r = conveyor(cmd, str(tmp_path / "missing.db"))
        assert r.returncode == 2, (cmd, r.stderr)
        r = conveyor(cmd, str(inp))  # not a journal
        assert r.returncode == 2, (cmd, r.stderr)
        assert "not a conveyor journal" in r.stderr
    assert conveyor("report", journal, "--html", str(tmp_path / "no" / "r.html")).returncode == 2


def test_status_watch_ctrl_c_is_its_normal_end(
    srv: MockServer, env: dict[str, str], tmp_path: Path
) -> None:
    inp = requests_file(tmp_path / "in.jsonl", 2)
    out = tmp_path / "o.jsonl"
    assert conveyor(*run_args(inp, out, srv), env=env).returncode == 0

    def printed(proc: subprocess.Popen[str]) -> bool:
        assert proc.stdout is not None
        return bool(proc.stdout.readline())  # blocks until the first refresh is out

    code, err = interrupt(["status", f"{out}.conveyor.db", "--watch", "0.5"], printed)
    assert code == 0, err
    assert "Aborted" not in err


# -- exec ------------------------------------------------------------------------------


def test_exec_0_1_2_3(tmp_path: Path) -> None:
    cwd = tmp_path
    assert conveyor("exec", "--", "true", ":::", "a", "b", cwd=cwd).returncode == 0
    assert conveyor("exec", "--", "sh", "-c", "exit $0", ":::", "0", "3", cwd=cwd).returncode == 1
    r = conveyor("exec", "--timeout", "0.2", "--", "sleep", "30", ":::", "a", cwd=cwd)
    assert r.returncode == 1 and "timed out" in r.stderr, r.stderr
    r = conveyor("exec", "--halt-on-fail", "--", "false", ":::", "a", "b", cwd=cwd)
    assert r.returncode == 1, r.stderr
    assert conveyor("exec", cwd=cwd).returncode == 2  # no command
    r = conveyor("exec", "--arg-file", str(tmp_path / "missing.txt"), "--", "echo", cwd=cwd)
    assert r.returncode == 2, r.stderr
    # A resource bound crossed mid-run is a fatal stop (resumable).
    r = conveyor("exec", "--resource-max", "process_rss_mb=1", "--monitor-interval", "0.1",
                 "--", "sleep", "30", ":::", "a", cwd=cwd)  # fmt: skip
    assert r.returncode == 3, r.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_exec_130_interrupted(tmp_path: Path, sig: int) -> None:
    started = tmp_path / "started"
    args = ["exec", "--journal", str(tmp_path / "j.db"), "--grace", "0.5", "--", "sh", "-c",
            f"touch {started}; sleep 30", "{}", ":::", "a"]  # fmt: skip
    code, err = interrupt(args, lambda _p: started.exists(), sig=sig)
    assert code == 130, err


# -- demo, mock, serve -----------------------------------------------------------------


def test_demo_0_and_130(tmp_path: Path) -> None:
    r = conveyor("demo", "-n", "5", "-q", "--dir", str(tmp_path / "d1"))
    assert r.returncode == 0, r.stderr  # its broken line failed, on purpose
    out = tmp_path / "d2" / "results.jsonl"
    code, err = interrupt(["demo", "-n", "20000", "-c", "4", "-q", "--dir", str(tmp_path / "d2")],
                          has_results(out))  # fmt: skip
    assert code == 130, err
    assert "Resume with the same command" not in err  # a demo starts afresh


@pytest.fixture
def listening() -> Iterator[Callable[[list[str], dict[str, str] | None], tuple[int, str]]]:
    def start(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
        proc = subprocess.Popen([*CONVEYOR, *args], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
        procs.append(proc)
        ready_line(proc.stderr, r"listening on http://127\.0\.0\.1:\d+")
        proc.send_signal(signal.SIGINT)
        return proc.wait(timeout=60), ""

    procs: list[subprocess.Popen[str]] = []
    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)
        if p.stderr is not None:
            p.stderr.close()


def test_mock_and_serve(
    srv: MockServer,
    tmp_path: Path,
    listening: Callable[[list[str], dict[str, str] | None], tuple[int, str]],
) -> None:
    assert listening(["mock", "--port", "0"], None)[0] == 0
    port = srv.base_url.rsplit(":", 1)[1].split("/")[0]
    r = conveyor("mock", "--port", port)  # the fixture's server holds it
    assert r.returncode == 2 and "pick a free port" in r.stderr, r.stderr
    serve = ["serve", "--upstream", srv.base_url, "--port", "0", "--data", str(tmp_path / "s")]
    env = {k: v for k, v in os.environ.items() if k != "CONVEYOR_SERVE_API_KEY"}
    r = conveyor(*serve, env=env)
    assert r.returncode == 2 and "CONVEYOR_SERVE_API_KEY" in r.stderr, r.stderr
    assert listening([*serve, "--no-auth"], env)[0] == 0
