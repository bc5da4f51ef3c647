"""`conveyor exec`: GNU parallel's job, with a journal. The work is in `_exec`."""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import os
import shutil
import stat
import sys
import threading
from typing import IO, TYPE_CHECKING, Any

import click

from .._base._exceptions import InputError, Interrupted
from .._core._report import resource_lines
from ..commands._batch import plan_commands, run_commands
from ..commands._expand import highest_position
from ._common import EXIT_FAILED_ITEMS, EXIT_OK, cli_errors, log_options, setup_logging
from ._monitor_opts import build_monitor, monitor_options

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
    from pathlib import Path

    from .._core._report import BatchReport
    from ..commands._batch import JobOutcome

__all__ = [
    "JobPrinter",
    "aread_lines",
    "exec_cmd",
    "exit_code",
    "read_lines",
    "split_inputs",
    "summary_line",
]

_LINE_LIMIT = 16 * 1024 * 1024
_COPY_CHUNK = 1 << 20
_NOT_OK = ("failed", "timed_out", "cancelled", "skipped")


# --- inputs -----------------------------------------------------------------------------------


def split_inputs(args: Sequence[str]) -> tuple[list[str], list[Any] | None]:
    """`cmd args ::: a b c` -> (command template, inputs); inputs are None without `:::`.

    Several sources (`::: a b ::: c d`) are combined as GNU parallel does: every
    combination, the last source varying fastest, each a tuple (`{1}`, `{2}`).
    """
    if "::::" in args:
        raise click.UsageError("`::::` (inputs from files) is not supported: use --arg-file FILE")
    if ":::" not in args:
        return list(args), None
    i = list(args).index(":::")
    sources: list[list[str]] = [[]]
    for word in args[i + 1 :]:
        if word == ":::":
            sources.append([])
        else:
            sources[-1].append(word)
    if len(sources) == 1:
        return list(args[:i]), sources[0]
    return list(args[:i]), list(itertools.product(*sources))


def _decode_line(raw: bytes) -> str:
    if raw.endswith(b"\n"):
        raw = raw[:-1]
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    # Any bytes (file names from `find`) reach the command unchanged.
    return raw.decode("utf-8", "surrogateescape")


def read_lines(source: str | os.PathLike[str] | IO[bytes]) -> Iterator[str]:
    """Lines of a file or binary stream, without their newline (bytes kept exactly)."""
    if isinstance(source, str | os.PathLike):
        with open(source, "rb") as f:
            yield from (_decode_line(b) for b in f)
    else:
        yield from (_decode_line(b) for b in source)


def _pipe_fd(f: IO[bytes]) -> int | None:
    try:
        fd = f.fileno()
        mode = os.fstat(fd).st_mode
    except (OSError, ValueError, io.UnsupportedOperation):
        return None
    return fd if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(fd) else None


def _name_of(source: str | os.PathLike[str] | IO[bytes], f: IO[bytes]) -> str:
    """How messages name an exec input: its path, or `stdin`."""
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    name = getattr(f, "name", None)
    return name if isinstance(name, str) and name not in ("<stdin>", "-") else "stdin"


async def aread_lines(source: str | os.PathLike[str] | IO[bytes]) -> AsyncIterator[str]:
    """`read_lines` that never blocks the event loop on a pipe or terminal.

    Waiting for the next line of a slow pipe (`tail -f log | conveyor exec`)
    must not keep running jobs' timeouts and Ctrl+C from being handled.
    """
    owned: IO[bytes] | None = None
    if isinstance(source, str | os.PathLike):
        owned = open(source, "rb")  # noqa: ASYNC230, SIM115 - closed in the finally below
    f: IO[bytes] = owned if owned is not None else source  # type: ignore[assignment]
    try:
        fd = _pipe_fd(f)
        if fd is None:  # a regular file: reads do not wait
            for line in read_lines(f):
                yield line
            return
        reader = asyncio.StreamReader(limit=_LINE_LIMIT)
        # The transport closes what it is given: give it a duplicate descriptor.
        dup = os.fdopen(os.dup(fd), "rb", buffering=0)
        transport, _ = await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), dup
        )
        try:
            n = 0
            while True:
                n += 1
                try:
                    raw = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError as exc:
                    raw = exc.partial
                except asyncio.LimitOverrunError as exc:
                    raise InputError(
                        f"the line is longer than {_LINE_LIMIT >> 20} MiB; "
                        "pass large inputs as file names instead",
                        path=_name_of(source, f),
                        line=n,
                    ) from exc
                if not raw:
                    return
                yield _decode_line(raw)
        finally:
            transport.close()
            with contextlib.suppress(OSError):
                os.set_blocking(fd, True)  # the flag is shared with our stdin
    finally:
        if owned is not None:
            owned.close()


