"""`conveyor run`: its flags, the dry run and the preflight."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from ._common import (
    EXIT_USAGE,
    api_key_env_option,
    cli_errors,
    log_options,
    setup_logging,
)
from ._execute import _ceiling, execute
from ._monitor_opts import build_monitor, monitor_options
from ._observe import threshold_options

_RUN_EPILOG = """\b
Examples:
  conveyor run requests.jsonl -o results.jsonl
  conveyor run requests.jsonl -o out.jsonl --base-url http://127.0.0.1:8000/v1 --rpm 500
  conveyor run comments.csv --template prompt.toml --model gpt-4o-mini \\
      --id-column reddit_id -o out.jsonl
  conveyor run requests.jsonl -o out.jsonl --dry-run

\b
Input: one OpenAI Batch request per line ({"custom_id", "method", "url",
"body"}) for /v1/chat/completions, /v1/completions, /v1/embeddings or
/v1/responses; or CSV/JSONL records plus a TOML template with `system` and
`user` Jinja2 templates (and optional `model`, `[params]`).
Output: the Batch API output format, one line per input line, each
custom_id exactly once. A bad input line becomes an error line naming its
line number; the run goes on (--strict refuses the file instead). One line
may be up to 64 MiB; a longer one is an error line naming file and line.
INPUT may be - (stdin), a pipe or a FIFO (`<(...)`): read once, resumed by
custom_id.

\b
Resume: the journal (default: OUTPUT.conveyor.db) records every result.
Running the same command again sends only what has no result yet. Ctrl+C
stops admitting, lets in-flight requests finish, and says how to resume.
`conveyor status JOURNAL` shows progress; `conveyor retry JOURNAL` re-runs
failures.

\b
Monitoring: --monitor samples memory, CPU, GPU (nvidia-smi) and --gauge
functions into the live panel and the report (`conveyor report --html`
draws them); --resource-max METRIC=MAX, --resource-min METRIC=MIN and, with --monitor,
the preflight's --max-gpu-memory, --max-gpu-utilization and
--min-free-memory stop the run live (exit 3; run the same command again
to resume).
Batch mode: --mode batch sends the same file through the provider's Batch
API at half price and writes the same output (each custom_id once), e.g.
  conveyor run requests.jsonl -o out.jsonl --mode batch --deadline 6h
Run the same command again after a crash or Ctrl+C: it re-attaches to the
batches it submitted. `conveyor cancel OUT.jsonl.conveyor.db` cancels them.

