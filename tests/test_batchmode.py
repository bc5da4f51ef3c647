"""Batch mode (`run_file(mode="batch")`, `conveyor run --mode batch`) against the
simulated server's Files and Batch API over loopback HTTP: sharding under the
server's limits, re-drive of expired and failed lines, the deadline's online
finish, and kill -9 at random moments with a resume that re-attaches."""

from __future__ import annotations

import itertools
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import httpx2
import orjson
import pytest

from _procs import cli_env, eventually
from conveyor.mock import MockConfig, MockServer, count_prompt_tokens, expected_content
from conveyor.openai import run_file

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

CONVEYOR = [sys.executable, "-m", "conveyor.cli"]
KEY = "sk-batch-test"


def make_input(path: Path, n: int, model: str = "mock-gpt") -> dict[str, dict[str, Any]]:
    bodies = {}
    with path.open("wb") as f:
        for i in range(n):
            content = f"question number {i} " * 3
            body = {"model": model, "max_tokens": 8,
                    "messages": [{"role": "user", "content": content}]}  # fmt: skip
            bodies[f"id-{i}"] = body
            line = {"custom_id": f"id-{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": body}  # fmt: skip
            f.write(orjson.dumps(line) + b"\n")
    return bodies


def read_output(out: Path) -> list[dict[str, Any]]:
    return [orjson.loads(raw) for raw in out.read_bytes().splitlines()]


def batches(url: str) -> list[dict[str, Any]]:
    """Every batch the server holds (its public list route)."""
    out: list[dict[str, Any]] = []
    after = None
    for _ in range(100):
        q = f"{url}/batches?limit=100" + (f"&after={after}" if after else "")
        page = httpx2.get(q, headers={"Authorization": f"Bearer {KEY}"}).json()
        out.extend(page["data"])
        if not page["has_more"]:
            return out
        after = page["last_id"]
    raise AssertionError("more than 100 pages of batches")


def answered_ok_by_batches(url: str) -> Counter[str]:
    """custom_id -> how many batch output files answered it 2xx (the server's side)."""
    seen: Counter[str] = Counter()
    for b in batches(url):
        if b.get("output_file_id"):
            r = httpx2.get(f"{url}/files/{b['output_file_id']}/content",
                           headers={"Authorization": f"Bearer {KEY}"})  # fmt: skip
            for raw in r.content.splitlines():
                line = orjson.loads(raw)
                if 200 <= line["response"]["status_code"] < 300:
                    seen[line["custom_id"]] += 1
    return seen


@pytest.fixture
def server() -> Iterator[tuple[MockServer, str]]:
    srv = MockServer(MockConfig(api_key=KEY, batch_speed=None, seed=3))
    with srv.running_in_thread() as url:
        yield srv, url


@pytest.fixture
def env() -> dict[str, str]:
    return cli_env(KEY)


def _tokens(bodies: dict[str, dict[str, Any]]) -> int:
    return sum(count_prompt_tokens(b) for b in bodies.values())


def test_shards_respect_the_line_and_enqueued_token_limits(
    server: tuple[MockServer, str], tmp_path: Path
) -> None:
    """300 lines, 100 per file, an enqueued-token limit of half the input's
    tokens: shards respect both, the server refuses nothing, every line once."""
    srv, url = server
    bodies = make_input(tmp_path / "in.jsonl", 300)
    half = _tokens(bodies) // 2
    srv.config = MockConfig(api_key=KEY, seed=3, batch_speed=2000, batch_max_lines=100,
                            batch_enqueued_tokens=half)  # fmt: skip
    out = tmp_path / "out.jsonl"
    report = run_file(tmp_path / "in.jsonl", output=out, base_url=url, api_key=KEY,
                      mode="batch", poll=0.2, batch_max_lines=100,
                      max_enqueued_tokens=half)  # fmt: skip
    lines = read_output(out)
    assert sorted(x["custom_id"] for x in lines) == sorted(bodies)
    assert all(x["response"]["status_code"] == 200 for x in lines)
    for x in lines[::37]:
        assert x["response"]["body"]["choices"][0]["message"]["content"] == expected_content(
            bodies[x["custom_id"]]
        )
    made = batches(url)
    assert {b["status"] for b in made} == {"completed"}  # no 413, no token_limit_exceeded
    assert all(b["request_counts"]["total"] <= 100 for b in made)
    assert sum(b["request_counts"]["total"] for b in made) == 300  # each line sent once
    assert report.extra["batch_mode"]["lines_batch"] == 300
    assert report.successful == 300
    for times in srv.stats.batch_polls.values():  # as the server saw them
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert min(gaps, default=1.0) >= 0.2 * 0.75  # never faster than --poll


