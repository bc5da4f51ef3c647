"""Structured outputs in batch mode (`run_file(mode="batch", schema=...)`,
`conveyor run --mode batch --schema`): every provider batch answer is
validated, the invalid ones are asked again online through the normal
engine, and the report counts them as the online run does; against the
simulated server's Batch API over loopback HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from _procs import eventually
from conveyor._journal._journal import Journal
from conveyor._render._journal import report_from_journal
from conveyor.mock import MockConfig, MockServer, conversation_key
from conveyor.openai import read_parsed, run_file

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

KEY = "sk-batch-schema-test"
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "label": {"enum": ["pos", "neg"]},
        "score": {"type": "integer", "minimum": 1},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["label", "score", "tags"],
    "additionalProperties": False,
}


@pytest.fixture
def server() -> Iterator[tuple[MockServer, str]]:
    srv = MockServer(MockConfig(api_key=KEY, batch_speed=None, seed=3))
    with srv.running_in_thread() as url:
        yield srv, url


def chat_lines(path: Path, n: int) -> dict[str, dict[str, Any]]:
    bodies = {}
    with path.open("wb") as f:
        for i in range(n):
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"c {i}"}]}
            bodies[f"r{i}"] = body
            line = {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": body}  # fmt: skip
            f.write(orjson.dumps(line) + b"\n")
    return bodies


def read_lines(out: Path) -> dict[str, dict[str, Any]]:
    lines = [orjson.loads(raw) for raw in out.read_bytes().splitlines()]
    ids = [x["custom_id"] for x in lines]
    assert len(ids) == len(set(ids)), "a custom_id twice in the output"
    return {x["custom_id"]: x for x in lines}


def served(srv: MockServer) -> tuple[dict[str, str], Counter[str]]:
    """(first outcome per conversation, re-asks per conversation), the server's log."""
    first: dict[str, str] = {}
    reasks: Counter[str] = Counter()
    for key, is_reask, outcome in srv.stats.structured_log:
        if is_reask:
            reasks[key] += 1
        else:
            first[key] = outcome
    return first, reasks


def test_invalid_batch_answers_are_reasked_online_until_all_valid(
    server: tuple[MockServer, str], tmp_path: Path
) -> None:
    """200 lines, ~10% invalid batch answers (cut-off JSON and schema
    violations), reask=2: every line ends valid with its parsed value, each
    custom_id once; exactly the invalid batch answers were re-asked (once
    each, online); the report's validation counts equal the server's, and the
    journal's rebuilt report says the same."""
    srv, url = server
    n = 200
    srv.config = MockConfig(api_key=KEY, seed=3, batch_speed=None, invalid_json_rate=0.05,
                            schema_violation_rate=0.05)  # fmt: skip
    (tmp_path / "schema.json").write_bytes(orjson.dumps(SCHEMA))
    bodies = chat_lines(tmp_path / "in.jsonl", n)
    out = tmp_path / "out.jsonl"
    report = run_file(tmp_path / "in.jsonl", output=out, base_url=url, api_key=KEY,
                      mode="batch", poll=0.1, batch_max_lines=100,
                      schema=tmp_path / "schema.json", reask=2)  # fmt: skip
    lines = read_lines(out)
    assert sorted(lines) == sorted(bodies)
    assert all(x["error"] is None and x["parsed"]["label"] in ("pos", "neg")
               for x in lines.values())  # fmt: skip
    counts = srv.stats.structured
    first_bad = counts["first:invalid_json"] + counts["first:schema_violation"]
    assert 5 <= first_bad <= 40  # about 10% of 200
    assert counts["first:valid"] == n - first_bad
    first, reasks = served(srv)
    assert len(first) == n
    for cid, body in bodies.items():
        key = conversation_key(body)
        assert reasks[key] == (0 if first[key] == "valid" else 1), cid
    assert (
        srv.stats.by_path["/v1/chat/completions"] == first_bad
    )  # the re-asks went online, nothing else did
    v = report.validation
    assert v is not None
    assert v["checked"] == n and v["invalid"] == 0 and v["valid_rate_final"] == 1.0
    assert v["valid_first_try"] == n - first_bad
    assert v["valid_after_reask"] == v["reasks"] == first_bad
    errors = {e["error"]: e["count"] for e in v["top_errors"]}
    assert errors.get("json at $", 0) == counts["first:invalid_json"]
    assert errors.get("required at $", 0) == counts["first:schema_violation"]
    assert v["reask_tokens"]["output"] == 16 * first_bad
    assert report.output_tokens == 16 * (n + first_bad)  # every answer billed
    bm = report.extra["batch_mode"]
    assert bm["lines_batch"] == n - first_bad and bm["lines_online"] == first_bad
    tokens = bm["cost"]["tokens"]
    assert tokens["batch"]["output"] == 16 * n  # the batch answers at batch prices
    assert tokens["online"]["output"] == 16 * first_bad
    with Journal.open_readonly(tmp_path / "out.jsonl.conveyor.db") as j:
        stored = {r.key: r.meta["validation"] for r in j.iter_results()}
    assert len(stored) == n
    assert sum(m["reasks"] for m in stored.values()) == first_bad
    again = report_from_journal(tmp_path / "out.jsonl.conveyor.db")
    assert again.validation is not None
    assert again.validation["valid_first_try"] == n - first_bad
    assert again.validation["reasks"] == first_bad
    assert sum(1 for p in read_parsed(out) if p.ok) == n


