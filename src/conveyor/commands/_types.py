"""What a finished shell job leaves behind: `CommandResult` (its errors live in `_base`)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._base._exceptions import (
    CommandFailed,
    CommandNotFound,
    CommandTimeout,
    IsolationError,
)

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