def test_expired_batches_and_failed_lines_end_answered_without_resending_finished(
    server: tuple[MockServer, str], tmp_path: Path
) -> None:
    """Batches that expire half done and 3% of lines answered 500: every line
    ends with one answer, and no line a batch answered was sent again."""
    srv, url = server
    bodies = make_input(tmp_path / "in.jsonl", 300)
    srv.config = MockConfig(api_key=KEY, seed=3, batch_speed=200, batch_max_lines=100,
                            batch_expire_after=0.25, batch_error_rate=0.03)  # fmt: skip
    out = tmp_path / "out.jsonl"
    report = run_file(tmp_path / "in.jsonl", output=out, base_url=url, api_key=KEY,
                      mode="batch", poll=0.05, batch_max_lines=100, max_redrives=30)  # fmt: skip
    lines = read_output(out)
    assert sorted(x["custom_id"] for x in lines) == sorted(bodies)
    made = batches(url)
    assert "expired" in {b["status"] for b in made}
    failing = {x["custom_id"] for x in lines if x["response"]["status_code"] == 500}
    assert failing  # the server fails the same 3% every time: they end as 500 answers
    assert len(failing) < 30
    ok = answered_ok_by_batches(url)
    assert set(ok) == set(bodies) - failing
    assert max(ok.values()) == 1  # a finished line of an expired batch was not sent again
    assert report.extra["batch_mode"]["counters"]["batches_expired"] >= 1


def test_deadline_finishes_online_each_custom_id_once(
    server: tuple[MockServer, str], tmp_path: Path
) -> None:
    """The server's batches crawl (5 lines/s): before the deadline the rest goes
    online through the normal engine; the output has each custom_id once and
    the report splits the lines between the paths."""
    srv, url = server
    make_input(tmp_path / "in.jsonl", 300, model="gpt-4o-mini")  # a model with a list price
    srv.config = MockConfig(api_key=KEY, seed=3, batch_speed=5, batch_max_lines=100)
    out = tmp_path / "out.jsonl"
    t0 = time.monotonic()
    report = run_file(tmp_path / "in.jsonl", output=out, base_url=url, api_key=KEY,
                      mode="batch", poll=0.1, batch_max_lines=100, deadline="6s",
                      deadline_margin=2.0)  # fmt: skip
    took = time.monotonic() - t0
    lines = read_output(out)
    ids = [x["custom_id"] for x in lines]
    assert len(ids) == len(set(ids)) == 300
    assert all(x["response"]["status_code"] == 200 for x in lines)
    bm = report.extra["batch_mode"]
    assert bm["lines_online"] > 0
    assert bm["lines_batch"] + bm["lines_online"] == 300
    assert {b["status"] for b in batches(url)} <= {"cancelling", "cancelled"}
    assert took < 6 + 30  # the deadline plus a generous margin, not a speed claim
    cost = bm["cost"]  # what it cost, and what all of it would have at either price
    assert cost["total"] == pytest.approx(cost["batch_path"] + cost["online_path"], abs=1e-5)
    assert cost["all_at_batch_prices"] == pytest.approx(cost["all_at_online_prices"] / 2, abs=1e-5)
    assert cost["all_at_batch_prices"] <= cost["total"] <= cost["all_at_online_prices"]
    assert cost["tokens"]["online"]["input"] > 0
    assert srv.stats.requests >= bm["lines_online"]  # the online answers came from /v1


def _shard_states(journal: Path) -> str:
    try:
        con = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=1)
        try:
            rows = con.execute("SELECT state, count(*) FROM shards GROUP BY state").fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return "none"
    return ",".join(f"{s}:{n}" for s, n in sorted(rows)) or "none"


