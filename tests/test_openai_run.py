"""run_file against the simulated OpenAI-compatible server over loopback HTTP."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

import conveyor
from conveyor.mock import MockConfig, MockServer, expected_content
from conveyor.openai import RunSettings, arun_file, read_output

KEY = "sk-test-SECRET-abc123"


def write_requests(path: Path, n: int, *, extra: list[bytes] | None = None, model: str = "mock-gpt",
                   start: int = 0, dup_every: int = 0) -> dict[str, dict[str, Any]]:  # fmt: skip
    bodies: dict[str, dict[str, Any]] = {}
    with path.open("wb") as f:
        for i in range(start, start + n):
            text = f"prompt {i // dup_every if dup_every else i}"
            body = {"model": model, "messages": [{"role": "user", "content": text}],
                    "max_tokens": 16}  # fmt: skip
            cid = f"req-{i}"
            bodies[cid] = body
            line = {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
                    "body": body}  # fmt: skip
            f.write(orjson.dumps(line) + b"\n")
        for raw in extra or []:
            f.write(raw + b"\n")
    return bodies


@pytest.fixture
def server(start_mock: Callable[..., MockServer]) -> MockServer:
    return start_mock(api_key=KEY, seed=1)


def settings(srv: MockServer, out: Path | None, **kw: Any) -> RunSettings:
    base: dict[str, Any] = {"output": out, "base_url": srv.base_url, "api_key": KEY,
                            "concurrency": 20, "retries": 6, "timeout": 10.0}  # fmt: skip
    base.update(kw)
    return RunSettings(**base)


def check_complete(out: Path, bodies: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    lines = list(read_output(out))
    ids = [ln["custom_id"] for ln in lines if ln["custom_id"] is not None]
    assert len(ids) == len(set(ids)), "a custom_id appears twice"
    by_id = {ln["custom_id"]: ln for ln in lines}
    for cid, body in bodies.items():
        ln = by_id[cid]
        assert ln["error"] is None, ln
        assert ln["response"]["status_code"] == 200
        content = ln["response"]["body"]["choices"][0]["message"]["content"]
        assert content == expected_content(body)
    return lines


async def test_every_request_answered_once_with_right_content(
    server: MockServer, tmp_path: Path
) -> None:
    """The plain path: each custom_id once, each answer the one for its request."""
    bodies = write_requests(tmp_path / "in.jsonl", 200)
    out = tmp_path / "out.jsonl"
    report = await arun_file(tmp_path / "in.jsonl", settings(server, out))
    assert report.counts["ok"] == 200
    check_complete(out, bodies)
    assert report.input_tokens > 0 and report.output_tokens == 200 * 16
    assert server.stats.max_in_flight <= 20


async def test_fault_mix_is_complete(server: MockServer, tmp_path: Path) -> None:
    """5% 500s, 5% 429s and 1% connection resets: still 100% complete, and
    the retries and 429s show in the report."""
    server.config = MockConfig(api_key=KEY, rate_500=0.05, rate_429=0.05, rate_reset=0.01,
                               retry_after=0.05, latency=0.005, seed=2)  # fmt: skip
    bodies = write_requests(tmp_path / "in.jsonl", 400)
    out = tmp_path / "out.jsonl"
    report = await arun_file(tmp_path / "in.jsonl", settings(server, out, retries=10))
    assert report.counts["ok"] == 400, report.counts
    check_complete(out, bodies)
    assert report.retries > 0
    assert report.extra.get("rate_limited", 0) > 0


async def test_wrong_key_stops_the_run_early_without_the_key(
    server: MockServer, tmp_path: Path
) -> None:
    """401: one clear error naming the variable, a handful of requests (not
    thousands), and the key itself appears nowhere."""
    write_requests(tmp_path / "in.jsonl", 2000)
    out = tmp_path / "out.jsonl"
    s = settings(server, out, api_key="sk-wrong-KEY-zzz", concurrency=10)
    with pytest.raises(conveyor.FatalError) as ei:
        await arun_file(tmp_path / "in.jsonl", s)
    msg = str(ei.value)
    assert "401" in msg and "OPENAI_API_KEY" in msg
    assert "sk-wrong" not in msg and KEY not in msg
    assert server.stats.requests <= 30
    assert ei.value.report is not None and ei.value.report.counts["ok"] == 0


async def test_unreachable_endpoint_is_one_clear_error(tmp_path: Path) -> None:
    """Nothing listening: a FatalError saying where and what to check, soon."""
    write_requests(tmp_path / "in.jsonl", 500)
    s = RunSettings(output=tmp_path / "out.jsonl", base_url="http://127.0.0.1:9/v1",
                    api_key=KEY, concurrency=4, retries=2)  # fmt: skip
    with pytest.raises(conveyor.FatalError, match=r"cannot reach http://127\.0\.0\.1:9/v1"):
        await arun_file(tmp_path / "in.jsonl", s)


async def test_bad_lines_become_error_lines_and_the_run_goes_on(
    server: MockServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Not JSON, no custom_id, a repeated custom_id, an unknown URL, no body:
    each an error line naming its input line; the valid lines are answered."""
    extra = [
        b"this is not json",
        b'{"method": "POST", "url": "/v1/chat/completions", "body": {}}',
        b'{"custom_id": "req-0", "method": "POST", "url": "/v1/chat/completions", "body": {}}',
        b'{"custom_id": "odd-url", "method": "POST", "url": "/v1/nope", "body": {}}',
        b'{"custom_id": "no-body", "method": "POST", "url": "/v1/chat/completions"}',
    ]
    bodies = write_requests(tmp_path / "in.jsonl", 10, extra=extra)
    out = tmp_path / "out.jsonl"
    report = await arun_file(tmp_path / "in.jsonl", settings(server, out))
    assert report.counts["ok"] == 10 and report.counts["failed"] == 5
    lines = check_complete(out, bodies)
    errors = {ln["error"]["line"]: ln for ln in lines if ln["error"]}
    assert sorted(errors) == [11, 12, 13, 14, 15]
    # Each message names the file and line, and the custom_id when the line has one.
    where = str(tmp_path / "in.jsonl")
    assert errors[11]["error"]["message"].startswith(f"{where}:11: not valid JSON")
    assert errors[13]["custom_id"] is None  # the repeat does not repeat the id
    assert errors[13]["error"]["message"].startswith(f"{where}:13: custom_id 'req-0' repeats")
    assert errors[14]["custom_id"] == "odd-url"
    assert errors[14]["error"]["message"].startswith(f"{where}:14 (custom_id 'odd-url'): url ")
    # The warning logged for each says where too, and shows no NUL of the internal key.
    warned = [r.getMessage() for r in caplog.records if "failed after" in r.getMessage()]
    assert len(warned) == 5 and all(f"{where}:1" in m and "\x00" not in m for m in warned)


