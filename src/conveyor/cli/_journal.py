"""`conveyor status` and `conveyor retry`: look at, and finish, a journaled run."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click
import orjson

from .._base._exceptions import ConveyorError
from .._journal._journal import Journal, pid_alive
from ._common import cli_errors, log_options, setup_logging

_STATUS_ORDER = ("ok", "failed", "timed_out", "cancelled", "skipped", "pending")


def describe_input(ident: dict[str, str]) -> str:
    """What a journal's items came from, in words (never "None")."""
    kind = ident.get("kind", "")
    if kind == "python":
        fn = ident.get("fn")
        return "Python items" + (f" (fn {fn})" if fn else "") + ", from conveyor.run(journal=)"
    if ident.get("input"):
        return str(ident["input"])
    if ident.get("command") or ident.get("command_sha256"):
        cmd = ident.get("command") or f"sha256 {ident['command_sha256'][:12]}"
        return f"conveyor exec command {cmd}"
    return "not recorded"


def _writer_alive(path: Path) -> bool:
    """Whether the process that last took the journal's writer lock still runs
    (its pid is in `<journal>.lock`; a zombie counts as gone)."""
    try:
        text = Path(f"{path}.lock").read_text().split()
        pid = int(text[0]) if text else 0
    except (OSError, ValueError):
        return False
    return pid > 0 and pid_alive(pid)


def journal_status(path: Path, *, window: float = 60.0) -> dict[str, Any]:
    """Counts, errors, recent rate and ETA of a run, read while it may be running."""
    with Journal.open_readonly(path) as j:
        counts = j.status_counts()
        errors = j.error_counts()
        recent = j.finished_since(time.time() - window)
        total_meta = j.get_meta("total_items")
        ident = j.identity
        from ._batch import batch_status

        batches = batch_status(j)
    done = sum(v for k, v in counts.items() if k != "pending")
    total = int(total_meta) if total_meta else None
    running = _writer_alive(path)
    # A run nobody is writing has no rate and no ETA (it is stopped or done).
    rate = recent / window if running else 0.0
    left = None if total is None else max(0, total - done)
    eta = None if left is None or rate <= 0 else left / rate
    if running:
        state = "running"
    elif left == 0 and not counts.get("pending"):
        state = "finished"
    else:
        state = "stopped"
    return {
        "state": state,
        "journal": str(path),
        "input": ident.get("input"),
        "source": describe_input(dict(ident)),
        "counts": {k: counts.get(k, 0) for k in _STATUS_ORDER if counts.get(k)},
        "done": done,
        "total": total,
        "errors": errors,
        "rate_per_second": round(rate, 3),
        "eta_seconds": None if eta is None else round(eta, 1),
        "batches": batches,
    }


