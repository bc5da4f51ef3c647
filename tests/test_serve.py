"""`conveyor serve` in front of the simulated server, driven by the official openai SDK.

The SDK is used unchanged (`AsyncOpenAI(base_url=serve)`), so every object it parses
proves the shape; the results are compared with `conveyor run` on the same file.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import openai
import orjson
import pytest
from openai.types import Batch

from _batches import FINAL, lines_of
from _batches import wait_for as wait_batch
from _procs import stop
from conveyor.mock import MockConfig, MockServer
from conveyor.openai import RunSettings, arun_file
from conveyor.serve import BatchServer, ServeSettings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

KEY = "serve-key"
UPSTREAM_KEY = "sk-upstream-secret-0123456789"
DEADLINE = 60.0


def request(i: int) -> dict[str, Any]:
    body = {"model": "mock-gpt", "messages": [{"role": "user", "content": f"question {i}"}]}
    return {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}


def jsonl(n: int, start: int = 0) -> bytes:
    return b"".join(orjson.dumps(request(i)) + b"\n" for i in range(start, start + n))


class Stack:
    """The mock (the upstream) and `conveyor serve` in front of it, in this process."""

    def __init__(self, mock: MockServer, server: BatchServer, client: openai.AsyncOpenAI) -> None:
        self.mock, self.server, self.client = mock, server, client


@pytest.fixture
async def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Stack]:
    monkeypatch.setenv("TEST_UPSTREAM_KEY", UPSTREAM_KEY)
    mock = MockServer(MockConfig(api_key=UPSTREAM_KEY))
    async with mock:
        settings = ServeSettings(
            upstream=mock.base_url,
            data=tmp_path / "data",
            port=0,
            api_key=KEY,
            upstream_key_env="TEST_UPSTREAM_KEY",
            concurrency=8,
        )
        async with BatchServer(settings) as server:
            client = openai.AsyncOpenAI(base_url=server.base_url, api_key=KEY, max_retries=0)
            try:
                yield Stack(mock, server, client)
            finally:
                await client.close()


async def submit(client: openai.AsyncOpenAI, data: bytes, window: str = "24h") -> Batch:
    file = await client.files.create(file=("in.jsonl", data), purpose="batch")
    return await client.batches.create(
        input_file_id=file.id,
        endpoint="/v1/chat/completions",
        completion_window=window,  # type: ignore[arg-type]
    )


async def wait_for(client: openai.AsyncOpenAI, batch_id: str, states: set[str] = FINAL) -> Batch:
    return await wait_batch(client, batch_id, states, within=DEADLINE)


def answer(row: dict[str, Any]) -> tuple[int, str, dict[str, int]]:
    """What must match between two runs: status, text and usage (not ids or times)."""
    body = row["response"]["body"]
    return row["response"]["status_code"], body["choices"][0]["message"]["content"], body["usage"]


async def test_sdk_batch_matches_conveyor_run_and_another_can_be_cancelled(
    stack: Stack, tmp_path: Path
) -> None:
    """Upload, create, poll, download through serve: the output equals `conveyor run` on
    the same file, line for line; a second, slow batch is cancelled and keeps what it
    finished."""
    client = stack.client
    data = jsonl(60)
    done = await wait_for(client, (await submit(client, data)).id)
    assert done.status == "completed" and done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed) == (60, 60)
    served = await lines_of(client, done.output_file_id)

    source = tmp_path / "in.jsonl"
    source.write_bytes(data)
    settings = RunSettings(
        output=tmp_path / "run.jsonl", base_url=stack.mock.base_url,
        api_key_env="TEST_UPSTREAM_KEY", concurrency=8,
    )  # fmt: skip
    await arun_file(source, settings)
    ran = {
        row["custom_id"]: row
        for row in map(orjson.loads, (tmp_path / "run.jsonl").read_bytes().splitlines())
    }
    assert set(served) == set(ran) == {f"req-{i}" for i in range(60)}
    assert all(answer(served[k]) == answer(ran[k]) for k in ran)

    stack.mock.config = replace(stack.mock.config, latency=0.05)
    slow = await submit(client, jsonl(400))
    running = await wait_for(client, slow.id, {"in_progress"})
    end = time.monotonic() + DEADLINE
    while running.request_counts is None or running.request_counts.completed < 8:
        assert time.monotonic() < end
        await asyncio.sleep(0.05)
        running = await client.batches.retrieve(slow.id)
    assert (await client.batches.cancel(slow.id)).status == "cancelling"
    cancelled = await wait_for(client, slow.id)
    assert cancelled.status == "cancelled"
    kept = await lines_of(client, cancelled.output_file_id)
    assert 8 <= len(kept) < 400


async def test_bad_requests_get_the_api_errors(stack: Stack) -> None:
    """Missing or wrong key 401, unknown or crafted file ids 404, a file of another
    purpose 400, malformed lines reported per line, an upload past the limit 413."""
    client = stack.client
    for key in (None, "wrong"):
        headers = {} if key is None else {"Authorization": f"Bearer {key}"}
        anonymous = openai.AsyncOpenAI(
            base_url=stack.server.base_url, api_key="unused", max_retries=0,
            default_headers=headers or {"Authorization": ""},
        )  # fmt: skip
        try:
            with pytest.raises(openai.AuthenticationError):
                await anonymous.batches.list()
            with pytest.raises(openai.AuthenticationError):
                await anonymous.models.list()  # forwarded routes too
        finally:
            await anonymous.close()
    for crafted in ("file-nope", "..%2F..%2Fetc%2Fpasswd", "file-" + "a" * 24):
        with pytest.raises(openai.NotFoundError):
            await client.files.content(crafted)
    with pytest.raises(openai.NotFoundError):
        await client.batches.retrieve("batch_nope")
    other = await client.files.create(file=("t.jsonl", jsonl(1)), purpose="user_data")
    with pytest.raises(openai.BadRequestError) as wrong:
        await client.batches.create(
            input_file_id=other.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert wrong.value.param == "input_file_id"
    bad = await wait_for(client, (await submit(client, jsonl(2) + b"nope\n" + jsonl(1))).id)
    assert bad.status == "failed" and bad.errors is not None and bad.errors.data
    assert [(e.line, e.code) for e in bad.errors.data] == [
        (3, "invalid_json_line"),
        (4, "duplicate_custom_id"),
    ]
    stack.server.service.limits = replace(stack.server.service.limits, max_upload_bytes=1000)
    with pytest.raises(openai.APIStatusError) as big:
        await client.files.create(file=("big.jsonl", jsonl(50)), purpose="batch")
    assert big.value.status_code == 413
    assert not list((stack.server.settings.data / "files").glob("*.part"))


async def test_other_requests_are_forwarded_with_the_upstream_key(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    """Chat completions and models go to the upstream, which gets its own key; the
    upstream's errors come back unchanged; its key is in no response, file or log."""
    caplog.set_level(logging.DEBUG)
    client = stack.client
    chat = await client.chat.completions.create(
        model="mock-gpt", messages=[{"role": "user", "content": "hello"}]
    )
    assert chat.choices[0].message.content
    assert "mock-gpt" in {m.id for m in (await client.models.list()).data}
    with pytest.raises(openai.NotFoundError) as missing:
        await client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "x"}]
        )
    assert missing.value.code == "model_not_found"
    done = await wait_for(client, (await submit(client, jsonl(5))).id)
    assert done.status == "completed"
    assert stack.mock.stats.statuses[401] == 0
    secret = UPSTREAM_KEY.encode()
    for path in stack.server.settings.data.rglob("*"):
        if path.is_file():
            assert secret not in path.read_bytes(), path
    assert UPSTREAM_KEY not in caplog.text
    raw = await client.with_raw_response.models.list()
    assert UPSTREAM_KEY not in raw.text and UPSTREAM_KEY not in str(raw.headers)


