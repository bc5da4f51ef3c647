"""The `conveyor` click group and its lazy registry of subcommands."""

from __future__ import annotations

import atexit
import importlib
import os
import sys
import threading

import click

from .._base._version import __version__

__all__ = ["COMMANDS", "LazyGroup", "allow_quick_exit", "entry", "main", "quick_exit_status"]

# name -> ("module:attribute" of a click command, one-line help for the listing)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("conveyor.cli._run:run_cmd", "Send an OpenAI Batch file (or records + template)."),
    "demo": ("conveyor.cli._demo:demo_cmd", "Run a sample batch against a built-in endpoint."),
    "mock": ("conveyor.cli._mock:mock_cmd", "Serve a simulated OpenAI-compatible endpoint."),
    "serve": ("conveyor.cli._serve:serve_cmd", "Serve OpenAI's Batch API over any endpoint."),
    "status": ("conveyor.cli._journal:status_cmd", "Counts, errors, rate and ETA of a run."),
    "retry": ("conveyor.cli._journal:retry_cmd", "Re-run the failed items of a journal."),
    "cancel": ("conveyor.cli._batch:cancel_cmd", "Cancel the provider batches of a run."),
    "export": ("conveyor.cli._journal:export_cmd", "Rewrite an output file from its journal."),
    "exec": ("conveyor.cli._exec:exec_cmd", "Run a shell command per input, in parallel."),
    "report": ("conveyor.cli._observe:report_cmd", "Summarise a journal: text, JSON or HTML."),
    "doctor": ("conveyor.cli._observe:doctor_cmd", "Check endpoint, key, model, disk, memory."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module, _, attr = entry[0].partition(":")
        cmd = getattr(importlib.import_module(module), attr)
        if not isinstance(cmd, click.Command):
            raise TypeError(f"{entry[0]} is not a click command")
        return cmd

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # From the registry, so listing commands imports none of them.
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="conveyor")
def main() -> None:
    """Run large batches of AI calls and shell jobs concurrently: fast, lossless,
    resumable, visible.

    \b
    Start here:
      conveyor demo                          see it work (no key, no network)
      conveyor run requests.jsonl -o out.jsonl
      conveyor exec --jobs 8 -- cmd {} ::: a b c
    Every command has --help.

    \b
    Exit codes: 0 every item succeeded (or nothing to do; mock, serve and
    status --watch stopped by Ctrl+C); 1 some items failed; 2 bad usage or
    input refused, nothing sent; 3 the run was stopped by a fatal error (e.g.
    a rejected key, a full disk); 130 interrupted (resume by running the same
    command again).
    """


_quick_exit = False


def allow_quick_exit() -> None:
    """Called by a command once everything it wrote is closed (output, journal,
    report): `entry` may then end the process without the interpreter's teardown."""
    global _quick_exit
    _quick_exit = True


def entry() -> None:
    """The `conveyor` command as a process (`python -m conveyor.cli`, the script).

    After a run, Python's own exit frees every module and object one by one:
    ~50 ms of a 2 s run measured (benchmarks/hot_path.py). A command that has
    closed what it wrote (`allow_quick_exit`) ends instead as soon as the
    atexit handlers have run (logging's flush among them) and stdout and stderr
    are flushed; a non-daemon thread still running, or any other command, ends
    the usual way."""
    code: str | int | None = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    status = quick_exit_status(code, threading.enumerate()) if _quick_exit else None
    if status is None:
        sys.exit(code)
    if isinstance(code, str):  # as sys.exit("message") does
        print(code, file=sys.stderr)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing left to tell
            status = status or 1
    os._exit(status)


def quick_exit_status(code: str | int | None, threads: list[threading.Thread]) -> int | None:
    """The exit status to end with at once, or None when the process must exit the
    usual way: a thread other than the main one that is alive and not a daemon
    would be cut off (Python waits for those)."""
    main_thread = threading.main_thread()
    if any(t is not main_thread and t.is_alive() and not t.daemon for t in threads):
        return None
    if code is None:
        return 0
    return code if isinstance(code, int) else 1
