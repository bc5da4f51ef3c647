"""The simulated server's rate limiter: an exact sliding window, clock passed in.

An admission at time ``t`` counts against the limits while ``now - t < window``,
so every half-open interval of length ``window`` holds at most ``rpm``
admissions and ``tpm`` tokens. Refused requests are not charged.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

__all__ = ["Decision", "SlidingWindow", "format_duration", "format_seconds"]


@dataclass(frozen=True, slots=True)
class Decision:
    """The limiter's answer for one request.

    `kind` names the limit that refused it ("requests" or "tokens"), `too_large`
    says the request alone exceeds the token limit (no wait will help);
    `retry_after` is the wait, in seconds, until the request would fit.
    """

    admitted: bool
    kind: str | None = None
    retry_after: float = 0.0
    too_large: bool = False


class SlidingWindow:
    """Log of admissions ``(time, tokens)`` still inside the window."""

    __slots__ = ("_log", "_tokens")

    def __init__(self) -> None:
        self._log: deque[tuple[float, int]] = deque()
        self._tokens = 0

    def evict(self, now: float, window: float) -> None:
        """Forget admissions that have left the window ending at `now`."""
        log = self._log
        cutoff = now - window
        while log and log[0][0] <= cutoff:
            self._tokens -= log.popleft()[1]

    @property
    def requests(self) -> int:
        """Admissions in the window (after the last `evict`)."""
        return len(self._log)

    @property
    def tokens(self) -> int:
        """Tokens charged in the window (after the last `evict`)."""
        return self._tokens

    def reset_in(self, now: float, window: float) -> float:
        """Seconds until the window is empty again (0 when it already is)."""
        return max(0.0, self._log[-1][0] + window - now) if self._log else 0.0

    def _wait_for_requests(self, now: float, window: float, rpm: int) -> float:
        excess = len(self._log) - rpm + 1
        if excess <= 0:
            return 0.0
        return self._log[excess - 1][0] + window - now

    def _wait_for_tokens(self, now: float, window: float, tpm: int, tokens: int) -> float:
        need = self._tokens + tokens - tpm
        if need <= 0:
            return 0.0
        freed = 0
        for at, charged in self._log:
            freed += charged
            if freed >= need:
                return at + window - now
        return window  # unreachable while tokens <= tpm; kept as a safe bound

    def admit(
        self, now: float, window: float, rpm: int | None, tpm: int | None, tokens: int
    ) -> Decision:
        """Admit and charge one request of `tokens`, or say why and how long to wait."""
        self.evict(now, window)
        if tpm is not None and tokens > tpm:
            return Decision(False, "tokens", window, too_large=True)
        wait_requests = self._wait_for_requests(now, window, rpm) if rpm is not None else 0.0
        wait_tokens = self._wait_for_tokens(now, window, tpm, tokens) if tpm is not None else 0.0
        if wait_requests > 0 or wait_tokens > 0:
            # Name the first limit hit but wait for both, so one retry suffices.
            kind = "requests" if wait_requests > 0 else "tokens"
            return Decision(False, kind, max(wait_requests, wait_tokens))
        self._log.append((now, tokens))
        self._tokens += tokens
        return Decision(True)


def format_duration(seconds: float) -> str:
    """OpenAI's reset format (Go durations): ``"0s"``, ``"250ms"``, ``"8.64s"``, ``"6m0s"``.

    Rounded up to the millisecond so a client that waits this long is never early.
    """
    ms = math.ceil(max(0.0, seconds) * 1000 - 1e-6)
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = format_seconds(rest / 1000) + "s"
    if hours:
        return f"{hours}h{minutes}m{secs}"
    if minutes:
        return f"{minutes}m{secs}"
    return secs


def format_seconds(seconds: float) -> str:
    """Seconds for a ``Retry-After`` header: rounded up to the ms, no trailing zeros."""
    ms = math.ceil(max(0.0, seconds) * 1000 - 1e-6)
    if ms % 1000 == 0:
        return str(ms // 1000)
    return f"{ms / 1000:.3f}".rstrip("0")
