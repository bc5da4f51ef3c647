"""`conveyor run`, `conveyor demo` and `conveyor mock`."""

from __future__ import annotations

import random
import sys
import tempfile
from pathlib import Path
from typing import Any

import click
import orjson

from .._base._exceptions import Interrupted
from ._common import (
    EXIT_FAILED_ITEMS,
    EXIT_OK,
    EXIT_USAGE,
    api_key_env_option,
    cli_errors,
    log_options,
    setup_logging,
)
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
line number; the run goes on (--strict refuses the file instead). INPUT may
be - (stdin), a pipe or a FIFO (`<(...)`): read once, resumed by custom_id.

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


def _ceiling(settings: Any) -> int:
    """The most in flight: the fixed concurrency, or the upper bound of "auto"."""
    from .._core._options import AUTO_MAX
    from ..openai._run import DEFAULT_FIXED

    c = settings.concurrency
    if c is None:
        return DEFAULT_FIXED  # the default: what it runs at when the server shows limits
    return c if isinstance(c, int) else settings.concurrency_max or AUTO_MAX


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
    help="Max requests in flight (default 100), or 'auto': found from latency for servers "
    "that queue.",
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
    "its line becomes an invalid_answer error line.",
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


def execute(
    input_path: Path,
    settings: Any,
    *,
    quiet: bool = False,
    report_json: Path | None = None,
    log_json: bool = False,
) -> int:
    """Run with a progress display; print the summary; return the exit code."""
    from .._base._exceptions import ConveyorError
    from ..openai._run import run_file_settings
    from ._display import make_display

    display = make_display(quiet=quiet, log_json=log_json)
    settings.on_progress = display.update
    if type(display).__name__ == "RichDisplay":
        settings.progress_interval = 0.25  # a live panel wants fresher numbers
    try:
        report = run_file_settings(input_path, settings)
    except ConveyorError as exc:
        # A run that stops (Ctrl+C, a fatal error) still leaves its report.
        if report_json is not None and exc.report is not None:
            report_json.write_text(exc.report.to_json(include_results=False, indent=True))
        if not isinstance(exc, Interrupted):
            display.close()
            raise
        display.close()
        click.echo(exc.report.summary(), err=True)
        click.echo(
            "conveyor: interrupted; everything finished so far is saved. Resume with the "
            "same command:\n  " + " ".join(_quote(a) for a in _hide_header_values(sys.argv)),
            err=True,
        )
        raise
    display.close()
    from .._render._extras import RunFacts, add_extras, render_text

    model = settings.model or report.extra.get("model")
    facts = RunFacts(batch_id=report.batch_id, model=model, rpm_limit=settings.rpm,
                     tpm_limit=settings.tpm, concurrency=_ceiling(settings))  # fmt: skip
    report = add_extras(report, facts=facts)
    if report_json is not None:
        report_json.write_text(report.to_json(include_results=False, indent=True))
    if log_json:  # the summary as one JSON object too, like every other line
        click.echo('{"event": "summary", "report": ' + report.to_json(include_results=False)
                   + "}", err=True)  # fmt: skip
    else:
        click.echo(render_text(report), err=True)
        if report.extra.get("batch_mode"):
            from ._batch import render_batch_section

            click.echo(render_batch_section(report.extra["batch_mode"]), err=True)
    where = report.extra.get("output")
    if where:
        click.echo(f"output: {where}   journal: {report.extra.get('journal')}", err=True)
    if report.extra.get("resumed_skipped"):
        click.echo(f"resumed: {report.extra['resumed_skipped']} items already done", err=True)
    earlier = int(report.extra.get("journal_failed") or 0) - report.failed
    if earlier > 0:
        click.echo(
            f"{earlier} item(s) failed in an earlier run and are still failed in the output: "
            f"`conveyor retry {report.extra.get('journal')}` runs them again",
            err=True,
        )
    return EXIT_OK if report.failed == 0 and earlier <= 0 else EXIT_FAILED_ITEMS


def _hide_header_values(argv: list[str]) -> list[str]:
    """argv with each -H/--header value replaced (headers carry keys)."""
    out: list[str] = []
    after_flag = False
    for a in argv:
        if after_flag:
            out.append(a.split(":", 1)[0] + ": ***" if ":" in a else "***")
            after_flag = False
        elif a in ("-H", "--header"):
            out.append(a)
            after_flag = True
        elif a.startswith("--header="):
            out.append("--header=" + _hide_header_values(["-H", a[len("--header=") :]])[1])
        elif a.startswith("-H") and len(a) > 2:
            out.append("-H" + _hide_header_values(["-H", a[2:]])[1])
        else:
            out.append(a)
    return out


def _quote(a: str) -> str:
    import shlex

    return shlex.quote(a)


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
        code = execute(requests, settings, quiet=quiet)
    click.echo(f"files: {requests}  {output}", err=True)
    click.echo(f"try:   conveyor status {output}.conveyor.db", err=True)
    html = workdir / "report.html"
    click.echo(f"       conveyor report {output}.conveyor.db --html {html}", err=True)
    sys.exit(0 if code in (EXIT_OK, EXIT_FAILED_ITEMS) else code)


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
             "rpm_model", "tpm_model", "burst", "window_offset", "quota_after", "capacity",
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
    if models:
        kwargs["models"] = models
    serve(MockConfig(**kwargs), host=host, port=port, allow_remote=allow_remote)