async def test_two_batches_at_once_share_the_upstream_and_both_progress(stack: Stack) -> None:
    """Two batches run at the same time against an upstream with a request limit (an
    exact 120/s): both progress together, share it fairly (when one finishes the other
    is 80% done), and spend the limit as one (almost no 429s), not as two."""
    client = stack.client
    stack.mock.config = replace(
        stack.mock.config, rpm=120, limit_window=1.0, limit_model="sliding", latency=0.01
    )
    first, second = await submit(client, jsonl(200)), await submit(client, jsonl(200, 1000))
    end = time.monotonic() + DEADLINE
    both = False
    while not both:
        assert time.monotonic() < end, "the two batches never progressed together"
        a, b = await asyncio.gather(*(client.batches.retrieve(x.id) for x in (first, second)))
        both = all(
            x.status == "in_progress" and x.request_counts is not None
            and x.request_counts.completed > 0
            for x in (a, b)
        )  # fmt: skip
        await asyncio.sleep(0.05)
    # A fair share: when one finishes, the other has done at least 80% of its lines.
    end = time.monotonic() + DEADLINE
    while True:
        a, b = await asyncio.gather(*(client.batches.retrieve(x.id) for x in (first, second)))
        if "completed" in (a.status, b.status):
            break
        assert time.monotonic() < end, "neither batch finished"
        await asyncio.sleep(0.05)
    other = b if a.status == "completed" else a
    assert other.request_counts is not None
    assert other.status == "completed" or other.request_counts.completed >= 160
    for batch in (first, second):
        done = await wait_for(client, batch.id)
        assert done.status == "completed" and done.request_counts is not None
        assert done.request_counts.completed == 200
    # One budget for the upstream: a rare 429 while it is learned (1 measured here; with a
    # budget per batch, 17: each spends what the other already has).
    assert stack.mock.stats.refused["rate"] <= 6