async def test_strict_refuses_the_file_before_sending(server: MockServer, tmp_path: Path) -> None:
    """--strict lists every bad line and sends nothing."""
    write_requests(tmp_path / "in.jsonl", 10, extra=[b"{oops", b"[]"])
    with pytest.raises(conveyor.InputError) as ei:
        await arun_file(tmp_path / "in.jsonl", settings(server, tmp_path / "o.jsonl", strict=True))
    assert ":11:" in str(ei.value) and ":12:" in str(ei.value)
    assert server.stats.requests == 0


async def test_client_errors_keep_the_server_response(server: MockServer, tmp_path: Path) -> None:
    """A 404 (unknown model) fails that item at once with the server's answer
    in the output, as the Batch API does; others go on."""
    bodies = write_requests(tmp_path / "in.jsonl", 5)
    write_requests(tmp_path / "bad.jsonl", 2, model="no-such-model", start=100)
    with (tmp_path / "in.jsonl").open("ab") as f:
        f.write((tmp_path / "bad.jsonl").read_bytes())
    out = tmp_path / "out.jsonl"
    report = await arun_file(tmp_path / "in.jsonl", settings(server, out))
    assert report.counts["ok"] == 5 and report.counts["failed"] == 2
    by_id = {ln["custom_id"]: ln for ln in read_output(out)}
    assert by_id["req-100"]["response"]["status_code"] == 404
    assert server.stats.requests == 7  # the 404s were not retried
    check_complete(out, bodies)


