"""What a task function can tell the engine about the attempt it is in.

The engine sets a context variable around every call (threads get a copy of
the context), so a user's function reports usage and rate-limit hints with a
plain function call and no extra parameter:

    def call(prompt):
        resp = client.chat.completions.create(...)
        conveyor.report_usage(resp.usage.prompt_tokens, resp.usage.completion_tokens)
        return resp
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .._base._types import Usage

if TYPE_CHECKING:
    from ._validation import Reask

__all__ = [
    "Attempt",
    "RateLimitHint",
    "current_attempt",
    "report_cached",
    "report_limits",
    "report_usage",
]


@dataclass(slots=True)
class RateLimitHint:
    """What a server's headers said of its budgets (OpenAI's `x-ratelimit-*`,
    Anthropic's `anthropic-ratelimit-*`).

    Limits are per minute; `*_remaining` is what the budget held when the
    server took the request; `*_reset` is seconds until it is full again.
    Anthropic meters input and output tokens apart (`input_tokens_*`,
    `output_tokens_*`).
    """

    requests_limit: float | None = None
    tokens_limit: float | None = None
    requests_remaining: float | None = None
    tokens_remaining: float | None = None
    requests_reset: float | None = None
    tokens_reset: float | None = None
    input_tokens_limit: float | None = None
    input_tokens_remaining: float | None = None
    input_tokens_reset: float | None = None
    output_tokens_limit: float | None = None
    output_tokens_remaining: float | None = None
    output_tokens_reset: float | None = None


@dataclass(slots=True)
class Attempt:
    """The attempt in progress: which item, which try, what it consumed.

    `reask` is set when this attempt asks again after an answer failed
    `validate=`: the previous answer and its validation errors.
    """

    index: int
    key: str
    number: int
    usage: Usage | None = None
    limits: RateLimitHint | None = None
    cached: bool = False
    meta: dict[str, object] = field(default_factory=dict)
    reask: Reask | None = None


_current: ContextVar[Attempt | None] = ContextVar("conveyor_attempt", default=None)


def current_attempt() -> Attempt | None:
    """The attempt the calling code runs in, or None outside conveyor."""
    return _current.get()


def report_usage(input_tokens: int = 0, output_tokens: int = 0) -> None:
    """Tell the engine what this attempt consumed (tokens or any cost unit).

    Settles the token-per-minute reservation made from the cost estimate and
    feeds the report's token totals. Calls add up within one attempt. Outside
    a conveyor run it does nothing.
    """
    a = _current.get()
    if a is None:
        return
    if a.usage is None:
        a.usage = Usage(int(input_tokens), int(output_tokens))
    else:
        a.usage.input_tokens += int(input_tokens)
        a.usage.output_tokens += int(output_tokens)


def report_limits(
    *,
    requests_limit: float | None = None,
    tokens_limit: float | None = None,
    requests_remaining: float | None = None,
    tokens_remaining: float | None = None,
    requests_reset: float | None = None,
    tokens_reset: float | None = None,
    input_tokens_limit: float | None = None,
    input_tokens_remaining: float | None = None,
    input_tokens_reset: float | None = None,
    output_tokens_limit: float | None = None,
    output_tokens_remaining: float | None = None,
    output_tokens_reset: float | None = None,
) -> None:
    """Tell the engine what the server's headers said of its rate limits.

    Limits are per minute, `*_remaining` what the server held when it took
    this request, `*_reset` seconds until it is full again. conveyor mirrors
    the server's budget from these (a bucket or a window, whichever the
    figures describe) and runs at the rate it allows, never above a limit the
    user set. Outside a run it does nothing.
    """
    a = _current.get()
    if a is None:
        return
    a.limits = RateLimitHint(
        requests_limit,
        tokens_limit,
        requests_remaining,
        tokens_remaining,
        requests_reset,
        tokens_reset,
        input_tokens_limit,
        input_tokens_remaining,
        input_tokens_reset,
        output_tokens_limit,
        output_tokens_remaining,
        output_tokens_reset,
    )


def report_cached() -> None:
    """Tell the engine this attempt was answered locally (a cache or a
    duplicate request in flight), not by the endpoint: its request and token
    reservations are returned to the rate limits. Outside a run it does nothing.
    """
    a = _current.get()
    if a is not None:
        a.cached = True
