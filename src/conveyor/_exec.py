"""`conveyor exec` as a library: one shell command per input, resumable through a journal.

```python
report = run_commands(["a.txt", "b.txt"], ["gzip", "-k", "{}"], jobs=4, timeout=60)
for r in report.results:               # input order
    print(r.key, r.status, r.meta["command"]["exit_code"])
```

Everything a run leaves goes under one artifacts directory:

```
<artifacts>/jobs/<key>/stdout, stderr   each job's output (and its isolated directory)
<artifacts>/joblog.tsv                  GNU parallel --joblog columns
<artifacts>/results.jsonl               one JSON line per job, input order
<artifacts>/journal.sqlite              what is done: a rerun skips the jobs that succeeded
```

A job's key is its input value (the n-th repeat of a value gets `\\n#n`
appended), so rerunning with inputs added or reordered still skips what
succeeded. The journal records the command template: running a different
command against it raises `JournalMismatch` unless `force=True`.
`retry_commands(journal)` re-runs the jobs that did not succeed, from the
inputs and settings stored in the journal (for `conveyor retry`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import shlex
import signal
import threading
from collections.abc import AsyncIterable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, get_args

import orjson

from ._api import AsyncStream
from ._attempt import current_attempt
from ._engine import invoker_for
from ._exceptions import ConfigError, Interrupted
from ._journal import Journal, JournalError, JournalMismatch, check_identity
from ._portal import Control, Portal
from ._retry import RetryPolicy
from ._sink import OutputSink, export
from ._types import Result, Status
from .commands import (
    CommandFailed,
    CommandNotFound,
    CommandResult,
    CommandTask,
    Isolation,
    JobLog,
    JobLogEntry,
    expand,
    expand_shell,
)

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Iterator

    from ._report import BatchReport

__all__ = [
    "EXEC_KIND",
    "RETRY_STATUSES",
    "ExecContext",
    "ExecJob",
    "JobOutcome",
    "arun_commands",
    "command_fn",
    "default_artifacts",
    "is_exec_journal",
    "job_key",
    "plan_commands",
    "retry_commands",
    "run_commands",
]

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

    def to_item(self) -> dict[str, Any]:
        """A JSON-ready form that keeps non-UTF-8 bytes exactly (stored in the journal)."""
        return {"seq": self.seq, "value": _pack(self.value), "key": self.key}

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> ExecJob:
        return cls(int(item["seq"]), _unpack(item["value"]), str(item["key"]))


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

    def command_line(self, template: Template, job: ExecJob) -> str:
        """The job's command as one line of shell (what `--dry-run` prints)."""
        if self.shell:
            return expand_shell(_shell_text(template), job.value, job.seq)
        return shlex.join(expand(_argv(template), job.value, job.seq))

    def task(self, template: Template, job: ExecJob) -> CommandTask:
        """The `CommandTask` for one job (a zero-argument awaitable, fit for the executors)."""
        env = {"CONVEYOR_JOB_SEQ": str(job.seq), **(self.env or {})}
        argv: Sequence[str] | str
        if self.shell:
            argv = expand_shell(_shell_text(template), job.value, job.seq)
        else:
            argv = expand(_argv(template), job.value, job.seq)
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


def command_fn(
    template: Template, context: ExecContext | None = None
) -> Callable[[Any], Awaitable[CommandResult]]:
    """An async function item -> CommandResult, for `conveyor.run(items, fn)`.

    An item is an `ExecJob` or any value (its text fills the template; its
    run position gives `{#}` and its run key names the artifacts directory).
    """
    ctx = context or ExecContext()
    _check_template(template, ctx.shell)

    async def run_one(item: Any) -> CommandResult:
        if isinstance(item, ExecJob):
            job = item
        else:
            attempt = current_attempt()
            seq = attempt.index + 1 if attempt is not None else 1
            job = ExecJob(seq, _as_text(item), attempt.key if attempt is not None else str(seq))
        return await ctx.task(template, job)()

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


async def _values(inputs: Iterable[Any] | AsyncIterable[Any]) -> AsyncGenerator[str, None]:
    if not isinstance(inputs, AsyncIterable):
        for v in inputs:
            yield _as_text(v)
        return
    it = aiter(inputs)
    try:
        async for v in it:
            yield _as_text(v)
    finally:
        # A run stopped early closes its source now (a pipe reader, a file).
        close = getattr(it, "aclose", None)
        if close is not None:
            await close()


