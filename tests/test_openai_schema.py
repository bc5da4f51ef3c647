"""Structured outputs in run_file: answers validated against a schema, invalid
ones re-asked, against the simulated server over loopback HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import orjson
import pytest
from pydantic import BaseModel, Field

from conveyor import InputError, InvalidAnswer, SchemaInvalid
from conveyor._journal._journal import Journal
from conveyor._render._journal import report_from_journal
from conveyor.mock import MockConfig, MockServer, conversation_key
from conveyor.openai import RequestLine, RunSettings, arun_file, read_output, read_parsed
from conveyor.openai._structured import check_line, reask_line

KEY = "sk-schema-SECRET-1"
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


class Label(BaseModel):
    label: Literal["pos", "neg"]
    score: int = Field(ge=1)


def chat_lines(path: Path, n: int, **extra: Any) -> dict[str, dict[str, Any]]:
    bodies = {}
    with path.open("wb") as f:
        for i in range(n):
            body = {"model": "mock-gpt", "messages": [{"role": "user", "content": f"c {i}"}],
                    **extra}  # fmt: skip
            bodies[f"r{i}"] = body
            line = {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": body}  # fmt: skip
            f.write(orjson.dumps(line) + b"\n")
    return bodies


def responses_lines(path: Path, n: int, **extra: Any) -> dict[str, dict[str, Any]]:
    bodies = {}
    with path.open("wb") as f:
        for i in range(n):
            body = {"model": "mock-gpt", "input": f"classify {i}", **extra}
            bodies[f"r{i}"] = body
            line = {"custom_id": f"r{i}", "method": "POST", "url": "/v1/responses", "body": body}
            f.write(orjson.dumps(line) + b"\n")
    return bodies


@pytest.fixture
async def server() -> AsyncIterator[MockServer]:
    async with MockServer(MockConfig(api_key=KEY, seed=5)) as srv:
        yield srv


def settings(srv: MockServer, out: Path, **kw: Any) -> RunSettings:
    base: dict[str, Any] = {"output": out, "base_url": srv.base_url, "api_key": KEY,
                            "concurrency": 64, "retries": 3, "timeout": 10.0}  # fmt: skip
    base.update(kw)
    return RunSettings(**base)


def reasked_keys(srv: MockServer) -> tuple[dict[str, str], Counter[str]]:
    """(first outcome per conversation, re-asks per conversation) from the mock's log."""
    first: dict[str, str] = {}
    reasks: Counter[str] = Counter()
    for key, is_reask, outcome in srv.stats.structured_log:
        if is_reask:
            reasks[key] += 1
        else:
            first[key] = outcome
    return first, reasks


async def test_invalid_first_answers_are_reasked_until_all_valid(
    server: MockServer, tmp_path: Path
) -> None:
    """10% invalid first answers (5% cut-off JSON, 5% schema violations), --reask 2:
    every line ends valid with its parsed value, the report's counts equal the
    server's, exactly the invalid first answers were re-asked (each once), and
    every attempt's tokens are billed."""
    n = 2000
    server.config = MockConfig(api_key=KEY, seed=5, invalid_json_rate=0.05,
                               schema_violation_rate=0.05)  # fmt: skip
    (tmp_path / "schema.json").write_bytes(orjson.dumps(SCHEMA))
    bodies = chat_lines(tmp_path / "in.jsonl", n)
    out = tmp_path / "out.jsonl"
    report = await arun_file(
        tmp_path / "in.jsonl", settings(server, out, schema=tmp_path / "schema.json", reask=2)
    )
    lines = {ln["custom_id"]: ln for ln in read_output(out)}
    assert len(lines) == n
    assert all(ln["error"] is None and ln["parsed"]["label"] in ("pos", "neg")
               for ln in lines.values())  # fmt: skip
    served = server.stats.structured
    v = report.validation
    assert v is not None
    assert v["checked"] == n and v["invalid"] == 0 and v["valid_rate_final"] == 1.0
    first_bad = served["first:invalid_json"] + served["first:schema_violation"]
    assert 140 <= first_bad <= 260  # about 10% of 2,000
    assert v["valid_first_try"] == served["first:valid"] == n - first_bad
    assert v["valid_after_reask"] == first_bad
    assert v["reasks"] == served["reask:valid"] == first_bad
    errors = {e["error"]: e["count"] for e in v["top_errors"]}
    assert errors["json at $"] == served["first:invalid_json"]
    assert errors["required at $"] == served["first:schema_violation"]
    # Which ones were re-asked: exactly those whose first answer was invalid.
    first, reasks = reasked_keys(server)
    assert len(first) == n
    for cid, body in bodies.items():
        key = conversation_key(body)
        assert reasks[key] == (0 if first[key] == "valid" else 1), cid
    with Journal.open_readonly(tmp_path / "out.jsonl.conveyor.db") as j:
        stored = {r.key: r.meta["validation"] for r in j.iter_results()}
    assert sum(m["reasks"] for m in stored.values()) == first_bad
    # Billed: every answered attempt's tokens (16 out each), re-asks included.
    assert report.output_tokens == 16 * server.stats.admitted == 16 * (n + first_bad)
    assert v["reask_tokens"]["output"] == 16 * first_bad
    assert report.retries == 0
    again = report_from_journal(tmp_path / "out.jsonl.conveyor.db")
    assert again.validation is not None
    assert again.validation["reasks"] == first_bad
    assert again.validation["valid_first_try"] == v["valid_first_try"]


