"""Retry policy: a pure decision, "try again after d seconds" or "give up".

The engine carries the decision out; the policy never sleeps, so tests check
its bounds without waiting.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .._base._exceptions import ConfigError, FatalError, RetryableError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["RetryPolicy", "default_retryable"]


def default_retryable(exc: BaseException) -> bool:
    """Transient by default: timeouts, connection errors, `RetryableError`.

    An exception that carries `retry_after` or a true `retryable` attribute
    counts too, so errors from other libraries can opt in without wrapping.
    A `FatalError` never does.
    """
    if isinstance(exc, FatalError):
        return False
    if isinstance(exc, RetryableError | TimeoutError | ConnectionError):
        return True
    if getattr(exc, "retryable", False) is True:
        return True
    if isinstance(getattr(exc, "retry_after", None), int | float):
        return True
    # Other libraries' HTTP errors (the openai and anthropic SDKs among them),
    # recognised by what they carry rather than by importing them.
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and not isinstance(status, bool):
        return status in _TRANSIENT_STATUS or status >= 500
    return any(cls.__name__ in _TRANSIENT_NAMES for cls in type(exc).__mro__)


# Timeouts, conflicts, rate limits, Groq's 498 and every 5xx are transient.
_TRANSIENT_STATUS = frozenset({408, 409, 429, 498})
_TRANSIENT_NAMES = frozenset({"APIConnectionError", "APITimeoutError", "ServiceUnavailableError"})


def retry_after_hint(exc: BaseException) -> float | None:
    hint = getattr(exc, "retry_after", None)
    if isinstance(hint, int | float) and not isinstance(hint, bool) and hint >= 0:
        return float(hint)
    return None


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, capped, with a retry predicate.

    Attempt n (1-based) that failed waits a uniform random time in
    `[0, min(cap, base * multiplier**(n-1))]` ("full jitter", which spreads
    a thundering herd best), but never less than the exception's
    `retry_after` hint. `retries` is the number of attempts after the first.
    """

    retries: int = 3
    base: float = 0.5
    cap: float = 30.0
    multiplier: float = 2.0
    jitter: bool = True
    retry_on: Callable[[BaseException], bool] = field(default=default_retryable)

    def __post_init__(self) -> None:
        if not isinstance(self.retries, int) or self.retries < 0:
            raise ConfigError("retries", self.retries, "a whole number >= 0")
        if not (math.isfinite(self.base) and self.base >= 0):
            raise ConfigError("retry base", self.base, "seconds >= 0")
        if not (math.isfinite(self.cap) and self.cap >= self.base):
            raise ConfigError("retry cap", self.cap, f"seconds >= base ({self.base})")
        if not (math.isfinite(self.multiplier) and self.multiplier >= 1):
            raise ConfigError("retry multiplier", self.multiplier, "a number >= 1")

    def is_retryable(self, exc: BaseException) -> bool:
        try:
            return bool(self.retry_on(exc))
        except Exception:
            # A predicate that itself fails must not turn into a retry storm.
            return False

    def backoff_bound(self, attempt: int) -> float:
        """The largest jittered wait after failed attempt `attempt` (1-based)."""
        try:
            grown = self.base * self.multiplier ** max(0, attempt - 1)
        except OverflowError:
            return self.cap
        return min(self.cap, grown)

    def decide(
        self, attempt: int, exc: BaseException, rng: random.Random | None = None
    ) -> float | None:
        """Seconds to wait before the next attempt, or None to give up."""
        if attempt > self.retries or not self.is_retryable(exc):
            return None
        return self.delay(attempt, exc, rng)

    def delay(self, attempt: int, exc: BaseException, rng: random.Random | None = None) -> float:
        """The wait after failed attempt `attempt`, whatever the retry count."""
        bound = self.backoff_bound(attempt)
        delay = (rng or random).uniform(0.0, bound) if self.jitter else bound
        hint = retry_after_hint(exc)
        if hint is not None:
            delay = max(delay, hint)
        return delay