async def test_completion_window_expiry_keeps_finished_lines(stack: Stack) -> None:
    """A batch whose completion window passes is expired: the lines answered are in the
    output file, the rest in the error file as batch_expired."""
    client = stack.client
    stack.mock.config = replace(stack.mock.config, latency=0.1)
    done = await wait_for(client, (await submit(client, jsonl(400), window="2s")).id)
    assert done.status == "expired"
    out = await lines_of(client, done.output_file_id)
    errors = await lines_of(client, done.error_file_id)
    assert 0 < len(out) < 400
    assert set(out) | set(errors) == {f"req-{i}" for i in range(400)}
    assert {e["error"]["code"] for e in errors.values()} == {"batch_expired"}


CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
)


async def test_status_page_lists_batches(stack: Stack) -> None:
    """GET / is one HTML page (no external assets, escaped metadata) listing each batch
    with its status and line counts; from another host it needs the key."""
    client = stack.client
    file = await client.files.create(file=("in.jsonl", jsonl(3)), purpose="batch")
    batch = await client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h",
        metadata={"note": "<script>alert(1)</script>"},
    )  # fmt: skip
    await wait_for(client, batch.id)
    root = stack.server.base_url.removesuffix("/v1") + "/"
    page = (await client._client.get(root)).text  # the SDK's own HTTP client
    assert batch.id in page and "completed" in page and "3 / 3" in page
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert not re.search(r'(src|href)="https?://', page)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
@pytest.mark.timeout(180)
async def test_status_page_renders_in_headless_chromium(stack: Stack, tmp_path: Path) -> None:
    """Rendered by headless Chromium, the page's table holds a row per batch."""
    client = stack.client
    ids = [(await submit(client, jsonl(2, 10 * i))).id for i in range(3)]
    for batch_id in ids:
        await wait_for(client, batch_id)
    assert CHROMIUM is not None
    root = stack.server.base_url.removesuffix("/v1") + "/"
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-background-networking", "--disable-component-update",
               f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", root]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err[-2000:]
    dom = out.decode()
    assert '<table id="batches">' in dom
    assert all(batch_id in dom for batch_id in ids)
    assert dom.count("<tr>") == 4  # the head and three batches


# -- kill -9 ------------------------------------------------------------------------


# Answers that had arrived but were not yet committed at the kill: the sink commits each
# as soon as its writer is free, so a handful at most (issue 12's crash window).
IN_JOURNAL_BUFFER = (
    50  # measured on 2 loaded cores: +5 to +15 for one kill, +1.6 per kill over five
)


def start_serve(upstream: str, data: Path) -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, "-m", "conveyor.cli", "serve", "--upstream", upstream,
               "--port", "0", "--data", str(data), "--no-auth",
               "--upstream-key-env", "TEST_UPSTREAM_KEY", "--concurrency", "16"]  # fmt: skip
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    match = re.search(r"http://127\.0\.0\.1:\d+/v1", line)
    assert match, line
    return proc, match.group(0)