async def test_error_line_after_the_last_try(server: MockServer, tmp_path: Path) -> None:
    """Answers that stay invalid: after 1 + reask attempts the line is an
    `invalid_answer` error line with the validation errors and the last raw answer."""
    server.config = MockConfig(api_key=KEY, seed=5, invalid_json_rate=1.0,
                               reask_invalid_rate=1.0)  # fmt: skip
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}
    chat_lines(tmp_path / "in.jsonl", 20, response_format=fmt)
    out = tmp_path / "out.jsonl"
    report = await arun_file(tmp_path / "in.jsonl", settings(server, out, reask=2))
    lines = list(read_output(out))
    assert len(lines) == 20
    for ln in lines:
        assert ln["response"] is None and "parsed" not in ln
        err = ln["error"]
        assert err["code"] == "invalid_answer"
        assert "after 3 attempt(s) (2 re-ask(s))" in err["message"]
        assert err["errors"][0]["kind"] == "json" and err["errors"][0]["path"] == "$"
        assert err["raw"].startswith("Sure! Here is the JSON: ")
    assert server.stats.structured == Counter({"first:invalid_json": 20, "reask:invalid_json": 40})
    assert report.failed == 20
    assert report.validation is not None and report.validation["invalid"] == 20
    assert report.errors == {"InvalidAnswer": 20}


async def test_pydantic_model_gives_typed_results(server: MockServer, tmp_path: Path) -> None:
    """schema=<Pydantic model>: answers validated by the model (violations
    re-asked), and read_parsed(output, Model) yields instances of it."""
    server.config = MockConfig(api_key=KEY, seed=6, schema_violation_rate=0.3)
    chat_lines(tmp_path / "in.jsonl", 50)
    out = tmp_path / "out.jsonl"
    report = await arun_file(tmp_path / "in.jsonl", settings(server, out, schema=Label))
    assert report.validation is not None
    assert report.validation["valid_rate_final"] == 1.0
    assert report.validation["reasks"] == server.stats.structured["first:schema_violation"] > 0
    parsed = list(read_parsed(out, Label))
    assert len(parsed) == 50
    assert all(p.ok and isinstance(p.value, Label) and p.value.score >= 1 for p in parsed)
    # The model's messages name the field (pydantic's loc), as the re-ask told the model.
    kinds = {e["error"] for e in report.validation["top_errors"]}
    assert kinds <= {"missing at $.label", "missing at $.score"}


async def test_bad_schema_refused_before_any_request(server: MockServer, tmp_path: Path) -> None:
    """A --schema that is not a valid JSON Schema: SchemaInvalid naming the file
    and the location in it, and the server saw no request at all."""
    bad = {"type": "object", "properties": {"score": {"type": "integr"}}}
    (tmp_path / "bad.json").write_bytes(orjson.dumps(bad))
    chat_lines(tmp_path / "in.jsonl", 5)
    with pytest.raises(SchemaInvalid) as caught:
        await arun_file(
            tmp_path / "in.jsonl",
            settings(server, tmp_path / "out.jsonl", schema=tmp_path / "bad.json"),
        )
    msg = str(caught.value)
    assert "bad.json" in msg and "$.properties.score.type" in msg and "integr" in msg
    assert caught.value.location == "$.properties.score.type"
    assert server.stats.requests == 0
    assert not (tmp_path / "out.jsonl").exists()