def _source(values: list[Any] | None, arg_file: str | None) -> list[Any] | str | IO[bytes]:
    if values is not None and arg_file is not None:
        raise click.UsageError("give inputs either after `:::` or with --arg-file, not both")
    if values is not None:
        return values
    if arg_file is not None and arg_file != "-":
        return arg_file
    stdin = sys.stdin.buffer
    if arg_file is None and stdin.isatty():
        raise click.UsageError(
            "no inputs: give them after `:::` (conveyor exec -- echo {} ::: a b), "
            "with --arg-file FILE, or one per line on stdin"
        )
    return stdin


# --- output -----------------------------------------------------------------------------------


class JobPrinter:
    """Copies each finished job's stdout and stderr to ours (GNU parallel's --group).

    Called by `run_commands` on a worker thread, one job at a time, so the
    outputs of two jobs never mix. When our stdout is closed early (`| head`),
    printing stops and the jobs keep running.
    """

    def __init__(self) -> None:
        self.broken = False
        self._lock = threading.Lock()

    def __call__(self, outcome: JobOutcome) -> None:
        cr = outcome.command
        if cr is None:
            return
        with self._lock:
            if not self.broken:
                try:
                    _copy(cr.stdout_path, sys.stdout.buffer)
                except BrokenPipeError:
                    self.broken = True
                    _silence_stdout()
            with contextlib.suppress(BrokenPipeError):
                _copy(cr.stderr_path, sys.stderr.buffer)


def _copy(path: Path, out: IO[bytes]) -> None:
    try:
        with path.open("rb") as f:
            shutil.copyfileobj(f, out, _COPY_CHUNK)
    except FileNotFoundError:
        return
    out.flush()


def _silence_stdout() -> None:
    # Python flushes stdout at exit; pointed at /dev/null that cannot fail again.
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def summary_line(report: BatchReport) -> str:
    """`N jobs: a ok, b failed, c timed out[, ...]; joblog at PATH` (for stderr)."""
    c = report.counts
    parts = [f"{c.get('ok', 0)} ok", f"{c.get('failed', 0)} failed"]
    parts.append(f"{c.get('timed_out', 0)} timed out")
    if c.get("cancelled"):
        parts.append(f"{c['cancelled']} cancelled")
    if c.get("skipped"):
        parts.append(f"{c['skipped']} not started")
    done = int(report.extra.get("already_done", 0))
    if done:
        parts.append(f"{done} skipped as already done")
    where = f"; joblog at {report.extra['joblog']}" if "joblog" in report.extra else ""
    jobs = "job" if report.total == 1 else "jobs"
    return f"{report.total} {jobs}: {', '.join(parts)}{where}"


def exit_code(report: BatchReport) -> int:
    """0 when every job that ran succeeded, else 1."""
    return EXIT_FAILED_ITEMS if any(report.counts.get(s) for s in _NOT_OK) else EXIT_OK


# --- the command ------------------------------------------------------------------------------

