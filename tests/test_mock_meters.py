"""The simulated server meters and refuses as real servers document it."""

from __future__ import annotations

import math
from datetime import datetime

import aiohttp
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor.mock import MockConfig, MockServer
from conveyor.mock._meters import (
    BucketMeter,
    FixedMeter,
    SlidingMeter,
    format_duration,
    ideal_finish,
    make_meter,
)


def chat(text: str, max_tokens: int = 10) -> dict[str, object]:
    return {
        "model": "mock-gpt",
        "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens,
    }


# ---- pure meters ---------------------------------------------------------------------


def test_openai_bucket_after_one_request_reads_4999_and_12ms() -> None:
    """A 5,000/min key after one request: remaining 4999, reset 12ms (a bucket
    holding the minute, refilled at 5000/60 per second)."""
    m = BucketMeter(5000, 60.0, burst=60.0)
    assert m.wait(0.0, 1) == 0.0
    m.take(0.0, 1)
    remaining, reset = m.state(0.0)
    assert remaining == 4999
    assert format_duration(reset) == "12ms"


def test_quantized_bucket_holds_one_second() -> None:
    """60,000/min enforced per second: 1,000 at once, then 1,000/s."""
    m = BucketMeter(60_000, 60.0, burst=1.0)
    assert m.capacity == 1000
    m.take(0.0, 1000)
    assert m.wait(0.0, 1) == pytest.approx(0.001)
    assert m.wait(0.5, 500) == 0.0


def test_fixed_window_restarts_whole() -> None:
    m = FixedMeter(10, 60.0, offset=50.0)  # starts 50 s into its first window
    m.wait(0.0, 1)
    m.take(0.0, 10)
    assert m.state(0.0) == (0.0, 10.0)
    assert m.wait(1.0, 1) == pytest.approx(9.0)
    assert m.wait(10.0, 10) == 0.0


def test_sliding_log_frees_a_window_after() -> None:
    m = SlidingMeter(2, 10.0)
    m.take(0.0, 1)
    m.take(4.0, 1)
    assert m.wait(5.0, 1) == pytest.approx(5.0)
    assert m.state(5.0) == (0.0, 9.0)


@settings(max_examples=200, deadline=None)
@given(
    model=st.sampled_from(["bucket", "fixed", "sliding"]),
    burst=st.sampled_from([1.0, 60.0]),
    gaps=st.lists(st.integers(0, 3000), min_size=1, max_size=80),
)
def test_no_meter_admits_more_than_its_model_allows(
    model: str, burst: float, gaps: list[int]
) -> None:
    """In any window, a meter admits at most limit (window models) or
    capacity + rate x window (the bucket)."""
    limit, window = 20.0, 6.0
    m = make_meter(model, limit, window=window, burst=burst)
    now, admitted = 0.0, []
    for gap in gaps:
        now += gap / 1000
        if m.wait(now, 1) == 0:
            m.take(now, 1)
            admitted.append(now)
    bound = limit if model != "bucket" else min(limit, limit / window * burst) + limit
    for end in admitted:
        inside = [t for t in admitted if end - window < t <= end]
        assert len(inside) <= bound + 1e-9


def test_ideal_finish_counts_the_initial_burst() -> None:
    """6,000/min in a 1 s bucket: 1,500 requests need (1500-100)/100 s; in a
    minute bucket 7,500 need (7500-6000)/100 s; a fixed window a minute."""
    one = {"requests": make_meter("bucket", 6000, burst=1.0)}
    assert ideal_finish(one, [{"requests": 1}] * 1500, latency=0.05) == pytest.approx(
        14.05, abs=0.01
    )
    minute = {"requests": make_meter("bucket", 6000, burst=60.0)}
    assert ideal_finish(minute, [{"requests": 1}] * 7500, latency=0.0) == pytest.approx(
        15.0, abs=0.01
    )
    fixed = {"requests": make_meter("fixed", 6000)}
    assert ideal_finish(fixed, [{"requests": 1}] * 7500, latency=0.0) == pytest.approx(
        60.0, abs=0.01
    )
    tokens = {"tokens": make_meter("bucket", 300_000, burst=60.0)}
    got = ideal_finish(tokens, [{"tokens": 516}] * 1000, latency=0.0)
    assert got == pytest.approx((516_000 - 300_000) / 5000, abs=0.2)