async def test_known_rate_limit_zero_429s(server: MockServer, tmp_path: Path) -> None:
    """Server and client told the same limit: no 429 at all, and the server
    never sees more than the limit in any window."""
    server.config = MockConfig(api_key=KEY, rpm=30, limit_window=1.0, seed=3, limit_model="sliding")
    bodies = write_requests(tmp_path / "in.jsonl", 75)
    out = tmp_path / "out.jsonl"
    s = settings(server, out, rpm=30, limit_window=1.0, concurrency=50)
    report = await arun_file(tmp_path / "in.jsonl", s)
    assert report.counts["ok"] == 75
    assert server.stats.statuses.get(429, 0) == 0
    assert server.stats.max_requests_in_window(1.0) <= 30
    check_complete(out, bodies)


async def test_limits_learned_from_headers(server: MockServer, tmp_path: Path) -> None:
    """The client is told nothing: it learns the limit from x-ratelimit-*
    headers; 429s stay few and every request is answered."""
    server.config = MockConfig(api_key=KEY, rpm=40, limit_window=1.0, seed=4)
    bodies = write_requests(tmp_path / "in.jsonl", 100)
    out = tmp_path / "out.jsonl"
    s = settings(server, out, limit_window=1.0, concurrency=8)
    report = await arun_file(tmp_path / "in.jsonl", s)
    assert report.counts["ok"] == 100
    assert server.stats.statuses.get(429, 0) <= 5
    check_complete(out, bodies)


async def test_token_limit_holds_at_the_server(server: MockServer, tmp_path: Path) -> None:
    """A tokens-per-window limit told to the client: no 429, within the limit."""
    server.config = MockConfig(api_key=KEY, tpm=2000, limit_window=1.0, seed=5)
    bodies = write_requests(tmp_path / "in.jsonl", 60)
    out = tmp_path / "out.jsonl"
    s = settings(server, out, tpm=2000, limit_window=1.0, concurrency=30)
    report = await arun_file(tmp_path / "in.jsonl", s)
    assert report.counts["ok"] == 60
    assert server.stats.statuses.get(429, 0) == 0
    assert server.stats.max_tokens_in_window(1.0) <= 2000
    check_complete(out, bodies)


async def test_limit_then_resume_sends_each_request_once(
    server: MockServer, tmp_path: Path
) -> None:
    """--limit N runs the first N pending; the next run does the rest; the
    server saw each request once and the output holds each id once."""
    bodies = write_requests(tmp_path / "in.jsonl", 120)
    out = tmp_path / "out.jsonl"
    r1 = await arun_file(tmp_path / "in.jsonl", settings(server, out, limit=50))
    assert r1.total == 50
    assert len(list(read_output(out))) == 50
    r2 = await arun_file(tmp_path / "in.jsonl", settings(server, out))
    assert r2.total == 70 and r2.extra["resumed_skipped"] == 50
    assert server.stats.requests == 120
    check_complete(out, bodies)


async def test_resume_with_a_different_input_is_refused(server: MockServer, tmp_path: Path) -> None:
    """The journal remembers its input: another file is refused with what differs."""
    write_requests(tmp_path / "in.jsonl", 5)
    write_requests(tmp_path / "other.jsonl", 6)
    out = tmp_path / "out.jsonl"
    await arun_file(tmp_path / "in.jsonl", settings(server, out))
    with pytest.raises(conveyor.ConveyorError, match="input"):
        await arun_file(tmp_path / "other.jsonl", settings(server, out))


async def test_duplicates_sent_once_and_fanned_out(server: MockServer, tmp_path: Path) -> None:
    """Identical requests are sent once per run; each custom_id still gets
    its own line with the shared answer, and the report shows what was saved."""
    bodies = write_requests(tmp_path / "in.jsonl", 90, dup_every=3)
    out = tmp_path / "out.jsonl"
    report = await arun_file(tmp_path / "in.jsonl", settings(server, out))
    assert server.stats.requests == 30
    assert report.extra["cache"]["hits"] + report.extra.get("answered_locally", 0) >= 60
    assert report.extra["cache"]["tokens_saved"] > 0
    check_complete(out, bodies)


