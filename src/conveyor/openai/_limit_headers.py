"""Rate-limit headers, as each kind of server writes them, read into one hint.

- OpenAI (platform.openai.com, guides/rate-limits, "Rate limits in headers"):
  `x-ratelimit-limit-{requests,tokens}` (per minute),
  `x-ratelimit-remaining-*`, `x-ratelimit-reset-*` = "the time until the rate
  limit resets to its initial state", as Go durations (`12ms`, `6m0s`).
- Anthropic (docs.anthropic.com, api/rate-limits):
  `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,
  remaining,reset}`; reset is "the time when the rate limit will be fully
  replenished, provided in RFC 3339 format".
- Generic APIs: `x-ratelimit-limit/-remaining/-reset` or the IETF draft's
  `ratelimit-limit/-remaining/-reset`; reset is seconds until the window
  restarts, or an epoch second.

Each reads into a `RateLimitHint`: what the server held when it took the
request and how long until it is full again.
"""

from __future__ import annotations

import re
import time
from datetime import datetime
from typing import Any

from .._core._attempt import RateLimitHint
from .._core._refusals import parse_wait

__all__ = ["read_limit_headers"]

_OPENAI = (("requests", "requests"), ("tokens", "tokens"))
_ANTHROPIC = (
    ("requests", "requests"),
    ("tokens", "tokens"),
    ("input-tokens", "input_tokens"),
    ("output-tokens", "output_tokens"),
)
_EPOCH_FLOOR = 1e9  # a reset above this is an epoch second, not a duration


def _num(v: str | None) -> float | None:
    if v is None:
        return None
    try:
        return float(v.strip())
    except ValueError:
        return None


def _rfc3339_in(text: str | None, wall: float) -> float | None:
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        return parse_wait(text)
    return max(0.0, when.timestamp() - wall)


def _generic_reset(text: str | None, wall: float) -> float | None:
    value = _num(text)
    if value is None:
        return parse_wait(text)
    return max(0.0, value - wall) if value > _EPOCH_FLOOR else max(0.0, value)


_FIRST_LIMIT = re.compile(r"^\s*(\d+(?:\.\d+)?)")


# Header names, built once (this runs for every response).
_OPENAI_NAMES = tuple(
    (scope, f"x-ratelimit-limit-{name}", f"x-ratelimit-remaining-{name}",
     f"x-ratelimit-reset-{name}")
    for name, scope in _OPENAI
)  # fmt: skip
_ANTHROPIC_NAMES = tuple(
    (scope, f"anthropic-ratelimit-{name}-limit", f"anthropic-ratelimit-{name}-remaining",
     f"anthropic-ratelimit-{name}-reset")
    for name, scope in _ANTHROPIC
)  # fmt: skip
_GENERIC_NAMES = ("x-ratelimit-limit", "x-ratelimit-remaining", "ratelimit-limit",
                  "ratelimit-remaining")  # fmt: skip
_ALL_NAMES = frozenset(
    [n for names in (*_OPENAI_NAMES, *_ANTHROPIC_NAMES) for n in names[1:3]] + [*_GENERIC_NAMES]
)


def read_limit_headers(headers: Any, *, wall: float | None = None) -> RateLimitHint | None:
    """The hint in a response's headers, or None if it carries none."""
    if _ALL_NAMES.isdisjoint(map(str.lower, headers)):
        return None  # a server that sends none (the common case): one pass, no parsing
    hint = RateLimitHint()
    found = False
    for scope, limit_name, remaining_name, reset_name in _OPENAI_NAMES:
        limit = _num(headers.get(limit_name))
        remaining = _num(headers.get(remaining_name))
        if limit is None and remaining is None:
            continue
        found = True
        setattr(hint, f"{scope}_limit", limit)
        setattr(hint, f"{scope}_remaining", remaining)
        setattr(hint, f"{scope}_reset", parse_wait(headers.get(reset_name)))
    if found:
        return hint
    now = time.time() if wall is None else wall
    for scope, limit_name, remaining_name, reset_name in _ANTHROPIC_NAMES:
        limit = _num(headers.get(limit_name))
        remaining = _num(headers.get(remaining_name))
        if limit is None and remaining is None:
            continue
        found = True
        setattr(hint, f"{scope}_limit", limit)
        setattr(hint, f"{scope}_remaining", remaining)
        setattr(hint, f"{scope}_reset", _rfc3339_in(headers.get(reset_name), now))
    if found:
        return hint
    for prefix in ("x-ratelimit-", "ratelimit-"):
        raw_limit = headers.get(prefix + "limit")
        remaining = _num(headers.get(prefix + "remaining"))
        if raw_limit is None and remaining is None:
            continue
        m = _FIRST_LIMIT.match(raw_limit or "")
        hint.requests_limit = float(m.group(1)) if m else None
        hint.requests_remaining = remaining
        hint.requests_reset = _generic_reset(headers.get(prefix + "reset"), now)
        return hint
    return None