\b
Endpoint: --base-url, else OPENAI_BASE_URL, else https://api.openai.com/v1;
the key from $OPENAI_API_KEY (or the variable named by --api-key-env).
"""


class _ConcurrencyType(click.ParamType[Any]):
    """A whole number 1..100000, or "auto"."""

    name = "N|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int) or value == "auto":
            return value
        try:
            n = int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is neither a whole number nor 'auto'", param, ctx)
        if not 1 <= n <= 100_000:
            self.fail(f"{n} is not in the range 1..100000", param, ctx)
        return n


def _headers(values: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values:
        name, sep, val = v.partition(":")
        if not sep or not name.strip():
            raise click.BadParameter(f"{v!r} is not 'Name: value'", param_hint="--header")
        out[name.strip()] = val.strip()
    return out


@click.command(epilog=_RUN_EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("input_path", metavar="INPUT", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Output JSONL (Batch API output format). Required unless --dry-run.",
)
@click.option(
    "--base-url",
    envvar="OPENAI_BASE_URL",
    show_envvar=True,
    help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1.",
)
@api_key_env_option
@click.option(
    "-H",
    "--header",
    "headers",
    multiple=True,
    metavar="'NAME: VALUE'",
    help="Extra HTTP header (repeatable).",
)
@click.option(
    "-c",
    "--concurrency",
    type=_ConcurrencyType(),
    default=None,
    help="Max requests in flight, fixed, or 'auto': found from latency, for servers that "
    "queue. Default: auto until the server sends rate-limit headers or a 429, then 100. "
    "A fixed N opens in steps: one request first, then (if its answer shows no "
    "rate-limit headers) 10, then N.",
)
@click.option(
    "--concurrency-min",
    type=click.IntRange(1, 100_000),
    help="Lower bound of the auto concurrency (default 1).",
)
@click.option(
    "--concurrency-max",
    type=click.IntRange(1, 100_000),
    help="Upper bound of the auto concurrency (default 1024).",
)
@click.option(
    "--rpm",
    type=click.FloatRange(min=0, min_open=True),
    help="Requests per minute: a ceiling (else the server's limit, read from its headers).",
)
@click.option(
    "--tpm",
    type=click.FloatRange(min=0, min_open=True),
    help="Tokens per minute: a ceiling (each request reserves prompt estimate + max output).",
)
@click.option(
    "--burst",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Seconds of --rpm/--tpm that may be spent at once while the server sends no "
    "rate-limit headers (an unknown server may meter per second); its headers may lift it.",
)
@click.option(
    "--retries",
    type=click.IntRange(0, 100),
    default=5,
    show_default=True,
    help="Extra attempts for 429, 5xx, timeouts and connection errors.",
)
@click.option(
    "--give-up",
    type=click.FloatRange(min=0, min_open=True),
    default=120.0,
    show_default=True,
    help="Stop (exit 3, resumable) after this many seconds in which every request failed.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=600.0,
    show_default=True,
    help="Seconds per attempt.",
)
@click.option(
    "--journal",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Journal path (default: OUTPUT.conveyor.db).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Resume even though the input or endpoint differs from the journal's.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    help="Send only the first N pending requests (staged rollout); rerun for the rest.",
)
@click.option("--strict", is_flag=True, help="Refuse the whole file if any line is invalid.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Check the input and estimate tokens, cost and time; send nothing.",
)
@click.option(
    "--template",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="TOML prompt template: INPUT is then CSV/JSONL records.",
)
@click.option("--model", help="Model for template requests (overrides the template's).")
@click.option("--id-column", help="Record field used as custom_id (default: line-N).")
@click.option(
    "--endpoint",
    default="/v1/chat/completions",
    show_default=True,
    help="Endpoint for template requests.",
)
@click.option(
    "--schema",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="JSON Schema file every answer must match (parsed, validated, re-asked when "
    'invalid; the parsed value is added to each output line as "parsed"). Requests '
    "asking for no format get it as response_format / text.format. Without it, requests "
    "carrying a json_schema format or function tools are validated against their own.",
)
@click.option(
    "--reask",
    type=click.IntRange(0, 100),
    default=2,
    show_default=True,
    help="Times an answer that fails validation is asked again (with the errors) before "
    "its line becomes an invalid_answer error line (with --mode batch: re-asked online).",
)
@click.option("--no-dedupe", is_flag=True, help="Send identical requests every time.")
@click.option(
    "--cache",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Response cache file kept across runs.",
)
@click.option("--fail-fast", is_flag=True, help="Stop at the first failed request.")
@click.option(
    "--ray",
    "ray_target",
    metavar="TARGET",
    help="Run on Ray actors: 'local' (start Ray here), 'auto' (join this machine's "
    "cluster), or an address (HEAD:6379, ray://HEAD:10001). Needs conveyor[ray].",
)
@click.option(
    "--actors",
    type=click.IntRange(1, 10_000),
    default=2,
    show_default=True,
    help="Ray actors to spread the requests over (with --ray).",
)
@click.option(
    "--mode",
    type=click.Choice(["online", "batch"]),
    default="online",
    show_default=True,
    help="batch: send through the provider's Batch API (/v1/files + /v1/batches) at half "
    "price: sharded under its limits, polled, merged into the same output; resumable.",
)
@click.option(
    "--deadline",
    metavar="DURATION",
    help="With --mode batch: finish by then (e.g. 6h, counted from the first start); what "
    "the batches would not finish in time is sent online.",
)
@click.option(
    "--deadline-margin",
    metavar="DURATION",
    help="With --deadline: time kept in hand before it (default: a tenth of the deadline, "
    "2 s to 30 min).",
)
@click.option(
    "--completion-window",
    default="24h",
    show_default=True,
    help="With --mode batch: the batches' completion window.",
)
@click.option(
    "--max-enqueued-tokens",
    type=click.IntRange(min=1),
    help="With --mode batch: the provider's enqueued-token limit per model (prompt tokens "
    "in unfinished batches); shards are cut and submitted under it.",
)
@click.option(
    "--poll",
    metavar="DURATION",
    default="60s",
    show_default=True,
    help="With --mode batch: poll each batch at most this often (backs off while it is idle).",
)
@click.option(
    "--batch-max-lines",
    type=click.IntRange(min=1),
    default=50_000,
    show_default=True,
    help="With --mode batch: requests per batch file.",
)
@click.option(
    "--batch-max-bytes",
    type=click.IntRange(min=1),
    default=200_000_000,
    show_default=True,
    help="With --mode batch: bytes per batch file.",
)
@click.option(
    "--stuck-after",
    metavar="DURATION",
    default="6h",
    show_default=True,
    help="With --mode batch: a batch without any change this long is cancelled and its "
    "lines are submitted again.",
)
@click.option("--no-preflight", is_flag=True, help="Skip the endpoint/key/model/disk checks.")
@threshold_options
@monitor_options
@click.option(
    "--prices",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Price table (JSON/TOML) for cost estimates.",
)
@click.option(
    "--report-json",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the run report as JSON.",
)
@log_options(quiet="No progress display.")
@cli_errors
def run_cmd(input_path: Path, output: Path | None, **o: Any) -> None:
    """Send every request of INPUT to an OpenAI-compatible endpoint, as fast
    as its limits allow, and write one result per line to OUTPUT."""
    setup_logging(verbose=o["verbose"], log_json=o["log_json"], quiet=o["quiet"])
    from ..openai._run import RunSettings, default_journal_path, is_stream

    if output is None and not o["dry_run"]:
        raise click.UsageError("-o/--output is required (or use --dry-run)")
    settings = RunSettings(
        output=output,
        base_url=o["base_url"],
        api_key_env=o["api_key_env"],
        headers=_headers(o["headers"]),
        concurrency=o["concurrency"],
        concurrency_min=o["concurrency_min"],
        concurrency_max=o["concurrency_max"],
        rpm=o["rpm"],
        tpm=o["tpm"],
        burst=o["burst"],
        retries=o["retries"],
        give_up=o["give_up"],
        timeout=o["timeout"],
        journal=o["journal"] if o["journal"] is not None else True,
        force=o["force"],
        limit=o["limit"],
        strict=o["strict"],
        template=o["template"],
        model=o["model"],
        id_column=o["id_column"],
        endpoint=o["endpoint"],
        dedupe=not o["no_dedupe"],
        cache=o["cache"],
        fail_fast=o["fail_fast"],
        ray=o["ray_target"],
        actors=o["actors"],
        monitor=build_monitor(
            monitor=o["monitor"],
            monitor_interval=o["monitor_interval"],
            gauges=o["gauges"],
            resource_limits=o["resource_limits"],
            resource_floors=o["resource_floors"],
            limit_samples=o["limit_samples"],
            also_limits={
                "gpu_memory_percent": o["max_gpu_memory"],
                "gpu_utilization_percent": o["max_gpu_utilization"],
            },
            also_floors={"system_memory_available_mb": o["min_free_memory_mb"]},
        ),
        schema=o["schema"],
        reask=o["reask"],
        mode=o["mode"],
        deadline=o["deadline"],
        deadline_margin=o["deadline_margin"],
        completion_window=o["completion_window"],
        max_enqueued_tokens=o["max_enqueued_tokens"],
        poll=o["poll"],
        batch_max_lines=o["batch_max_lines"],
        batch_max_bytes=o["batch_max_bytes"],
        stuck_after=o["stuck_after"],
    )
    from ..openai._structured import resolve_schema

    rule = resolve_schema(settings.schema)  # a bad schema is refused before anything is sent
    if o["mode"] == "batch" and o["ray_target"] is not None:
        raise click.UsageError("--mode batch and --ray do not go together")
    if o["mode"] == "online":
        for flag in ("deadline", "deadline_margin", "max_enqueued_tokens"):
            if o[flag] is not None:
                raise click.UsageError(f"--{flag.replace('_', '-')} needs --mode batch")
    if o["ray_target"] is not None:
        from ..ray import check_ray_available

        check_ray_available()  # the install hint, before anything else
    if o["dry_run"]:
        if settings.mode == "batch":
            from ._batch import batch_dry_run

            batch_dry_run(input_path, settings, o)
            return
        _dry_run(input_path, settings, o, rule)
        return
    assert output is not None
    journal = o["journal"] or default_journal_path(output)
    is_stream(input_path)  # the input's own problems first (a device, a directory)
    if not o["no_preflight"]:
        _preflight(settings, journal, o["quiet"], {**o, "input_path": input_path})
    code = execute(input_path, settings, quiet=o["quiet"], report_json=o["report_json"],
                   log_json=o["log_json"])  # fmt: skip
    sys.exit(code)


def _dry_run(input_path: Path, settings: Any, o: dict[str, Any], rule: Any) -> None:
    from .._render._pricing import load_prices
    from ..openai._cache import request_key
    from ..openai._plan import make_plan
    from ..openai._runparts import _items, default_journal_path, is_stream, item_key

    jpath = o["journal"] or (default_journal_path(settings.output) if settings.output else None)
    is_stream(input_path)  # refuses a directory, a missing path, a device
    plan = make_plan(
        _items(input_path, settings, rule),
        input_path,
        journal_path=jpath,
        key_of=item_key,
        concurrency=_ceiling(settings),
        rpm=settings.rpm,
        tpm=settings.tpm,
        prices=load_prices(o["prices"]) if o["prices"] else None,
        request_key=request_key if settings.dedupe else None,
    )
    click.echo(plan.render())
    if settings.strict and plan.bad_count:
        sys.exit(EXIT_USAGE)


def _first_model(path: Path) -> str | None:
    """The model of the first valid request line (checked against /models);
    None for a pipe, which only the run itself may read."""
    from ..openai._batchfile import RequestLine, read_requests
    from ..openai._run import is_stream

    try:
        if is_stream(path):
            return None
        for i, item in enumerate(read_requests(path, check_duplicates=False)):
            if isinstance(item, RequestLine):
                model = item.body.get("model")
                return model if isinstance(model, str) else None
            if i > 100:
                break
    except Exception:  # the run itself reports input problems, line by line
        return None
    return None


def _preflight(settings: Any, journal: Path, quiet: bool, o: dict[str, Any]) -> None:
    from ..openai._http import Endpoint
    from ._observe import run_preflight

    ep = Endpoint.resolve(settings.base_url, api_key_env=settings.api_key_env)
    model = settings.model or _first_model(o["input_path"])
    # Raises PreflightFailed (exit 2) listing each failed check and its fix.
    run_preflight(base_url=ep.base_url, api_key_env=settings.api_key_env,
                  model=model, journal_path=journal, quiet=quiet,
                  min_free_memory_mb=o["min_free_memory_mb"],
                  min_free_disk_mb=o["min_free_disk_mb"],
                  gpu_memory_warn=o["gpu_memory_warn"],
                  max_gpu_memory=o["max_gpu_memory"],
                  max_gpu_utilization=o["max_gpu_utilization"],
                  user_checks=o["user_checks"], headers=settings.headers)  # fmt: skip