# --- run settings, journal identity ---------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    template: list[str] | str
    ctx: ExecContext
    jobs: int
    retries: int
    halt_on_fail: bool
    keep_order: bool
    grace: float
    artifacts: Path
    joblog: Path
    journal: Path
    force: bool = False
    on_job: Callable[[JobOutcome], Any] | None = None
    keep_results: bool = True

    def settings(self) -> str:
        """What `retry_commands` needs to run the same jobs again (no env: secrets)."""
        t = self.template
        return orjson.dumps(
            {
                "template": _pack(t) if isinstance(t, str) else [_pack(a) for a in t],
                "shell": self.ctx.shell,
                "isolate": self.ctx.isolate,
                "timeout": self.ctx.timeout,
                "keep": self.ctx.keep,
                "kill_grace": self.ctx.kill_grace,
                "cwd": str(self.ctx.cwd) if self.ctx.cwd is not None else None,
                "jobs": self.jobs,
                "retries": self.retries,
                "halt_on_fail": self.halt_on_fail,
                "artifacts": str(self.artifacts),
                "joblog": str(self.joblog),
            }
        ).decode()


def _command_digest(template: Template, shell: bool) -> str:
    text = _shell_text(template) if shell else "\0".join(_argv(template))
    return hashlib.sha256(_raw(text)).hexdigest()


def _identity(template: Template, shell: bool) -> dict[str, str]:
    text = _shell_text(template) if shell else shlex.join(_argv(template))
    identity = {"kind": EXEC_KIND, "shell": "yes" if shell else "no", "command": text}
    try:
        if not _utf8(text):
            raise JournalError("not UTF-8")
        check_identity(identity)
    except JournalError:
        # Not storable as text (raw bytes, or what looks like a credential): a hash.
        del identity["command"]
        identity["command_sha256"] = _command_digest(template, shell)
    return identity


def is_exec_journal(identity: Mapping[str, str]) -> bool:
    """Whether a journal's identity says `conveyor exec` wrote it."""
    return identity.get("kind") == EXEC_KIND


def default_artifacts(template: Template, *, shell: bool = False) -> Path:
    """`./conveyor-exec-<hash of the command>`: the same command finds its journal again."""
    return Path(f"conveyor-exec-{_command_digest(template, shell)[:10]}")


_DEFAULTS: dict[str, Any] = {
    "jobs": None,
    "timeout": None,
    "retries": 0,
    "halt_on_fail": False,
    "isolate": "none",
    "keep": False,
    "shell": False,
    "artifacts": None,
    "joblog": None,
    "journal": None,
    "keep_order": False,
    "force": False,
    "on_job": None,
    "cwd": None,
    "env": None,
    "kill_grace": 5.0,
    "grace": 10.0,
    "keep_results": True,
}


def _spec(command: Template, options: Mapping[str, Any]) -> _Spec:
    unknown = sorted(set(options) - set(_DEFAULTS))
    if unknown:
        raise ConfigError(unknown[0], options[unknown[0]], "not an option of run_commands")
    o = {**_DEFAULTS, **options}
    shell = bool(o["shell"])
    _check_template(command, shell)
    template: list[str] | str = (
        _shell_text(command) if shell else [os.fspath(a) for a in _argv(command)]
    )
    jobs = o["jobs"] if o["jobs"] is not None else (os.cpu_count() or 1)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or not 1 <= jobs <= 100_000:
        raise ConfigError("jobs", jobs, "a whole number 1..100000")
    retries = o["retries"]
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 1000:
        raise ConfigError("retries", retries, "a whole number 0..1000")
    grace = o["grace"]
    if isinstance(grace, bool) or not isinstance(grace, int | float) or not grace >= 0:
        raise ConfigError("grace", grace, "seconds >= 0")
    art = Path(o["artifacts"] or default_artifacts(template, shell=shell)).absolute()
    ctx = ExecContext(
        isolate=o["isolate"],
        timeout=o["timeout"],
        shell=shell,
        keep=bool(o["keep"]),
        kill_grace=o["kill_grace"],
        cwd=Path(o["cwd"] or Path.cwd()).absolute(),
        artifacts_dir=art / JOBS_DIR,
        env=o["env"],
    )
    return _Spec(
        template=template,
        ctx=ctx,
        jobs=jobs,
        retries=retries,
        halt_on_fail=bool(o["halt_on_fail"]),
        keep_order=bool(o["keep_order"]),
        grace=float(grace),
        artifacts=art,
        joblog=Path(o["joblog"] or art / JOBLOG_NAME).absolute(),
        journal=Path(o["journal"] or art / JOURNAL_NAME).absolute(),
        force=bool(o["force"]),
        on_job=o["on_job"],
        keep_results=bool(o["keep_results"]),
    )