# ---- over loopback HTTP --------------------------------------------------------------


async def _post(session: aiohttp.ClientSession, url: str, body: object) -> aiohttp.ClientResponse:
    async with session.post(url, json=body) as resp:
        await resp.read()
        return resp


async def test_openai_headers_report_the_true_bucket() -> None:
    cfg = MockConfig(rpm=6000, tpm=300_000)
    async with MockServer(cfg) as server, aiohttp.ClientSession() as s:
        resp = await _post(s, server.base_url + "/chat/completions", chat("hi", max_tokens=100))
        h = resp.headers
        assert h["x-ratelimit-limit-requests"] == "6000"
        assert h["x-ratelimit-remaining-requests"] == "5999"
        assert h["x-ratelimit-reset-requests"] in ("10ms", "11ms")
        assert h["x-ratelimit-limit-tokens"] == "300000"
        charged = 300_000 - int(h["x-ratelimit-remaining-tokens"])
        assert charged >= 100  # the completion cap counts at admission


async def test_anthropic_headers_and_rate_limit_body() -> None:
    cfg = MockConfig(rpm=2, input_tpm=80_000, output_tpm=16_000, headers="anthropic")
    async with MockServer(cfg) as server, aiohttp.ClientSession() as s:
        url = server.base_url + "/chat/completions"
        first = await _post(s, url, chat("a"))
        h = first.headers
        assert h["anthropic-ratelimit-requests-limit"] == "2"
        assert h["anthropic-ratelimit-requests-remaining"] == "1"
        reset = datetime.fromisoformat(h["anthropic-ratelimit-requests-reset"])
        assert reset.tzinfo is not None
        assert int(h["anthropic-ratelimit-input-tokens-remaining"]) % 1000 == 0
        assert "x-ratelimit-limit-requests" not in h
        await _post(s, url, chat("b"))
        async with s.post(url, json=chat("c")) as third:
            body = await third.json()
            assert third.status == 429
            assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
            assert int(third.headers["retry-after"]) >= 1


async def test_no_headers_mode_still_enforces() -> None:
    cfg = MockConfig(rpm=1, headers="none", retry_after_header=False)
    async with MockServer(cfg) as server, aiohttp.ClientSession() as s:
        url = server.base_url + "/chat/completions"
        ok = await _post(s, url, chat("a"))
        assert not any(k.lower().startswith("x-ratelimit") for k in ok.headers)
        async with s.post(url, json=chat("b")) as refused:
            body = await refused.json()
            assert refused.status == 429 and "retry-after" not in refused.headers
            assert "Please try again in" in body["error"]["message"]
            assert "Limit 1, Used 1, Requested 1" in body["error"]["message"]
        assert server.stats.refused["rate"] == 1 and server.stats.admitted == 1


def test_sdk_sees_real_error_codes() -> None:
    """The official SDK parses our 429s as it parses OpenAI's: a rate limit and
    an exhausted quota have the codes providers send."""
    cfg = MockConfig(rpm=1, quota_after=2, headers="openai")
    server = MockServer(cfg)
    with server.running_in_thread() as url:
        client = openai.OpenAI(base_url=url, api_key="k", max_retries=0)
        client.chat.completions.create(**chat("a"))  # type: ignore[call-overload]
        with pytest.raises(openai.RateLimitError) as rate:
            client.chat.completions.create(**chat("b"))  # type: ignore[call-overload]
        assert rate.value.code == "rate_limit_exceeded"
        assert rate.value.type == "requests"
        server.config = MockConfig(quota_after=1)
        with pytest.raises(openai.RateLimitError) as quota:
            client.chat.completions.create(**chat("c"))  # type: ignore[call-overload]
        assert quota.value.code == "insufficient_quota"


@pytest.mark.parametrize(
    ("field", "status", "marker"),
    [
        ("rate_529", 529, "overloaded_error"),
        ("rate_498", 498, "capacity_exceeded"),
        ("rate_429_capacity", 429, "resource_unavailable"),
    ],
)
async def test_capacity_faults_have_their_providers_bodies(
    field: str, status: int, marker: str
) -> None:
    cfg = MockConfig(**{field: 1.0})  # type: ignore[arg-type]
    async with MockServer(cfg) as server, aiohttp.ClientSession() as s:
        async with s.post(server.base_url + "/chat/completions", json=chat("x")) as resp:
            assert resp.status == status
            assert marker in (await resp.text())
        assert server.stats.faults[field[len("rate_") :]] == 1


