"""The simulated server's Files and Batch API, driven by the official openai SDK unchanged.

The SDK parses every answer into its own types (`FileObject`, `Batch`, ...), so a test that
passes proves the shapes are the ones the SDK expects from the real API.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import openai
import orjson
import pytest
from openai.types import Batch, FileObject

from _batches import FINAL, lines_of, wait_for
from _procs import ready_line, stop
from conveyor._base._exceptions import ConfigError
from conveyor.mock import MockConfig, MockServer, count_prompt_tokens, expected_content
from conveyor.mock._batches import fails_in_batch

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

KEY = "sk-test"
# Seconds any batch in these tests may take to reach a final state: polled, so
# generous (a loaded machine is slow, a working one is done in well under a second).
DEADLINE = 60.0


def request(
    i: int, *, model: str = "mock-gpt", url: str = "/v1/chat/completions"
) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": f"question {i}"}]}
    return {"custom_id": f"req-{i}", "method": "POST", "url": url, "body": body}


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


@pytest.fixture
async def served() -> AsyncIterator[tuple[MockServer, openai.AsyncOpenAI]]:
    server = MockServer(MockConfig(api_key=KEY, batch_speed=None))
    async with server:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key=KEY, max_retries=0)
        try:
            yield server, client
        finally:
            await client.close()


async def upload(client: openai.AsyncOpenAI, data: bytes, name: str = "in.jsonl") -> FileObject:
    return await client.files.create(file=(name, data), purpose="batch")


async def submit(client: openai.AsyncOpenAI, data: bytes) -> Batch:
    file = await upload(client, data)
    return await client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )


def wait_sync(client: openai.OpenAI, file_id: str) -> Batch:
    """Create a batch over `file_id` with the sync client and poll it to a final state."""
    batch = client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    end = time.monotonic() + DEADLINE
    while batch.status not in FINAL:
        assert time.monotonic() < end, f"batch still {batch.status} after {DEADLINE}s"
        time.sleep(0.02)
        batch = client.batches.retrieve(batch.id)
    return batch


async def test_a_batch_goes_through_its_lifecycle_and_answers_like_online(
    served: tuple[MockServer, openai.AsyncOpenAI],
) -> None:
    """Upload, create, poll to completed: counts and usage right, each line's body is the
    answer the same request gets from /v1/chat/completions, in the Batch output format."""
    server, client = served
    requests = [request(i) for i in range(30)]
    file = await upload(client, jsonl(requests))
    assert (file.object, file.purpose, file.bytes) == ("file", "batch", len(jsonl(requests)))
    batch = await client.batches.create(
        input_file_id=file.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"run": "t1"},
    )
    assert batch.status == "validating"
    assert batch.id.startswith("batch_") and batch.metadata == {"run": "t1"}
    done = await wait_for(client, batch.id)
    assert done.status == "completed"
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed) == (30, 30)
    assert done.request_counts.failed == 0 and done.error_file_id is None
    assert done.in_progress_at and done.finalizing_at and done.completed_at
    assert done.model == "mock-gpt"
    out = await lines_of(client, done.output_file_id)
    assert set(out) == {r["custom_id"] for r in requests}
    online = await client.chat.completions.create(
        model="mock-gpt", messages=[{"role": "user", "content": "question 7"}]
    )
    line = out["req-7"]
    assert line["error"] is None and line["id"].startswith("batch_req_")
    assert line["response"]["status_code"] == 200
    body = line["response"]["body"]
    assert body["choices"][0]["message"]["content"] == online.choices[0].message.content
    assert body["choices"][0]["message"]["content"] == expected_content(requests[7]["body"])
    assert body["usage"]["prompt_tokens"] == count_prompt_tokens(requests[7]["body"])
    output = await client.files.retrieve(done.output_file_id or "")
    assert output.purpose == "batch_output"
    assert server.stats.batch_lines == 30
    assert done.usage is not None
    assert done.usage.input_tokens == sum(count_prompt_tokens(r["body"]) for r in requests)
    assert done.usage.output_tokens == 30 * server.config.completion_tokens
    assert done.usage.total_tokens == done.usage.input_tokens + done.usage.output_tokens


async def test_injected_line_errors_go_to_the_error_file(
    served: tuple[MockServer, openai.AsyncOpenAI],
) -> None:
    """With a line error rate, the same custom_ids fail every time, as 500 responses in
    the error file; the rest are in the output file; the counts add up."""
    server, client = served
    server.config = replace(server.config, batch_error_rate=0.2)
    requests = [request(i) for i in range(200)]
    failing = {r["custom_id"] for r in requests if fails_in_batch(r["custom_id"], 0.2)}
    assert 10 < len(failing) < 80
    done = await wait_for(client, (await submit(client, jsonl(requests))).id)
    assert done.status == "completed"
    assert done.request_counts is not None
    assert done.request_counts.failed == len(failing)
    assert done.request_counts.completed == 200 - len(failing)
    errors = await lines_of(client, done.error_file_id)
    assert set(errors) == failing
    assert {e["response"]["status_code"] for e in errors.values()} == {500}
    assert (
        set(await lines_of(client, done.output_file_id))
        == {r["custom_id"] for r in requests} - failing
    )


async def test_an_expired_batch_keeps_its_finished_lines(
    served: tuple[MockServer, openai.AsyncOpenAI],
) -> None:
    """A batch that expires part way keeps the lines it finished in the output file; the
    others are in the error file with code batch_expired; each custom_id is in one."""
    server, client = served
    server.config = replace(server.config, batch_speed=100.0, batch_expire_after=0.5)
    requests = [request(i) for i in range(400)]
    done = await wait_for(client, (await submit(client, jsonl(requests))).id)
    assert done.status == "expired" and done.expired_at is not None
    out = await lines_of(client, done.output_file_id)
    errors = await lines_of(client, done.error_file_id)
    assert 0 < len(out) < 400
    assert set(out) | set(errors) == {r["custom_id"] for r in requests}
    assert not set(out) & set(errors)
    assert {e["error"]["code"] for e in errors.values()} == {"batch_expired"}
    assert all(e["response"] is None for e in errors.values())
    assert done.request_counts is not None and done.request_counts.completed == len(out)


async def test_cancel_keeps_finished_lines_and_ends_cancelled(
    served: tuple[MockServer, openai.AsyncOpenAI],
) -> None:
    """Cancelling an in-progress batch answers 'cancelling', then it becomes 'cancelled'
    with the lines finished so far in its output file."""
    server, client = served
    server.config = replace(server.config, batch_speed=200.0, batch_cancel_delay=0.2)
    batch = await submit(client, jsonl([request(i) for i in range(2000)]))
    running = await wait_for(client, batch.id, {"in_progress"})
    while running.request_counts is None or running.request_counts.completed == 0:
        running = await client.batches.retrieve(batch.id)
    cancelling = await client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    done = await wait_for(client, batch.id)
    assert done.status == "cancelled" and done.cancelled_at is not None
    out = await lines_of(client, done.output_file_id)
    assert 0 < len(out) < 2000
    assert done.request_counts is not None and done.request_counts.completed == len(out)


async def test_stuck_batches_stay_until_cancelled(
    served: tuple[MockServer, openai.AsyncOpenAI],
) -> None:
    """A batch stuck in validating or in_progress does not move on its own; a cancel
    ends it (cancelled, no output)."""
    server, client = served
    for stuck in ("validating", "in_progress"):
        server.config = replace(server.config, batch_stuck=stuck)
        batch = await submit(client, jsonl([request(i) for i in range(3)]))
        await wait_for(client, batch.id, {stuck})
        # It stays: other batches created meanwhile (not stuck) complete past it.
        server.config = replace(server.config, batch_stuck=None)
        other = await wait_for(client, (await submit(client, jsonl([request(9)]))).id)
        assert other.status == "completed"
        assert (await client.batches.retrieve(batch.id)).status == stuck
        await client.batches.cancel(batch.id)
        done = await wait_for(client, batch.id)
        assert done.status == "cancelled" and done.output_file_id is None


async def test_line_and_byte_limits_fail_the_batch(
    served: tuple[MockServer, openai.AsyncOpenAI],
) -> None:
    """More lines or bytes than the limits: the batch fails in validation with an error
    that says which limit, as errors.data."""
    server, client = served
    server.config = replace(server.config, batch_max_lines=10)
    done = await wait_for(client, (await submit(client, jsonl([request(i) for i in range(11)]))).id)
    assert done.status == "failed" and done.failed_at is not None
    assert done.errors is not None and done.errors.data
    assert done.errors.data[0].code == "too_many_requests"
    assert done.errors.data[0].line == 11
    ok = await wait_for(client, (await submit(client, jsonl([request(i) for i in range(10)]))).id)
    assert ok.status == "completed"
    server.config = replace(server.config, batch_max_bytes=100)
    big = await wait_for(client, (await submit(client, jsonl([request(i) for i in range(3)]))).id)
    assert big.status == "failed"
    assert big.errors is not None and big.errors.data
    assert big.errors.data[0].code == "file_too_large"


async def test_enqueued_token_limit_fails_a_batch_as_the_api_does(
    served: tuple[MockServer, openai.AsyncOpenAI],
) -> None:
    """With the model's enqueued tokens held by an unfinished batch, a batch that would
    pass the limit fails with token_limit_exceeded; once the first finishes, it fits."""
    server, client = served
    requests = [request(i) for i in range(20)]
    tokens = sum(count_prompt_tokens(r["body"]) for r in requests)
    server.config = replace(
        server.config, batch_enqueued_tokens=tokens + tokens // 2, batch_stuck="in_progress"
    )
    first = await submit(client, jsonl(requests))
    await wait_for(client, first.id, {"in_progress"})
    server.config = replace(server.config, batch_stuck=None)
    second = await wait_for(client, (await submit(client, jsonl(requests))).id)
    assert second.status == "failed"
    assert second.errors is not None and second.errors.data
    error = second.errors.data[0]
    assert error.code == "token_limit_exceeded"
    assert (
        error.message is not None and "Enqueued token limit reached for mock-gpt" in error.message
    )
    await client.batches.cancel(first.id)
    await wait_for(client, first.id)
    third = await wait_for(client, (await submit(client, jsonl(requests))).id)
    assert third.status == "completed"


async def test_malformed_lines_are_reported_per_line(
    served: tuple[MockServer, openai.AsyncOpenAI],
) -> None:
    """Bad JSON, a duplicate custom_id, a wrong url and a missing body each fail the batch
    with an error naming the line."""
    _server, client = served
    good = [request(0), request(1)]
    bad_url = request(2, url="/v1/embeddings")
    no_body = {"custom_id": "req-3", "method": "POST", "url": "/v1/chat/completions"}
    data = jsonl(good) + b"{not json\n" + jsonl([request(0), bad_url, no_body])
    done = await wait_for(client, (await submit(client, data)).id)
    assert done.status == "failed" and done.errors is not None and done.errors.data
    assert [(e.line, e.code) for e in done.errors.data] == [
        (3, "invalid_json_line"),
        (4, "duplicate_custom_id"),
        (5, "invalid_url"),
        (6, "missing_required_parameter"),
    ]


async def test_errors_have_the_api_shapes(
    served: tuple[MockServer, openai.AsyncOpenAI],
) -> None:
    """Unknown ids are 404 NotFoundError, a batch over a file of another purpose or an
    unknown purpose is 400, a missing key 401: the SDK maps each to its error class."""
    server, client = served
    with pytest.raises(openai.NotFoundError) as missing:
        await client.batches.retrieve("batch_doesnotexist")
    assert missing.value.body is not None
    with pytest.raises(openai.NotFoundError):
        await client.files.retrieve("file-../../etc/passwd")
    with pytest.raises(openai.NotFoundError):
        await client.files.content("file-nope")
    with pytest.raises(openai.NotFoundError):
        await client.batches.cancel("batch_nope")
    tuned = await client.files.create(file=("t.jsonl", b"{}\n"), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as wrong:
        await client.batches.create(
            input_file_id=tuned.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert wrong.value.param == "input_file_id"
    with pytest.raises(openai.BadRequestError) as purpose:
        await client.files.create(file=("t.jsonl", b"{}\n"), purpose="nonsense")  # type: ignore[arg-type]
    assert purpose.value.param == "purpose"
    with pytest.raises(openai.BadRequestError):
        await client.files.create(file=("t.txt", b"{}\n"), purpose="batch")
    with pytest.raises(openai.BadRequestError):
        await client.batches.create(
            input_file_id=tuned.id,
            endpoint="/v1/nothing",  # type: ignore[arg-type]
            completion_window="24h",
        )
    anonymous = openai.AsyncOpenAI(base_url=server.base_url, api_key="wrong", max_retries=0)
    try:
        with pytest.raises(openai.AuthenticationError):
            await anonymous.files.list()
    finally:
        await anonymous.close()


async def test_lists_delete_and_pages(
    served: tuple[MockServer, openai.AsyncOpenAI],
) -> None:
    """batches.list pages newest first with limit/after (has_more, the SDK's
    auto-paging sees each once); files.list filters by purpose; delete removes a file;
    each poll of a batch is logged; an upload past max_upload_bytes is a 413."""
    server, client = served
    ids = [(await submit(client, jsonl([request(i)]))).id for i in range(5)]
    page = await client.batches.list(limit=2)
    assert [b.id for b in page.data] == ids[::-1][:2] and page.has_more
    every = [b.id async for b in client.batches.list(limit=2)]
    assert every == ids[::-1]
    uploads = await client.files.list(purpose="batch")
    assert len(uploads.data) == 5 and all(f.purpose == "batch" for f in uploads.data)
    gone = await client.files.delete(uploads.data[0].id)
    assert gone.deleted and gone.id == uploads.data[0].id
    with pytest.raises(openai.NotFoundError):
        await client.files.retrieve(gone.id)
    for batch_id in ids:
        await wait_for(client, batch_id)
    assert all(len(server.stats.batch_polls[b]) >= 1 for b in ids)
    server.config = replace(server.config, max_upload_bytes=100)
    with pytest.raises(openai.APIStatusError) as big:
        await upload(client, jsonl([request(i) for i in range(5)]))
    assert big.value.status_code == 413


def test_sync_sdk_against_the_thread_variant() -> None:
    """The sync OpenAI client runs a batch end to end against running_in_thread."""
    server = MockServer(MockConfig(batch_speed=None))
    with server.running_in_thread() as url:
        client = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
        try:
            file = client.files.create(file=("a.jsonl", jsonl([request(1)])), purpose="batch")
            batch = wait_sync(client, file.id)
            assert batch.status == "completed" and batch.output_file_id is not None
            text = client.files.content(batch.output_file_id).text
        finally:
            client.close()
    assert orjson.loads(text)["custom_id"] == "req-1"


def test_cli_flags_reach_the_batch_api() -> None:
    """`conveyor mock --batch-max-lines 2 --batch-error-rate 1`: a 3-line batch fails on
    the line limit and a 2-line batch completes with both lines in the error file."""
    command = [sys.executable, "-m", "conveyor.cli", "mock", "--port", "0", "--batch-speed", "0",
               "--batch-max-lines", "2", "--batch-error-rate", "1"]  # fmt: skip
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        match = ready_line(proc.stderr, r"http://127\.0\.0\.1:\d+/v1")
        client = openai.OpenAI(base_url=match.group(0), api_key="x", max_retries=0)
        try:
            results = []
            for count in (3, 2):
                data = jsonl([request(i) for i in range(count)])
                file = client.files.create(file=("a.jsonl", data), purpose="batch")
                results.append(wait_sync(client, file.id))
        finally:
            client.close()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        stop(proc)
    too_many, failing = results
    assert too_many.status == "failed"
    assert too_many.errors is not None and too_many.errors.data
    assert too_many.errors.data[0].code == "too_many_requests"
    assert failing.status == "completed" and failing.request_counts is not None
    assert failing.request_counts.failed == 2 and failing.output_file_id is None


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"batch_speed": 0}, "batch_speed"),
        ({"batch_error_rate": 2}, "batch_error_rate"),
        ({"batch_stuck": "finalizing"}, "batch_stuck"),
        ({"batch_max_lines": 0}, "batch_max_lines"),
        ({"batch_enqueued_tokens": 0}, "batch_enqueued_tokens"),
    ],
)
def test_batch_config_rejects_bad_values(kwargs: dict[str, Any], option: str) -> None:
    """Out-of-range batch settings raise ConfigError naming the option."""
    with pytest.raises(ConfigError) as info:
        MockConfig(**kwargs)
    assert info.value.option == option
