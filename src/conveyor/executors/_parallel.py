"""The task-list interface: `execute_tasks`, `TaskResult`, `ExecutionContext`, isolation."""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import logging
import math
import re
import tempfile
import threading
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from .._api import run_with_invoker
from .._base._exceptions import AggregateExecutionError, ConfigError, ConveyorError
from .._base._types import Result, Status
from .._core._engine import Engine, _is_async_callable
from ._tasks import _call_task

if TYPE_CHECKING:
    from .._core._report import BatchReport

_log = logging.getLogger("conveyor")


class ConfigurationError(ConfigError):
    """A bad executor setting (the executors' name for a `ConfigError`)."""


class IsolationLevel(enum.StrEnum):
    """Where each task runs (`ExecutionContext.isolation_level`).

    - NONE: in the context's working directory, shared by all tasks.
    - DIRECTORY: a fresh empty directory per task.
    - BRANCH: a git worktree per task, on branch `conveyor/<task id>`.
    - FULL: a worktree plus its own HOME and state directory (`CONVEYOR_STATE_DIR`).
    """

    NONE = "none"
    DIRECTORY = "directory"
    BRANCH = "branch"
    FULL = "full"


_COMMAND_ISOLATION = {
    IsolationLevel.NONE: "none",
    IsolationLevel.DIRECTORY: "dir",
    IsolationLevel.BRANCH: "worktree",
    IsolationLevel.FULL: "worktree",
}


@dataclass(frozen=True)
class ExecutionContext:
    """What tasks share: project, directory, branch, state dir and isolation level."""

    project_id: str = ""
    working_directory: Path | None = None
    git_branch: str | None = None
    state_dir: Path | None = None
    isolation_level: IsolationLevel = IsolationLevel.NONE

    def create_isolated_context(self, task_id: str) -> ExecutionContext:
        """The context of one task: its own state directory (and, for BRANCH and
        FULL, its branch name) under this one's; created on disk when it runs."""
        base = self.state_dir or Path(tempfile.gettempdir()) / "conveyor-tasks"
        isolated = self.isolation_level is not IsolationLevel.NONE
        return ExecutionContext(
            project_id=self.project_id,
            working_directory=self.working_directory,
            git_branch=branch_name(task_id)
            if self.isolation_level in _BRANCHED
            else self.git_branch,
            state_dir=base / safe_name(task_id) if isolated else self.state_dir,
            isolation_level=self.isolation_level,
        )


_BRANCHED = (IsolationLevel.BRANCH, IsolationLevel.FULL)


