"""Every error conveyor raises, under one base.

```
ConveyorError
├── ConfigError              an option or config value is not allowed (names it)
│   └── SchemaInvalid        a JSON Schema to validate answers with is not valid (names where)
├── AggregateExecutionError  an executor ran tasks and every one of them failed
├── FatalError               stops the whole run (a rejected API key, a full disk)
│   ├── AuthError            401/403 from the endpoint: the key was rejected
│   ├── QuotaExceeded        the endpoint's quota or billing cap is spent (resumable)
│   ├── WorkersLost          every Ray worker died and none could be restarted
│   └── ResourceLimitExceeded  a monitored resource went past the limit set (resumable)
├── Interrupted              Ctrl+C / SIGTERM stopped the run (carries the report)
├── RetryableError           raised by a user function: "try this item again"
│   └── HTTPRetryable        429, 5xx, timeout, connection error (carries Retry-After)
├── InputError               an input line or record could not be read (names file, line)
├── HTTPClientError          the endpoint refused this request (400, 404, 422...)
├── InvalidAnswer            an answer failed validation (its issues; re-asked, then failed)
├── JournalError             the journal cannot be used (names the path)
│   ├── JournalCorrupt       not a conveyor journal, or damaged
│   ├── JournalFull          the disk is full; committed results are kept
│   ├── JournalLocked        another run is writing it (names the pid)
│   ├── JournalMismatch      written for a different run (lists the differences)
│   └── OutputMismatch       the output file disagrees with what the journal committed
├── CacheError               the response cache file cannot be used
├── CommandFailed            a shell job exited non-zero or died by a signal (.result)
│   ├── CommandTimeout       it ran past its timeout and was killed (exit 124; a TimeoutError)
│   └── CommandNotFound      it could not be started (127 not on PATH, 126 not executable)
├── IsolationError           a job's directory or git worktree could not be prepared
├── RayNotInstalled          the Ray backend was asked for without Ray (also an ImportError)
├── RayConnectError          Ray could not start or the cluster could not be reached
└── PreflightFailed          `conveyor run`'s checks failed before anything was sent
```

Each part re-exports the errors it raises from its own public module
(`conveyor.openai.AuthError`, `conveyor.commands.CommandFailed`, ...).
Every message says what happened and what to do next. Lower-layer errors
(aiohttp, sqlite3, OSError) are translated at the boundary that meets them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from .._core._refusals import Refusal
    from .._core._report import BatchReport
    from ..commands._types import CommandResult
    from ._checks import Check
    from ._types import Result

__all__ = [
    "AggregateExecutionError",
    "AuthError",
    "CacheError",
    "CommandFailed",
    "CommandNotFound",
    "CommandTimeout",
    "ConfigError",
    "ConveyorError",
    "EndpointDown",
    "FatalError",
    "HTTPClientError",
    "HTTPRetryable",
    "InputError",
    "Interrupted",
    "InvalidAnswer",
    "IsolationError",
    "JournalCorrupt",
    "JournalError",
    "JournalFull",
    "JournalLocked",
    "JournalMismatch",
    "OutputMismatch",
    "PreflightFailed",
    "RayConnectError",
    "QuotaExceeded",
    "RayNotInstalled",
    "ResourceLimitExceeded",
    "RetryableError",
    "SchemaInvalid",
    "WorkersLost",
]


class ConveyorError(Exception):
    """Base of every error conveyor raises on purpose.

    An error that ends a run early carries what finished in `report`.
    """

    report: BatchReport | None = None


class ConfigError(ConveyorError, ValueError):
    """An option has a value conveyor cannot run with.

    Raised when the call is made, before any item runs.
    """

    def __init__(self, option: str, value: Any, allowed: str) -> None:
        self.option = option
        self.value = value
        self.allowed = allowed
        super().__init__(f"invalid {option}={value!r}: {allowed}")


class SchemaInvalid(ConfigError):
    """A JSON Schema given to validate answers with is not a valid schema.

    Raised before anything is sent. `source` says where the schema came from
    (a file, an input line's custom_id, an argument), `location` where in the
    schema the problem is (a JSON path such as ``$.properties.score.type``).
    """

    def __init__(self, source: str, location: str, message: str) -> None:
        self.source = source
        self.location = location
        self.detail = message
        ConveyorError.__init__(
            self,
            f"{source}: not a valid JSON Schema at {location}: {message}. Nothing was sent; "
            "fix the schema (https://json-schema.org/understanding-json-schema/) and run again.",
        )
        self.option = "schema"
        self.value = source
        self.allowed = "a valid JSON Schema"


class AggregateExecutionError(ConveyorError):
    """Every task given to an executor failed; `results` holds each failure."""

    def __init__(self, results: Sequence[Result[Any]]) -> None:
        self.results = list(results)
        kinds: dict[str, int] = {}
        for r in self.results:
            name = r.error.type if r.error else r.status.value
            kinds[name] = kinds.get(name, 0) + 1
        summary = ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items()))
        first = self.results[0].error if self.results and self.results[0].error else None
        hint = f"; first error: {first.type}: {first.message}" if first else ""
        super().__init__(
            f"all {len(self.results)} tasks failed ({summary}){hint}. "
            "Inspect .results for each task's error and traceback."
        )


class FatalError(ConveyorError):
    """An error that makes every further item pointless: the run stops early.

    Raise it from a task function (for example on HTTP 401) to stop admitting
    work; `run()` then raises it again with `report` set to what finished.
    """


class QuotaExceeded(FatalError):
    """The endpoint's quota or billing limit is spent: waiting within the run won't help.

    The run stops admitting work and lets in-flight work finish; items the
    quota refused are not counted as done, so running the same command again
    (after the quota resets or is raised) sends exactly those.
    """

    def __init__(self, message: str, *, wait: float | None = None) -> None:
        self.wait = wait
        when = ""
        if wait is not None:
            when = f" (the server says it resets in {_human(wait)})"
        super().__init__(
            f"the endpoint's quota is exhausted{when}: {message} -- "
            "nothing was lost; run the same command again once the quota resets or is raised"
        )


class EndpointDown(FatalError):
    """Every attempt failed for longer than the breaker's `give_up`: the run stops.

    The items it stopped are cancelled, not failed, so running the same
    command again sends them once the endpoint is back.
    """

    def __init__(self, seconds: float, last: str) -> None:
        self.seconds = seconds
        super().__init__(
            f"every request failed for {_human(seconds)} (last error: {last}) -- "
            "nothing was lost; run the same command again once the endpoint is back"
        )


class ResourceLimitExceeded(FatalError):
    """A resource sampled while the run went on (memory, CPU, GPU, a gauge of
    yours) stayed above the limit you set: the run stops at once.

    Items in flight are cancelled, not failed, so running the same thing
    again (with `journal=`) sends them once the resource is back under it.
    """

    def __init__(self, metric: str, value: float, limit: float, message: str) -> None:
        self.metric = metric
        self.value = value
        self.limit = limit
        super().__init__(
            f"{message} -- items in flight were cancelled and nothing was lost; free the "
            f"resource or raise the limit on {metric}, then run again to resume"
        )


def _human(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


class Interrupted(ConveyorError):
    """The run was stopped by Ctrl+C or a stop request.

    `report` holds every item that reached a terminal result (in-flight items
    that were cut off are `cancelled`); items never started are not in it.
    It is deliberately not a `KeyboardInterrupt`: asyncio treats those as
    fatal to the event loop, and the run has already stopped cleanly.
    """

    report: BatchReport

    def __init__(self, report: BatchReport, hint: str = "") -> None:
        self.report = report
        c = report.counts
        done = sum(c.values())
        msg = (
            f"interrupted: {done} items reached a result "
            f"({c.get('ok', 0)} ok, {c.get('failed', 0)} failed, "
            f"{c.get('cancelled', 0)} cancelled in flight)"
        )
        super().__init__(msg + (f". {hint}" if hint else ""))


class RetryableError(ConveyorError):
    """Raise from a task function to ask for another attempt.

    `retry_after` (seconds) is honoured as the minimum wait before it; a
    `status_code` is kept in the result's error for the report; a 429 (or
    `overload=True`) is a rate-limit refusal: every item pauses for
    `retry_after`, the budget's rate is learned, and the refusal does not use
    up the item's retries.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        status_code: int | None = None,
        overload: bool = False,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.status_code = status_code
        self.overload = overload