def _lock_pid(journal: Path) -> int | None:
    try:
        text = (journal.parent / (journal.name + ".lock")).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _kill_and_resume(
    server: tuple[MockServer, str], env: dict[str, str], tmp_path: Path, kills: int, n: int,
    *, speed: float = 100, share: float = 0.5,
) -> list[str]:  # fmt: skip
    srv, url = server
    bodies = make_input(tmp_path / "in.jsonl", n)
    half = int(_tokens(bodies) * share)
    # 50-line shards, each batch 50/speed s, a few at a time under the token
    # limit: uploads, creates, polls and downloads happen all through the run.
    srv.config = MockConfig(api_key=KEY, seed=3, batch_speed=speed, batch_max_lines=100,
                            batch_enqueued_tokens=half)  # fmt: skip
    out = tmp_path / "out.jsonl"
    journal = tmp_path / "out.jsonl.conveyor.db"
    args = [*CONVEYOR, "run", str(tmp_path / "in.jsonl"), "-o", str(out), "--base-url", url,
            "--mode", "batch", "--poll", "0.05s", "--batch-max-lines", "50",
            "--max-enqueued-tokens", str(half), "--no-preflight", "-q"]  # fmt: skip
    rnd = random.Random(kills)
    moments: list[str] = []
    for _ in range(kills):
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            # Started once it holds the journal; then a random moment of its work.
            started = eventually(lambda p=proc: _lock_pid(journal) == p.pid or p.poll() is not None,
                                 within=30)  # fmt: skip
            assert started
            time.sleep(rnd.uniform(0.0, 1.2))  # a random moment, not a wait for a condition
            if proc.poll() is None:
                moments.append(_shard_states(journal))
                proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            assert proc.stderr is not None
            proc.stderr.close()
        if proc.returncode == 0:
            break  # it finished before this kill
    final = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr
    lines = read_output(out)
    ids = [x["custom_id"] for x in lines]
    assert len(ids) == len(set(ids)) == n  # each line exactly once
    assert all(x["response"]["status_code"] == 200 for x in lines)
    made = batches(url)
    assert sum(b["request_counts"]["total"] for b in made) == n  # no line in two batches
    assert max(answered_ok_by_batches(url).values()) == 1
    print("kill moments (shard states in the journal):", moments)
    return moments


def test_kill_9_during_a_batch_run_then_resume_submits_nothing_twice(
    server: tuple[MockServer, str], env: dict[str, str], tmp_path: Path
) -> None:
    """Three kill -9s at random moments of a batch-mode run, then the same
    command: it re-attaches to its batches; no line went into two batches and
    each custom_id is once in the output."""
    moments = _kill_and_resume(server, env, tmp_path, kills=3, n=300)
    assert len(moments) >= 2


@pytest.mark.slow
def test_kill_9_ten_times_during_a_batch_run(
    server: tuple[MockServer, str], env: dict[str, str], tmp_path: Path
) -> None:
    """Ten kill -9s (upload, create, polling and download moments among them)
    and a resume each time: no line in two batches, each custom_id once."""
    # 24 shards, 3 at a time, 2.5 s each: ~20 s of work for ten kills.
    moments = _kill_and_resume(server, env, tmp_path, kills=10, n=1200, speed=20, share=0.13)
    assert len(moments) >= 8


