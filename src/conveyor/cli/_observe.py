"""`conveyor report` and `conveyor doctor`, and the preflight step of `conveyor run`."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
import orjson

from .._base._exceptions import ConveyorError, PreflightFailed
from ._common import (
    EXIT_OK,
    EXIT_USAGE,
    api_key_env_option,
    cli_errors,
    log_options,
    setup_logging,
)
from ._preflight import (
    DEFAULT_GPU_MEMORY_WARN,
    DEFAULT_MIN_FREE_DISK_MB,
    DEFAULT_MIN_FREE_MEMORY_MB,
    Check,
    format_checks,
    has_failures,
    load_check,
    preflight,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

__all__ = [
    "DEFAULT_BASE_URL",
    "PreflightFailed",
    "doctor_cmd",
    "report_cmd",
    "resolve_base_url",
    "run_preflight",
    "threshold_options",
]

DEFAULT_BASE_URL = "https://api.openai.com/v1"

F = TypeVar("F", bound="Callable[..., Any]")


def resolve_base_url(base_url: str | None) -> str:
    """--base-url, else OPENAI_BASE_URL, else OpenAI's."""
    return base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL


def threshold_options(fn: F) -> F:
    """The preflight floors, limits and user checks as options (shared by `doctor` and `run`)."""
    for option in reversed(
        [
            click.option(
                "--min-free-memory",
                "min_free_memory_mb",
                type=click.FloatRange(min=0),
                default=DEFAULT_MIN_FREE_MEMORY_MB,
                show_default=True,
                metavar="MB",
                help="Refuse to start with less memory available than this.",
            ),
            click.option(
                "--min-free-disk",
                "min_free_disk_mb",
                type=click.FloatRange(min=0),
                default=DEFAULT_MIN_FREE_DISK_MB,
                show_default=True,
                metavar="MB",
                help="Refuse to start with less free disk than this where the journal goes.",
            ),
            click.option(
                "--max-gpu-memory",
                type=click.FloatRange(0, 100),
                metavar="PERCENT",
                help="Refuse to start when a GPU's memory is more used than this (nvidia-smi).",
            ),
            click.option(
                "--max-gpu-utilization",
                type=click.FloatRange(0, 100),
                metavar="PERCENT",
                help="Refuse to start when a GPU is busier than this (nvidia-smi).",
            ),
            click.option(
                "--check",
                "user_checks",
                multiple=True,
                metavar="MODULE:FUNC",
                help="Your own check (repeatable): a function that returns None/True to pass, "
                "False or a reason to refuse the run, or raises.",
            ),
            click.option(
                "--gpu-memory-warn",
                type=click.FloatRange(0, 1),
                default=DEFAULT_GPU_MEMORY_WARN,
                show_default=True,
                metavar="FRACTION",
                help="Warn when a GPU's memory is more used than this (nvidia-smi).",
            ),
        ]
    ):
        fn = option(fn)
    return fn


def run_preflight(
    *,
    base_url: str,
    api_key_env: str = "OPENAI_API_KEY",
    model: str | None = None,
    journal_path: str | os.PathLike[str] | None = None,
    min_free_memory_mb: float = DEFAULT_MIN_FREE_MEMORY_MB,
    min_free_disk_mb: float = DEFAULT_MIN_FREE_DISK_MB,
    gpu_memory_warn: float = DEFAULT_GPU_MEMORY_WARN,
    timeout: float = 5.0,
    quiet: bool = False,
    max_gpu_memory: float | None = None,
    max_gpu_utilization: float | None = None,
    user_checks: Sequence[str] = (),
    headers: Mapping[str, str] | None = None,
) -> list[Check]:
    """The checks `conveyor run` makes first (sync; call it before starting the loop).

    Prints the table to stderr when a check warns or fails (unless `quiet`
    and nothing failed); raises `PreflightFailed` when one failed.
    """
    checks = asyncio.run(
        preflight(
            base_url=base_url,
            api_key=os.environ.get(api_key_env) or None,
            api_key_env=api_key_env,
            model=model,
            journal_path=journal_path,
            min_free_memory_mb=min_free_memory_mb,
            min_free_disk_mb=min_free_disk_mb,
            gpu_memory_warn=gpu_memory_warn,
            timeout=timeout,
            max_gpu_memory=max_gpu_memory,
            max_gpu_utilization=max_gpu_utilization,
            checks=load_checks(user_checks),
            headers=headers,
        )
    )
    failed = has_failures(checks)
    if failed or (not quiet and any(c.status == "warn" for c in checks)):
        click.echo(format_checks(checks), err=True)
    if failed:
        raise PreflightFailed(checks, skip_hint="--no-preflight")
    return checks


