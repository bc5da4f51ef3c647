"""The simulated server's limits: meters per budget, the headers that report
them and the refusals they answer with, each as a real provider writes it.

Pure: the time is passed in. Sources (see shared/RATE-LIMITS.md):

- OpenAI headers (platform.openai.com, guides/rate-limits, "Rate limits in
  headers"): `x-ratelimit-limit-{requests,tokens}` (the per-minute limit),
  `x-ratelimit-remaining-*`, `x-ratelimit-reset-*` ("the time until the rate
  limit resets to its initial state") as Go durations.
- OpenAI counts a request's tokens at admission as its prompt plus its
  completion cap: "your rate limit is calculated as the maximum of max_tokens
  and the estimated number of tokens based on the character count of your
  request" (the same guide, "Reduce the max_tokens to match the size of your
  completions"); it is not refunded afterwards.
- OpenAI rate-limit 429: `{"error": {"message": "Rate limit reached for <model>
  in organization <org> on requests per min (RPM): Limit 3, Used 3, Requested
  1. Please try again in 20s. ...", "type": "requests", "param": null, "code":
  "rate_limit_exceeded"}}`; a `retry-after` header may or may not be there.
- OpenAI quota 429: type and code `insufficient_quota`, "You exceeded your
  current quota, please check your plan and billing details."
- Anthropic (docs.anthropic.com, api/rate-limits): `anthropic-ratelimit-
  {requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}`, reset
  in RFC 3339 ("when the rate limit will be fully replenished"), token
  remaining rounded to the nearest thousand, `retry-after` seconds on a 429
  whose body is `{"type": "error", "error": {"type": "rate_limit_error", ...}}`.
- Gemini's OpenAI-compatible endpoint (`/v1beta/openai/chat/completions`)
  answers a 429 with a JSON *array* around a google.rpc error: `[{"error":
  {"code": 429, "message": "...", "status": "RESOURCE_EXHAUSTED"}}]`
  (n4ze3m/page-assist#406, a curl against that endpoint); no rate-limit
  headers, no `retry-after`. Per-minute quotas carry "You exceeded your
  current quota, ..." and `details` with a `google.rpc.QuotaFailure` whose
  `quotaId` names the quota (`GenerateRequestsPerMinutePerProjectPerModel`,
  `GenerateContentInputTokensPerModelPerMinute`) and a `google.rpc.RetryInfo`
  `retryDelay` in whole seconds ("44s"), but no figure of the limit
  (Aider-AI/aider#3694, RooCodeInc/Roo-Code#3883).
- A gateway's bare 429 names nothing: Kong's rate-limiting plugin answers
  `{"message": "API rate limit exceeded"}` (Kong/kong discussion #7211) with
  `Retry-After` in whole seconds (Kong/kong#5329).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import orjson

from ._meters import Meter, format_duration, format_seconds, make_meter

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._config import MockConfig

__all__ = ["Refusal", "ServerLimits", "charge_of"]

_ORG = "org-mock"
# What each budget is called in OpenAI's message and in Anthropic's.
_OPENAI_NAMES = {"requests": "requests per min (RPM)", "tokens": "tokens per min (TPM)"}
_ANTHROPIC_NAMES = {
    "requests": "requests",
    "tokens": "tokens",
    "input_tokens": "input tokens",
    "output_tokens": "output tokens",
}
_ANTHROPIC_HEADER = {
    "requests": "requests",
    "tokens": "tokens",
    "input_tokens": "input-tokens",
    "output_tokens": "output-tokens",
}


def charge_of(prompt: int, cap: int, n: int) -> dict[str, float]:
    """What one request counts against each budget at admission."""
    output = float(cap * n)
    return {
        "requests": 1.0,
        "tokens": prompt + output,
        "input_tokens": float(prompt),
        "output_tokens": output,
    }


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why the limits refused a request: the budget, the wait, the figures."""

    kind: str  # "rate" or "quota"
    budget: str
    retry_after: float
    limit: float
    used: float
    requested: float
    too_large: bool = False


