"""`conveyor demo`: a sample batch against a simulated endpoint, no key, no network."""

from __future__ import annotations

import random
import sys
import tempfile
from pathlib import Path

import click
import orjson

from ._common import EXIT_FAILED_ITEMS, EXIT_OK, cli_errors, log_options, setup_logging
from ._execute import execute


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-n",
    "--requests",
    "count",
    type=click.IntRange(1, 1_000_000),
    default=3000,
    show_default=True,
    help="How many sample requests.",
)
@click.option(
    "--dir",
    "workdir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to write requests/results (default: a new temp dir).",
)
@click.option("-c", "--concurrency", type=click.IntRange(1, 10_000), default=200, show_default=True)
@click.option(
    "--rpm",
    type=click.FloatRange(min=0, min_open=True),
    default=60_000.0,
    show_default=True,
    help="The simulated server's limit, also told to the client.",
)
@log_options(quiet="No progress display.", log_json=False, verbose=False)
@cli_errors
def demo_cmd(count: int, workdir: Path | None, concurrency: int, rpm: float, quiet: bool) -> None:
    """Start a simulated OpenAI-compatible endpoint on 127.0.0.1, send it sample
    requests with live progress, and print the report. No key, no network."""
    setup_logging(quiet=True)
    from ..mock import MockConfig, MockServer
    from ..openai._run import RunSettings

    workdir = workdir or Path(tempfile.mkdtemp(prefix="conveyor-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    requests = workdir / "requests.jsonl"
    rnd = random.Random(7)
    topics = ["a haiku about queues", "why retries need jitter", "the CAP theorem",
              "rate limits", "a limerick about SQLite", "exactly-once delivery"]  # fmt: skip
    with requests.open("wb") as f:
        for i in range(count):
            body = {
                "model": "mock-gpt",
                "messages": [{"role": "user", "content": f"Write {rnd.choice(topics)} (#{i})"}],
                "max_tokens": 64,
            }
            line = {"custom_id": f"req-{i:06d}", "method": "POST",
                    "url": "/v1/chat/completions", "body": body}  # fmt: skip
            f.write(orjson.dumps(line) + b"\n")
        f.write(b'{"custom_id": "broken", "method": "POST", "url": "/v1/chat/completions"\n')
    output = workdir / "results.jsonl"
    for stale in (output, output.with_name(output.name + ".conveyor.db")):
        if stale.exists():
            stale.unlink()
    cfg = MockConfig(latency=0.08, jitter=0.12, rate_500=0.01, rate_429=0.002, rate_reset=0.002,
                     retry_after=0.2, rpm=int(rpm), seed=1)  # fmt: skip
    click.echo(f"conveyor demo: {count} requests + 1 broken line -> simulated endpoint "
               f"(80-200 ms latency, 1.4% faults, {rpm:g} rpm)", err=True)  # fmt: skip
    with MockServer(cfg).running_in_thread() as base_url:
        settings = RunSettings(output=output, base_url=base_url, api_key="demo-key",
                               concurrency=concurrency, rpm=rpm, retries=6, timeout=10)  # fmt: skip
        code = execute(requests, settings, quiet=quiet, resume_hint=False)
    click.echo(f"files: {requests}  {output}", err=True)
    click.echo(f"try:   conveyor status {output}.conveyor.db", err=True)
    html = workdir / "report.html"
    click.echo(f"       conveyor report {output}.conveyor.db --html {html}", err=True)
    # The broken line is there on purpose (and ~1% faults): a demo that ran
    # to the end succeeded, whatever its items did.
    sys.exit(0 if code in (EXIT_OK, EXIT_FAILED_ITEMS) else code)
