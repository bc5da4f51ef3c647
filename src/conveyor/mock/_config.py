"""Configuration and counters of the simulated server (`conveyor.mock`)."""

from __future__ import annotations

import math
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .._base._exceptions import ConfigError
from ._meters import MODELS

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["ADMISSION_LOG_LIMIT", "HEADER_STYLES", "REFUSAL_STYLES", "MockConfig", "MockStats"]

HEADER_STYLES = ("openai", "anthropic", "none")
REFUSAL_STYLES = ("openai", "gemini", "bare")

ADMISSION_LOG_LIMIT = 1_000_000
"""Newest admissions kept in `MockStats.admissions`, bounding memory on long runs."""


def _check_number(name: str, value: object, *, upper: float | None = None) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (upper is not None and value > upper):  # type: ignore[operator]
        bound = f"between 0 and {upper:g}" if upper is not None else "a finite number >= 0"
        raise ConfigError(name, value, f"use {bound}")


def _check_count(name: str, value: object, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        allowed = "a positive integer" + (", or None for no limit" if optional else "")
        raise ConfigError(name, value, f"use {allowed}")


@dataclass(frozen=True, slots=True)
class MockConfig:
    """How the simulated server behaves; swap it on a running server with `replace`.

    Rates are fractions of requests (their sum at most 1). `rpm`/`tpm` are
    limits per `limit_window` seconds (60 like OpenAI's; tests use shorter);
    `input_tpm`/`output_tpm` meter prompt and completion tokens apart, as
    Anthropic does. `hang_seconds=None` hangs until the client disconnects or
    the server stops.

    How limits are metered (`mock._meters`): `limit_model` "bucket" (OpenAI,
    Anthropic: holds `burst` seconds of the rate, default the whole minute,
    refilled continuously; `burst=1` is a "quantized" limit), "fixed"
    (windows `window_offset` seconds in at start) or "sliding" (an exact
    log); `rpm_model`/`tpm_model` override it per limit. `headers` says how
    the state is reported: "openai" (`x-ratelimit-*`, Go durations),
    "anthropic" (`anthropic-ratelimit-*`, RFC 3339 resets, token counts
    rounded to thousands) or "none". `retry_after_header=False` leaves the
    wait only in a 429's message, as OpenAI sometimes does. `refusal` says
    how a rate-limit 429 is worded: "openai" (the message names the limit:
    "Limit 6000, Used 6000, Requested 1. Please try again in 20s"; Anthropic's
    body with `headers="anthropic"`), "gemini" (Gemini's OpenAI-compatible
    endpoint: a JSON array around a google.rpc error, RESOURCE_EXHAUSTED, a
    QuotaFailure quota id and a RetryInfo delay, no figure and no
    `retry-after`) or "bare" (a gateway's 429 that names nothing, Kong's
    `{"message": "API rate limit exceeded"}`, with a whole-second
    `retry-after` unless `retry_after_header=False`). `spent=True` starts
    every limit spent, as another client of the same key left it: limits
    belong to the organization and project, shared by every key and client
    in them (OpenAI, guides/rate-limits: "Rate limits are defined at the
    organization level and at the project level, not user level"; Gemini's
    quotas are per Google Cloud project), so a rerun right after a run, or
    jobs sharing a key, find the budget spent. After
    `quota_after` admitted requests every request is refused as
    `insufficient_quota` (waiting does not help). The `batch_*` fields shape the Batch
    API (`mock._batches`): lines per second (None: no pacing), the rate of lines that
    fail (the same ``custom_id``s every time), seconds after which a new batch expires,
    a batch stuck in "validating" or "in_progress", the line, byte and enqueued-token
    (per model) limits, and the seconds a cancel stays "cancelling"; an upload past
    `max_upload_bytes` (OpenAI: 512 MB) is a 413. The capacity faults are
    `rate_529` (Anthropic's overloaded_error), `rate_498` (Groq's flex
    capacity_exceeded) and `rate_429_capacity` (a flex tier's 429 "Resource
    Unavailable", not a rate limit). `rate_truncate` answers 200 with the full
    Content-Length but closes the connection halfway through the body, as an
    upstream or proxy that drops mid-answer does (clients report "peer closed
    connection without sending complete message body", e.g.
    https://github.com/langgenius/dify/issues/9912 against Azure OpenAI).
    The key is accepted as `Authorization: Bearer KEY` (OpenAI) or as
    `api-key: KEY` (Azure OpenAI: "API requests must include the API key in
    the api-key HTTP header",
    https://learn.microsoft.com/en-us/azure/ai-services/openai/reference).
    `echo_key=True` words a refused key's 401 with the key in clear, as some
    proxies do (OpenAI itself masks it: "Incorrect API key provided: sk-ab***yz").

    Structured requests (a json_schema `response_format`/`text.format`, or
    function tools) are answered with JSON that fits the schema, except at
    `invalid_json_rate` (prose around cut-off JSON) and
    `schema_violation_rate` (a required property missing, a wrong type) for
    first answers and `reask_invalid_rate` for re-asks (`mock._structured`);
    each request's draw is a hash of `seed` and its body.
    """

    latency: float = 0.0
    jitter: float = 0.0
    seed: int = 0
    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_503: float = 0.0
    rate_reset: float = 0.0
    rate_truncate: float = 0.0
    rate_hang: float = 0.0
    hang_seconds: float | None = None
    retry_after: float = 1.0
    rate_529: float = 0.0
    rate_498: float = 0.0
    rate_429_capacity: float = 0.0
    rpm: int | None = None
    tpm: int | None = None
    input_tpm: int | None = None
    output_tpm: int | None = None
    limit_window: float = 60.0
    limit_model: str = "bucket"
    rpm_model: str | None = None
    tpm_model: str | None = None
    burst: float = 60.0
    window_offset: float = 0.0
    headers: str = "openai"
    retry_after_header: bool = True
    refusal: str = "openai"
    spent: bool = False
    quota_after: int | None = None
    api_key: str | None = field(default=None, repr=False)
    echo_key: bool = False
    models: tuple[str, ...] = (
        "mock-gpt",
        "gpt-4o-mini",
        "gpt-4o",
        "gpt-4.1-mini",
        "text-embedding-3-small",
    )
    completion_tokens: int = 16
    capacity: int | None = None
    service_time: float = 0.0
    scale_by_tokens: bool = False
    degrade_after: int | None = None
    queue_timeout: float | None = None
    invalid_json_rate: float = 0.0
    schema_violation_rate: float = 0.0
    reask_invalid_rate: float = 0.0
    batch_speed: float | None = 1000.0
    batch_error_rate: float = 0.0
    batch_expire_after: float | None = None
    batch_stuck: str | None = None
    batch_max_lines: int = 50_000
    batch_max_bytes: int = 200 * 1024 * 1024
    batch_enqueued_tokens: int | None = None
    batch_cancel_delay: float = 0.0
    max_upload_bytes: int = 512 * 1024 * 1024

    def __post_init__(self) -> None:
        self._check_batches()
        _check_count("capacity", self.capacity, optional=True)
        _check_number("service_time", self.service_time)
        _check_count("degrade_after", self.degrade_after, optional=True)
        if self.queue_timeout is not None:
            _check_number("queue_timeout", self.queue_timeout)
        if self.capacity is None and (
            self.degrade_after is not None or self.queue_timeout is not None
        ):
            raise ConfigError(
                "capacity", None, "set a capacity to use degrade_after or queue_timeout"
            )
        for name in ("latency", "jitter", "retry_after"):
            _check_number(name, getattr(self, name))
        rates = (
            "rate_429",
            "rate_500",
            "rate_503",
            "rate_reset",
            "rate_truncate",
            "rate_hang",
            "rate_529",
            "rate_498",
            "rate_429_capacity",
        )
        for name in rates:
            _check_number(name, getattr(self, name), upper=1.0)
        total = sum(getattr(self, name) for name in rates)
        if total > 1.0 + 1e-9:
            raise ConfigError("rate_*", round(total, 6), "fault rates must add up to at most 1")
        for name in ("invalid_json_rate", "schema_violation_rate", "reask_invalid_rate"):
            _check_number(name, getattr(self, name), upper=1.0)
        if self.invalid_json_rate + self.schema_violation_rate > 1.0 + 1e-9:
            raise ConfigError(
                "invalid_json_rate + schema_violation_rate",
                self.invalid_json_rate + self.schema_violation_rate,
                "the two rates must add up to at most 1",
            )
        if self.hang_seconds is not None:
            _check_number("hang_seconds", self.hang_seconds)
        _check_number("limit_window", self.limit_window)
        if self.limit_window <= 0:
            raise ConfigError("limit_window", self.limit_window, "use a number of seconds > 0")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError("seed", self.seed, "use an integer")
        for name in ("rpm", "tpm", "input_tpm", "output_tpm", "quota_after"):
            _check_count(name, getattr(self, name), optional=True)
        for name in ("limit_model", "rpm_model", "tpm_model"):
            value = getattr(self, name)
            if (value is not None or name == "limit_model") and value not in MODELS:
                raise ConfigError(name, value, f"use one of {', '.join(MODELS)}")
        _check_number("burst", self.burst)
        if self.burst <= 0:
            raise ConfigError("burst", self.burst, "use a number of seconds > 0")
        _check_number("window_offset", self.window_offset)
        if self.headers not in HEADER_STYLES:
            raise ConfigError("headers", self.headers, f"use one of {', '.join(HEADER_STYLES)}")
        if self.refusal not in REFUSAL_STYLES:
            raise ConfigError("refusal", self.refusal, f"use one of {', '.join(REFUSAL_STYLES)}")
        _check_count("completion_tokens", self.completion_tokens)
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key):
            # The value itself is a secret: never echo it.
            raise ConfigError("api_key", "<hidden>", "use a non-empty string, or None for no auth")
        models: object = self.models
        if not isinstance(models, tuple | list) or not all(
            isinstance(m, str) and m for m in models
        ):
            raise ConfigError("models", models, "use a tuple of non-empty model names")
        if not models:
            raise ConfigError("models", models, "name at least one model")
        object.__setattr__(self, "models", tuple(models))

    def _check_batches(self) -> None:
        if self.batch_speed is not None:
            _check_number("batch_speed", self.batch_speed)
            if self.batch_speed <= 0:
                raise ConfigError(
                    "batch_speed",
                    self.batch_speed,
                    "use lines per second > 0, or None for no pacing",
                )
        _check_number("batch_error_rate", self.batch_error_rate, upper=1.0)
        if self.batch_expire_after is not None:
            _check_number("batch_expire_after", self.batch_expire_after)
        if self.batch_stuck not in (None, "validating", "in_progress"):
            raise ConfigError(
                "batch_stuck", self.batch_stuck, "use 'validating', 'in_progress' or None"
            )
        for name in ("batch_max_lines", "batch_max_bytes"):
            _check_count(name, getattr(self, name))
        _check_count("batch_enqueued_tokens", self.batch_enqueued_tokens, optional=True)
        _check_number("batch_cancel_delay", self.batch_cancel_delay)
        _check_count("max_upload_bytes", self.max_upload_bytes)

    @property
    def fault_rates(self) -> tuple[tuple[str, float], ...]:
        """``(fault, rate)`` pairs in draw order."""
        return (
            ("429", self.rate_429),
            ("500", self.rate_500),
            ("503", self.rate_503),
            ("reset", self.rate_reset),
            ("truncate", self.rate_truncate),
            ("hang", self.rate_hang),
            ("529", self.rate_529),
            ("498", self.rate_498),
            ("429_capacity", self.rate_429_capacity),
        )

    def model_of(self, limit: str) -> str:
        """The meter model for "requests" or a token limit."""
        own = self.rpm_model if limit == "requests" else self.tpm_model
        return own or self.limit_model


