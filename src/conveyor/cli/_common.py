"""Shared pieces of the CLI: logging setup, error reporting, exit codes."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
import orjson

from .._base._exceptions import (
    ConfigError,
    ConveyorError,
    FatalError,
    InputError,
    Interrupted,
    JournalFull,
)

__all__ = [
    "EXIT_FAILED_ITEMS",
    "EXIT_FATAL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "api_key_env_option",
    "cli_errors",
    "cli_message",
    "log_options",
    "setup_logging",
]

EXIT_OK = 0
EXIT_FAILED_ITEMS = 1
EXIT_USAGE = 2
EXIT_FATAL = 3
EXIT_INTERRUPTED = 130

F = TypeVar("F", bound=Callable[..., Any])

_STD_ATTRS = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

# Library messages name the Python parameter in backticks (`force=True`); on the
# command line the same advice is the flag.
_FLAGS = {
    "`base_url=`": "--base-url",
    "`force=True`": "--force",
    "`id_column=`": "--id-column",
    "`journal=`": "--journal",
    "`model=`": "--model",
    "`strict=True`": "--strict",
}


def cli_message(exc: BaseException) -> str:
    """The error's message, with each Python parameter it names said as its CLI flag."""
    text = str(exc)
    for parameter, flag in _FLAGS.items():
        text = text.replace(parameter, flag)
    return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the record's structured extras."""

    def format(self, record: logging.LogRecord) -> str:
        d: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        d.update({k: v for k, v in record.__dict__.items() if k not in _STD_ATTRS and k[:1] != "_"})
        if record.exc_info and record.exc_info[1] is not None:
            d["error_type"] = type(record.exc_info[1]).__name__
        return orjson.dumps(d, default=str).decode()


def setup_logging(*, verbose: int = 0, log_json: bool = False, quiet: bool = False) -> None:
    """Log to stderr: warnings by default, info with -v, debug with -vv."""
    level = logging.WARNING
    if verbose == 1:
        level = logging.INFO
    elif verbose >= 2:
        level = logging.DEBUG
    if quiet:
        level = logging.ERROR
    handler = logging.StreamHandler(sys.stderr)
    if log_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger("conveyor")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def cli_errors(fn: F) -> F:
    """Turn conveyor errors into one clear line on stderr and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Interrupted as exc:
            click.echo(f"conveyor: {cli_message(exc)}", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except KeyboardInterrupt:
            # Ctrl+C outside a run's own handling (preflight, reading a journal):
            # 130 like a run, not click's "Aborted!" and 1 ("some items failed").
            click.echo("conveyor: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except (FatalError, JournalFull) as exc:
            # Disk full mid-run is a stop, not a usage error: things were
            # sent, what was committed is kept, the same command resumes.
            click.echo(f"conveyor: stopped: {cli_message(exc)}", err=True)
            sys.exit(EXIT_FATAL)
        except (ConfigError, InputError) as exc:
            click.echo(f"conveyor: {cli_message(exc)}", err=True)
            sys.exit(EXIT_USAGE)
        except ConveyorError as exc:
            click.echo(f"conveyor: {cli_message(exc)}", err=True)
            # An error that ended a run which had started (it carries the run's
            # report, e.g. the journal failing mid-run) is a stop: things were
            # sent. 2 says "nothing sent".
            sys.exit(EXIT_USAGE if exc.report is None else EXIT_FATAL)

    return wrapper  # type: ignore[return-value]


# -- options several commands share ---------------------------------------------------


def log_options(
    *, quiet: str | None = None, log_json: bool = True, verbose: bool = True
) -> Callable[[F], F]:
    """`-v/--verbose`, `-q/--quiet` (when the command has it: `quiet` is its help) and
    `--log-json`, the same on every command."""

    def add(fn: F) -> F:
        if log_json:
            fn = click.option(
                "--log-json", is_flag=True, help="Log lines as JSON objects on stderr."
            )(fn)
        if quiet is not None:
            fn = click.option("-q", "--quiet", is_flag=True, help=quiet)(fn)
        if verbose:
            fn = click.option(
                "-v", "--verbose", count=True, help="More log output (-vv for debug)."
            )(fn)
        return fn

    return add


def api_key_env_option(fn: F) -> F:
    """`--api-key-env NAME`: where the key is read from (it is never taken as a flag)."""
    return click.option(
        "--api-key-env",
        default="OPENAI_API_KEY",
        show_default=True,
        metavar="NAME",
        help="Environment variable holding the API key (its value is never printed).",
    )(fn)
