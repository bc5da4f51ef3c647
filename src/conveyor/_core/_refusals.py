"""What a refusal means: a rate limit, an exhausted quota, or a server at capacity.

A pure function over what any failed call carries: a status code, an error
body, a message, a `retry_after`. It knows no HTTP library; our transport's
errors, the `openai`/`anthropic` SDKs' exceptions and a user's own exception
classes are read the same way (by attribute, never by import).

The three classes, and why each is handled differently (sources in
shared/RATE-LIMITS.md):

- **rate**: the budget is spent for now (OpenAI `rate_limit_exceeded`, a
  `Retry-After`, Anthropic `rate_limit_error`, Gemini `RESOURCE_EXHAUSTED`
  with a per-minute quota id). Waiting helps: pause those sharing the
  budget, then go on at the learned rate.
- **quota**: billing or a daily/monthly cap (OpenAI `insufficient_quota`,
  "You exceeded your current quota", a per-day limit, a reset hours away).
  Waiting does not help within a run: stop admitting and say so.
- **capacity**: the server is busy, not our rate (HTTP 529 Anthropic
  `overloaded_error`, 503 "overloaded", Groq's 498 `capacity_exceeded`, a flex
  tier's 429 "Resource Unavailable"). Back off and retry; the learned limits
  stay as they are.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["Refusal", "RefusalKind", "classify", "parse_wait"]

# A wait this long is not a per-minute budget refilling: it is a cap.
QUOTA_WAIT = 3600.0

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_TRY_AGAIN = re.compile(
    r"(?:try again in|retry in|retry after|please wait)\s+((?:\d+(?:\.\d+)?(?:ms|h|m|s))+|"
    r"\d+(?:\.\d+)?\s*(?:seconds?|secs?|s)\b)",
    re.IGNORECASE,
)
_OPENAI_LIMIT = re.compile(r"\bLimit:?\s*([\d,]+)", re.IGNORECASE)
_ANTHROPIC_LIMIT = re.compile(
    r"\bof ([\d,]+) (input tokens|output tokens|tokens|requests) per minute", re.IGNORECASE
)
_SCOPE_WORDS = (
    ("input tokens", "input_tokens"),
    ("output tokens", "output_tokens"),
    ("tokens per", "tokens"),
    ("(tpm)", "tokens"),
    ("(tpd)", "tokens"),
    ("requests per", "requests"),
    ("(rpm)", "requests"),
    ("(rpd)", "requests"),
)
_PER_DAY = re.compile(
    r"per (day|month)\b|\((rpd|tpd)\)|daily|monthly|PerDay|PerMonth", re.IGNORECASE
)
_QUOTA_WORDS = ("insufficient_quota", "exceeded your current quota", "billing")
_CAPACITY_CODES = frozenset(
    {"overloaded_error", "capacity_exceeded", "resource_unavailable", "server_overloaded"}
)
_CAPACITY_WORDS = ("overloaded", "resource unavailable", "capacity", "try again later")


class RefusalKind(enum.StrEnum):
    RATE = "rate"
    QUOTA = "quota"
    CAPACITY = "capacity"


@dataclass(frozen=True, slots=True)
class Refusal:
    """A classified refusal.

    `scope` is the budget it names ("requests", "tokens", "input_tokens",
    "output_tokens") or None; `limit` a limit the message stated; `wait` the
    seconds the server asked for (header, then message), if any.
    """

    kind: RefusalKind
    scope: str | None = None
    limit: float | None = None
    wait: float | None = None
    message: str = ""


def parse_wait(text: str | None) -> float | None:
    """`"20s"`, `"1.5s"`, `"120ms"`, `"6m0s"`, `"30"` -> seconds (None if not a duration)."""
    if not text:
        return None
    text = text.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    total, pos = 0.0, 0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            return None
        pos = m.end()
        n = float(m.group(1))
        total += {"ms": n / 1000, "s": n, "m": n * 60, "h": n * 3600}[m.group(2)]
    return total if pos == len(text) and pos > 0 else None


def _error_fields(body: Any) -> tuple[str, str, str, Any]:
    """(type, code, message, details) from an OpenAI, Anthropic or Gemini error body.

    Gemini's OpenAI-compatible endpoint wraps its error in a JSON array,
    `[{"error": {...}}]` (n4ze3m/page-assist#406): the first element is read."""
    if isinstance(body, list) and body:
        body = body[0]
    if not isinstance(body, dict):
        return "", "", "", None
    err = body.get("error", body)
    if not isinstance(err, dict):
        return "", "", str(err) if err is not None else "", None
    type_ = err.get("type") or err.get("status") or ""
    code = err.get("code") or ""
    return str(type_), str(code), str(err.get("message") or ""), err.get("details")


def _gemini(details: Any) -> tuple[str | None, float | None]:
    """(quota id, retry delay) from a Gemini error's `details`."""
    quota_id: str | None = None
    delay: float | None = None
    if not isinstance(details, list):
        return None, None
    for d in details:
        if not isinstance(d, dict):
            continue
        for violation in d.get("violations") or ():
            if isinstance(violation, dict) and isinstance(violation.get("quotaId"), str):
                quota_id = violation["quotaId"]
        if isinstance(d.get("retryDelay"), str):
            delay = parse_wait(d["retryDelay"])
    return quota_id, delay


def _message_wait(message: str) -> float | None:
    m = _TRY_AGAIN.search(message)
    if m is None:
        return None
    text = m.group(1).strip().lower()
    for unit in ("seconds", "second", "secs", "sec"):
        text = text.replace(unit, "s")
    return parse_wait(text.replace(" ", ""))


def _scope(type_: str, message: str) -> str | None:
    if type_ in ("requests", "tokens", "input_tokens", "output_tokens"):
        return type_
    low = message.lower()
    for word, scope in _SCOPE_WORDS:
        if word in low:
            return scope
    return None


def _limit(message: str) -> float | None:
    m = _ANTHROPIC_LIMIT.search(message) or _OPENAI_LIMIT.search(message)
    if m is None:
        return None
    try:
        return float(m.group(1).replace(",", ""))
    except ValueError:
        return None


def classify(
    status: int | None,
    body: Any = None,
    *,
    retry_after: float | None = None,
    message: str = "",
) -> Refusal | None:
    """Classify one failed call; None when it is not a refusal of these kinds.

    `retry_after` is what the response's headers said, which wins over a wait
    found in the message.
    """
    type_, code, text, details = _error_fields(body)
    text = text or message
    low = text.lower()
    words = f"{type_} {code}".lower()
    quota_id, gemini_delay = _gemini(details)
    wait = retry_after
    if wait is None:
        wait = gemini_delay if gemini_delay is not None else _message_wait(text)

    if status in (529, 498) or code in _CAPACITY_CODES or type_ in _CAPACITY_CODES:
        return Refusal(RefusalKind.CAPACITY, wait=wait, message=text)
    if status == 503:
        return Refusal(RefusalKind.CAPACITY, wait=wait, message=text)
    if status != 429 and type_ != "RESOURCE_EXHAUSTED":
        return None
    # A 429 (or Gemini's RESOURCE_EXHAUSTED): which kind?
    if quota_id is not None:
        per_day = bool(_PER_DAY.search(quota_id))
        kind = RefusalKind.QUOTA if per_day else RefusalKind.RATE
        return Refusal(kind, _scope("", quota_id + " " + text), _limit(text), wait, text)
    if "insufficient_quota" in words or any(w in low for w in _QUOTA_WORDS):
        return Refusal(RefusalKind.QUOTA, wait=wait, message=text)
    if "rate_limit" not in words and any(w in low for w in _CAPACITY_WORDS):
        return Refusal(RefusalKind.CAPACITY, wait=wait, message=text)
    if _PER_DAY.search(text) or (wait is not None and wait >= QUOTA_WAIT):
        return Refusal(RefusalKind.QUOTA, _scope(type_, text), _limit(text), wait, text)
    return Refusal(RefusalKind.RATE, _scope(type_, text), _limit(text), wait, text)


def classify_exception(exc: BaseException) -> Refusal | None:
    """`classify` over an exception's attributes (`status_code` or `status`,
    `body`, `retry_after`, `response.headers`), as ours and the SDKs' carry them."""
    status = getattr(exc, "status_code", None)
    if not isinstance(status, int):
        status = getattr(exc, "status", None)
    if not isinstance(status, int) or isinstance(status, bool):
        return None
    meta = getattr(exc, "meta", None)
    body = getattr(exc, "body", None)
    if body is None and isinstance(meta, dict):
        body = meta.get("body")
    hint = getattr(exc, "retry_after", None)
    retry_after = (
        float(hint) if isinstance(hint, int | float) and not isinstance(hint, bool) else None
    )
    if retry_after is None:
        headers = getattr(getattr(exc, "response", None), "headers", None)
        if headers is not None:
            try:
                ms = headers.get("retry-after-ms")
                retry_after = float(ms) / 1000 if ms else parse_wait(headers.get("retry-after"))
            except (TypeError, ValueError, AttributeError):
                retry_after = None
    return classify(status, body, retry_after=retry_after, message=str(exc))