def _admission_log() -> deque[tuple[float, int]]:
    return deque(maxlen=ADMISSION_LOG_LIMIT)


@dataclass(slots=True)
class MockStats:
    """What the server saw and did; read it from tests (`server.stats`).

    `admissions` holds ``(time.monotonic(), tokens)`` per 200 answer, in order,
    `refusals` ``(time.monotonic(), kind)`` per refusal of a limit.
    `faults` counts injected faults by name: "429", "500", "503", "reset", "hang",
    "529", "498", "429_capacity". `refused` counts the limits' own refusals
    by class: "rate" (a limit was spent) and "quota" (`quota_after` reached).
    `structured` counts structured answers served as "first:<outcome>" or
    "reask:<outcome>" (outcome "valid", "invalid_json", "schema_violation");
    `structured_log` holds ``(conversation_key(body), is_reask, outcome)`` per
    answer, in order (`mock.conversation_key` of an input line's body names it).
    `batch_lines` counts the Batch API lines answered; `batch_polls` holds, per batch
    id, the `time.monotonic()` of each ``GET /v1/batches/{id}``.
    """

    requests: int = 0
    by_path: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    in_flight: int = 0
    max_in_flight: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    tokens: int = 0
    admitted: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    batch_lines: int = 0
    batch_polls: defaultdict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    admissions: deque[tuple[float, int]] = field(default_factory=_admission_log, repr=False)
    refusals: deque[tuple[float, str]] = field(
        default_factory=lambda: deque(maxlen=ADMISSION_LOG_LIMIT), repr=False
    )
    structured: Counter[str] = field(default_factory=Counter)
    structured_log: deque[tuple[str, bool, str]] = field(
        default_factory=lambda: deque(maxlen=ADMISSION_LOG_LIMIT), repr=False
    )

    @property
    def resets(self) -> int:
        """Connections closed without an answer on purpose."""
        return self.faults["reset"]

    @property
    def hangs(self) -> int:
        """Requests left hanging on purpose."""
        return self.faults["hang"]

    def _max_in_window(self, window: float, weight: Callable[[int], int]) -> int:
        log = list(self.admissions)
        best = total = start = 0
        for at, tokens in log:
            total += weight(tokens)
            while log[start][0] <= at - window:
                total -= weight(log[start][1])
                start += 1
            best = max(best, total)
        return best

    def max_requests_in_window(self, window: float) -> int:
        """Most 200 answers admitted within any `window` seconds."""
        return self._max_in_window(window, lambda _: 1)

    def max_tokens_in_window(self, window: float) -> int:
        """Most tokens charged within any `window` seconds."""
        return self._max_in_window(window, lambda tokens: tokens)
