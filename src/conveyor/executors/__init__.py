"""Executors: run a list of zero-argument tasks, results in input order.

The task-executor contract (`TaskExecutor.execute(tasks, progress)`, `mode`,
`shutdown(timeout)`, construction from a config mapping) on top of the one
engine: an executor is a preset of `conveyor.run` options, not a second
implementation.

    with ThreadExecutor.from_config({"max_workers": 4, "timeout": 3600}) as ex:
        results = ex.execute([lambda: call(a), lambda: call(b)])

A task is a callable taking no arguments, sync (run on a thread) or async
(awaited), e.g. a `conveyor.commands.CommandTask`. `execute` never raises for
a failed task: each failure is a `Result`; only when *every* task failed does
it raise `AggregateExecutionError` carrying all of them.
"""

from ._parallel import (
    DEFAULT_TASK_TIMEOUT,
    ConfigurationError,
    ExecutionContext,
    ExecutorShutDown,
    IsolationLevel,
    ParallelTaskExecutor,
    TaskProgressCallback,
    TaskResult,
)
from ._tasks import AsyncExecutor, SequentialExecutor, TaskExecutor, ThreadExecutor

__all__ = [
    "DEFAULT_TASK_TIMEOUT",
    "AsyncExecutor",
    "ConfigurationError",
    "ExecutionContext",
    "ExecutorShutDown",
    "IsolationLevel",
    "ParallelTaskExecutor",
    "SequentialExecutor",
    "TaskExecutor",
    "TaskProgressCallback",
    "TaskResult",
    "ThreadExecutor",
]