def _open_journal(spec: _Spec) -> Journal:
    try:
        spec.artifacts.mkdir(parents=True, exist_ok=True)
        ignore = spec.artifacts / ".gitignore"
        if not ignore.exists():
            # Keeps the artifacts (and job worktrees) out of `git status` / `git add .`.
            ignore.write_text("# created by conveyor exec\n*\n")
        spec.journal.parent.mkdir(parents=True, exist_ok=True)
        spec.joblog.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            "artifacts", str(spec.artifacts), f"a directory conveyor can create and write ({exc})"
        ) from exc
    journal = Journal.open(
        spec.journal,
        identity=_identity(spec.template, spec.ctx.shell),
        force=spec.force,
        store_items=True,
    )
    try:
        journal.set_meta("exec", spec.settings())
    except BaseException:
        journal.close()
        raise
    return journal


# --- running --------------------------------------------------------------------------------


class _Runner:
    """The task function: runs one job and keeps a failed attempt's CommandResult."""

    def __init__(self, template: Template, ctx: ExecContext) -> None:
        self._template = template
        self._ctx = ctx
        self._failed: dict[str, CommandResult] = {}

    async def __call__(self, job: ExecJob) -> CommandResult:
        try:
            return await self._ctx.task(self._template, job)()
        except CommandFailed as exc:
            # The engine keeps only the error text; the paths and exit code live here.
            self._failed[job.key] = exc.result
            raise

    def outcome(self, r: Result[Any]) -> JobOutcome:
        cr = self._failed.pop(r.key, None)
        if isinstance(r.value, CommandResult):
            cr = r.value
        if cr is not None and not cr.started_at and r.started_at:
            cr.started_at = r.started_at  # it never started (not found): when it was tried
        return JobOutcome(r.item, r, cr)


def _retryable(exc: BaseException) -> bool:
    # `--retries` re-runs a job that ran and failed; one that cannot start never will.
    return isinstance(exc, CommandFailed) and not isinstance(exc, CommandNotFound)


def _stored(o: JobOutcome) -> Result[Any]:
    """The journal's copy: UTF-8 only, the item as data, no live objects."""
    r, err = o.result, o.result.error
    if err is not None:
        err = replace(err, message=_readable(err.message), traceback=_readable(err.traceback))
    meta = {"command": _safe(o.command.to_dict())} if o.command is not None else {}
    return replace(r, index=o.job.seq - 1, item=o.job.to_item(), value=None, error=err, meta=meta)


def _line(r: Result[Any]) -> bytes:
    item = r.item or {}
    d: dict[str, Any] = {"key": r.key, "seq": item.get("seq"), "input": item.get("value")}
    d["status"] = r.status.value
    d["attempts"] = r.attempts
    cmd = r.meta.get("command")
    if cmd:
        for name in ("exit_code", "signal", "timed_out", "started_at", "duration_seconds"):
            d[name] = cmd[name]
        d["command"] = shlex.join(cmd["argv"]) if not cmd["shell"] else cmd["argv"][0]
        for name in ("stdout_path", "stderr_path", "artifacts_path", "workspace", "branch"):
            d[name] = cmd[name]
    if r.error is not None:
        d["error"] = {"type": r.error.type, "message": r.error.message}
    return orjson.dumps(d)