async def test_bad_schema_in_a_line_is_that_lines_error(server: MockServer, tmp_path: Path) -> None:
    """A line whose own response_format schema is invalid is never sent: its
    output is an error line naming the line and the schema location; the other
    lines run. With strict=True nothing is sent."""
    good = {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}}
    path = tmp_path / "in.jsonl"
    with path.open("wb") as f:
        for i, fmt in enumerate([good, bad, good]):
            body = {"model": "mock-gpt", "messages": [{"role": "user", "content": f"q{i}"}],
                    "response_format": fmt}  # fmt: skip
            line = {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": body}  # fmt: skip
            f.write(orjson.dumps(line) + b"\n")
    with pytest.raises(InputError, match=r"in.jsonl:2: .*not a valid JSON Schema at \$.type"):
        await arun_file(path, settings(server, tmp_path / "strict.jsonl", strict=True))
    assert server.stats.requests == 0
    out = tmp_path / "out.jsonl"
    await arun_file(path, settings(server, out))
    lines = {ln["custom_id"]: ln for ln in read_output(out)}
    assert lines["r1"]["error"]["code"] == "invalid_request_line"
    assert "not a valid JSON Schema at $.type" in lines["r1"]["error"]["message"]
    assert lines["r0"]["parsed"] and lines["r2"]["parsed"]
    assert server.stats.requests == 2


async def test_responses_text_format(server: MockServer, tmp_path: Path) -> None:
    """Responses API bodies carrying text.format json_schema are validated
    against it; violations are re-asked (the answer and a user message added
    to `input`) and end valid."""
    server.config = MockConfig(api_key=KEY, seed=7, schema_violation_rate=0.2)
    fmt = {"format": {"type": "json_schema", "name": "label", "schema": SCHEMA, "strict": True}}
    bodies = responses_lines(tmp_path / "in.jsonl", 60, text=fmt)
    out = tmp_path / "out.jsonl"
    report = await arun_file(tmp_path / "in.jsonl", settings(server, out))
    lines = list(read_output(out))
    assert all(ln["error"] is None and set(ln["parsed"]) == {"label", "score", "tags"}
               for ln in lines)  # fmt: skip
    assert report.validation is not None
    violations = server.stats.structured["first:schema_violation"]
    assert violations > 0 and report.validation["reasks"] == violations
    first, reasks = reasked_keys(server)
    assert {k for k, o in first.items() if o != "valid"} == set(reasks)
    assert {conversation_key(b) for b in bodies.values()} == set(first)


@pytest.mark.parametrize("api", ["chat", "responses"])
async def test_tool_call_arguments_validated(server: MockServer, tmp_path: Path, api: str) -> None:
    """Function tools: each call's arguments are checked against the function's
    parameters; an invalid call is re-asked with a tool result per call id
    (which the server requires), and the parsed value lists the calls."""
    server.config = MockConfig(api_key=KEY, seed=8, schema_violation_rate=0.15,
                               invalid_json_rate=0.1)  # fmt: skip
    if api == "chat":
        tools = [{"type": "function",
                  "function": {"name": "set_label", "parameters": SCHEMA}}]  # fmt: skip
        choice: Any = {"type": "function", "function": {"name": "set_label"}}
        chat_lines(tmp_path / "in.jsonl", 60, tools=tools, tool_choice=choice)
    else:
        tools = [{"type": "function", "name": "set_label", "parameters": SCHEMA}]
        choice = {"type": "function", "name": "set_label"}
        responses_lines(tmp_path / "in.jsonl", 60, tools=tools, tool_choice=choice)
    out = tmp_path / "out.jsonl"
    report = await arun_file(tmp_path / "in.jsonl", settings(server, out))
    lines = list(read_output(out))
    assert all(ln["error"] is None for ln in lines), [ln["error"] for ln in lines][:3]
    for ln in lines:
        (call,) = ln["parsed"]
        assert call["name"] == "set_label" and call["arguments"]["label"] == "pos"
    served = server.stats.structured
    bad = served["first:schema_violation"] + served["first:invalid_json"]
    assert report.validation is not None and bad > 0
    assert report.validation["reasks"] == bad == served["reask:valid"]
    assert server.stats.statuses[400] == 0  # every re-ask answered each call


def test_cli_schema_flag_and_bad_schema(tmp_path: Path) -> None:
    """`conveyor run --schema`: parsed values in the output and the validation
    summary on stderr; a bad schema exits 2 with its location, nothing sent."""
    srv = MockServer(MockConfig(api_key=KEY, seed=9, invalid_json_rate=0.2))
    env = {**os.environ, "OPENAI_API_KEY": KEY}
    (tmp_path / "s.json").write_bytes(orjson.dumps(SCHEMA))
    (tmp_path / "bad.json").write_bytes(b'{"type": "object", "required": "label"}')
    chat_lines(tmp_path / "in.jsonl", 40)
    cli = [sys.executable, "-m", "conveyor.cli", "run", str(tmp_path / "in.jsonl"), "-q"]
    with srv.running_in_thread() as url:
        base = [*cli, "--base-url", url]
        bad = subprocess.run([*base, "-o", str(tmp_path / "bad.jsonl"), "--schema",
                              str(tmp_path / "bad.json")], capture_output=True, text=True,
                             env=env, timeout=60)  # fmt: skip
        assert bad.returncode == 2, bad.stderr
        assert "bad.json" in bad.stderr and "at $.required" in bad.stderr
        assert srv.stats.requests == 0
        ok = subprocess.run([*base, "-o", str(tmp_path / "out.jsonl"), "--schema",
                             str(tmp_path / "s.json"), "--reask", "1"], capture_output=True,
                            text=True, env=env, timeout=60)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "after re-asks" in ok.stderr and "re-asks" in ok.stderr
    assert all(ln["parsed"]["tags"] for ln in read_output(tmp_path / "out.jsonl"))
    sent = srv.stats.structured
    assert sent["first:invalid_json"] == sent["reask:valid"] > 0


def test_help_names_the_flags() -> None:
    """--help of `run` and `mock` documents the new flags."""
    run = subprocess.run([sys.executable, "-m", "conveyor.cli", "run", "--help"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert "--schema" in run.stdout and "--reask" in run.stdout
    mock = subprocess.run([sys.executable, "-m", "conveyor.cli", "mock", "--help"],
                          capture_output=True, text=True, timeout=60).stdout  # fmt: skip
    for flag in ("--invalid-json-rate", "--schema-violation-rate", "--reask-invalid-rate"):
        assert flag in mock


def test_first_outcomes_are_a_function_of_the_request() -> None:
    """The mock's draw is per request: the same body gets the same outcome on
    another server with the same seed (tests can predict which are re-asked)."""
    from conveyor.mock._structured import plan_reply

    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}
    outcomes: dict[str, list[str]] = defaultdict(list)
    for _ in range(2):
        for i in range(200):
            body = {"model": "m", "messages": [{"role": "user", "content": str(i)}],
                    "response_format": fmt}  # fmt: skip
            reply = plan_reply("chat", body, seed=1, invalid_json=0.1, violation=0.1,
                               reask_invalid=0.0)  # fmt: skip
            assert reply is not None
            outcomes[str(i)].append(reply.outcome)
    assert all(a == b for a, b in outcomes.values())
    assert 10 < sum(a != "valid" for a, _ in outcomes.values()) < 70


def test_batch_mode_hook_checks_a_line_and_builds_its_reask() -> None:
    """check_line validates an answer that came from elsewhere (a provider
    batch's output) and reask_line builds the request that asks again."""
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}
    req = RequestLine(3, "r3", "POST", "/v1/chat/completions",
                      {"model": "m", "messages": [{"role": "user", "content": "q"}],
                       "response_format": fmt})  # fmt: skip

    def answer(content: str) -> dict[str, Any]:
        return {"choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": content}}]}  # fmt: skip

    bad = answer('{"label": "maybe", "score": 2, "tags": []}')
    with pytest.raises(InvalidAnswer) as caught:
        check_line(req, bad)
    (issue,) = caught.value.issues
    assert (issue.path, issue.kind) == ("$.label", "enum")
    again = reask_line(req, bad, caught.value.issues)
    said, note = again.body["messages"][-2:]
    assert said == {"role": "assistant", "content": bad["choices"][0]["message"]["content"]}
    assert note["role"] == "user" and "$.label: 'maybe' is not one of" in note["content"]
    good = check_line(req, answer('{"label": "neg", "score": 2, "tags": ["a"]}'))
    assert good.checked and good.parsed == {"label": "neg", "score": 2, "tags": ["a"]}


