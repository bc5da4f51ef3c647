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

import contextlib
import shlex
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from .._api import AsyncStream
from .._base._exceptions import Interrupted
from .._base._types import Status
from .._core._engine import invoker_for
from .._core._portal import Control, Portal
from .._core._retry import RetryPolicy
from .._journal._journal import Journal, JournalError, JournalMismatch
from .._journal._sink import export
from .._pipeline import JournaledStream, is_finished
from ._guard import Guard
from ._joblog import JobLog, JobLogEntry
from ._relay import _Deliver, _stop_signals, _StopRelay, _until
from ._types import CommandFailed, CommandNotFound, CommandResult

if TYPE_CHECKING:
    import os
    from collections.abc import Iterator

    from .._base._types import Result
    from .._core._report import BatchReport
    from ._isolation import Isolation
from ._jobs import (
    _RESUME_HINT,
    EXEC_KIND,
    RESULTS_NAME,
    RETRY_STATUSES,
    ExecContext,
    ExecJob,
    JobOutcome,
    JobSlots,
    Template,
    _Keyer,
    _readable,
    _safe,
    _unpack,
    _values,
    command_fn,
    job_args,
    job_key,
)
from ._spec import (
    _DEFAULTS,
    _identity,
    _open_journal,
    _Spec,
    _spec,
    default_artifacts,
    is_exec_journal,
)

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

# --- running --------------------------------------------------------------------------------


class _Runner:
    """The task function: runs one job and keeps a failed attempt's CommandResult."""

    def __init__(self, template: Template, ctx: ExecContext) -> None:
        self._template = template
        self._ctx = ctx
        self._failed: dict[str, CommandResult] = {}
        self._slots = JobSlots()

    async def __call__(self, job: ExecJob) -> CommandResult:
        slot = self._slots.take()
        try:
            return await self._ctx.task(self._template, job, slot)()
        except CommandFailed as exc:
            # The engine keeps only the error text; the paths and exit code live here.
            self._failed[job.key] = exc.result
            raise
        finally:
            self._slots.give_back(slot)

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


Jobs = Iterable[ExecJob] | AsyncIterable[ExecJob]