class _Deliver:
    """Calls `on_job` one outcome at a time, in completion or input order.

    On a worker thread: printing to a slow pipe must not stall the event
    loop, where timeouts and Ctrl+C are handled.
    """

    def __init__(self, on_job: Callable[[JobOutcome], Any] | None, keep_order: bool) -> None:
        self._on_job = on_job
        self._keep_order = keep_order and on_job is not None
        self._pending: dict[int, JobOutcome] = {}
        self._next = 0
        self._failed = False

    async def push(self, index: int, outcome: JobOutcome) -> None:
        if not self._keep_order:
            await self._call(outcome)
            return
        self._pending[index] = outcome
        while self._next in self._pending:
            await self._call(self._pending.pop(self._next))
            self._next += 1

    async def drain(self) -> None:
        for i in sorted(self._pending):
            await self._call(self._pending.pop(i))

    async def _call(self, outcome: JobOutcome) -> None:
        if self._on_job is None:
            return
        try:
            await asyncio.to_thread(self._on_job, outcome)
        except Exception as exc:
            if not self._failed:
                self._failed = True
                log.warning("on_job raised %s: %s (ignored)", type(exc).__name__, exc)


class _StopRelay:
    """Stands between Ctrl+C and the engine, so a source waiting for input ends too.

    The engine stops admitting on Ctrl+C but waits for its source's next
    item; with `tail -f | conveyor exec` that item never comes.
    """

    def __init__(self, control: Control | None) -> None:
        self._control = control
        self._engine: Any = None
        self.stopped = asyncio.Event()

    def attach(self, engine: Any) -> None:  # called by AsyncStream.attach_control
        self._engine = engine
        if self._control is not None:
            self._control.attach(self)  # presses so far are replayed as stop() calls

    def stop(self, kind: str = "interrupt") -> None:
        self.stopped.set()
        self._engine.stop(kind)


async def _until(source: AsyncIterator[T], stopped: asyncio.Event) -> AsyncGenerator[T, None]:
    """Items of `source` until a stop is requested, even one waiting for its next item."""
    stop = asyncio.ensure_future(stopped.wait())
    nxt: asyncio.Future[T] | None = None
    try:
        while not stopped.is_set():
            nxt = asyncio.ensure_future(anext(source))
            await asyncio.wait((nxt, stop), return_when=asyncio.FIRST_COMPLETED)
            if not nxt.done():
                return
            try:
                item = nxt.result()
            except StopAsyncIteration:
                return
            nxt = None
            yield item
    finally:
        stop.cancel()
        if nxt is not None and not nxt.done():
            nxt.cancel()
            # Let the source run its cleanup (close a pipe) before we go on.
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, Exception):
                await nxt


@contextlib.contextmanager
def _stop_signals(control: Control | None) -> Iterator[None]:
    """SIGTERM and SIGHUP abort at once: left alone they would orphan every job's group."""
    if control is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()

    def abort() -> None:
        log.warning("terminated: killing every running job now")
        control.interrupt()
        control.interrupt()

    installed: list[tuple[signal.Signals, Any]] = []
    for sig in (signal.SIGTERM, signal.SIGHUP):
        previous = signal.getsignal(sig)
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, abort)
            installed.append((sig, previous))
    try:
        yield
    finally:
        for sig, previous in installed:
            loop.remove_signal_handler(sig)
            if previous is not None:
                signal.signal(sig, previous)


async def _execute(
    spec: _Spec,
    jobs: Iterable[ExecJob] | AsyncIterable[ExecJob],
    journal: Journal,
    control: Control | None,
    already_done: Callable[[], int],
    resume_hint: str,
) -> BatchReport:
    runner = _Runner(spec.template, spec.ctx)
    options: dict[str, Any] = {
        "concurrency": spec.jobs,
        "retries": RetryPolicy(retries=spec.retries, retry_on=_retryable),
        "fail_fast": spec.halt_on_fail,
        "grace": spec.grace,
        "adaptive": False,
        "key": lambda job: job.key,
    }
    relay = _StopRelay(control)
    if isinstance(jobs, AsyncIterable):
        jobs = _until(aiter(jobs), relay.stopped)
    stream = AsyncStream(jobs, invoker_for(runner), options)
    stream.attach_control(relay)
    deliver = _Deliver(spec.on_job, spec.keep_order)
    kept: list[Result[Any]] = []
    stopped: Interrupted | None = None
    with _stop_signals(control), JobLog(spec.joblog) as joblog:
        sink = OutputSink(journal, None, _line, flush_every=16, flush_interval=0.2)
        try:
            while batch := await stream.next_batch():
                for r in batch:
                    outcome = runner.outcome(r)
                    if outcome.command is not None:
                        entry = JobLogEntry.from_result(outcome.job.seq, outcome.command)
                        # JobLog writes strict UTF-8; raw bytes would stop the run.
                        joblog.write(replace(entry, command=_readable(entry.command)))
                    stored = _stored(outcome)
                    await sink.add(stored)
                    r.meta.update(stored.meta)
                    position = r.index
                    r.index = outcome.job.seq - 1
                    if spec.keep_results:
                        kept.append(r)
                    await deliver.push(position, outcome)
        except Interrupted as exc:
            stopped = exc
        finally:
            await stream.aclose()
            await deliver.drain()
            await sink.close()
    export(journal, spec.artifacts / RESULTS_NAME, adopt=False)
    report = stream.report
    assert report is not None
    kept.sort(key=lambda r: r.index)
    report.results = kept
    report.extra.update(
        already_done=already_done(),
        artifacts=str(spec.artifacts),
        joblog=str(spec.joblog),
        journal=str(spec.journal),
        results_file=str(spec.artifacts / RESULTS_NAME),
    )
    if stopped is not None:
        raise Interrupted(report, resume_hint) from None
    return report