@dataclass
class TaskResult:
    """One task's outcome: exit code, output, timing. `success` is `exit_code == 0`.

    For a `CommandTask`, `exit_code`, `stdout`, `stderr` and `artifacts_path`
    are the command's (124 on timeout); for a Python callable, `exit_code` is
    0 on success and 1 on an exception (124 on timeout), `value` its return
    value. `result` is conveyor's own `Result` (status, attempts, timing).
    """

    task: Any
    exit_code: int
    stdout: str = ""
    stderr: str = ""
    duration_seconds: float = 0.0
    artifacts_path: Path | None = None
    error_message: str | None = None
    value: Any = None
    result: Result[Any] | None = field(default=None, repr=False)

    @property
    def success(self) -> bool:
        return self.exit_code == 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the task and value as text when JSON cannot hold them)."""
        return {
            "task": _jsonable(self.task),
            "exit_code": self.exit_code,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "duration_seconds": self.duration_seconds,
            "artifacts_path": None if self.artifacts_path is None else str(self.artifacts_path),
            "error_message": self.error_message,
            "success": self.success,
            "value": _jsonable(self.value),
            "status": None if self.result is None else str(Status(self.result.status).value),
        }


def _jsonable(obj: Any) -> Any:
    if obj is None or isinstance(obj, str | int | float | bool):
        return obj
    return repr(obj)


class TaskProgressCallback(Protocol):
    """Progress of a task list; every method is optional, and an exception
    in any of them is logged and ignored (each one, not only the first)."""

    def on_task_start(self, task: Any) -> None: ...
    def on_task_complete(self, result: TaskResult) -> None: ...
    def on_task_error(self, task: Any, error: BaseException) -> None: ...


class ExecutorShutDown(ConveyorError):
    """The task did not start: its executor was shut down first."""


_MAX_WORKERS = (1, 32)
DEFAULT_TASK_TIMEOUT = 3600.0


class ParallelTaskExecutor:
    """Runs a task list: `execute_tasks(tasks, context, progress_callback)`.

        executor = ParallelTaskExecutor.from_config({"max_workers": 4, "timeout": 3600})
        results = executor.execute_tasks(tasks, ExecutionContext(working_directory=repo))
        executor.shutdown(timeout=30)

    A task is a `conveyor.commands.CommandTask` (run with the context's
    directory and isolation level), a callable taking no argument, or a
    callable taking the task's `ExecutionContext`. Results come in the order of
    `tasks`; a failed task is a `TaskResult` with `error_message`, never an
    exception, unless every task failed (`AggregateExecutionError`, carrying
    all results). `max_workers` is 1..32, `timeout` seconds per task (> 0,
    default 3600); bad values raise `ConfigurationError`. `shutdown(timeout)`
    is idempotent: tasks not yet started end as not run ("executor was shut
    down"); it waits up to `timeout` s for running ones. The simpler
    `conveyor.run(items, fn)` and `ThreadExecutor` remain beside this class.
    """

    def __init__(
        self, *, max_workers: int = 4, timeout: float = DEFAULT_TASK_TIMEOUT, retries: int = 0
    ) -> None:
        lo, hi = _MAX_WORKERS
        if (
            isinstance(max_workers, bool)
            or not isinstance(max_workers, int)
            or not (lo <= max_workers <= hi)
        ):
            raise ConfigurationError("max_workers", max_workers, f"a whole number {lo}..{hi}")
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not math.isfinite(timeout)
            or timeout <= 0
        ):
            raise ConfigurationError("timeout", timeout, "a positive number of seconds")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ConfigurationError("retries", retries, "a whole number >= 0")
        self.max_workers = max_workers
        self.timeout = float(timeout)
        self.retries = retries
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._active = 0
        self._shut = False
        self.last_report: BatchReport | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ParallelTaskExecutor:
        """From `{"max_workers": 4, "timeout": 3600}` (a `gear3.parallel` section:
        `enabled` is accepted and ignored). Unknown keys raise `ConfigurationError`."""
        if not isinstance(config, Mapping):
            raise ConfigurationError("config", config, "a mapping such as {'max_workers': 4}")
        known = {"max_workers", "timeout", "retries", "enabled"}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ConfigurationError(
                unknown[0], config[unknown[0]], f"not a known key; known: {sorted(known)}"
            )
        kw = {k: config[k] for k in ("max_workers", "timeout", "retries") if k in config}
        return cls(**kw)

    def get_execution_mode(self) -> Literal["sequential", "parallel"]:
        return "parallel" if self.max_workers > 1 else "sequential"

    @property
    def is_shutdown(self) -> bool:
        return self._shut

    def execute_tasks(
        self,
        tasks: Sequence[Any],
        context: ExecutionContext | None = None,
        progress_callback: Any = None,
    ) -> list[TaskResult]:
        """Run every task, `max_workers` at a time; one `TaskResult` per task, in order."""
        with self._lock:
            if self._shut:
                raise ConveyorError("this executor is shut down: create a new one")
            self._active += 1
        try:
            return self._execute(list(tasks), context or ExecutionContext(), progress_callback)
        finally:
            with self._lock:
                self._active -= 1
                self._idle.notify_all()

    def _execute(
        self, tasks: list[Any], context: ExecutionContext, progress: Any
    ) -> list[TaskResult]:
        for i, t in enumerate(tasks):
            if not callable(t):
                raise ConfigurationError(
                    f"tasks[{i}]", t, "a CommandTask or a callable (no argument, or the context)"
                )
        errors: dict[int, BaseException] = {}
        outputs: dict[int, Any] = {}

        def call(progress_task: tuple[int, Any], engine: Engine) -> Awaitable[Any]:
            index, task = progress_task
            return self._run_one(index, task, context, errors, outputs, engine)

        def on_start(index: int, key: str, item: Any) -> None:
            _notify(progress, "on_task_start", item[1])

        done: dict[int, TaskResult] = {}

        def on_result(r: Result[Any]) -> None:
            tr = _task_result(r, tasks[r.index], errors.get(r.index), outputs.get(r.index))
            done[r.index] = tr
            if not tr.success:
                exc = errors.get(r.index) or RuntimeError(tr.error_message or "failed")
                _notify(progress, "on_task_error", tr.task, exc)
            _notify(progress, "on_task_complete", tr)

        report = run_with_invoker(
            list(enumerate(tasks)),
            call,
            concurrency=self.max_workers,
            timeout=self.timeout,
            retries=self.retries,
            on_start=on_start,
            on_result=on_result,
        )
        self.last_report = report
        results = [
            done.get(r.index)
            or _task_result(r, tasks[r.index], errors.get(r.index), outputs.get(r.index))
            for r in report.results
        ]
        if results and not any(tr.success for tr in results):
            raise AggregateExecutionError(report.results)
        return results

    async def _run_one(
        self,
        index: int,
        task: Any,
        context: ExecutionContext,
        errors: dict[int, BaseException],
        outputs: dict[int, Any],
        engine: Engine,
    ) -> Any:
        if self._shut:
            exc: BaseException = ExecutorShutDown(
                "not started: the executor was shut down before this task's turn"
            )
            errors[index] = exc
            raise exc
        try:
            value = await self._invoke(index, task, context, engine)
        except BaseException as e:
            errors[index] = e
            raise
        outputs[index] = value
        return value

    async def _invoke(
        self, index: int, task: Any, context: ExecutionContext, engine: Engine
    ) -> Any:
        own = context.create_isolated_context(f"task-{index + 1}")
        if _is_command_task(task):
            env = dict(task.env or {})
            if context.isolation_level is IsolationLevel.FULL and own.state_dir is not None:
                name = own.state_dir.name
                home = own.state_dir.with_name(f"{name}.home")
                state = own.state_dir.with_name(f"{name}.state")
                home.mkdir(parents=True, exist_ok=True)
                state.mkdir(parents=True, exist_ok=True)
                env.update(HOME=str(home), CONVEYOR_STATE_DIR=str(state))
            task = dataclasses.replace(
                task,
                cwd=task.cwd or context.working_directory,
                env=env or None,
                timeout=task.timeout or self.timeout,
                isolate=_COMMAND_ISOLATION[context.isolation_level]
                if task.isolate == "none"
                else task.isolate,
                key=task.key or f"task-{index + 1}",
                artifacts_dir=task.artifacts_dir or context.state_dir,
            )
            return await task()
        if own.state_dir is not None and context.isolation_level is not IsolationLevel.NONE:
            own.state_dir.mkdir(parents=True, exist_ok=True)
        fn = functools.partial(task, own) if _takes_context(task) else task
        if _is_async_callable(task):
            return await fn()
        value = await engine.run_in_thread(_call_task, fn)
        if inspect.isawaitable(value):
            value = await value
        return value

    def shutdown(self, timeout: float = 30.0) -> None:
        """Start no more tasks (those not started end as not run) and wait up to
        `timeout` s for running ones. Safe to call any number of times."""
        with self._lock:
            self._shut = True
            self._idle.wait_for(lambda: self._active == 0, timeout=timeout)

    def __enter__(self) -> ParallelTaskExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


# `conveyor.commands` sits above this layer: its types are recognised by shape.
TIMEOUT_EXIT_CODE = 124
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(key: str) -> str:
    return _UNSAFE.sub("_", key).strip("._-") or "task"


def branch_name(key: str) -> str:
    return f"conveyor/{safe_name(key)}"


def _is_command_task(task: Any) -> bool:
    return dataclasses.is_dataclass(task) and all(
        hasattr(task, a) for a in ("argv", "isolate", "artifacts_dir", "kill_grace")
    )


def _is_command_result(value: Any) -> bool:
    return all(hasattr(value, a) for a in ("exit_code", "stdout_text", "stderr_text", "duration"))


def _takes_context(task: Any) -> bool:
    try:
        sig = inspect.signature(task)
    except (TypeError, ValueError):
        return False
    required = [
        p
        for p in sig.parameters.values()
        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return len(required) == 1


def _notify(target: Any, name: str, *args: Any) -> None:
    fn = getattr(target, name, None) if target is not None else None
    if fn is None:
        return
    try:
        fn(*args)
    except Exception:
        _log.exception("progress callback %s raised (ignored; the run goes on)", name)


def _task_result(r: Result[Any], task: Any, exc: BaseException | None, value: Any) -> TaskResult:
    cr: Any = value if _is_command_result(value) else getattr(exc, "result", None)
    msg = None if r.status is Status.OK else (r.error.message if r.error else str(r.status))
    if _is_command_result(cr):
        return TaskResult(
            task=task,
            exit_code=cr.exit_code,
            stdout=cr.stdout_text(),
            stderr=cr.stderr_text(),
            duration_seconds=cr.duration,
            artifacts_path=cr.artifacts_path,
            error_message=msg,
            value=None,
            result=r,
        )
    if r.status is Status.OK:
        code = 0
    elif r.status is Status.TIMED_OUT:
        code = TIMEOUT_EXIT_CODE
    elif isinstance(exc, ExecutorShutDown) or r.status is Status.CANCELLED:
        code = -1
    else:
        code = 1
    return TaskResult(
        task=task,
        exit_code=code,
        duration_seconds=r.duration or 0.0,
        error_message=msg,
        value=value if r.status is Status.OK else None,
        result=r,
    )