def kill_and_resume(tmp_path: Path, *, lines: int, kills: int) -> None:
    """Kill -9 serve `kills` times while a batch runs, restart it each time; the batch
    completes with each custom_id once, and the upstream saw each line at most once
    beyond what was in flight at each kill: the 16 requests out, and the answers not yet
    group-committed to the journal (at most 1,000 buffered, or 0.2 s of them)."""
    mock = MockServer(MockConfig(latency=0.005))
    data = tmp_path / "data"
    with mock.running_in_thread() as upstream:
        proc, url = start_serve(upstream, data)
        procs = [proc]
        try:
            client = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
            file = client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
            batch = client.batches.create(
                input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            client.close()
            for k in range(kills):
                target = lines * (k + 1) // (kills + 1)
                end = time.monotonic() + DEADLINE
                while mock.stats.by_path["/v1/chat/completions"] < target:
                    assert time.monotonic() < end, "serve stopped sending"
                    time.sleep(0.005)
                proc.kill()
                proc.wait(timeout=10)
                proc, url = start_serve(upstream, data)
                procs.append(proc)
            client = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
            end = time.monotonic() + DEADLINE * 3
            while (batch := client.batches.retrieve(batch.id)).status not in FINAL:
                assert time.monotonic() < end, f"batch still {batch.status}"
                time.sleep(0.05)
            assert batch.status == "completed" and batch.output_file_id is not None
            rows = client.files.content(batch.output_file_id).content.splitlines()
            client.close()
        finally:
            for p in procs:
                stop(p)
    ids = [orjson.loads(row)["custom_id"] for row in rows]
    assert len(ids) == len(set(ids)) == lines
    sent = mock.stats.by_path["/v1/chat/completions"]
    print(f"kill -9 x{kills} over {lines} lines: upstream got {sent - lines} repeats")
    assert lines <= sent <= lines + (16 + IN_JOURNAL_BUFFER) * kills


def test_kill_9_once_and_resume(tmp_path: Path) -> None:
    """One kill -9 in the middle of a 1,500-line batch: it completes after the restart,
    each custom_id once, upstream duplicates bounded by the requests in flight."""
    kill_and_resume(tmp_path, lines=1500, kills=1)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_kill_9_five_times_during_20000_lines(tmp_path: Path) -> None:
    """Issue 15's measure: 5 kills -9 during a 20,000-line batch, restarting each time."""
    kill_and_resume(tmp_path, lines=20_000, kills=5)


def test_cli_needs_a_key_or_no_auth_and_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """`conveyor serve` will not start without its own key unless --no-auth is given, and
    not on a non-loopback host without --allow-remote; the message says what to do."""
    from click.testing import CliRunner

    from conveyor.cli._main import main

    monkeypatch.delenv("CONVEYOR_SERVE_API_KEY", raising=False)
    res = CliRunner().invoke(main, ["serve", "--upstream", "http://127.0.0.1:9/v1"])
    assert res.exit_code != 0
    assert "CONVEYOR_SERVE_API_KEY" in res.output and "--no-auth" in res.output
    res = CliRunner().invoke(
        main, ["serve", "--upstream", "http://127.0.0.1:9/v1", "--no-auth", "--host", "0.0.0.0"]
    )
    assert res.exit_code != 0 and "allow_remote" in res.output


async def test_file_ids_never_reach_the_disk_as_paths(stack: Stack) -> None:
    """Raw requests with traversal in the id (encoded or not) get the API's 404 body and
    nothing outside --data is read; ids are looked up, never joined into a path."""
    root = stack.server.base_url
    auth = {"Authorization": f"Bearer {KEY}"}
    async with aiohttp.ClientSession() as session:
        for raw in ("..%2F..%2F..%2Fetc%2Fpasswd", "%2e%2e", "file-..", "batch_..%2f"):
            for url in (f"{root}/files/{raw}/content", f"{root}/files/{raw}"):
                async with session.get(url, headers=auth) as resp:
                    body = await resp.read()
                    assert resp.status == 404, (url, resp.status)
                    assert b"root:" not in body
                    error = orjson.loads(body)["error"]
                    assert error["type"] == "invalid_request_error"
