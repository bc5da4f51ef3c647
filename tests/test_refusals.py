"""Refusals classified as real servers send them (bodies from shared/RATE-LIMITS.md)."""

from __future__ import annotations

import pytest

from conveyor._core._refusals import RefusalKind, classify, classify_exception, parse_wait
from conveyor.openai._limit_headers import read_limit_headers

OPENAI_RPM = {
    "error": {
        "message": "Rate limit reached for gpt-4o-mini in organization org-abc on requests per "
        "min (RPM): Limit 3, Used 3, Requested 1. Please try again in 20s. Visit "
        "https://platform.openai.com/account/rate-limits to learn more.",
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }
}
OPENAI_TPM = {
    "error": {
        "message": "Rate limit reached for gpt-4o in organization org-abc on tokens per min "
        "(TPM): Limit 30000, Used 29000, Requested 1500. Please try again in 1.2s.",
        "type": "tokens",
        "param": None,
        "code": "rate_limit_exceeded",
    }
}
OPENAI_QUOTA = {
    "error": {
        "message": "You exceeded your current quota, please check your plan and billing "
        "details. For more information on this error, read the docs.",
        "type": "insufficient_quota",
        "param": None,
        "code": "insufficient_quota",
    }
}
OPENAI_QUOTA_OLD = {
    "error": {
        "message": "You exceeded your current quota, please check your plan and billing details.",
        "type": "insufficient_quota",
        "param": None,
        "code": None,
    }
}
OPENAI_RPD = {
    "error": {
        "message": "Rate limit reached for gpt-4o-mini in organization org-abc on requests per "
        "day (RPD): Limit 200, Used 200, Requested 1. Please try again in 7m12s.",
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }
}
ANTHROPIC_OVERLOADED = {
    "type": "error",
    "error": {"type": "overloaded_error", "message": "Overloaded"},
}
ANTHROPIC_RATE = {
    "type": "error",
    "error": {
        "type": "rate_limit_error",
        "message": "This request would exceed the rate limit for your organization of 50,000 "
        "input tokens per minute.",
    },
}
GEMINI = {
    "error": {
        "code": 429,
        "message": "You exceeded your current quota, please check your plan and billing details.",
        "status": "RESOURCE_EXHAUSTED",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": "generate_content_requests",
                        "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                    }
                ],
            },
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "26s"},
        ],
    }
}
GEMINI_DAY = {
    "error": {
        "code": 429,
        "message": "You exceeded your current quota, please check your plan and billing details.",
        "status": "RESOURCE_EXHAUSTED",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [{"quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier"}],
            }
        ],
    }
}


def test_openai_rate_limits_name_their_budget_limit_and_wait() -> None:
    """OpenAI's 429 says which budget, its limit and the wait, in the message."""
    r = classify(429, OPENAI_RPM)
    assert r is not None and r.kind is RefusalKind.RATE
    assert (r.scope, r.limit, r.wait) == ("requests", 3.0, 20.0)
    t = classify(429, OPENAI_TPM, retry_after=2.0)
    assert t is not None and (t.kind, t.scope, t.limit) == (RefusalKind.RATE, "tokens", 30000)
    assert t.wait == 2.0  # a Retry-After header wins over the message


@pytest.mark.parametrize("body", [OPENAI_QUOTA, OPENAI_QUOTA_OLD, OPENAI_RPD, GEMINI_DAY])
def test_quotas_and_daily_caps_are_not_rate_limits(body: object) -> None:
    """Billing, a per-day limit: waiting within the run will not help."""
    r = classify(429, body)
    assert r is not None and r.kind is RefusalKind.QUOTA


def test_a_reset_hours_away_is_a_quota() -> None:
    """A 429 whose wait is over an hour (Retry-After: 30000) is a cap, not a rate."""
    r = classify(429, {"error": {"message": "slow down"}}, retry_after=30000)
    assert r is not None and r.kind is RefusalKind.QUOTA


def test_gemini_per_minute_quota_is_a_rate_limit_by_its_quota_id() -> None:
    """Gemini says "exceeded your current quota" for per-minute quotas too: the
    quota id and RetryInfo decide, not the wording."""
    r = classify(429, GEMINI)
    assert r is not None and r.kind is RefusalKind.RATE and r.wait == 26.0


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (529, ANTHROPIC_OVERLOADED),
        (503, {"error": {"message": "The server is overloaded"}}),
        (498, {"error": {"message": "Capacity exceeded", "code": "capacity_exceeded"}}),
        (429, {"error": {"message": "Resource Unavailable", "type": "server_error"}}),
    ],
)
def test_capacity_errors_are_not_our_rate(status: int, body: object) -> None:
    r = classify(status, body)
    assert r is not None and r.kind is RefusalKind.CAPACITY


