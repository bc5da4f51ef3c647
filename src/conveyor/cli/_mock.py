"""`conveyor mock`: the simulated OpenAI-compatible server's flags."""

from __future__ import annotations

from typing import Any

import click

from ._common import cli_errors


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--latency", type=float, default=0.0, show_default=True, help="Seconds per request.")
@click.option("--jitter", type=float, default=0.0, show_default=True, help="Extra 0..J seconds.")
@click.option("--rate-429", type=float, default=0.0, help="Fraction answered 429.")
@click.option("--rate-500", type=float, default=0.0, help="Fraction answered 500.")
@click.option("--rate-503", type=float, default=0.0, help="Fraction answered 503.")
@click.option("--rate-reset", type=float, default=0.0, help="Fraction of connections reset.")
@click.option(
    "--rate-truncate",
    type=float,
    default=0.0,
    help="Fraction of 200 answers cut off halfway through the body.",
)
@click.option("--rate-hang", type=float, default=0.0, help="Fraction never answered.")
@click.option(
    "--retry-after",
    type=float,
    default=1.0,
    show_default=True,
    help="Retry-After seconds on injected 429s.",
)
@click.option(
    "--rate-529", type=float, default=0.0, help="Fraction answered 529 overloaded (Anthropic)."
)
@click.option(
    "--rate-498", type=float, default=0.0, help="Fraction answered 498 capacity_exceeded (Groq)."
)
@click.option(
    "--rate-429-capacity",
    type=float,
    default=0.0,
    help="Fraction answered 429 'Resource Unavailable' (a flex tier's capacity, not a rate).",
)
@click.option("--rpm", type=int, help="Enforced requests per window.")
@click.option("--tpm", type=int, help="Enforced tokens per window (prompt + max_tokens).")
@click.option("--input-tpm", type=int, help="Enforced prompt tokens per window (Anthropic).")
@click.option("--output-tpm", type=int, help="Enforced max_tokens per window (Anthropic).")
@click.option(
    "--limit-model",
    type=click.Choice(["bucket", "fixed", "sliding"]),
    default="bucket",
    show_default=True,
    help="bucket: refilled continuously, holding --burst seconds (OpenAI, Anthropic); "
    "fixed: windows that restart; sliding: an exact log.",
)
@click.option(
    "--rpm-model", type=click.Choice(["bucket", "fixed", "sliding"]), help="Override for --rpm."
)
@click.option(
    "--tpm-model", type=click.Choice(["bucket", "fixed", "sliding"]), help="Override for --tpm."
)
@click.option(
    "--burst",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="Seconds of the rate a bucket holds: 60 = the whole minute (OpenAI), "
    "1 = a 'quantized' per-second limit.",
)
@click.option(
    "--window-offset",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Seconds into its first fixed window the server starts.",
)
@click.option(
    "--headers",
    "header_style",
    type=click.Choice(["openai", "anthropic", "none"]),
    default="openai",
    show_default=True,
    help="Rate-limit headers: x-ratelimit-* (Go durations), anthropic-ratelimit-* "
    "(RFC 3339 resets), or none.",
)
@click.option(
    "--no-retry-after-header",
    is_flag=True,
    help="Leave a 429's wait only in its message (OpenAI does not always send retry-after).",
)
@click.option(
    "--refusal",
    "refusal_style",
    type=click.Choice(["openai", "gemini", "bare"]),
    default="openai",
    show_default=True,
    help="How a rate-limit 429 is worded: OpenAI's message naming the limit and the "
    "wait, Gemini's RESOURCE_EXHAUSTED (a quota id and a retryDelay, no figure), or a "
    "bare gateway 429 naming nothing (a whole-second retry-after unless "
    "--no-retry-after-header).",
)
@click.option(
    "--spent",
    is_flag=True,
    help="Start with every limit spent, as another client of the same key (or an "
    "earlier run) left it: limits are per organization and project, shared by every key.",
)
@click.option(
    "--quota-after",
    type=click.IntRange(min=1),
    help="After N admitted requests, answer every request 429 insufficient_quota.",
)
@click.option(
    "--window", type=float, default=60.0, show_default=True, help="Limit window in seconds."
)
@click.option(
    "--capacity",
    type=click.IntRange(min=1),
    help="Saturating mode: serve at most K at once, queue the rest (no rate-limit headers).",
)
@click.option(
    "--service-time",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Seconds each request is served for in --capacity mode.",
)
@click.option(
    "--scale-by-tokens",
    is_flag=True,
    help="Scale the service time by the completion's tokens / --completion-tokens.",
)
@click.option(
    "--completion-tokens",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Tokens in each completion (fewer when max_tokens caps it).",
)
@click.option(
    "--degrade-after",
    type=click.IntRange(min=1),
    help="Past N requests in the server, every service slows by present/N (preemption).",
)
@click.option(
    "--queue-timeout",
    type=click.FloatRange(min=0),
    help="Answer 503 to a request that waited this many seconds in the queue.",
)
@click.option(
    "--invalid-json-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    help="Fraction of structured first answers (json_schema format, tools) that are "
    "prose around cut-off JSON.",
)
@click.option(
    "--schema-violation-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    help="Fraction of structured first answers that are JSON breaking the schema "
    "(a required property missing, a wrong type).",
)
@click.option(
    "--reask-invalid-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    help="Fraction of re-asks (requests carrying an earlier answer) answered invalid JSON.",
)
@click.option(
    "--batch-speed",
    type=click.FloatRange(min=0),
    default=1000.0,
    show_default=True,
    help="Batch API: lines answered per second per batch (0 = as fast as possible).",
)
@click.option(
    "--batch-error-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Batch API: fraction of lines answered 500 (the same custom_ids every time).",
)
@click.option(
    "--batch-expire-after",
    type=click.FloatRange(min=0),
    help="Batch API: seconds after which a new batch expires (keeping finished lines).",
)
@click.option(
    "--batch-stuck",
    type=click.Choice(["validating", "in_progress"]),
    help="Batch API: new batches stay in this state until cancelled or expired.",
)
@click.option(
    "--batch-max-lines",
    type=click.IntRange(min=1),
    default=50_000,
    show_default=True,
    help="Batch API: requests per input file (more fails the batch).",
)
@click.option(
    "--batch-max-bytes",
    type=click.IntRange(min=1),
    default=200 * 1024 * 1024,
    show_default=True,
    help="Batch API: bytes per input file (more fails the batch).",
)
@click.option(
    "--batch-enqueued-tokens",
    type=click.IntRange(min=1),
    help="Batch API: prompt tokens per model in unfinished batches; a batch past it "
    "fails with token_limit_exceeded.",
)
@click.option(
    "--batch-cancel-delay",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Batch API: seconds a cancelled batch stays 'cancelling'.",
)
@click.option(
    "--max-upload-bytes",
    type=click.IntRange(min=1),
    default=512 * 1024 * 1024,
    show_default=True,
    help="Files API: largest upload (larger ones get a 413).",
)
@click.option("--api-key", envvar="CONVEYOR_MOCK_API_KEY", help="Require this bearer key.")
@click.option("--model", "models", multiple=True, help="Models served (repeatable).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--allow-remote", is_flag=True, help="Allow a non-loopback --host.")
@cli_errors
def mock_cmd(host: str, port: int, allow_remote: bool, models: tuple[str, ...], **o: Any) -> None:
    """Serve a simulated OpenAI-compatible endpoint (chat, completions,
    embeddings, responses, models, and the Files + Batch API) with latency,
    faults and rate limits."""
    from ..mock import MockConfig, serve

    names = ("latency", "jitter", "rate_429", "rate_500", "rate_503", "rate_reset",
             "rate_truncate", "rate_hang", "retry_after", "rpm", "tpm", "api_key", "seed",
             "rate_529",
             "rate_498", "rate_429_capacity", "input_tpm", "output_tpm", "limit_model",
             "rpm_model", "tpm_model", "burst", "window_offset", "quota_after", "capacity", "spent",
             "service_time", "scale_by_tokens", "degrade_after", "queue_timeout",
             "invalid_json_rate", "schema_violation_rate", "reask_invalid_rate",
             "batch_error_rate", "batch_expire_after", "batch_stuck", "batch_max_lines",
             "batch_max_bytes", "batch_enqueued_tokens", "batch_cancel_delay",
             "max_upload_bytes", "completion_tokens")  # fmt: skip
    kwargs: dict[str, Any] = {n: o[n] for n in names}
    kwargs["batch_speed"] = o["batch_speed"] or None
    kwargs["limit_window"] = o["window"]
    kwargs["headers"] = o["header_style"]
    kwargs["retry_after_header"] = not o["no_retry_after_header"]
    kwargs["refusal"] = o["refusal_style"]
    if models:
        kwargs["models"] = models
    serve(MockConfig(**kwargs), host=host, port=port, allow_remote=allow_remote)