def test_bad_meter_settings_are_refused() -> None:
    from conveyor import ConfigError

    with pytest.raises(ConfigError, match="limit_model"):
        MockConfig(limit_model="leaky")
    with pytest.raises(ConfigError, match="headers"):
        MockConfig(headers="aws")
    with pytest.raises(ConfigError, match="burst"):
        MockConfig(burst=0)
    assert math.isfinite(MockConfig().burst)


@pytest.mark.parametrize("retry_after_header", [True, False])
async def test_gemini_refusal_names_a_quota_id_and_a_delay_but_no_figure(
    retry_after_header: bool,
) -> None:
    """`refusal="gemini"`: Gemini's OpenAI-compatible 429, a JSON array around
    RESOURCE_EXHAUSTED with a per-minute QuotaFailure quota id and a whole-second
    RetryInfo delay; no limit figure and no retry-after header (whatever
    `retry_after_header` says). The client reads it as a rate limit with that wait."""
    from conveyor._core._refusals import RefusalKind, classify

    cfg = MockConfig(
        rpm=60, burst=1.0, headers="none", refusal="gemini", retry_after_header=retry_after_header
    )
    async with MockServer(cfg) as server, aiohttp.ClientSession() as s:
        url = server.base_url + "/chat/completions"
        await _post(s, url, chat("a"))
        async with s.post(url, json=chat("b")) as refused:
            body = await refused.json(content_type=None)
            assert refused.status == 429
            assert "retry-after" not in refused.headers
        assert isinstance(body, list) and len(body) == 1
        err = body[0]["error"]
        assert err["code"] == 429 and err["status"] == "RESOURCE_EXHAUSTED"
        types = {d["@type"].rsplit(".", 1)[-1]: d for d in err["details"]}
        quota_id = types["QuotaFailure"]["violations"][0]["quotaId"]
        assert quota_id == "GenerateRequestsPerMinutePerProjectPerModel"
        assert types["RetryInfo"]["retryDelay"] == "1s"  # 1 s until the next unit, whole seconds
        assert not any(ch.isdigit() for ch in err["message"])  # no figure of the limit
        refusal = classify(429, body)
        assert refusal is not None and refusal.kind is RefusalKind.RATE
        assert refusal.wait == 1.0 and refusal.limit is None


@pytest.mark.parametrize("retry_after_header", [True, False])
async def test_bare_refusal_names_nothing(retry_after_header: bool) -> None:
    """`refusal="bare"`: a gateway's 429 (Kong's `{"message": "API rate limit
    exceeded"}`) naming neither the limit nor the budget, with a whole-second
    retry-after or (`retry_after_header=False`) no wait at all."""
    from conveyor._core._refusals import RefusalKind, classify, parse_wait

    cfg = MockConfig(
        tpm=6000, burst=1.0, headers="none", refusal="bare", retry_after_header=retry_after_header
    )
    async with MockServer(cfg) as server, aiohttp.ClientSession() as s:
        url = server.base_url + "/chat/completions"
        await _post(s, url, chat("a", max_tokens=60))
        async with s.post(url, json=chat("b", max_tokens=60)) as refused:
            body = await refused.json(content_type=None)
            assert refused.status == 429
            header = refused.headers.get("retry-after")
        assert body == {"message": "API rate limit exceeded"}
        if retry_after_header:
            assert header is not None and header.isdigit() and int(header) >= 1
        else:
            assert header is None
        refusal = classify(429, body, retry_after=parse_wait(header))
        assert refusal is not None and refusal.kind is RefusalKind.RATE
        assert refusal.limit is None and refusal.scope is None
        assert (refusal.wait is not None) == retry_after_header
        assert server.stats.refused["rate"] == 1


def test_refusal_style_is_checked() -> None:
    """An unknown refusal style is a configuration error naming the choices."""
    from conveyor._base._exceptions import ConfigError

    with pytest.raises(ConfigError, match="gemini"):
        MockConfig(refusal="nginx")