_HELP = """Run COMMAND once per input, N at a time; rerun to resume.

GNU parallel's job with a journal: each job's output, exit code and timing
are kept, a timeout kills the job's whole process group, and rerunning the
same command skips the jobs that already finished (`conveyor retry` re-runs
the failed ones).

\b
Examples:
  conveyor exec -j 4 -- gzip -k {} ::: *.log
  find . -name '*.png' | conveyor exec -- convert {} {.}.webp
  conveyor exec -a urls.txt --timeout 30 --retries 2 -- curl -fsSO {}
  conveyor exec --isolate worktree --timeout 900 -a tasks.txt -- agent --task {}
  conveyor exec --shell -- 'grep -c ERROR {} > {/.}.count' ::: logs/*
  conveyor exec --dry-run -- rm {} ::: a b     (print the commands only)
  conveyor exec -j 2 -- env CUDA_VISIBLE_DEVICES={%} train {1} {2} ::: s m ::: 1e-3 1e-4

\b
Inputs, one job each: the words after `:::`, the lines of --arg-file
FILE, or the lines of stdin when it is not a terminal. Several `:::` lists
run every combination (`::: a b ::: c d`: a c, a d, b c, b d), as GNU
parallel does; `{1}`, `{2}` are the job's values from each list.

\b
Replacement strings (as in GNU parallel), usable inside any argument:
  {}    the input                 dir/a.tar.gz
  {.}   without its extension     dir/a.tar
  {/}   basename                  a.tar.gz
  {//}  dirname                   dir
  {/.}  basename, no extension    a.tar
  {#}   job number, from 1        3
  {%}   job slot, 1..N (lowest free one; also $PARALLEL_JOBSLOT)
  {1}   the value from the first `:::` list ({2} the second; {1.} {1/} ...)
Without any of them the input is appended as the last argument(s).

\b
No shell runs unless --shell: each argument stays one argument, so an input
can never inject a command. With --shell, COMMAND is one shell line and
every substituted input is shell-quoted.

\b
Where things go (ARTIFACTS is --artifacts, default ./conveyor-exec-<hash of COMMAND>):
  ARTIFACTS/jobs/<key>/stdout, stderr  each job's output (also printed here
                                       as each job ends; -k for input order)
  ARTIFACTS/joblog.tsv        GNU parallel --joblog columns (exit 124 = timeout)
  ARTIFACTS/results.jsonl     a JSON line per job: status, exit code, paths
  ARTIFACTS/journal.sqlite    what is done (--journal to move it)
Jobs see CONVEYOR_JOB_KEY, CONVEYOR_JOB_SEQ and CONVEYOR_JOB_DIR (theirs).
A summary line goes to stderr at the end.

\b
Exit codes:
  0    every job succeeded (or had already)
  1    some job failed, timed out or was not run; `conveyor retry` re-runs
       the failed ones, rerunning the command runs those not run
  2    bad usage, or the journal belongs to another command (--force)
  130  interrupted: the first Ctrl+C lets running jobs finish for --grace
       seconds, a second one kills them; rerun the same command to resume
"""