class ServerLimits:
    """Every budget the configuration sets, each metered by its model."""

    def __init__(self, cfg: MockConfig) -> None:
        self.cfg = cfg
        limits = {
            "requests": cfg.rpm,
            "tokens": cfg.tpm,
            "input_tokens": cfg.input_tpm,
            "output_tokens": cfg.output_tpm,
        }
        self.meters: dict[str, Meter] = {}
        for name, limit in limits.items():
            if limit is None:
                continue
            self.meters[name] = make_meter(
                cfg.model_of(name),
                limit,
                window=cfg.limit_window,
                burst=cfg.burst,
                offset=cfg.window_offset,
            )
        self.admitted = 0
        self._spend_first = cfg.spent  # spent at the first request (`MockConfig.spent`)

    def spend_next(self) -> None:
        """Spend every limit at the next request (before it is metered)."""
        self._spend_first = True

    def spend_all(self, now: float) -> None:
        """Spend what every limit holds now, as another client would have."""
        for meter in self.meters.values():
            remaining, _ = meter.state(now)
            if remaining > 0:
                meter.take(now, remaining)

    def same_shape(self, cfg: MockConfig) -> bool:
        """Whether `cfg` meters the same way (else the meters start afresh)."""
        names = ("rpm", "tpm", "input_tpm", "output_tpm", "limit_window", "limit_model",
                 "rpm_model", "tpm_model", "burst", "window_offset")  # fmt: skip
        return all(getattr(cfg, n) == getattr(self.cfg, n) for n in names)

    def admit(self, now: float, charge: Mapping[str, float]) -> Refusal | None:
        """Charge the request to every budget, or say which refused it and why."""
        if self._spend_first:
            self._spend_first = False
            self.spend_all(now)
        quota = self.cfg.quota_after
        if quota is not None and self.admitted >= quota:
            return Refusal("quota", "requests", math.inf, quota, self.admitted, 1)
        worst: tuple[float, str] | None = None
        for name, meter in self.meters.items():
            wait = meter.wait(now, charge[name])
            if math.isinf(wait):
                return Refusal("rate", name, meter.window, meter.limit, 0, charge[name], True)
            if wait > 0 and (worst is None or wait > worst[0]):
                worst = (wait, name)
        if worst is not None:
            # Name the limit that binds longest; its wait covers the others.
            wait, name = worst
            meter = self.meters[name]
            remaining, _ = meter.state(now)
            return Refusal("rate", name, wait, meter.limit, meter.limit - remaining, charge[name])
        for name, meter in self.meters.items():
            meter.take(now, charge[name])
        self.admitted += 1
        return None

    # ---- headers ----------------------------------------------------------------------

    def headers(self, now: float, wall: float | None = None) -> dict[str, str]:
        """The rate-limit headers every answer carries, in the configured style."""
        style = self.cfg.headers
        if style == "none" or not self.meters:
            return {}
        out: dict[str, str] = {}
        if style == "openai":
            for name in ("requests", "tokens"):
                meter = self.meters.get(name)
                if meter is None:
                    continue
                remaining, reset = meter.state(now)
                out[f"x-ratelimit-limit-{name}"] = _int(meter.limit)
                out[f"x-ratelimit-remaining-{name}"] = _int(remaining)
                out[f"x-ratelimit-reset-{name}"] = format_duration(reset)
            return out
        wall = time.time() if wall is None else wall
        for name, meter in self.meters.items():
            remaining, reset = meter.state(now)
            if name != "requests":
                remaining = round(remaining, -3)  # "rounded to the nearest thousand"
            prefix = f"anthropic-ratelimit-{_ANTHROPIC_HEADER[name]}-"
            out[prefix + "limit"] = _int(meter.limit)
            out[prefix + "remaining"] = _int(remaining)
            out[prefix + "reset"] = _rfc3339(wall + reset)
        return out

    # ---- refusals ---------------------------------------------------------------------

    def refusal_reply(self, r: Refusal, model: str) -> tuple[int, bytes, dict[str, str]]:
        """(status, body, extra headers) for a refusal, in the configured style."""
        headers: dict[str, str] = {}
        anthropic = self.cfg.headers == "anthropic"
        style = self.cfg.refusal
        if style == "gemini" and not r.too_large:
            return 429, _gemini_error(r), headers
        if style == "bare" and not r.too_large:
            if self.cfg.retry_after_header and r.kind != "quota":
                headers["retry-after"] = str(max(1, math.ceil(r.retry_after)))
            return 429, orjson.dumps({"message": "API rate limit exceeded"}), headers
        if r.kind == "quota":
            message = (
                "You exceeded your current quota, please check your plan and billing details. "
                "For more information on this error, read the docs: "
                "https://platform.openai.com/docs/guides/error-codes/api-errors."
            )
            return 429, _openai_error(message, "insufficient_quota", "insufficient_quota"), headers
        if self.cfg.retry_after_header or anthropic:
            if anthropic:
                headers["retry-after"] = str(max(1, math.ceil(r.retry_after)))
            else:
                headers["retry-after"] = format_seconds(r.retry_after)
                headers["retry-after-ms"] = str(math.ceil(r.retry_after * 1000))
        if anthropic:
            what = _ANTHROPIC_NAMES[r.budget]
            message = (
                f"This request would exceed the rate limit for your organization ({_ORG}) of "
                f"{_int(r.limit)} {what} per minute. For details, refer to: "
                "https://docs.anthropic.com/en/api/rate-limits."
            )
            body = {"type": "error", "error": {"type": "rate_limit_error", "message": message}}
            return 429, orjson.dumps(body), headers
        what = _OPENAI_NAMES.get(r.budget, r.budget.replace("_", " ") + " per min")
        if r.too_large:
            message = (
                f"Request too large for {model} in organization {_ORG} on {what}: Limit "
                f"{_int(r.limit)}, Requested {_int(r.requested)}. The input or output tokens "
                "must be reduced in order to run successfully."
            )
        else:
            message = (
                f"Rate limit reached for {model} in organization {_ORG} on {what}: Limit "
                f"{_int(r.limit)}, Used {_int(r.used)}, Requested {_int(r.requested)}. "
                f"Please try again in {format_duration(r.retry_after)}. Visit "
                "https://platform.openai.com/account/rate-limits to learn more."
            )
        kind = "requests" if r.budget == "requests" else "tokens"
        return 429, _openai_error(message, kind, "rate_limit_exceeded"), headers


