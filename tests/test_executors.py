"""Seed 004's executor contract on top of the engine."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from typing import Any

import pytest

import conveyor
from conveyor import AsyncExecutor, SequentialExecutor, Status, ThreadExecutor


def _task(value: Any, delay: float = 0.0, fail: bool = False) -> Any:
    def run() -> Any:
        time.sleep(delay)
        if fail:
            raise RuntimeError(f"task {value} failed")
        return value

    return run


def test_thread_executor_order_and_parallelism() -> None:
    """Results come back in task order even when later tasks finish first,
    and tasks really overlap."""
    lock = threading.Lock()
    active = 0
    peak = 0

    def make(i: int) -> Any:
        def run() -> int:
            nonlocal active, peak
            with lock:
                active += 1
                peak = max(peak, active)
            time.sleep(0.05 - 0.004 * i)
            with lock:
                active -= 1
            return i

        return run

    with ThreadExecutor(max_workers=4) as ex:
        results = ex.execute([make(i) for i in range(8)])
    assert [r.value for r in results] == list(range(8))
    assert peak == 4
    assert ex.mode == "parallel"


def test_sequential_executor_runs_one_at_a_time() -> None:
    """The sequential executor never overlaps tasks."""
    spans: list[tuple[float, float]] = []

    def make(i: int) -> Any:
        def run() -> int:
            t = time.monotonic()
            time.sleep(0.005)
            spans.append((t, time.monotonic()))
            return i

        return run

    ex = SequentialExecutor()
    assert ex.mode == "sequential"
    results = ex.execute([make(i) for i in range(5)])
    assert [r.value for r in results] == list(range(5))
    spans.sort()
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))


def test_async_executor_runs_coroutine_tasks() -> None:
    """Async tasks (zero-argument coroutine functions) are awaited."""

    def make(i: int) -> Any:
        async def run() -> int:
            await asyncio.sleep(0.001)
            return i * 2

        return run

    results = AsyncExecutor(max_concurrency=3).execute([make(i) for i in range(6)])
    assert [r.value for r in results] == [0, 2, 4, 6, 8, 10]


def test_failures_are_results_and_aggregate_only_when_all_fail() -> None:
    """One failing task is a failed result; only all-failed raises
    AggregateExecutionError carrying every failure."""
    ex = ThreadExecutor(max_workers=2)
    results = ex.execute([_task(1), _task(2, fail=True), _task(3)])
    assert [r.status for r in results] == [Status.OK, Status.FAILED, Status.OK]
    assert results[1].error is not None and "task 2 failed" in results[1].error.message
    with pytest.raises(conveyor.AggregateExecutionError) as ei:
        ex.execute([_task(1, fail=True), _task(2, fail=True)])
    assert len(ei.value.results) == 2
    assert "all 2 tasks failed" in str(ei.value)
    assert ex.execute([]) == []


def test_per_task_timeout_marks_timed_out_and_others_continue() -> None:
    """A task over its timeout is timed_out; the others complete."""
    release = threading.Event()

    def hang() -> None:
        release.wait(10)

    try:
        ex = ThreadExecutor(max_workers=2, timeout=0.2)
        results = ex.execute([hang, _task("a"), _task("b")])
    finally:
        release.set()
    assert [r.status for r in results] == [Status.TIMED_OUT, Status.OK, Status.OK]


def test_progress_callbacks_seed_004_names_and_raising_callback() -> None:
    """on_task_start/on_task_complete/on_task_error are called; a callback
    that raises is ignored."""
    calls: list[str] = []

    class Progress:
        def on_task_start(self, task: Any) -> None:
            calls.append("start")

        def on_task_complete(self, result: conveyor.Result[Any]) -> None:
            calls.append(f"complete:{result.status.value}")
            raise ValueError("bad callback")

        def on_task_error(self, task: Any, error: Any) -> None:
            calls.append("error")

    results = ThreadExecutor(2).execute([_task(1), _task(2, fail=True)], progress=Progress())
    assert len(results) == 2
    assert calls.count("start") == 2
    assert sorted(c for c in calls if c.startswith("complete")) == [
        "complete:failed",
        "complete:ok",
    ]
    assert calls.count("error") == 1


@pytest.mark.parametrize(
    ("cfg", "key"),
    [
        ({"max_workers": 0}, "max_workers"),
        ({"max_workers": 5000}, "max_workers"),
        ({"max_workers": "4"}, "max_workers"),
        ({"max_workers": 4, "timeout": -1}, "timeout"),
        ({"max_workers": 4, "timout": 3}, "timout"),
    ],
)
def test_from_config_rejects_bad_values(cfg: dict[str, Any], key: str) -> None:
    """ConfigError names the key, the value and the allowed range."""
    with pytest.raises(conveyor.ConfigError) as ei:
        ThreadExecutor.from_config(cfg)
    assert ei.value.option == key
    assert repr(cfg[key]) in str(ei.value)


def test_from_config_defaults_and_values() -> None:
    """A config mapping such as seed 004's gear3.parallel section builds an executor."""
    ex = ThreadExecutor.from_config({"enabled": True, "max_workers": 6, "timeout": 3600})
    assert ex.max_workers == 6 and ex.timeout == 3600
    assert ThreadExecutor.from_config({}).max_workers == 4


def test_shutdown_is_idempotent_and_refuses_new_work() -> None:
    """shutdown() can be called twice; execute() afterwards says what to do."""
    ex = ThreadExecutor(2)
    ex.execute([_task(1)])
    ex.shutdown(timeout=1)
    ex.shutdown(timeout=1)
    assert ex.is_shutdown
    with pytest.raises(conveyor.ConveyorError, match="shut down"):
        ex.execute([_task(1)])


def test_non_callable_task_is_refused() -> None:
    """A task that is not callable is a ConfigError naming its position."""
    with pytest.raises(conveyor.ConfigError, match=r"tasks\[1\]"):
        ThreadExecutor(2).execute([_task(1), 42])