async def test_other_endpoints(server: MockServer, tmp_path: Path) -> None:
    """Embeddings, completions and responses requests go to their endpoints."""
    lines = [
        {"custom_id": "e", "method": "POST", "url": "/v1/embeddings",
         "body": {"model": "text-embedding-3-small", "input": "hi"}},
        {"custom_id": "c", "method": "POST", "url": "/v1/completions",
         "body": {"model": "mock-gpt", "prompt": "hi", "max_tokens": 5}},
        {"custom_id": "r", "method": "POST", "url": "/v1/responses",
         "body": {"model": "mock-gpt", "input": "hi"}},
    ]  # fmt: skip
    (tmp_path / "in.jsonl").write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    out = tmp_path / "out.jsonl"
    report = await arun_file(tmp_path / "in.jsonl", settings(server, out))
    assert report.counts["ok"] == 3
    by_id = {ln["custom_id"]: ln["response"]["body"] for ln in read_output(out)}
    assert by_id["e"]["object"] == "list"
    assert by_id["c"]["object"] == "text_completion"
    assert by_id["r"]["object"] == "response"


async def test_records_and_template(server: MockServer, tmp_path: Path) -> None:
    """CSV records + a TOML template (seed 000): system + user messages,
    custom_id from a column, the answers match the rendered prompts."""
    (tmp_path / "comments.csv").write_text(
        'reddit_id,body\nt1_a,great post\nt1_b,"needs, commas"\nt1_c,third\n'
    )
    (tmp_path / "prompt.toml").write_text(
        'system = "You classify Reddit comments."\n'
        'user = "Comment {{ reddit_id }}: {{ body }}"\n[params]\nmax_tokens = 8\n'
    )
    out = tmp_path / "out.jsonl"
    s = settings(server, out, template=tmp_path / "prompt.toml", model="mock-gpt",
                 id_column="reddit_id")  # fmt: skip
    report = await arun_file(tmp_path / "comments.csv", s)
    assert report.counts["ok"] == 3
    by_id = {ln["custom_id"]: ln for ln in read_output(out)}
    assert set(by_id) == {"t1_a", "t1_b", "t1_c"}
    expected = expected_content({"model": "mock-gpt", "messages": [
        {"role": "system", "content": "You classify Reddit comments."},
        {"role": "user", "content": "Comment t1_b: needs, commas"}], "max_tokens": 8})  # fmt: skip
    assert by_id["t1_b"]["response"]["body"]["choices"][0]["message"]["content"] == expected


async def test_no_secret_in_output_journal_or_report(server: MockServer, tmp_path: Path) -> None:
    """The API key is in no output line, journal byte or report."""
    server.config = MockConfig(api_key=KEY, rate_500=0.1, seed=6)
    write_requests(tmp_path / "in.jsonl", 50)
    out = tmp_path / "out.jsonl"
    report = await arun_file(tmp_path / "in.jsonl", settings(server, out))
    secret = KEY.encode()
    for p in tmp_path.iterdir():
        assert secret not in p.read_bytes(), p
    assert KEY not in report.to_json()


async def test_output_without_a_journal(server: MockServer, tmp_path: Path) -> None:
    """journal=None still writes the output (no resume, a fresh file)."""
    bodies = write_requests(tmp_path / "in.jsonl", 30)
    out = tmp_path / "out.jsonl"
    out.write_text("stale\n")
    report = await arun_file(tmp_path / "in.jsonl", settings(server, out, journal=None))
    assert report.counts["ok"] == 30
    check_complete(out, bodies)
    assert not (tmp_path / "out.jsonl.conveyor.db").exists()


async def test_spent_budget_429_pauses_but_a_random_one_does_not(
    server: MockServer, tmp_path: Path
) -> None:
    """Injected 429s without rate-limit headers are retried item by item:
    5% of them never pause the whole run (no snapshot ever shows a global pause),
    while each refused item waits out its own Retry-After and succeeds."""
    server.config = MockConfig(api_key=KEY, rate_429=0.05, retry_after=1.0, seed=8)
    bodies = write_requests(tmp_path / "in.jsonl", 300)
    out = tmp_path / "out.jsonl"
    pauses: list[float] = []
    run = settings(
        server,
        out,
        concurrency=50,
        on_progress=lambda snap: pauses.append(snap.paused_for),
        progress_interval=0.05,
    )
    report = await arun_file(tmp_path / "in.jsonl", run)
    assert report.counts["ok"] == 300
    assert report.extra.get("rate_limited", 0) > 0  # the 429s did happen
    assert len(pauses) > 1 and max(pauses) == 0.0
    check_complete(out, bodies)