class InputError(ConveyorError):
    """An input could not be read: says which file and line, and why."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        self.path = path
        self.line = line
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        elif line is not None:
            where = f"line {line}: "
        super().__init__(where + message)


class InvalidAnswer(ConveyorError):
    """An answer failed validation: `issues` lists what is wrong (each with the
    path in the answer, a short kind such as ``type`` or ``required``, and a
    message), `raw` is the answer as received.

    Raise it (or any exception) from a `validate=` function; conveyor asks
    again up to `reask` times, then the item fails with it.
    """

    def __init__(self, issues: Sequence[Any], raw: Any = None) -> None:
        self.issues = list(issues)
        self.raw = raw
        shown = "; ".join(str(i) for i in self.issues[:5])
        more = f" (+{len(self.issues) - 5} more)" if len(self.issues) > 5 else ""
        super().__init__(f"the answer failed validation: {shown or 'invalid'}{more}")


# -- raised by _journal/ -------------------------------------------------------


class JournalError(ConveyorError):
    """The journal (or a file coordinated with it) cannot be used; says why and what to do."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class JournalCorrupt(JournalError):
    """The file is not a conveyor journal or is damaged."""


class JournalFull(JournalError):
    """The disk is full (SQLITE_FULL / ENOSPC); committed results are kept."""