def test_reask_0_makes_invalid_batch_answers_error_lines_without_asking_again(
    server: tuple[MockServer, str], tmp_path: Path
) -> None:
    """reask=0: an invalid batch answer is the line's only try: an
    `invalid_answer` error line with the errors and the raw answer, and no
    online request is made."""
    srv, url = server
    srv.config = MockConfig(api_key=KEY, seed=3, batch_speed=None, invalid_json_rate=0.3)
    (tmp_path / "schema.json").write_bytes(orjson.dumps(SCHEMA))
    chat_lines(tmp_path / "in.jsonl", 40)
    out = tmp_path / "out.jsonl"
    report = run_file(tmp_path / "in.jsonl", output=out, base_url=url, api_key=KEY,
                      mode="batch", poll=0.1, schema=tmp_path / "schema.json",
                      reask=0)  # fmt: skip
    lines = read_lines(out)
    bad = srv.stats.structured["first:invalid_json"]
    assert bad > 0
    errors = [x for x in lines.values() if x["error"] is not None]
    assert len(errors) == bad and len(lines) == 40
    assert all(x["error"]["code"] == "invalid_answer" and x["error"]["raw"] for x in errors)
    assert all("parsed" in x for x in lines.values() if x["error"] is None)
    assert srv.stats.by_path["/v1/chat/completions"] == 0
    v = report.validation
    assert v is not None
    assert v["invalid"] == bad and v["reasks"] == 0 and v["valid_first_try"] == 40 - bad


def test_reasks_that_stay_invalid_end_as_error_lines_after_the_last_try(
    server: tuple[MockServer, str], tmp_path: Path
) -> None:
    """Re-asks answered invalid too (reask=2): each invalid batch answer is
    asked again twice online, then the line is an error line counting the
    batch answer and both re-asks as its attempts."""
    srv, url = server
    srv.config = MockConfig(api_key=KEY, seed=3, batch_speed=None, invalid_json_rate=0.2,
                            reask_invalid_rate=1.0)  # fmt: skip
    (tmp_path / "schema.json").write_bytes(orjson.dumps(SCHEMA))
    chat_lines(tmp_path / "in.jsonl", 60)
    out = tmp_path / "out.jsonl"
    report = run_file(tmp_path / "in.jsonl", output=out, base_url=url, api_key=KEY,
                      mode="batch", poll=0.1, schema=tmp_path / "schema.json",
                      reask=2, concurrency=8)  # fmt: skip
    lines = read_lines(out)
    bad = srv.stats.structured["first:invalid_json"]
    assert bad > 0 and len(lines) == 60
    errors = [x for x in lines.values() if x["error"] is not None]
    assert len(errors) == bad
    assert all("3 attempt(s) (2 re-ask(s))" in x["error"]["message"] for x in errors)
    assert srv.stats.by_path["/v1/chat/completions"] == 2 * bad
    _, reasks = served(srv)
    assert sorted(reasks.values()) == [2] * bad
    v = report.validation
    assert v is not None
    assert v["invalid"] == bad and v["reasks"] == 2 * bad