def test_cancel_command_cancels_the_runs_batches_and_status_shows_them(
    server: tuple[MockServer, str], env: dict[str, str], tmp_path: Path
) -> None:
    """While a batch run waits on stuck batches, `conveyor status` lists them
    and `conveyor cancel OUTPUT` cancels them; the run stops (exit 3) keeping
    what finished."""
    srv, url = server
    make_input(tmp_path / "in.jsonl", 50)
    srv.config = MockConfig(api_key=KEY, seed=3, batch_stuck="in_progress")
    out = tmp_path / "out.jsonl"
    journal = tmp_path / "out.jsonl.conveyor.db"
    args = [*CONVEYOR, "run", str(tmp_path / "in.jsonl"), "-o", str(out), "--base-url", url,
            "--mode", "batch", "--poll", "0.05s", "--no-preflight", "-q"]  # fmt: skip
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        assert eventually(lambda: "submitted:1" in _shard_states(journal), within=30)
        st = subprocess.run([*CONVEYOR, "status", str(journal), "--json"], env=env,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
        assert st.returncode == 0, st.stderr
        info = orjson.loads(st.stdout)["batches"]
        assert info["states"] == {"submitted": 1}
        assert info["shards"][0]["batch_id"].startswith("batch_")
        c = subprocess.run([*CONVEYOR, "cancel", str(out)], env=env, capture_output=True,
                           text=True, timeout=60)  # fmt: skip
        assert c.returncode == 0, c.stderr
        assert info["shards"][0]["batch_id"] in c.stdout
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 3, err
    assert "cancelled outside this run" in err
    assert {b["status"] for b in batches(url)} <= {"cancelling", "cancelled"}


def test_dry_run_shows_shards_tokens_and_both_prices(env: dict[str, str], tmp_path: Path) -> None:
    """`--dry-run --mode batch` sends nothing and prints the shards and the cost
    at batch and at online prices."""
    with (tmp_path / "in.jsonl").open("wb") as f:
        for i in range(250):
            body = {"model": "gpt-4o-mini", "max_tokens": 10,
                    "messages": [{"role": "user", "content": f"q{i}"}]}  # fmt: skip
            line = {"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": body}  # fmt: skip
            f.write(orjson.dumps(line) + b"\n")
    r = subprocess.run([*CONVEYOR, "run", str(tmp_path / "in.jsonl"), "--dry-run", "--mode",
                        "batch", "--batch-max-lines", "100"], env=env, capture_output=True,
                       text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "shards 3" in r.stdout
    assert "at batch prices" in r.stdout and "online" in r.stdout
    assert not (tmp_path / "in.jsonl.conveyor.db").exists()


def test_a_schema_1_journal_opens_and_is_migrated(tmp_path: Path) -> None:
    """A journal written before batch mode opens read-only as it is, and for
    writing is migrated to the new schema with its results kept."""
    from conveyor._journal._journal import SCHEMA_VERSION, Journal
    from conveyor._journal._shards import ShardStore

    path = tmp_path / "old.db"
    con = sqlite3.connect(path)
    con.executescript(
        "CREATE TABLE items (key TEXT PRIMARY KEY, idx INTEGER NOT NULL, status TEXT NOT NULL,"
        " attempts INTEGER NOT NULL DEFAULT 0, item BLOB, value BLOB, error_type TEXT,"
        " error_message TEXT, error_traceback TEXT, error_status_code INTEGER,"
        " error_retryable INTEGER, input_tokens INTEGER, output_tokens INTEGER, started_at REAL,"
        " ended_at REAL, duration REAL NOT NULL DEFAULT 0, meta BLOB, output_line BLOB,"
        " output_seq INTEGER);"
        "CREATE INDEX items_by_index ON items (idx, key);"
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "INSERT INTO items (key, idx, status) VALUES ('a', 0, 'ok');"
        "PRAGMA application_id = 1668247158; PRAGMA user_version = 1;"
    )
    con.close()
    with Journal.open_readonly(path) as j:
        assert ShardStore(j).shards() == []
        assert j.status_counts() == {"ok": 1}
    with Journal.open(path, identity={"kind": "batch"}) as j:
        assert ShardStore(j).shards() == []
        assert j.is_terminal("a")
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    con.close()


@pytest.mark.parametrize("created_before_crash", [True, False])
def test_a_crash_between_intent_and_create_never_makes_a_second_batch(
    server: tuple[MockServer, str], tmp_path: Path, created_before_crash: bool
) -> None:
    """The journal says "creating" (the intent was committed, then the process
    died): the resume finds the batch by the shard id in its metadata and
    attaches to it, or creates it if it never reached the server; either way
    one batch holds the lines."""
    from conveyor._journal._journal import Journal
    from conveyor._journal._shards import ShardRow, ShardStore
    from conveyor.openai._batchmode._driver import METADATA_KEY
    from conveyor.openai._http import Endpoint
    from conveyor.openai._run import RunSettings
    from conveyor.openai._runparts import _identity

    _, url = server
    bodies = make_input(tmp_path / "in.jsonl", 40)
    out = tmp_path / "out.jsonl"
    auth = {"Authorization": f"Bearer {KEY}"}
    up = httpx2.post(f"{url}/files", headers=auth, data={"purpose": "batch"},
                     files={"file": ("s.jsonl", (tmp_path / "in.jsonl").read_bytes())})  # fmt: skip
    file_id = up.json()["id"]
    settings = RunSettings(output=out, base_url=url, api_key=KEY, mode="batch")
    ident = _identity(tmp_path / "in.jsonl", settings, Endpoint.resolve(url, api_key=KEY))
    with Journal.open(tmp_path / "out.jsonl.conveyor.db", identity=ident) as j:
        now = time.time()
        row = ShardRow("s0", 1, "/v1/chat/completions", "mock-gpt", "creating", 40, 1, 1,
                       file_id=file_id, created_at=now, state_since=now)  # fmt: skip
        ShardStore(j).add(row, [(f"id-{i}", i) for i in range(40)])
    if created_before_crash:
        create = {"input_file_id": file_id, "endpoint": "/v1/chat/completions",
                  "completion_window": "24h", "metadata": {METADATA_KEY: "s0"}}  # fmt: skip
        httpx2.post(f"{url}/batches", headers=auth, json=create)
    report = run_file(tmp_path / "in.jsonl", output=out, base_url=url, api_key=KEY,
                      mode="batch", poll=0.05)  # fmt: skip
    ids = [x["custom_id"] for x in read_output(out)]
    assert sorted(ids) == sorted(bodies)
    assert len(batches(url)) == 1
    counters = report.extra["batch_mode"]["counters"]
    assert counters.get("batches_found_after_crash", 0) == int(created_before_crash)


def test_a_provider_with_smaller_file_limits_than_configured_gets_smaller_shards(
    server: tuple[MockServer, str], tmp_path: Path
) -> None:
    """The server takes 40 lines per file, the client was told 100: the refused
    batches' lines are cut into smaller shards (not counted as attempts) until
    they fit, and every line is answered once."""
    srv, url = server
    bodies = make_input(tmp_path / "in.jsonl", 200)
    srv.config = MockConfig(api_key=KEY, seed=3, batch_max_lines=40)
    out = tmp_path / "out.jsonl"
    report = run_file(tmp_path / "in.jsonl", output=out, base_url=url, api_key=KEY,
                      mode="batch", poll=0.05, batch_max_lines=100, max_redrives=0)  # fmt: skip
    lines = read_output(out)
    assert sorted(x["custom_id"] for x in lines) == sorted(bodies)
    assert all(x["response"]["status_code"] == 200 for x in lines)
    assert report.extra["batch_mode"]["counters"]["size_limit_refusals"] >= 1
    assert max(answered_ok_by_batches(url).values()) == 1


def test_ctrl_c_leaves_the_batches_running_and_the_rerun_reattaches(
    server: tuple[MockServer, str], env: dict[str, str], tmp_path: Path
) -> None:
    """Ctrl+C (SIGINT) while a batch runs: exit 130 with the resume hint, the
    batch keeps running at the server, and the same command collects it
    without submitting anything again."""
    srv, url = server
    bodies = make_input(tmp_path / "in.jsonl", 60)
    srv.config = MockConfig(api_key=KEY, seed=3, batch_speed=20)
    out = tmp_path / "out.jsonl"
    journal = tmp_path / "out.jsonl.conveyor.db"
    args = [*CONVEYOR, "run", str(tmp_path / "in.jsonl"), "-o", str(out), "--base-url", url,
            "--mode", "batch", "--poll", "0.05s", "--no-preflight", "-q"]  # fmt: skip
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        assert eventually(lambda: "submitted:1" in _shard_states(journal), within=30)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "keep running at the provider" in err
    final = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr
    assert "batches_reattached 1" in final.stderr
    assert sorted(x["custom_id"] for x in read_output(out)) == sorted(bodies)
    assert len(batches(url)) == 1


def _notes(journal: Path) -> str:
    try:
        con = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=1)
        try:
            return " ".join(str(n) for (n,) in con.execute("SELECT note FROM shards"))
        finally:
            con.close()
    except sqlite3.Error:
        return ""


@pytest.mark.slow  # 7 s; test_kill_9_during_a_batch_run_* stays in the default run
def test_kill_9_after_the_deadline_sent_lines_online_then_resume(
    server: tuple[MockServer, str], env: dict[str, str], tmp_path: Path
) -> None:
    """Killed while the deadline's online path runs (its batches cancelled):
    the same command sends what is left online, and each custom_id is once in
    the output."""
    srv, url = server
    bodies = make_input(tmp_path / "in.jsonl", 120)
    # Online answers take 2 s at 40 in flight (6 s in all): the kill lands in them.
    srv.config = MockConfig(api_key=KEY, seed=3, batch_speed=2, latency=2.0)
    out = tmp_path / "out.jsonl"
    journal = tmp_path / "out.jsonl.conveyor.db"
    args = [*CONVEYOR, "run", str(tmp_path / "in.jsonl"), "-o", str(out), "--base-url", url,
            "--mode", "batch", "--poll", "0.1s", "--deadline", "12s", "-c", "40",
            "--no-preflight", "-q"]  # fmt: skip
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert eventually(lambda: "cancel: deadline" in _notes(journal), within=30)
        time.sleep(0.5)  # a moment into the online path, not a wait for a condition
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
    srv.config = MockConfig(api_key=KEY, seed=3, batch_speed=2)  # fast online answers now
    final = subprocess.run([*args[:-4], "-c", "50", "--no-preflight", "-q"], env=env,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert final.returncode == 0, final.stderr
    ids = [x["custom_id"] for x in read_output(out)]
    assert len(ids) == len(set(ids)) == len(bodies)
    assert len(batches(url)) == 1  # the resume sent nothing to batches again


def test_an_unstated_enqueued_token_limit_is_learned_from_the_refusal(
    server: tuple[MockServer, str], tmp_path: Path
) -> None:
    """Not told the organisation's enqueued-token limit, the client submits
    everything; the server fails the batches past the limit with
    token_limit_exceeded ("Limit: N enqueued tokens"), and from then on the
    client keeps under N: every line answered once."""
    srv, url = server
    bodies = make_input(tmp_path / "in.jsonl", 300)
    third = _tokens(bodies) // 3 + 50
    srv.config = MockConfig(api_key=KEY, seed=3, batch_speed=1000, batch_max_lines=100,
                            batch_enqueued_tokens=third)  # fmt: skip
    out = tmp_path / "out.jsonl"
    report = run_file(tmp_path / "in.jsonl", output=out, base_url=url, api_key=KEY,
                      mode="batch", poll=0.05, batch_max_lines=100, max_redrives=0)  # fmt: skip
    lines = read_output(out)
    assert sorted(x["custom_id"] for x in lines) == sorted(bodies)
    assert all(x["response"]["status_code"] == 200 for x in lines)
    refused = report.extra["batch_mode"]["counters"]["token_limit_refusals"]
    assert 1 <= refused <= 2  # the first refusals teach it; it does not keep hitting the limit
    assert max(answered_ok_by_batches(url).values()) == 1


def test_a_stuck_batch_is_cancelled_and_its_lines_sent_again(
    server: tuple[MockServer, str], env: dict[str, str], tmp_path: Path
) -> None:
    """The first batch never leaves in_progress: after --stuck-after without
    any change it is cancelled and its lines go into a new batch, which
    answers them; each custom_id once."""
    srv, url = server
    bodies = make_input(tmp_path / "in.jsonl", 50)
    srv.config = MockConfig(api_key=KEY, seed=3, batch_stuck="in_progress")
    out = tmp_path / "out.jsonl"
    args = [*CONVEYOR, "run", str(tmp_path / "in.jsonl"), "-o", str(out), "--base-url", url,
            "--mode", "batch", "--poll", "0.05s", "--stuck-after", "1s",
            "--no-preflight"]  # fmt: skip
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        in_progress = ["in_progress"]
        assert eventually(lambda: [b["status"] for b in batches(url)] == in_progress, within=30)
        srv.config = MockConfig(api_key=KEY, seed=3)  # later batches run (each keeps its own)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "cancelled_stuck 1" in err
    assert "batches 1 in_progress" in err  # the progress line shows the batches
    assert sorted(x["custom_id"] for x in read_output(out)) == sorted(bodies)
    assert sorted(b["status"] for b in batches(url)) == ["cancelled", "completed"]