class JournalLocked(JournalError):
    """Another process (or another open in this one) is writing this journal."""

    def __init__(self, path: str, pid: int | None) -> None:
        who = f"pid {pid}" if pid is not None else "an unknown pid"
        super().__init__(
            f"journal {path} is in use by another conveyor run ({who}): wait for it to "
            "finish or stop it, or choose a different `journal=` path",
            path=path,
        )
        self.pid = pid


class JournalMismatch(JournalError):
    """The journal was written for a different run (input, endpoint or options)."""

    def __init__(self, path: str, differences: Mapping[str, tuple[str | None, str | None]]) -> None:
        self.differences = dict(differences)
        parts = [
            f"{k}: {_show(old)} in the journal, {_show(new)} now"
            for k, (old, new) in sorted(self.differences.items())
        ]
        super().__init__(
            f"journal {path} belongs to a different run ({'; '.join(parts)}). To resume it "
            "anyway pass `force=True`; to start a fresh run use a new `journal=` path",
            path=path,
        )


def _show(value: str | None) -> str:
    return "<absent>" if value is None else repr(value)


# -- raised by _journal/ -------------------------------------------------------


class OutputMismatch(JournalError):
    """The output file does not match what the journal committed to it."""


# -- raised by openai/ ---------------------------------------------------------


class CacheError(ConveyorError):
    """The response cache file cannot be used; says why and what to do."""


# -- raised by openai/ ---------------------------------------------------------