def test_anthropic_rate_limit_names_input_tokens() -> None:
    r = classify(429, ANTHROPIC_RATE, retry_after=3)
    assert r is not None and r.kind is RefusalKind.RATE
    assert (r.scope, r.limit, r.wait) == ("input_tokens", 50000.0, 3.0)


def test_other_failures_are_not_refusals() -> None:
    assert classify(400, {"error": {"message": "bad"}}) is None
    assert classify(500, None) is None
    assert classify(None, None) is None


def test_sdk_exceptions_are_read_by_attribute() -> None:
    """The openai SDK's RateLimitError carries status_code, body (the inner
    error object) and the response's headers: read without importing it."""
    import httpx2 as httpx
    import openai

    req = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    resp = httpx.Response(429, request=req, headers={"retry-after-ms": "1500"})
    exc = openai.RateLimitError("rate limited", response=resp, body=OPENAI_RPM["error"])
    r = classify_exception(exc)
    assert r is not None and r.kind is RefusalKind.RATE
    assert (r.scope, r.limit, r.wait) == ("requests", 3.0, 1.5)
    quota = openai.RateLimitError("quota", response=resp, body=OPENAI_QUOTA["error"])
    q = classify_exception(quota)
    assert q is not None and q.kind is RefusalKind.QUOTA


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("12ms", 0.012),
        ("1s", 1.0),
        ("1.5s", 1.5),
        ("6m0s", 360.0),
        ("1h2m3.5s", 3723.5),
        ("30", 30),
    ],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_wait(text) == pytest.approx(seconds)


def test_openai_headers_read() -> None:
    """The real response after one request on a 5,000 RPM / 160,000 TPM key."""
    hint = read_limit_headers(
        {
            "x-ratelimit-limit-requests": "5000",
            "x-ratelimit-limit-tokens": "160000",
            "x-ratelimit-remaining-requests": "4999",
            "x-ratelimit-remaining-tokens": "159976",
            "x-ratelimit-reset-requests": "12ms",
            "x-ratelimit-reset-tokens": "9ms",
        }
    )
    assert hint is not None
    assert (hint.requests_limit, hint.requests_remaining) == (5000, 4999)
    assert hint.requests_reset == pytest.approx(0.012)
    assert (hint.tokens_limit, hint.tokens_remaining, hint.tokens_reset) == (160000, 159976, 0.009)


def test_anthropic_headers_read_with_rfc3339_resets() -> None:
    """Anthropic's resets are the instant the budget is full again (RFC 3339)."""
    hint = read_limit_headers(
        {
            "anthropic-ratelimit-requests-limit": "1000",
            "anthropic-ratelimit-requests-remaining": "999",
            "anthropic-ratelimit-requests-reset": "2025-08-21T12:40:59Z",
            "anthropic-ratelimit-input-tokens-limit": "80000",
            "anthropic-ratelimit-input-tokens-remaining": "80000",
            "anthropic-ratelimit-input-tokens-reset": "2025-08-21T12:40:58Z",
            "anthropic-ratelimit-output-tokens-limit": "16000",
            "anthropic-ratelimit-output-tokens-remaining": "15000",
            "anthropic-ratelimit-output-tokens-reset": "2025-08-21T12:41:00Z",
        },
        wall=1755780058.0,  # 2025-08-21T12:40:58Z
    )
    assert hint is not None
    assert (hint.requests_limit, hint.requests_remaining, hint.requests_reset) == (1000, 999, 1.0)
    assert (hint.input_tokens_limit, hint.input_tokens_reset) == (80000, 0.0)
    assert (hint.output_tokens_remaining, hint.output_tokens_reset) == (15000, 2.0)


def test_generic_headers_read_epoch_or_seconds() -> None:
    a = read_limit_headers(
        {"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "30"}
        | {"x-ratelimit-limit": "100", "x-ratelimit-remaining": "0", "x-ratelimit-reset": "30"}
    )
    assert a is not None and (a.requests_limit, a.requests_remaining, a.requests_reset) == (
        100,
        0,
        30,
    )
    b = read_limit_headers(
        {"ratelimit-limit": "100", "ratelimit-remaining": "5", "ratelimit-reset": "1755780088"},
        wall=1755780058.0,
    )
    assert b is not None and b.requests_reset == 30.0
    assert read_limit_headers({"content-type": "application/json"}) is None