def load_checks(specs: Sequence[str]) -> list[Any]:
    """The `--check MODULE:FUNC` functions; a bad one is a usage error."""
    try:
        return [load_check(spec) for spec in specs]
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


@click.command("report")
@click.argument("journal", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of text.")
@click.option(
    "--html",
    "html_path",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Also write a self-contained HTML page with charts to this file.",
)
@click.option(
    "--prices",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help='JSON/TOML file of {"model": {"input": $, "output": $}} per million tokens, '
    "overriding the built-in table for the cost estimate.",
)
@click.option("--model", help="Model to price the tokens at (default: the journal's).")
@click.option("--results", "with_results", is_flag=True, help="With --json: every item's result.")
@click.option(
    "--slowest",
    type=click.IntRange(0, 1000),
    default=5,
    show_default=True,
    help="How many of the slowest items to list.",
)
@log_options()
@cli_errors
def report_cmd(
    journal: Path,
    as_json: bool,
    html_path: Path | None,
    prices: Path | None,
    model: str | None,
    with_results: bool,
    slowest: int,
    verbose: int,
    log_json: bool,
) -> None:
    """Summarise the run recorded in JOURNAL: totals, latency, tokens, cost,
    errors, the slowest items; as text, --json, or an --html page with charts.

    Reads the journal without locking it, so it works while the run goes on.
    """
    from .._render._extras import render_text
    from .._render._journal import load_journal_report
    from .._render._pricing import load_prices

    setup_logging(verbose=verbose, log_json=log_json)
    table = load_prices(prices) if prices is not None else None
    loaded = load_journal_report(
        journal, prices=table, model=model, keep_results=with_results, slowest=slowest
    )
    if html_path is not None:
        from .._render._html import write_html

        try:
            written = write_html(html_path, loaded.report, loaded.timeline)
        except OSError as exc:
            raise ConveyorError(
                f"cannot write {html_path} ({exc.strerror or exc}): choose a writable --html path"
            ) from None
        click.echo(f"conveyor: wrote {written}", err=True)
    if as_json:
        click.echo(loaded.report.to_json(include_results=with_results, indent=True))
    else:
        click.echo(render_text(loaded.report))


@click.command("doctor")
@click.option(
    "--base-url",
    metavar="URL",
    help=f"OpenAI-compatible endpoint (default: $OPENAI_BASE_URL, else {DEFAULT_BASE_URL}).",
)
@api_key_env_option
@click.option("--model", help="Check that this model is listed by GET /models.")
@click.option(
    "--journal",
    "journal_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Check that this journal location is writable and has disk space.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=5.0,
    show_default=True,
    help="Seconds each network or nvidia-smi probe may take.",
)
@threshold_options
@log_options()
@cli_errors
def doctor_cmd(
    base_url: str | None,
    api_key_env: str,
    model: str | None,
    journal_path: Path | None,
    as_json: bool,
    timeout: float,
    min_free_memory_mb: float,
    min_free_disk_mb: float,
    gpu_memory_warn: float,
    max_gpu_memory: float | None,
    max_gpu_utilization: float | None,
    user_checks: tuple[str, ...],
    verbose: int,
    log_json: bool,
) -> None:
    """Check that a run can start: endpoint reachable, key accepted, model
    listed, journal writable, free disk and memory, GPU memory (nvidia-smi).

    Exits 0 when no check failed, 2 otherwise. Every failed check says what
    to do.
    """
    setup_logging(verbose=verbose, log_json=log_json)
    checks = asyncio.run(
        preflight(
            base_url=resolve_base_url(base_url),
            api_key=os.environ.get(api_key_env) or None,
            api_key_env=api_key_env,
            model=model,
            journal_path=journal_path,
            min_free_memory_mb=min_free_memory_mb,
            min_free_disk_mb=min_free_disk_mb,
            gpu_memory_warn=gpu_memory_warn,
            timeout=timeout,
            max_gpu_memory=max_gpu_memory,
            max_gpu_utilization=max_gpu_utilization,
            checks=load_checks(user_checks),
        )
    )
    if as_json:
        body = {"ok": not has_failures(checks), "checks": [c.to_dict() for c in checks]}
        click.echo(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(format_checks(checks))
    sys.exit(EXIT_USAGE if has_failures(checks) else EXIT_OK)
