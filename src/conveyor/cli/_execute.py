"""Running a file with a progress display and printing its summary (`run`, `demo`, `retry`)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from .._base._exceptions import Interrupted
from ._common import EXIT_FAILED_ITEMS, EXIT_OK

if TYPE_CHECKING:
    from pathlib import Path


def _ceiling(settings: Any) -> int:
    """The most in flight: the fixed concurrency, or the upper bound of "auto"."""
    from .._core._options import AUTO_MAX
    from ..openai._run import DEFAULT_FIXED

    c = settings.concurrency
    if c is None:
        return DEFAULT_FIXED  # the default: what it runs at when the server shows limits
    return c if isinstance(c, int) else settings.concurrency_max or AUTO_MAX


def execute(
    input_path: Path,
    settings: Any,
    *,
    quiet: bool = False,
    report_json: Path | None = None,
    log_json: bool = False,
    resume_hint: bool = True,
) -> int:
    """Run with a progress display; print the summary; return the exit code.
    `resume_hint`: after Ctrl+C, say to run the same command again (not for
    `demo`, which starts afresh every time)."""
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
        if resume_hint:
            argv = ["conveyor", *sys.argv[1:]]  # argv[0] may be .../conveyor/__main__.py
            click.echo(
                "conveyor: interrupted; everything finished so far is saved. Resume with the "
                "same command:\n  " + " ".join(_quote(a) for a in _hide_header_values(argv)),
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
    from ._main import allow_quick_exit

    allow_quick_exit()  # output, journal and report are closed: no teardown needed
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