@click.command(
    "exec",
    help=_HELP,
    context_settings={"help_option_names": ["-h", "--help"], "allow_interspersed_args": False},
    no_args_is_help=True,
)
@click.option("-j", "--jobs", type=click.IntRange(1, 100_000), help="Jobs at once [CPU count].")
@click.option(
    "--timeout",
    type=click.FloatRange(0, min_open=True),
    metavar="S",
    help="Kill a job (its whole process group) after S seconds; exit 124.",
)
@click.option(
    "--retries", type=click.IntRange(0, 1000), default=0, help="Re-run a failed job N more times."
)
@click.option("--halt-on-fail", is_flag=True, help="Stop everything at the first failed job.")
@click.option(
    "--isolate",
    type=click.Choice(["none", "dir", "worktree"]),
    default="none",
    show_default=True,
    help="Run each job in the current directory, a fresh empty one, or its own git "
    "worktree on branch conveyor/<key>.",
)
@click.option(
    "--keep", is_flag=True, help="Keep each job's directory or worktree after success too."
)
@click.option(
    "--artifacts", type=click.Path(file_okay=False), help="Directory for outputs and journal."
)
@click.option("--joblog", type=click.Path(dir_okay=False), help="Write the job log here instead.")
@click.option("--journal", type=click.Path(dir_okay=False), help="Journal file to use instead.")
@click.option("-k", "--keep-order", is_flag=True, help="Print outputs in input order.")
@click.option("--shell", is_flag=True, help="COMMAND is a shell line run by /bin/sh -c.")
@click.option(
    "-a",
    "--arg-file",
    type=click.Path(exists=True, dir_okay=False, allow_dash=True),
    help="Read inputs from FILE, one per line (- for stdin).",
)
@click.option("--force", is_flag=True, help="Use a journal written for another command.")
@click.option("--dry-run", is_flag=True, help="Print the commands that would run, then exit.")
@click.option(
    "--grace",
    type=click.FloatRange(0),
    default=10.0,
    show_default=True,
    help="Seconds running jobs get to finish after Ctrl+C.",
)
@click.option(
    "--kill-grace",
    type=click.FloatRange(0),
    default=5.0,
    show_default=True,
    help="Seconds between SIGTERM and SIGKILL when a job is killed.",
)
@monitor_options
@log_options(quiet="Only errors on stderr (and the summary).")
@click.argument(
    "command", nargs=-1, type=click.UNPROCESSED, metavar="-- COMMAND [ARGS]... [::: INPUT...]"
)
@cli_errors
def exec_cmd(
    command: tuple[str, ...],
    jobs: int | None,
    timeout: float | None,
    retries: int,
    halt_on_fail: bool,
    isolate: Any,
    keep: bool,
    artifacts: str | None,
    joblog: str | None,
    journal: str | None,
    keep_order: bool,
    shell: bool,
    arg_file: str | None,
    force: bool,
    dry_run: bool,
    grace: float,
    kill_grace: float,
    monitor: bool,
    monitor_interval: float,
    gauges: tuple[str, ...],
    resource_limits: tuple[str, ...],
    resource_floors: tuple[str, ...],
    limit_samples: int,
    verbose: int,
    quiet: bool,
    log_json: bool,
) -> None:
    setup_logging(verbose=verbose, log_json=log_json, quiet=quiet)
    template, values = split_inputs(command)
    if not template:
        raise click.UsageError("give the command to run after `--`: conveyor exec -- CMD {} ...")
    cmd: list[str] | str = " ".join(template) if shell else template
    sources = len(values[0]) if values and isinstance(values[0], tuple) else 1
    wanted = max(highest_position(word) for word in template)
    if wanted > sources:
        raise click.UsageError(
            f"the command uses {{{wanted}}} but there are {sources} input source(s): "
            "give one `::: ...` list per position (conveyor exec -- cmd {1} {2} ::: a b ::: c d)"
        )
    src = _source(values, arg_file)
    if dry_run:
        lines: Iterable[Any] = src if isinstance(src, list) else read_lines(src)
        out = sys.stdout.buffer
        for _job, line in plan_commands(
            lines, cmd, shell=shell, artifacts=artifacts, journal=journal, force=force
        ):
            out.write(line.encode("utf-8", "surrogateescape") + b"\n")
        out.flush()
        return
    try:
        report = run_commands(
            src if isinstance(src, list) else aread_lines(src),
            cmd,
            jobs=jobs,
            timeout=timeout,
            retries=retries,
            halt_on_fail=halt_on_fail,
            isolate=isolate,
            keep=keep,
            shell=shell,
            artifacts=artifacts,
            joblog=joblog,
            journal=journal,
            keep_order=keep_order,
            force=force,
            on_job=JobPrinter(),
            kill_grace=kill_grace,
            grace=grace,
            keep_results=False,
            monitor=build_monitor(
                monitor=monitor,
                monitor_interval=monitor_interval,
                gauges=gauges,
                resource_limits=resource_limits,
                resource_floors=resource_floors,
                limit_samples=limit_samples,
            ),
        )
    except Interrupted as exc:
        if exc.report is not None and "joblog" in exc.report.extra:
            click.echo(summary_line(exc.report), err=True)
        raise
    click.echo(summary_line(report), err=True)
    for line in resource_lines(report.extra.get("resources")):
        click.echo(line.strip(), err=True)
    sys.exit(exit_code(report))