async def _execute(
    spec: _Spec,
    jobs_for: Callable[[Callable[[str], Any]], Jobs],
    journal: Journal,
    control: Control | None,
    resume_hint: str,
) -> BatchReport:
    """The journaled pipeline (`conveyor._pipeline`) over the jobs `jobs_for(previous)`
    yields, `previous` being the plan's resume rule; each result also goes to the job
    log and to `on_job`."""
    runner = _Runner(spec.template, spec.ctx)
    options: dict[str, Any] = {
        "concurrency": spec.jobs,
        "retries": RetryPolicy(retries=spec.retries, retry_on=_retryable),
        "fail_fast": spec.halt_on_fail,
        "grace": spec.grace,
        "adaptive": False,
        "key": lambda job: job.key,
    }
    if spec.monitor is not None:
        options["monitor"] = spec.monitor
    relay = _StopRelay(control)
    made: list[Jobs] = []

    def make(previous: Callable[[str], Any]) -> AsyncStream:
        jobs = jobs_for(previous)
        made.append(jobs)
        if isinstance(jobs, AsyncIterable):
            jobs = _until(aiter(jobs), relay.stopped)
        return AsyncStream(jobs, invoker_for(runner), options)

    outcomes: dict[int, JobOutcome] = {}

    def store(r: Result[Any]) -> Result[Any]:
        outcome = outcomes[r.index] = runner.outcome(r)
        stored = _stored(outcome)
        r.meta.update(stored.meta)
        return stored

    every = frozenset(Status)  # cancelled and skipped jobs are listed too
    stream = JournaledStream(
        lambda: journal,
        make,
        format_line=_line,  # the line `results.jsonl` is exported from
        close_journal=False,
        commit=every,
        store=store,
        flush_every=16,
    )
    deliver = _Deliver(spec.on_job, spec.keep_order)
    kept: list[Result[Any]] = []
    stopped: Interrupted | None = None
    # Jobs die with this process, even by kill -9; the guard keeps the
    # journal locked until they are gone, so a rerun cannot start them twice.
    # (Entered before the stream starts: its tasks inherit the guard.)
    guard = Guard(hold_fd=journal.lock_fd)
    with guard, _stop_signals(control), JobLog(spec.joblog) as joblog:
        try:
            stream.attach_control(relay)
            while batch := await stream.next_batch():
                for r in batch:
                    outcome = outcomes.pop(r.index)
                    if outcome.command is not None:
                        entry = JobLogEntry.from_result(outcome.job.seq, outcome.command)
                        # JobLog writes strict UTF-8; raw bytes would stop the run.
                        joblog.write(replace(entry, command=_readable(entry.command)))
                    position = r.index
                    r.index = outcome.job.seq - 1
                    if spec.keep_results:
                        kept.append(r)
                    await deliver.push(position, outcome)
        except Interrupted as exc:
            stopped = exc
        finally:
            # The pipeline keeps this session's resource samples in the journal.
            try:
                await stream.aclose()
            finally:
                try:
                    await deliver.drain()
                finally:
                    for jobs in made:
                        if isinstance(jobs, AsyncGenerator):
                            await jobs.aclose()
    export(journal, spec.artifacts / RESULTS_NAME, adopt=False)
    report = stream.report
    assert report is not None
    kept.sort(key=lambda r: r.index)
    report.results = kept
    report.extra.pop("resumed", None)  # counted as already_done: never run, not reported
    report.extra.update(
        already_done=stream.resumed,
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

    async def plan(previous: Callable[[str], Any]) -> AsyncGenerator[ExecJob, None]:
        # `previous` is the pipeline's resume rule; `conveyor retry` re-runs failures.
        keyer = _Keyer()
        seq = 0
        async with contextlib.aclosing(_values(inputs)) as values:
            async for value, args in values:
                seq += 1
                key = keyer.key(value)
                if previous(key) is not None:  # finished: counted in `already_done`
                    continue
                yield ExecJob(seq, value, key, args)

    try:
        return await _execute(spec, plan, journal, control, _RESUME_HINT)
    finally:
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
    monitor: Any = None,
) -> BatchReport:
    """Run `command` once per input, `jobs` at a time; returns the `BatchReport`.

    `command` is an argv template (`["gzip", "{}"]`) or, with `shell=True`, one
    shell string. Inputs the journal holds as finished (succeeded, failed or
    timed out) are skipped (counted in `report.extra["already_done"]`;
    `retry_commands` re-runs the failures); the rest run, cancelled ones too. `on_job(outcome)`
    is called for each finished job (in input order with `keep_order`), on a
    worker thread. `report.results` (unless `keep_results=False`) are in input
    order: `value` is the `CommandResult` of a job that succeeded and
    `meta["command"]` its dict for every job a process ran for.

    `monitor=conveyor.Monitor(...)` samples memory (the jobs' too), CPU, GPU
    and gauges while the jobs run, into `report.extra["resources"]` and the
    journal (for `conveyor report --html`); its limits stop the run
    (`ResourceLimitExceeded`, resumable).

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
    already finished are left out; changes nothing on disk.
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
            value, args = job_args(raw)
            key = keyer.key(value)
            if ro is not None:
                prev = ro.get(key)
                if prev is not None and is_finished(prev.status):
                    continue
            job = ExecJob(seq, value, key, args)
            # As if every job took as long: slots in turn.
            yield job, spec.ctx.command_line(spec.template, job, (seq - 1) % spec.jobs + 1)
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
            "check the `journal=` path",
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
        # The failed jobs were reset to pending: nothing to look up in the plan.
        return await _execute(spec, lambda previous: todo, journal, control, hint)
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
