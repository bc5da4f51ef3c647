"""What a finished shell job leaves behind, and the errors a job raises.

```
ConveyorError
├── CommandFailed        the command exited non-zero or died by a signal (carries .result)
│   ├── CommandTimeout   it ran past its timeout and was killed (exit 124; also a TimeoutError)
│   └── CommandNotFound  it could not be started: not on PATH (127) or not executable (126)
└── IsolationError       its working directory or git worktree could not be prepared
```
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._base._exceptions import ConveyorError

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "CommandFailed",
    "CommandNotFound",
    "CommandResult",
    "CommandTimeout",
    "IsolationError",
    "TIMEOUT_EXIT_CODE",
]

#: Exit code reported for a job killed by its timeout, as coreutils `timeout` does.
TIMEOUT_EXIT_CODE = 124

_DEFAULT_TEXT_LIMIT = 64 * 1024
# An argv can be long (an agent's whole prompt); error messages show a readable prefix.
_MESSAGE_ARGV_CHARS = 200


@dataclass(slots=True)
class CommandResult:
    """One finished run of a command.

    `exit_code` follows the shell: the process's own code, 128+N when it died
    by signal N (`signal` is then N), 124 when conveyor killed it on timeout
    (`timed_out` is then true and `signal` says which signal ended it).
    Output is in files, never in memory: read it with `stdout_text()`.
    `workspace` is the isolated directory or git worktree when it was kept
    (after a failure, or with `keep=True`), and `branch` the git branch that
    still exists after the job; both are None once cleaned up.
    """

    argv: list[str]
    exit_code: int
    stdout_path: Path
    stderr_path: Path
    artifacts_path: Path
    cwd: Path
    started_at: float
    duration: float
    key: str
    signal: int | None = None
    timed_out: bool = False
    pid: int | None = None
    shell: bool = False
    workspace: Path | None = None
    branch: str | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    @property
    def command_line(self) -> str:
        """The command as one line of shell: what a user would paste to re-run it."""
        if self.shell:
            return self.argv[0] if self.argv else ""
        return shlex.join(self.argv)

    def stdout_text(self, limit: int | None = _DEFAULT_TEXT_LIMIT, *, tail: bool = False) -> str:
        """Up to `limit` bytes of stdout as text (the last bytes with `tail=True`)."""
        return _read_text(self.stdout_path, limit, tail)

    def stderr_text(self, limit: int | None = _DEFAULT_TEXT_LIMIT, *, tail: bool = False) -> str:
        """Up to `limit` bytes of stderr as text (the last bytes with `tail=True`)."""
        return _read_text(self.stderr_path, limit, tail)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: paths as strings, times in epoch seconds."""
        return {
            "key": self.key,
            "argv": list(self.argv),
            "shell": self.shell,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "timed_out": self.timed_out,
            "pid": self.pid,
            "started_at": self.started_at,
            "duration_seconds": round(self.duration, 6),
            "cwd": str(self.cwd),
            "stdout_path": str(self.stdout_path),
            "stderr_path": str(self.stderr_path),
            "artifacts_path": str(self.artifacts_path),
            "workspace": str(self.workspace) if self.workspace is not None else None,
            "branch": self.branch,
        }


def _read_text(path: Path, limit: int | None, tail: bool) -> str:
    try:
        with path.open("rb") as f:
            if limit is None:
                data = f.read()
            elif tail:
                size = f.seek(0, 2)
                f.seek(max(0, size - limit))
                data = f.read(limit)
            else:
                data = f.read(limit)
    except FileNotFoundError:
        return ""
    # A byte limit can cut a multi-byte character in half; replace, never raise.
    return data.decode("utf-8", errors="replace")


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