def _render(st: dict[str, Any]) -> str:
    total = st["total"]
    pct = f" ({st['done'] / total:.0%})" if total else ""
    lines = [
        f"journal {st['journal']}",
        f"  input: {st['source']}",
        f"  done {st['done']}" + (f" of {total}{pct}" if total else ""),
        "  " + "  ".join(f"{k} {v}" for k, v in st["counts"].items()),
        f"  rate {st['rate_per_second']:.1f}/s over the last minute"
        + (f", eta {st['eta_seconds']:.0f}s" if st["eta_seconds"] is not None else "")
        if st["state"] == "running"
        else (
            "  not running: stopped before the end; run the same command again to resume"
            if st["state"] == "stopped"
            else "  finished"
        ),
    ]
    if st["errors"]:
        top = sorted(st["errors"].items(), key=lambda kv: -kv[1])[:8]
        lines.append("  errors " + ", ".join(f"{k} x{n}" for k, n in top))
    if st.get("batches"):
        from ._batch import render_batches

        lines.extend(render_batches(st["batches"]))
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("journal", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--watch", type=click.FloatRange(min=0.5), help="Refresh every S seconds.")
@cli_errors
def status_cmd(journal: Path, as_json: bool, watch: float | None) -> None:
    """Counts per status, error distribution, rate and ETA of a run (running or
    stopped). Safe to use while the run writes. With --watch, Ctrl+C ends the
    watching (exit 0: nothing was interrupted)."""
    try:
        while True:
            st = journal_status(journal)
            click.echo(orjson.dumps(st).decode() if as_json else _render(st))
            if watch is None:
                return
            time.sleep(watch)
    except KeyboardInterrupt:
        if watch is None:
            raise


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("journal", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--status",
    "statuses",
    default="failed,timed_out",
    show_default=True,
    help="Comma-separated statuses to run again.",
)
@click.option(
    "-c",
    "--concurrency",
    type=click.IntRange(1, 100_000),
    help="Override the original concurrency.",
)
@click.option("--base-url", help="Override the original base URL.")
@log_options(quiet="No progress display.", log_json=False)
@cli_errors
def retry_cmd(
    journal: Path, statuses: str, concurrency: int | None, base_url: str | None,
    quiet: bool, verbose: int,
) -> None:  # fmt: skip
    """Re-run the items of JOURNAL with the given statuses (a partial re-run),
    then rewrite the output so each key appears exactly once."""
    setup_logging(verbose=verbose, quiet=quiet)
    wanted = [s.strip() for s in statuses.split(",") if s.strip()]
    bad = [s for s in wanted if s not in ("failed", "timed_out", "cancelled", "skipped", "ok")]
    if bad:
        raise click.BadParameter(f"unknown status {bad[0]!r}", param_hint="--status")
    with Journal.open_readonly(journal) as j:
        identity = j.identity
        settings_json = j.get_meta("run_settings")
    kind = identity.get("kind", "")
    from ..commands._batch import is_exec_journal

    if is_exec_journal(identity):
        from ..commands._batch import retry_commands
        from ._exec import JobPrinter, exit_code, summary_line

        report = retry_commands(
            journal, statuses=tuple(wanted), jobs=concurrency, on_job=JobPrinter()
        )
        click.echo(summary_line(report), err=True)
        sys.exit(exit_code(report))
    if kind == "python":
        fn = identity.get("fn") or "your function"
        raise ConveyorError(
            f"{journal} was written by conveyor.run(..., journal=) in Python: the command line "
            f"cannot rebuild its items or call {fn}. Re-run what failed from Python with "
            f"conveyor.run(items, fn, journal={str(journal)!r}, rerun='failed') (the ok items "
            "are reported from the journal, the rest run again)"
        )
    if kind not in ("batch", "records") or not settings_json:
        raise ConveyorError(
            f"{journal} does not record how to run its items again "
            "(it was not written by `conveyor run` or `conveyor exec`)"
        )
    sys.exit(_retry_file(journal, wanted, orjson.loads(settings_json), concurrency, base_url,
                         quiet))  # fmt: skip


def _retry_file(
    journal: Path, wanted: list[str], saved: dict[str, Any], concurrency: int | None,
    base_url: str | None, quiet: bool,
) -> int:  # fmt: skip
    from .._journal._sink import export, finish_reset
    from ..openai._run import RunSettings
    from ._execute import execute

    if saved.get("input") == "-" and sys.stdin.isatty():
        raise click.UsageError(
            f"the run of {journal} read its requests from a pipe (`-`): pipe the same input "
            f"into the retry, e.g. `conveyor retry {journal} < requests.jsonl`"
        )
    with Journal.open(journal, identity=_identity_of(journal), force=True) as j:
        keys = list(j.keys_with_status(wanted))
        # Items an interrupted or killed retry reset but did not finish.
        left = j.pending_count()
        if not keys and not left:
            click.echo(f"nothing to retry: no items with status {', '.join(wanted)}"
                       + _unfinished_hint(j), err=True)  # fmt: skip
            return 0
        j.reset(keys, mark_stale=True)
        finish_reset(j)  # the old lines of those keys leave the output now
    extra = f" and {left} left pending by an interrupted retry" if left else ""
    click.echo(f"retrying {len(keys)} item(s) with status {', '.join(wanted)}{extra}", err=True)
    settings = RunSettings(
        output=Path(saved["output"]) if saved.get("output") else None,
        base_url=base_url or saved.get("base_url"),
        api_key_env=saved.get("api_key_env") or "OPENAI_API_KEY",
        concurrency=concurrency or int(saved.get("concurrency") or 100),
        rpm=saved.get("rpm"),
        tpm=saved.get("tpm"),
        retries=int(saved.get("retries") or 5),
        timeout=saved.get("timeout"),
        journal=journal,
        force=base_url is not None,  # a new endpoint for the same items is the point
        template=Path(saved["template"]) if saved.get("template") else None,
        model=saved.get("model"),
        id_column=saved.get("id_column"),
        endpoint=saved.get("endpoint") or "/v1/chat/completions",
        limit_window=float(saved.get("limit_window") or 60.0),
        burst=float(saved.get("burst") or 1.0),
        # A schema file validates the retried answers as it did the first ones.
        schema=Path(saved["schema"]) if isinstance(saved.get("schema"), str) else None,
        reask=int(saved.get("reask", 2)),
    )
    try:
        return execute(Path(saved["input"]), settings, quiet=quiet)
    finally:
        # Retried keys were appended again: rewrite the output so each key
        # appears once, even if this retry was interrupted.
        if settings.output is not None:
            with Journal.open(journal, identity=_identity_of(journal), force=True) as j:
                n = export(j, settings.output)
            click.echo(f"rewrote {settings.output}: {n} lines, each key once", err=True)


def _unfinished_hint(j: Journal) -> str:
    """When the run stopped before reaching every item: how to finish it
    (`retry` re-runs items that have a result; the rest were never started)."""
    total = j.get_meta("total_items")
    done = sum(n for status, n in j.status_counts().items() if status != "pending")
    if total is None or done >= int(total):
        return ""
    return (f"; {int(total) - done} of {total} input lines have no result yet (the run "
            "stopped early, or used --limit): the same `conveyor run` command sends them, "
            "retry only re-runs items that have a result")  # fmt: skip


def _identity_of(journal: Path) -> dict[str, str]:
    with Journal.open_readonly(journal) as j:
        return dict(j.identity)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("journal", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("output", type=click.Path(dir_okay=False, path_type=Path))
@cli_errors
def export_cmd(journal: Path, output: Path) -> None:
    """Write OUTPUT from JOURNAL: each item's result line once, in input order
    (to rebuild a lost or edited output file). OUTPUT becomes the journal's
    output, so a later resume appends to it."""
    from .._journal._sink import export

    with Journal.open(journal, identity=_identity_of(journal), force=True) as j:
        n = export(j, output)
    click.echo(f"wrote {output}: {n} lines", err=True)
