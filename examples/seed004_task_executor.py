"""Seed 004: the team's TaskExecutor contract, on conveyor's ParallelTaskExecutor.

python examples/seed004_task_executor.py
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from conveyor import (
    AggregateExecutionError,
    ExecutionContext,
    IsolationLevel,
    ParallelTaskExecutor,
    TaskResult,
)
from conveyor.commands import CommandTask

logging.basicConfig(level=logging.WARNING)


class LoggingProgressCallback:
    def on_task_start(self, task: Any) -> None:
        print("start   ", task.key)

    def on_task_complete(self, result: TaskResult) -> None:
        print(
            "complete", result.task.key, "exit", result.exit_code, f"{result.duration_seconds:.2f}s"
        )

    def on_task_error(self, task: Any, error: BaseException) -> None:
        print("error   ", task.key, type(error).__name__)


def main() -> None:
    config = {"gear3": {"parallel": {"enabled": True, "max_workers": 4, "timeout": 3600}}}
    executor = ParallelTaskExecutor.from_config(config["gear3"]["parallel"])
    assert executor.get_execution_mode() == "parallel"
    state = Path(tempfile.mkdtemp())
    context = ExecutionContext(
        project_id="demo", state_dir=state, isolation_level=IsolationLevel.DIRECTORY
    )
    tasks = [
        CommandTask(["sh", "-c", f"echo analysing part {i}; sleep 0.2"], key=f"part-{i}")
        for i in range(6)
    ]
    tasks.append(CommandTask(["sh", "-c", "echo bad input >&2; exit 3"], key="part-bad"))
    try:
        results = executor.execute_tasks(tasks, context, LoggingProgressCallback())
    except AggregateExecutionError as exc:  # only when every task failed
        raise SystemExit(f"all tasks failed: {exc}") from exc
    finally:
        executor.shutdown(timeout=30)
        executor.shutdown(timeout=30)  # idempotent
    for r in results:
        print(r.to_dict()["success"], r.exit_code, r.stdout.strip() or r.stderr.strip())


if __name__ == "__main__":
    main()
