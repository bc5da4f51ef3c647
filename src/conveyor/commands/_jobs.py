"""Exec jobs: keys, the execution context, and the command each input becomes."""

from __future__ import annotations

import base64
import hashlib
import heapq
import logging
import shlex
from collections.abc import AsyncIterable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, get_args

from .._base._exceptions import ConfigError
from .._base._types import Result, Status
from .._core._attempt import current_attempt
from ._expand import expand, expand_shell
from ._isolation import Isolation
from ._task import CommandTask

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Awaitable
    from pathlib import Path

    from ._types import CommandResult

log = logging.getLogger("conveyor.exec")

EXEC_KIND = "conveyor-exec"
JOURNAL_NAME = "journal.sqlite"
JOBLOG_NAME = "joblog.tsv"
RESULTS_NAME = "results.jsonl"
JOBS_DIR = "jobs"
#: What `retry_commands` re-runs by default: every job that did not succeed.
RETRY_STATUSES = (Status.FAILED, Status.TIMED_OUT, Status.CANCELLED, Status.SKIPPED)

_MAX_KEY = 200
_RESUME_HINT = "Rerun the same command to resume: jobs that succeeded are skipped"

Template = Sequence[str] | str
T = TypeVar("T")


# --- text that may not be UTF-8 ---------------------------------------------------------
# Inputs and argv are decoded with surrogateescape so any bytes (file names)
# reach the command unchanged; SQLite and JSON need real UTF-8, so stored
# copies are packed (base64 when needed) or made readable (lossy, display only).


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _readable(text: str) -> str:
    return text if _utf8(text) else _raw(text).decode("utf-8", "replace")


def _pack(text: str) -> str | dict[str, str]:
    return text if _utf8(text) else {"b64": base64.b64encode(_raw(text)).decode("ascii")}


def _unpack(value: Any) -> str:
    if isinstance(value, dict):
        return base64.b64decode(value["b64"]).decode("utf-8", "surrogateescape")
    return str(value)


def _safe(obj: Any) -> Any:
    if isinstance(obj, str):
        return _readable(obj)
    if isinstance(obj, dict):
        return {k: _safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_safe(v) for v in obj]
    return obj


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "surrogateescape")
    return str(value)


# --- jobs, keys, context -----------------------------------------------------------------


def job_key(value: str, occurrence: int = 1) -> str:
    """The journal key of the `occurrence`-th (1-based) input equal to `value`.

    The value itself when it is valid UTF-8, one line and at most 200
    characters; otherwise a readable prefix plus a hash of the exact bytes.
    Repeats get `\\n#<n>` appended (only they hold a newline), so every input
    position has its own key.
    """
    base = value
    if len(value) > _MAX_KEY or "\n" in value or not _utf8(value):
        digest = hashlib.sha256(_raw(value)).hexdigest()[:16]
        base = f"{_readable(value)[:60]}\u2026{digest}".replace("\n", " ")
    return base if occurrence <= 1 else f"{base}\n#{occurrence}"


class _Keyer:
    """Assigns keys in input order. Remembers each distinct key (to number repeats)."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}

    def key(self, value: str) -> str:
        base = job_key(value)
        n = self._seen.get(base, 0) + 1
        self._seen[base] = n
        return job_key(value, n)


@dataclass(frozen=True, slots=True)
class ExecJob:
    """One input: its 1-based position `seq` (`{#}`), its text and its key."""

    seq: int
    value: str
    key: str
    args: tuple[str, ...] = ()  # one per input source (`{1}`, `{2}`), when several

    def to_item(self) -> dict[str, Any]:
        """A JSON-ready form that keeps non-UTF-8 bytes exactly (stored in the journal)."""
        item: dict[str, Any] = {"seq": self.seq, "value": _pack(self.value), "key": self.key}
        if self.args:
            item["args"] = [_pack(a) for a in self.args]
        return item

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> ExecJob:
        args = tuple(_unpack(a) for a in item.get("args") or ())
        return cls(int(item["seq"]), _unpack(item["value"]), str(item["key"]), args)


@dataclass(frozen=True, slots=True)
class ExecContext:
    """How each job runs: its isolation level and the knobs around it.

    - `isolate`: "none" runs in `cwd`; "dir" in a fresh empty directory per
      job; "worktree" in a git worktree per job, on branch `conveyor/<key>`
      of the repository containing `cwd` (removed after a clean success
      unless `keep`).
    - `timeout`: seconds before the job's process group is killed (exit 124).
    - `shell`: the template is one string run by `/bin/sh -c`, inputs quoted.
    - `artifacts_dir`: per-job output goes to `<artifacts_dir>/<key>/`.
    - `kill_grace`: seconds between SIGTERM and SIGKILL of a job's group.
    - `env`: extra environment (never stored: it may hold secrets).
    """

    isolate: Isolation = "none"
    timeout: float | None = None
    shell: bool = False
    keep: bool = False
    kill_grace: float = 5.0
    cwd: Path | None = None
    artifacts_dir: Path | None = None
    env: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        if self.isolate not in get_args(Isolation):
            raise ConfigError("isolate", self.isolate, "one of 'none', 'dir', 'worktree'")
        if self.timeout is not None and not self.timeout > 0:
            raise ConfigError("timeout", self.timeout, "a positive number of seconds or None")
        if not self.kill_grace >= 0:
            raise ConfigError("kill_grace", self.kill_grace, "zero or more seconds")

    def command_line(self, template: Template, job: ExecJob, slot: int = 1) -> str:
        """The job's command as one line of shell (what `--dry-run` prints)."""
        if self.shell:
            return expand_shell(_shell_text(template), job.value, job.seq, args=job.args, slot=slot)
        return shlex.join(expand(_argv(template), job.value, job.seq, args=job.args, slot=slot))

    def task(self, template: Template, job: ExecJob, slot: int = 1) -> CommandTask:
        """The `CommandTask` for one job (a zero-argument awaitable, fit for the executors).

        `slot` is its job slot (`{%}`, and `CONVEYOR_JOB_SLOT` / `PARALLEL_JOBSLOT`
        in its environment, as GNU parallel sets them).
        """
        env = {
            "CONVEYOR_JOB_SEQ": str(job.seq),
            "CONVEYOR_JOB_SLOT": str(slot),
            "PARALLEL_SEQ": str(job.seq),
            "PARALLEL_JOBSLOT": str(slot),
            **(self.env or {}),
        }
        argv: Sequence[str] | str
        if self.shell:
            argv = expand_shell(_shell_text(template), job.value, job.seq, args=job.args, slot=slot)
        else:
            argv = expand(_argv(template), job.value, job.seq, args=job.args, slot=slot)
        return CommandTask(
            argv,
            cwd=self.cwd,
            env=env,
            timeout=self.timeout,
            shell=self.shell,
            key=job.key,
            isolate=self.isolate,
            artifacts_dir=self.artifacts_dir,
            keep=self.keep,
            kill_grace=self.kill_grace,
        )