async def test_second_reask_continues_the_conversation(server: MockServer, tmp_path: Path) -> None:
    """Half of the re-asks invalid too: some items need a second re-ask (sent as
    the first re-ask's conversation plus its answer), and the counts per item
    (from the mock's log) match the journal's and the report's."""
    server.config = MockConfig(api_key=KEY, seed=11, invalid_json_rate=0.3,
                               reask_invalid_rate=0.5)  # fmt: skip
    bodies = chat_lines(tmp_path / "in.jsonl", 200)
    (tmp_path / "s.json").write_bytes(orjson.dumps(SCHEMA))
    out = tmp_path / "out.jsonl"
    report = await arun_file(tmp_path / "in.jsonl",
                             settings(server, out, schema=tmp_path / "s.json"))  # fmt: skip
    first, reasks = reasked_keys(server)
    with Journal.open_readonly(tmp_path / "out.jsonl.conveyor.db") as j:
        stored = {r.key: r.meta["validation"] for r in j.iter_results()}
    for cid, body in bodies.items():
        assert stored[cid]["reasks"] == reasks[conversation_key(body)]
    assert max(reasks.values()) == 2
    v = report.validation
    assert v is not None
    assert v["reasks"] == sum(reasks.values())
    assert v["invalid"] == sum(1 for m in stored.values() if not m["valid"])
    # Invalid re-ask answers: every first re-ask of an item that needed a
    # second, and every second re-ask of an item that stayed invalid.
    two = sum(1 for n in reasks.values() if n == 2)
    assert server.stats.structured["reask:invalid_json"] == two + v["invalid"]
    assert v["valid_after_reask"] + v["invalid"] == len([k for k in first if first[k] != "valid"])