def test_deadline_with_a_schema_validates_the_online_rest_too(
    server: tuple[MockServer, str], tmp_path: Path
) -> None:
    """The batches crawl, the deadline sends the rest online: the lines that
    finished either way are validated (parsed, invalid ones re-asked), each
    custom_id once, and the run still ends by the deadline."""
    srv, url = server
    srv.config = MockConfig(api_key=KEY, seed=3, batch_speed=5, batch_max_lines=100,
                            invalid_json_rate=0.1)  # fmt: skip
    (tmp_path / "schema.json").write_bytes(orjson.dumps(SCHEMA))
    bodies = chat_lines(tmp_path / "in.jsonl", 200)
    out = tmp_path / "out.jsonl"
    report = run_file(tmp_path / "in.jsonl", output=out, base_url=url, api_key=KEY,
                      mode="batch", poll=0.1, batch_max_lines=100, deadline="5s",
                      deadline_margin=2.0, schema=tmp_path / "schema.json",
                      reask=2)  # fmt: skip
    lines = read_lines(out)
    assert sorted(lines) == sorted(bodies)
    assert all(x["error"] is None and "parsed" in x for x in lines.values())
    bm = report.extra["batch_mode"]
    assert bm["lines_online"] > 0
    v = report.validation
    assert v is not None
    assert v["checked"] == 200 and v["valid_rate_final"] == 1.0
    bad = srv.stats.structured["first:invalid_json"]
    assert v["reasks"] == bad == v["valid_after_reask"]


def test_cli_mode_batch_with_schema_is_no_longer_refused(
    server: tuple[MockServer, str], tmp_path: Path
) -> None:
    """`conveyor run --mode batch --schema s.json --reask 1` runs, validates
    and prints the validation summary."""
    srv, url = server
    srv.config = MockConfig(api_key=KEY, seed=3, batch_speed=None, schema_violation_rate=0.2)
    (tmp_path / "schema.json").write_bytes(orjson.dumps(SCHEMA))
    chat_lines(tmp_path / "in.jsonl", 30)
    out = tmp_path / "out.jsonl"
    env = {**os.environ, "OPENAI_API_KEY": KEY}
    env.pop("OPENAI_BASE_URL", None)
    r = subprocess.run([sys.executable, "-m", "conveyor.cli", "run", str(tmp_path / "in.jsonl"),
                        "-o", str(out), "--base-url", url, "--mode", "batch", "--poll", "0.1",
                        "--schema", str(tmp_path / "schema.json"), "--reask", "1"],
                       env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = read_lines(out)
    assert len(lines) == 30 and all("parsed" in x for x in lines.values())
    assert srv.stats.structured["first:schema_violation"] > 0
    assert (
        srv.stats.by_path["/v1/chat/completions"] == srv.stats.structured["first:schema_violation"]
    )
    assert "valid" in (r.stdout + r.stderr).lower()


def test_kill_9_while_batch_answers_are_reasked_then_resume(
    server: tuple[MockServer, str], tmp_path: Path
) -> None:
    """Killed while the invalid batch answers are being re-asked online (the
    server holds those answers): the same command sends the unfinished lines
    again (in a new shard), re-asks what is invalid, and ends with every line
    valid and each custom_id once in the output."""
    srv, url = server
    srv.config = MockConfig(api_key=KEY, seed=3, batch_speed=None, invalid_json_rate=0.1,
                            latency=60.0)  # fmt: skip
    (tmp_path / "schema.json").write_bytes(orjson.dumps(SCHEMA))
    bodies = chat_lines(tmp_path / "in.jsonl", 100)
    out = tmp_path / "out.jsonl"
    env = {**os.environ, "OPENAI_API_KEY": KEY}
    env.pop("OPENAI_BASE_URL", None)
    args = [sys.executable, "-m", "conveyor.cli", "run", str(tmp_path / "in.jsonl"), "-o",
            str(out), "--base-url", url, "--mode", "batch", "--poll", "0.1", "--schema",
            str(tmp_path / "schema.json"), "--reask", "2", "--no-preflight", "-q"]  # fmt: skip
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        online = lambda: srv.stats.by_path["/v1/chat/completions"]  # noqa: E731
        assert eventually(lambda: online() >= 1, within=60)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    bad = srv.stats.structured["first:invalid_json"]
    assert bad > 0
    assert len(read_lines(out)) <= 100 - bad  # the re-asked lines were not answered yet
    srv.config = MockConfig(api_key=KEY, seed=3, batch_speed=None, invalid_json_rate=0.1)
    final = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr
    lines = read_lines(out)
    assert sorted(lines) == sorted(bodies)
    assert all(x["error"] is None and "parsed" in x for x in lines.values())
