"""Seed 004's executor interface: ParallelTaskExecutor, TaskResult, ExecutionContext."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import conveyor
from conveyor import (
    ConfigError,
    ConfigurationError,
    ExecutionContext,
    IsolationLevel,
    ParallelTaskExecutor,
    TaskResult,
)
from conveyor.commands import CommandTask


class Recorder:
    def __init__(self, fail_in: str = "") -> None:
        self.events: list[tuple[str, Any]] = []
        self.fail_in = fail_in

    def on_task_start(self, task: Any) -> None:
        self.events.append(("start", task))
        if self.fail_in == "start":
            raise RuntimeError("start callback broke")

    def on_task_complete(self, result: TaskResult) -> None:
        self.events.append(("complete", result))
        if self.fail_in == "complete":
            raise RuntimeError("complete callback broke")

    def on_task_error(self, task: Any, error: BaseException) -> None:
        self.events.append(("error", (task, error)))


def test_config_defaults_and_validation() -> None:
    ex = ParallelTaskExecutor.from_config({"enabled": False, "max_workers": 4, "timeout": 3600})
    assert (ex.max_workers, ex.timeout) == (4, 3600.0)
    assert ex.get_execution_mode() == "parallel"
    assert ParallelTaskExecutor().timeout == 3600.0
    for bad in ({"max_workers": 0}, {"max_workers": 33}, {"timeout": 0}, {"timeout": -1}):
        with pytest.raises(ConfigurationError) as err:
            ParallelTaskExecutor.from_config(bad)
        assert isinstance(err.value, ConfigError)
        assert next(iter(bad)) in str(err.value)
    with pytest.raises(ConfigurationError, match="known"):
        ParallelTaskExecutor.from_config({"workers": 2})


def test_execute_tasks_in_order_in_parallel_with_failures_as_results() -> None:
    lock = threading.Lock()
    active = peak = 0

    def make(i: int) -> Any:
        def task() -> int:
            nonlocal active, peak
            with lock:
                active += 1
                peak = max(peak, active)
            time.sleep(0.02)
            with lock:
                active -= 1
            if i == 3:
                raise ValueError("task 3 broke")
            return i

        return task

    tasks = [make(i) for i in range(8)]
    rec = Recorder()
    results = ParallelTaskExecutor(max_workers=4).execute_tasks(tasks, None, rec)
    assert [r.task for r in results] == tasks
    assert [r.value for r in results] == [0, 1, 2, None, 4, 5, 6, 7]
    assert peak == 4
    bad = results[3]
    assert not bad.success and bad.exit_code == 1 and "task 3 broke" in (bad.error_message or "")
    errors = [e for kind, e in rec.events if kind == "error"]
    assert len(errors) == 1 and errors[0][0] is tasks[3]
    assert isinstance(errors[0][1], ValueError)  # the exception itself, not an ErrorInfo
    assert sum(kind == "start" for kind, _ in rec.events) == 8
    assert sum(kind == "complete" for kind, _ in rec.events) == 8
    d = results[0].to_dict()
    assert d["success"] is True and d["exit_code"] == 0 and "duration_seconds" in d


def test_command_tasks_keep_exit_code_and_output(tmp_path: Path) -> None:
    ok = CommandTask(["sh", "-c", "echo hello; echo warn >&2"])
    failing = CommandTask(["sh", "-c", "echo partial; echo oops >&2; exit 3"])
    ctx = ExecutionContext(working_directory=tmp_path, state_dir=tmp_path / "state")
    results = ParallelTaskExecutor(max_workers=2).execute_tasks([ok, failing], ctx)
    assert results[0].success and results[0].stdout == "hello\n" and results[0].stderr == "warn\n"
    assert results[1].exit_code == 3 and not results[1].success
    assert results[1].stdout == "partial\n" and results[1].stderr == "oops\n"
    assert results[1].artifacts_path is not None and results[1].error_message


def test_timeout_gives_124_and_others_continue() -> None:
    results = ParallelTaskExecutor(max_workers=2, timeout=0.2).execute_tasks(
        [lambda: time.sleep(3), lambda: "fine"]
    )
    assert results[0].exit_code == 124 and "timeout" in (results[0].error_message or "")
    assert results[1].success and results[1].value == "fine"


def test_every_callback_exception_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="conveyor"):
        results = ParallelTaskExecutor(max_workers=2).execute_tasks(
            [lambda: 1, lambda: 2, lambda: 3], None, Recorder(fail_in="complete")
        )
    assert all(r.success for r in results)
    logged = [r for r in caplog.records if "on_task_complete" in r.getMessage()]
    assert len(logged) == 3


def test_all_failed_raises_aggregate() -> None:
    def boom() -> None:
        raise OSError("no backend")

    with pytest.raises(conveyor.AggregateExecutionError):
        ParallelTaskExecutor(max_workers=2).execute_tasks([boom, boom])


def test_shutdown_is_idempotent_and_cancels_what_has_not_started() -> None:
    ex = ParallelTaskExecutor(max_workers=1)
    started: list[int] = []
    first_running = threading.Event()

    def make(i: int) -> Any:
        def task() -> int:
            started.append(i)
            first_running.set()
            time.sleep(0.3)
            return i

        return task

    out: list[list[TaskResult]] = []
    t = threading.Thread(target=lambda: out.append(ex.execute_tasks([make(i) for i in range(5)])))
    t.start()
    assert first_running.wait(5)
    ex.shutdown(timeout=10)
    ex.shutdown(timeout=10)  # idempotent
    t.join(10)
    assert started == [0]
    results = out[0]
    assert results[0].success
    assert all(not r.success and "shut down" in (r.error_message or "") for r in results[1:])
    with pytest.raises(conveyor.ConveyorError, match="shut down"):
        ex.execute_tasks([lambda: 1])


def test_isolation_levels_give_each_task_its_own_place(tmp_path: Path) -> None:
    seen: list[ExecutionContext] = []

    def task(ctx: ExecutionContext) -> str:
        seen.append(ctx)
        return str(ctx.state_dir)

    base = ExecutionContext(
        project_id="p", state_dir=tmp_path, isolation_level=IsolationLevel.DIRECTORY
    )
    results = ParallelTaskExecutor(max_workers=2).execute_tasks([task, task], base)
    assert len({r.value for r in results}) == 2
    assert all(Path(r.value).is_dir() for r in results)
    assert {lvl.value for lvl in IsolationLevel} == {"none", "directory", "branch", "full"}
    branch = base.create_isolated_context("t1")
    assert branch.state_dir == tmp_path / "t1"
    full = ExecutionContext(state_dir=tmp_path, isolation_level=IsolationLevel.FULL)
    assert full.create_isolated_context("t1").git_branch == "conveyor/t1"
    res = ParallelTaskExecutor(max_workers=1).execute_tasks(
        [CommandTask(["sh", "-c", 'echo "$HOME"; echo "$CONVEYOR_STATE_DIR"; pwd'])],
        ExecutionContext(state_dir=tmp_path / "s", isolation_level=IsolationLevel.DIRECTORY),
    )
    assert res[0].success, res[0].error_message


def test_full_isolation_runs_in_a_worktree_with_its_own_home(tmp_path: Path) -> None:
    import subprocess

    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "f.txt").write_text("x")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)
    ctx = ExecutionContext(
        working_directory=repo, state_dir=tmp_path / "state", isolation_level=IsolationLevel.FULL
    )
    task = CommandTask(["sh", "-c", 'echo "$HOME"; echo "$CONVEYOR_STATE_DIR"; pwd; ls'])
    res = ParallelTaskExecutor(max_workers=1).execute_tasks([task, task], ctx)
    assert all(r.success for r in res), [r.error_message for r in res]
    homes = [r.stdout.splitlines()[0] for r in res]
    cwds = [r.stdout.splitlines()[2] for r in res]
    assert len(set(homes)) == 2 and all(str(tmp_path / "state") in h for h in homes)
    assert all(c != str(repo) for c in cwds) and all("f.txt" in r.stdout for r in res)
