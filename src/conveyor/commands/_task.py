"""One shell job: `CommandTask`, run as its own process group (see `conveyor.commands`)."""

from __future__ import annotations

import os
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, get_args

from .._base._exceptions import ConfigError
from ._expand import safe_name
from ._isolation import GIT_ENV_VARS, Isolation, finish, prepare
from ._process import SpawnError, run_process
from ._types import (
    TIMEOUT_EXIT_CODE,
    CommandFailed,
    CommandNotFound,
    CommandResult,
    CommandTimeout,
    IsolationError,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = ["CommandTask"]

_NOT_FOUND_BY_SHELL = 127


@dataclass(slots=True)
class CommandTask:
    """One shell job; `await task()` runs it and returns a `CommandResult`.

    - `argv`: the program and its arguments, never passed through a shell;
      with `shell=True`, a single command string run by `/bin/sh -c`.
    - `env`: merged over `os.environ`.
    - `timeout`: seconds before the process group is killed (CommandTimeout,
      exit 124); None waits forever.
    - `stdin`: bytes or text fed to the command; otherwise it reads /dev/null.
    - `key`: names the artifacts directory and git branch (a random id if None).
    - `isolate`: "none" runs in `cwd`; "dir" in a fresh empty directory under
      the artifacts directory (`cwd` is then not used); "worktree" in a new git
      worktree on branch `conveyor/<key>` of the repository containing `cwd`.
    - `keep`: keep the directory or worktree after success too. After a
      failure it is always kept, and the result (or error) says where.
    - `kill_grace`: seconds between SIGTERM and SIGKILL.

    Raises CommandFailed (non-zero exit or death by signal), CommandTimeout,
    CommandNotFound (127 missing, 126 not executable), IsolationError, and
    ConfigError for arguments that cannot work; each carries `.result`
    where a process ran.
    """

    argv: Sequence[str] | str
    cwd: str | os.PathLike[str] | None = None
    env: Mapping[str, str] | None = None
    timeout: float | None = None
    shell: bool = False
    stdin: bytes | str | None = None
    key: str | None = None
    isolate: Isolation = "none"
    artifacts_dir: str | os.PathLike[str] | None = None
    keep: bool = False
    kill_grace: float = 5.0
    _argv: list[str] = field(init=False, repr=False, compare=False, default_factory=list)

    def __post_init__(self) -> None:
        if self.shell:
            if not isinstance(self.argv, str):
                raise ConfigError("argv", self.argv, "a single command string when shell=True")
            self._argv = [self.argv]
        else:
            if isinstance(self.argv, str | bytes):
                raise ConfigError(
                    "argv",
                    self.argv,
                    "a list of arguments like ['ls', '-l']; pass shell=True to run a "
                    "command string through /bin/sh",
                )
            self._argv = [os.fspath(a) for a in self.argv]
            if not self._argv:
                raise ConfigError("argv", self.argv, "at least the program to run")
        if self.isolate not in get_args(Isolation):
            raise ConfigError("isolate", self.isolate, "one of 'none', 'dir', 'worktree'")
        if self.timeout is not None and not self.timeout > 0:
            raise ConfigError("timeout", self.timeout, "a positive number of seconds or None")
        if not self.kill_grace >= 0:
            raise ConfigError("kill_grace", self.kill_grace, "zero or more seconds")

    def _environment(self, key: str, job_dir: Path) -> dict[str, str]:
        env = dict(os.environ)
        if self.isolate == "worktree":
            # Inherited, these would point the job's git at the original checkout.
            for name in GIT_ENV_VARS:
                env.pop(name, None)
        env["CONVEYOR_JOB_KEY"] = key
        env["CONVEYOR_JOB_DIR"] = str(job_dir)
        if self.env:
            env.update(self.env)
        return env

    def _directories(self, key: str) -> tuple[Path, Path]:
        base = Path(self.artifacts_dir) if self.artifacts_dir is not None else None
        if base is None:
            base = Path(tempfile.mkdtemp(prefix="conveyor-"))
        job_dir = (base / safe_name(key)).absolute()
        job_dir.mkdir(parents=True, exist_ok=True)
        cwd = Path(self.cwd).absolute() if self.cwd is not None else Path.cwd()
        if self.isolate != "dir" and not cwd.is_dir():
            raise ConfigError("cwd", str(cwd), "an existing directory")
        return job_dir, cwd

    async def __call__(self) -> CommandResult:
        key = self.key if self.key is not None else uuid.uuid4().hex[:12]
        job_dir, cwd = self._directories(key)

        ws = await prepare(self.isolate, key, job_dir, cwd)
        if not ws.cwd.is_dir():
            await finish(ws, success=True, keep=False, key=key)
            raise IsolationError(
                f"{ws.cwd} does not exist in the new worktree (is that directory untracked "
                "in the original checkout?); commit it or set cwd= to a tracked directory",
                key=key,
            )
        stdin = self.stdin.encode("utf-8") if isinstance(self.stdin, str) else self.stdin
        result = CommandResult(
            argv=list(self._argv),
            exit_code=0,
            stdout_path=job_dir / "stdout",
            stderr_path=job_dir / "stderr",
            artifacts_path=job_dir,
            cwd=ws.cwd,
            started_at=0.0,
            duration=0.0,
            key=key,
            shell=self.shell,
        )
        try:
            done = await run_process(
                self.argv if self.shell else self._argv,
                shell=self.shell,
                cwd=ws.cwd,
                env=self._environment(key, job_dir),
                stdin=stdin,
                stdout_path=result.stdout_path,
                stderr_path=result.stderr_path,
                limit=self.timeout,
                kill_grace=self.kill_grace,
            )
        except SpawnError as exc:
            # Nothing ran, so nothing in the workspace is worth keeping.
            result.exit_code = exc.exit_code
            result.workspace, result.branch = await finish(
                ws, success=True, keep=self.keep, key=key
            )
            raise CommandNotFound(result, exc.reason) from None

        result.pid = done.pid
        result.started_at = done.started_at
        result.duration = done.duration
        result.timed_out = done.timed_out
        if done.returncode < 0:
            result.signal = -done.returncode
            result.exit_code = 128 + result.signal
        else:
            result.exit_code = done.returncode
        if done.timed_out:
            result.exit_code = TIMEOUT_EXIT_CODE
        result.workspace, result.branch = await finish(
            ws, success=result.ok, keep=self.keep, key=key
        )
        if done.timed_out:
            assert self.timeout is not None
            raise CommandTimeout(result, self.timeout)
        if self.shell and result.exit_code == _NOT_FOUND_BY_SHELL:
            raise CommandNotFound(result, "the shell could not find the command")
        if result.exit_code != 0:
            raise CommandFailed(result)
        return result