@pytest.mark.parametrize(("choice", "checked"), [("auto", False), ("required", True)])
def test_text_answer_to_tools_depends_on_tool_choice(choice: str, checked: bool) -> None:
    """With tool_choice "auto" a text answer is taken as it is (not validated);
    with "required" it is invalid: a call was expected."""
    tools = [{"type": "function", "function": {"name": "f", "parameters": SCHEMA}}]
    req = RequestLine(1, "r1", "POST", "/v1/chat/completions",
                      {"model": "m", "messages": [{"role": "user", "content": "q"}],
                       "tools": tools, "tool_choice": choice})  # fmt: skip
    body = {"choices": [{"message": {"role": "assistant", "content": "hello"}}]}
    if not checked:
        assert not check_line(req, body).checked
        return
    with pytest.raises(InvalidAnswer, match="expected a call to one of: f"):
        check_line(req, body)


def test_cli_retry_reruns_invalid_lines_with_the_schema(tmp_path: Path) -> None:
    """Lines left invalid after the last re-ask are failed; `conveyor retry`
    runs them again with the same --schema (kept in the journal) and rewrites
    the output with their parsed values."""
    srv = MockServer(MockConfig(api_key=KEY, seed=2, invalid_json_rate=1.0, reask_invalid_rate=1.0))
    env = {**os.environ, "OPENAI_API_KEY": KEY}
    (tmp_path / "s.json").write_bytes(orjson.dumps(SCHEMA))
    chat_lines(tmp_path / "in.jsonl", 10)
    out = tmp_path / "out.jsonl"
    cli = [sys.executable, "-m", "conveyor.cli"]
    with srv.running_in_thread() as url:
        first = subprocess.run([*cli, "run", str(tmp_path / "in.jsonl"), "-q", "-o", str(out),
                                "--base-url", url, "--schema", str(tmp_path / "s.json"),
                                "--reask", "1"], capture_output=True, text=True, env=env,
                               timeout=60)  # fmt: skip
        assert first.returncode == 1, first.stderr
        assert all(ln["error"]["code"] == "invalid_answer" for ln in read_output(out))
        srv.config = MockConfig(api_key=KEY, seed=2)
        again = subprocess.run([*cli, "retry", f"{out}.conveyor.db", "-q"], capture_output=True,
                               text=True, env=env, timeout=60)  # fmt: skip
    assert again.returncode == 0, again.stderr
    lines = list(read_output(out))
    assert len(lines) == 10 and all(ln["error"] is None and ln["parsed"] for ln in lines)


def test_json_cut_at_the_token_limit_says_so() -> None:
    """An answer stopped at max_tokens (finish_reason "length") whose JSON does
    not parse: the issue says it was cut off, so the re-ask (and the reader) know."""
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}
    req = RequestLine(1, "r1", "POST", "/v1/chat/completions",
                      {"model": "m", "messages": [{"role": "user", "content": "q"}],
                       "response_format": fmt, "max_tokens": 4})  # fmt: skip
    cut = {"role": "assistant", "content": '{"label": "po'}
    body = {"choices": [{"finish_reason": "length", "message": cut}]}
    with pytest.raises(InvalidAnswer, match="cut off at the token limit"):
        check_line(req, body)