def _shell_text(template: Template) -> str:
    return template if isinstance(template, str) else " ".join(template)


def _argv(template: Template) -> list[str]:
    if isinstance(template, str):
        raise ConfigError(
            "command",
            template,
            "a list of arguments like ['gzip', '{}']; pass shell=True to run a command string",
        )
    return list(template)


class JobSlots:
    """GNU parallel's job slots: a starting job takes the lowest free number
    (1..jobs), and gives it back when it ends. Used on one event loop."""

    def __init__(self) -> None:
        self._free: list[int] = []
        self._next = 1

    def take(self) -> int:
        if self._free:
            return heapq.heappop(self._free)
        n, self._next = self._next, self._next + 1
        return n

    def give_back(self, slot: int) -> None:
        heapq.heappush(self._free, slot)


def job_args(raw: Any) -> tuple[str, tuple[str, ...]]:
    """(value, args) of one input: a tuple or list is one argument per source."""
    if isinstance(raw, tuple | list):
        args = tuple(_as_text(a) for a in raw)
        return " ".join(args), args
    return _as_text(raw), ()


def command_fn(
    template: Template, context: ExecContext | None = None
) -> Callable[[Any], Awaitable[CommandResult]]:
    """An async function item -> CommandResult, for `conveyor.run(items, fn)`.

    An item is an `ExecJob` or any value (its text fills the template; its
    run position gives `{#}` and its run key names the artifacts directory).
    """
    ctx = context or ExecContext()
    _check_template(template, ctx.shell)

    slots = JobSlots()

    async def run_one(item: Any) -> CommandResult:
        if isinstance(item, ExecJob):
            job = item
        else:
            attempt = current_attempt()
            seq = attempt.index + 1 if attempt is not None else 1
            value, args = job_args(item)
            job = ExecJob(seq, value, attempt.key if attempt is not None else str(seq), args)
        slot = slots.take()
        try:
            return await ctx.task(template, job, slot)()
        finally:
            slots.give_back(slot)

    return run_one


def _check_template(template: Template, shell: bool) -> None:
    if isinstance(template, str):
        if not shell:
            _argv(template)
        if not template.strip():
            raise ConfigError("command", template, "a command to run")
    elif not list(template):
        raise ConfigError("command", list(template), "at least the program to run")


@dataclass(slots=True)
class JobOutcome:
    """A finished job as `on_job` sees it.

    `result` is the engine's (status, error, attempts, timing); `command` the
    last attempt's `CommandResult` (output paths, exit code), or None when no
    process ran (cancelled before starting, isolation failed).
    """

    job: ExecJob
    result: Result[Any]
    command: CommandResult | None


async def _values(
    inputs: Iterable[Any] | AsyncIterable[Any],
) -> AsyncGenerator[tuple[str, tuple[str, ...]], None]:
    if not isinstance(inputs, AsyncIterable):
        for v in inputs:
            yield job_args(v)
        return
    it = aiter(inputs)
    try:
        async for v in it:
            yield job_args(v)
    finally:
        # A run stopped early closes its source now (a pipe reader, a file).
        close = getattr(it, "aclose", None)
        if close is not None:
            await close()