async def _run(spec: _Spec, inputs: Iterable[Any] | AsyncIterable[Any], control: Any) -> Any:
    journal = _open_journal(spec)
    done = 0

    async def plan() -> AsyncGenerator[ExecJob, None]:
        nonlocal done
        keyer = _Keyer()
        seq = 0
        async with contextlib.aclosing(_values(inputs)) as values:
            async for value in values:
                seq += 1
                key = keyer.key(value)
                prev = journal.get(key)
                if prev is not None:
                    if prev.status is Status.OK:
                        done += 1
                        continue
                    journal.reset([key])  # ran before and did not succeed: run it again
                yield ExecJob(seq, value, key)

    jobs = plan()
    try:
        return await _execute(spec, jobs, journal, control, lambda: done, _RESUME_HINT)
    finally:
        await jobs.aclose()
        journal.close()


def run_commands(
    inputs: Iterable[Any] | AsyncIterable[Any],
    command: Template,
    *,
    jobs: int | None = None,
    timeout: float | None = None,
    retries: int = 0,
    halt_on_fail: bool = False,
    isolate: Isolation = "none",
    keep: bool = False,
    shell: bool = False,
    artifacts: str | os.PathLike[str] | None = None,
    joblog: str | os.PathLike[str] | None = None,
    journal: str | os.PathLike[str] | None = None,
    keep_order: bool = False,
    force: bool = False,
    on_job: Callable[[JobOutcome], Any] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    kill_grace: float = 5.0,
    grace: float = 10.0,
    keep_results: bool = True,
) -> BatchReport:
    """Run `command` once per input, `jobs` at a time; returns the `BatchReport`.

    `command` is an argv template (`["gzip", "{}"]`) or, with `shell=True`, one
    shell string. Inputs that already succeeded in the journal are skipped
    (counted in `report.extra["already_done"]`); the rest run. `on_job(outcome)`
    is called for each finished job (in input order with `keep_order`), on a
    worker thread. `report.results` (unless `keep_results=False`) are in input
    order: `value` is the `CommandResult` of a job that succeeded and
    `meta["command"]` its dict for every job a process ran for.

    Ctrl+C: running jobs get `grace` seconds, a second Ctrl+C kills them;
    `Interrupted` is raised. Raises `JournalMismatch` when the journal was
    written by another command (unless `force`), `JournalLocked` when another
    run holds it, `ConfigError` for bad options.
    """
    # The parameters are exactly the options (declared for help and type checking).
    spec = _spec(command, {k: v for k, v in locals().items() if k in _DEFAULTS})
    with Portal() as portal:
        report: BatchReport = portal.call(lambda control: _run(spec, inputs, control))
    return report


async def arun_commands(
    inputs: Iterable[Any] | AsyncIterable[Any], command: Template, **options: Any
) -> BatchReport:
    """`run_commands` on the running event loop (same options)."""
    spec = _spec(command, options)
    report: BatchReport = await _run(spec, inputs, None)
    return report