class HTTPRetryable(RetryableError):
    """A transient failure: 429, 5xx, timeout, connection error."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        retry_after: float | None = None,
        body: Any = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, retry_after=retry_after, status_code=status_code)
        self.meta = {"status_code": status_code, "body": body, "request_id": request_id}
        # What kind of refusal it is (rate limit, quota, capacity), if one.
        self.refusal: Refusal | None = None


class HTTPClientError(ConveyorError):
    """The server refused this request (400, 404, 422...): not retried."""

    def __init__(self, message: str, *, status_code: int, body: Any, request_id: str | None):
        super().__init__(message)
        self.status_code = status_code
        self.meta = {"status_code": status_code, "body": body, "request_id": request_id}


class AuthError(FatalError):
    """401/403: the key was rejected; no further request can succeed."""

    def __init__(self, message: str, *, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


# -- raised by commands/ -------------------------------------------------------


_MESSAGE_ARGV_CHARS = 200  # a command line is cut to this length in messages


def _short_command(result: CommandResult) -> str:
    line = result.command_line
    if len(line) > _MESSAGE_ARGV_CHARS:
        line = line[:_MESSAGE_ARGV_CHARS] + "..."
    return line


def _where(result: CommandResult) -> str:
    kept = ""
    if result.workspace is not None:
        kept = f"; its workspace was kept at {result.workspace}"
        if result.branch:
            kept += f" (branch {result.branch})"
    return kept


class CommandFailed(ConveyorError):
    """A command ran and did not succeed; `.result` has its exit code and output files.

    The message names the job key, the command and where its stderr is; the
    output itself stays in the files (it may hold anything, secrets included).
    """

    def __init__(self, result: CommandResult, message: str | None = None) -> None:
        self.result = result
        if message is None:
            how = (
                f"was killed by signal {result.signal} (exit {result.exit_code})"
                if result.signal is not None
                else f"exited with code {result.exit_code}"
            )
            message = (
                f"job {result.key!r}: command {_short_command(result)!r} {how} "
                f"after {result.duration:.3f}s; see its stderr at {result.stderr_path}"
                f"{_where(result)}"
            )
        super().__init__(message)


class CommandTimeout(CommandFailed, TimeoutError):
    """A command ran past its timeout; its process group was killed (exit code 124)."""

    def __init__(self, result: CommandResult, timeout: float) -> None:
        self.timeout = timeout
        super().__init__(
            result,
            f"job {result.key!r}: command {_short_command(result)!r} timed out after "
            f"{timeout:g}s and was killed with its whole process group (exit 124); "
            f"raise the timeout or see its stderr at {result.stderr_path}{_where(result)}",
        )


class CommandNotFound(CommandFailed):
    """The command could not be started: missing (exit 127) or not executable (126)."""

    def __init__(self, result: CommandResult, reason: str) -> None:
        self.reason = reason
        program = result.argv[0] if result.argv else ""
        if result.shell:
            hint = (
                f"the shell reported exit 127 (command not found) for {_short_command(result)!r}; "
                f"see {result.stderr_path} for the name and check PATH"
            )
        else:
            hint = f"cannot run {program!r}: {reason}; check the name and PATH, or chmod +x it"
        super().__init__(result, f"job {result.key!r}: {hint}")


class IsolationError(ConveyorError):
    """The job's isolated directory or git worktree could not be set up or is unusable."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        self.key = key
        super().__init__(f"job {key!r}: {message}" if key is not None else message)


# -- raised by ray/ ------------------------------------------------------------


_RAY_INSTALL_HINT = "pip install 'conveyor[ray]'"


class RayNotInstalled(ConveyorError, ImportError):
    """The Ray backend was asked for, but Ray is not installed."""

    def __init__(self, detail: str = "") -> None:
        extra = f" ({detail})" if detail else ""
        super().__init__(
            f"the Ray backend needs the `ray` package, which is not installed{extra}: "
            f"run `{_RAY_INSTALL_HINT}` (or `pip install 'ray>=2.9'`), or use the default "
            "single-machine backend"
        )


class RayConnectError(ConveyorError):
    """Ray could not be started or the cluster could not be reached."""


# -- raised by ray/ ------------------------------------------------------------


class WorkersLost(FatalError):
    """Every worker of a cluster run died and none could be started again."""


# -- raised by cli/ ------------------------------------------------------------


class PreflightFailed(ConveyorError):
    """A preflight check failed before a run started; the message lists what to do."""

    def __init__(self, checks: list[Check], *, skip_hint: str = "") -> None:
        self.checks = checks
        failed = [c for c in checks if c.status == "fail"]
        parts = [f"{c.name}: {c.detail}" + (f" ({c.fix})" if c.fix else "") for c in failed]
        super().__init__(
            "preflight failed, nothing was sent: "
            + "; ".join(parts)
            + ". Fix it, or skip the checks"
            + (f" with {skip_hint}" if skip_hint else "")
        )