# Gemini's quota ids (QuotaFailure.violations[].quotaId) for each budget.
_GEMINI_QUOTA_IDS = {
    "requests": "GenerateRequestsPerMinutePerProjectPerModel",
    "tokens": "GenerateContentInputTokensPerModelPerMinute",
    "input_tokens": "GenerateContentInputTokensPerModelPerMinute",
    "output_tokens": "GenerateContentOutputTokensPerModelPerMinute",
}


def _gemini_error(r: Refusal) -> bytes:
    """Gemini's OpenAI-compatible 429: an array around a google.rpc error."""
    quota_id = _GEMINI_QUOTA_IDS.get(r.budget, "GenerateRequestsPerMinutePerProjectPerModel")
    if r.kind == "quota":
        quota_id = "GenerateRequestsPerDayPerProjectPerModel"
    details: list[dict[str, object]] = [
        {
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [
                {
                    "quotaMetric": "generativelanguage.googleapis.com/generate_requests_per_model",
                    "quotaId": quota_id,
                    "quotaDimensions": {"location": "global", "model": "mock-gpt"},
                }
            ],
        },
        {
            "@type": "type.googleapis.com/google.rpc.Help",
            "links": [
                {
                    "description": "Learn more about Gemini API quotas",
                    "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                }
            ],
        },
    ]
    if r.kind != "quota":
        delay = max(1, math.ceil(r.retry_after))
        details.append(
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{delay}s"}
        )
    error = {
        "code": 429,
        "message": "You exceeded your current quota, please check your plan and billing "
        "details. For more information on this error, head to: "
        "https://ai.google.dev/gemini-api/docs/rate-limits.",
        "status": "RESOURCE_EXHAUSTED",
        "details": details,
    }
    return orjson.dumps([{"error": error}])


def _openai_error(message: str, type_: str, code: str | None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}})


def _int(x: float) -> str:
    return str(math.floor(x + 1e-9))


def _rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(math.ceil(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def capacity_reply(fault: str, anthropic: bool) -> tuple[int, bytes]:
    """A capacity fault (not a rate limit), as the provider that sends it writes it."""
    if fault == "529":
        error = {"type": "overloaded_error", "message": "Overloaded"}
        return 529, orjson.dumps({"type": "error", "error": error})
    if fault == "498":
        # Groq's flex tier fails fast when capacity is short (console.groq.com, flex-processing).
        message = "Flex tier capacity exceeded. This is a temporary condition; please try again."
        return 498, _openai_error(message, "server_error", "capacity_exceeded")
    # OpenAI's flex processing: "429 Resource Unavailable" when capacity is short
    # (developers.openai.com, guides/flex-processing): not a rate limit.
    message = "Resource unavailable: the flex tier has no capacity right now. Please retry later."
    if anthropic:
        error = {"type": "api_error", "message": message}
        return 429, orjson.dumps({"type": "error", "error": error})
    return 429, _openai_error(message, "server_error", "resource_unavailable")