async def test_an_existing_output_is_never_truncated_by_a_new_journal(
    server: MockServer, tmp_path: Path
) -> None:
    """An output file this journal did not write (its journal deleted, another
    run's file) is refused, not truncated; --force overwrites it."""
    bodies = write_requests(tmp_path / "in.jsonl", 10)
    out = tmp_path / "out.jsonl"
    out.write_text("precious\n")
    with pytest.raises(conveyor.ConveyorError, match="already exists"):
        await arun_file(tmp_path / "in.jsonl", settings(server, out))
    assert out.read_text() == "precious\n"
    assert server.stats.requests == 0
    (tmp_path / "out.jsonl.conveyor.db").unlink()
    report = await arun_file(tmp_path / "in.jsonl", settings(server, out, force=True))
    assert report.counts["ok"] == 10
    check_complete(out, bodies)


async def test_default_concurrency_is_auto_on_a_server_without_limits(
    server: MockServer, tmp_path: Path
) -> None:
    """Auto is the default (`DEFAULT_AUTO`): told no concurrency, against a
    server that queues and sends no rate-limit headers, the run finds the
    concurrency from latency and keeps doing so to the end."""
    server.config = MockConfig(api_key=KEY, capacity=8, service_time=0.02, seed=2)
    write_requests(tmp_path / "in.jsonl", 200)
    report = await arun_file(
        tmp_path / "in.jsonl", settings(server, None, concurrency=None, journal=None)
    )
    assert report.counts["ok"] == 200
    auto = report.extra["concurrency_auto"]
    assert auto["gave_way"] is None
    assert auto["compared"] == "per output token"


async def test_default_gives_way_to_the_headers_of_a_provider(
    server: MockServer, tmp_path: Path
) -> None:
    """With auto as the default, told no concurrency, against a server that
    sends x-ratelimit-* headers, the controller gives way at the first
    answer: a fixed 100 at most in flight, paced by the server's budget (the
    header-driven behaviour), and the report says why."""
    server.config = MockConfig(api_key=KEY, rpm=6000, limit_window=1.0, latency=0.05, seed=4)
    write_requests(tmp_path / "in.jsonl", 300)
    s = settings(server, None, concurrency=None, limit_window=1.0, journal=None)
    report = await arun_file(tmp_path / "in.jsonl", s)
    assert report.counts["ok"] == 300
    auto = report.extra["concurrency_auto"]
    assert "rate-limit headers" in auto["gave_way"]
    assert auto["final"] == 100
    assert auto["history"][-1][2].startswith("gave way")
    assert server.stats.max_in_flight <= 100


def test_concurrency_options_keep_what_the_user_gave(monkeypatch: pytest.MonkeyPatch) -> None:
    """A number or "auto" is taken as given; an absent one is auto until the
    server shows limits (then a fixed 100), a fixed 100 with `DEFAULT_AUTO`
    off, and on Ray always 100."""
    from conveyor.openai._run import concurrency_options

    assert concurrency_options(RunSettings(concurrency=7)) == {
        "concurrency": 7,
        "concurrency_min": None,
        "concurrency_max": None,
    }
    assert "auto_until_limits" not in concurrency_options(RunSettings(concurrency="auto"))
    default = concurrency_options(RunSettings())
    assert default["concurrency"] == "auto" and default["auto_until_limits"] == 100
    assert concurrency_options(RunSettings(ray="local"))["concurrency"] == 100
    monkeypatch.setattr("conveyor.openai._run.DEFAULT_AUTO", False)
    assert concurrency_options(RunSettings()) == {
        "concurrency": 100,
        "concurrency_min": None,
        "concurrency_max": None,
    }


async def test_a_slow_answer_times_out_and_is_written_as_timeout(
    server: MockServer, tmp_path: Path
) -> None:
    """An answer slower than `timeout` is cut off, its line says `timeout` with the
    attempts made, and the run reports it as timed out; nothing hangs."""
    server.config = MockConfig(api_key=KEY, latency=5.0)
    write_requests(tmp_path / "in.jsonl", 3)
    out = tmp_path / "out.jsonl"
    report = await arun_file(
        tmp_path / "in.jsonl", settings(server, out, timeout=0.2, retries=1, breaker=False)
    )
    assert report.counts["timed_out"] == 3
    lines = list(read_output(out))
    assert len(lines) == 3
    for ln in lines:
        assert ln["response"] is None
        assert ln["error"]["code"] == "timeout"
        assert "exceeded the timeout of 0.2s" in ln["error"]["message"]
        assert "after 2 attempt(s)" in ln["error"]["message"]
