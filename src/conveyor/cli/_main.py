"""The `conveyor` click group and its lazy registry of subcommands."""

from __future__ import annotations

import importlib

import click

from .._base._version import __version__

__all__ = ["COMMANDS", "LazyGroup", "main"]

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
    Exit codes: 0 every item succeeded; 1 some items failed; 2 bad usage or
    input refused; 3 the run was stopped by a fatal error (e.g. a rejected key);
    130 interrupted (resume by running the same command again).
    """