def plan_commands(
    inputs: Iterable[Any],
    command: Template,
    *,
    shell: bool = False,
    artifacts: str | os.PathLike[str] | None = None,
    journal: str | os.PathLike[str] | None = None,
    force: bool = False,
) -> Iterator[tuple[ExecJob, str]]:
    """(job, command line) for every job a run would start now (`--dry-run`).

    Reads the journal, if there is one, without locking it, so jobs that
    already succeeded are left out; changes nothing on disk.
    """
    options = {"shell": shell, "artifacts": artifacts, "journal": journal, "force": force}
    spec = _spec(command, options)
    ro: Journal | None = None
    if spec.journal.exists():
        ro = Journal.open_readonly(spec.journal)
    try:
        if ro is not None and not force:
            now, then = _identity(spec.template, shell), ro.identity
            diff = {k: (then.get(k), now.get(k)) for k in then.keys() | now.keys()}
            diff = {k: v for k, v in diff.items() if v[0] != v[1]}
            if diff:
                raise JournalMismatch(str(spec.journal), diff)
        keyer = _Keyer()
        for seq, raw in enumerate(inputs, start=1):
            value = _as_text(raw)
            key = keyer.key(value)
            if ro is not None:
                prev = ro.get(key)
                if prev is not None and prev.status is Status.OK:
                    continue
            job = ExecJob(seq, value, key)
            yield job, spec.ctx.command_line(spec.template, job)
    finally:
        if ro is not None:
            ro.close()


# --- retry ------------------------------------------------------------------------------------


def _spec_from_journal(
    path: Path, settings: Mapping[str, Any], overrides: Mapping[str, Any]
) -> _Spec:
    raw = settings["template"]
    template = [_unpack(a) for a in raw] if isinstance(raw, list) else _unpack(raw)
    stored = ("jobs", "timeout", "retries", "halt_on_fail", "isolate", "keep", "shell")
    opts: dict[str, Any] = {k: settings[k] for k in stored}
    opts.update(
        artifacts=settings["artifacts"],
        joblog=settings["joblog"],
        journal=path,
        cwd=settings["cwd"],
        kill_grace=settings["kill_grace"],
    )
    opts.update({k: v for k, v in overrides.items() if v is not None})
    return _spec(template, opts)


async def _retry(
    path: Path,
    statuses: Sequence[Status | str],
    overrides: Mapping[str, Any],
    control: Control | None,
) -> Any:
    with Journal.open_readonly(path) as ro:
        identity = ro.identity
        settings_text = ro.get_meta("exec")
    if not is_exec_journal(identity) or settings_text is None:
        raise JournalError(
            f"{path} was not written by `conveyor exec`, so it holds no commands to re-run; "
            "check the --journal path",
            path=str(path),
        )
    spec = _spec_from_journal(path, orjson.loads(settings_text), overrides)
    journal = Journal.open(path, identity=identity, store_items=True)
    try:
        todo: list[ExecJob] = []
        for r in journal.iter_results(statuses):
            if not isinstance(r.item, dict):
                raise JournalError(
                    f"journal {path} has no stored input for key {r.key!r}; rerun the original "
                    "`conveyor exec` command instead",
                    path=str(path),
                )
            todo.append(ExecJob.from_item(r.item))
        journal.reset(j.key for j in todo)
        hint = "Retry again to run the rest: jobs that succeeded are skipped"
        return await _execute(spec, todo, journal, control, lambda: 0, hint)
    finally:
        journal.close()


def retry_commands(
    journal: str | os.PathLike[str],
    *,
    statuses: Sequence[Status | str] = RETRY_STATUSES,
    jobs: int | None = None,
    timeout: float | None = None,
    retries: int | None = None,
    keep_order: bool | None = None,
    on_job: Callable[[JobOutcome], Any] | None = None,
    grace: float | None = None,
    keep_results: bool | None = None,
) -> BatchReport:
    """Re-run the jobs of an exec journal whose status is in `statuses` (for `conveyor retry`).

    The inputs, command, isolation and paths come from the journal; the
    options given here override the stored ones. Raises `JournalError` if
    the journal was not written by `conveyor exec`, `Interrupted` on Ctrl+C.
    """
    path = Path(journal).absolute()
    overrides = {
        "jobs": jobs,
        "timeout": timeout,
        "retries": retries,
        "keep_order": keep_order,
        "on_job": on_job,
        "grace": grace,
        "keep_results": keep_results,
    }
    with Portal() as portal:
        report: BatchReport = portal.call(
            lambda control: _retry(path, statuses, overrides, control)
        )
    return report
