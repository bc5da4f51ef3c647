"""The TaskExecutor family: `execute(tasks, progress)` presets over the one engine."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from .._api import run_with_invoker
from .._base._exceptions import AggregateExecutionError, ConfigError, ConveyorError, Interrupted
from .._base._types import Result, Status
from .._core._engine import Engine, _is_async_callable

if TYPE_CHECKING:
    from .._core._report import BatchReport


def _call_task(task: Any) -> Any:
    return task()


def _task_invoker(task: Any, engine: Engine) -> Awaitable[Any]:
    if _is_async_callable(task):
        return task()  # type: ignore[no-any-return]
    return engine.run_in_thread(_call_task, task)


class _TaskProgressAdapter:
    """Adapts `on_task_start(task)`/`on_task_complete(result)`/`on_task_error(task, exc)`."""

    def __init__(self, target: Any) -> None:
        self._t = target
        if hasattr(target, "on_task_start"):
            self.on_start = lambda index, key, item: target.on_task_start(item)
        if hasattr(target, "on_task_complete"):
            self.on_result = target.on_task_complete
        if hasattr(target, "on_task_error"):
            self.on_error = lambda result: target.on_task_error(result.item, result.error)


class TaskExecutor:
    """Base: runs tasks through the engine with this executor's settings."""

    mode: ClassVar[Literal["sequential", "parallel"]] = "parallel"
    _concurrency_key: ClassVar[str] = "max_workers"
    _concurrency_range: ClassVar[tuple[int, int]] = (1, 1024)

    def __init__(
        self,
        *,
        concurrency: int,
        timeout: float | None = None,
        retries: int = 0,
        **options: Any,
    ) -> None:
        lo, hi = self._concurrency_range
        if (
            isinstance(concurrency, bool)
            or not isinstance(concurrency, int)
            or not (lo <= concurrency <= hi)
        ):
            raise ConfigError(self._concurrency_key, concurrency, f"a whole number {lo}..{hi}")
        self._options: dict[str, Any] = dict(
            concurrency=concurrency, timeout=timeout, retries=retries, **options
        )
        # Validate now, not at the first execute().
        from .._core._options import build_options

        build_options(**self._options)
        self._lock = threading.Lock()
        self._shut = False
        self._active = 0
        self._idle = threading.Condition(self._lock)
        self.last_report: BatchReport | None = None

    @property
    def max_workers(self) -> int:
        return int(self._options["concurrency"])

    @property
    def timeout(self) -> float | None:
        t = self._options.get("timeout")
        return None if t is None else float(t)

    _config_keys: ClassVar[dict[str, str]] = {
        "max_workers": "a whole number of tasks run at once",
        "timeout": "seconds per task (> 0), or null for none",
        "retries": "extra attempts for transient errors (>= 0)",
    }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TaskExecutor:
        """Build from a mapping like `{"max_workers": 4, "timeout": 3600}`.

        Unknown keys and bad values raise `ConfigError` naming the key, the
        value and what is allowed.
        """
        if not isinstance(config, Mapping):
            raise ConfigError("config", config, "a mapping such as {'max_workers': 4}")
        unknown = sorted(set(config) - set(cls._config_keys) - {"enabled"})
        if unknown:
            allowed = ", ".join(f"{k} ({v})" for k, v in cls._config_keys.items())
            raise ConfigError(unknown[0], config[unknown[0]], f"not a known key; known: {allowed}")
        kwargs: dict[str, Any] = {}
        if "timeout" in config:
            kwargs["timeout"] = config["timeout"]
        if "retries" in config:
            kwargs["retries"] = config["retries"]
        if "max_workers" in config and cls._concurrency_key == "max_workers":
            kwargs["max_workers"] = config["max_workers"]
        return cls(**kwargs)

    def execute(self, tasks: Sequence[Any], progress: Any = None) -> list[Result[Any]]:
        """Run every task; results in the order of `tasks`."""
        with self._lock:
            if self._shut:
                raise ConveyorError("this executor is shut down: create a new one")
            self._active += 1
        try:
            tasks = list(tasks)
            for i, t in enumerate(tasks):
                if not callable(t):
                    raise ConfigError(f"tasks[{i}]", t, "a callable taking no arguments")
            callbacks = []
            if progress is not None:
                callbacks.append(_TaskProgressAdapter(progress))
                callbacks.append(progress)
            try:
                report = run_with_invoker(
                    tasks, _task_invoker, callbacks=callbacks, **self._options
                )
            except Interrupted as exc:
                self.last_report = exc.report
                raise
            self.last_report = report
            results = report.results
            if results and all(r.status is not Status.OK for r in results):
                raise AggregateExecutionError(results)
            return results
        finally:
            with self._lock:
                self._active -= 1
                self._idle.notify_all()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Refuse new work and wait up to `timeout` s for running `execute` calls.

        Safe to call more than once.
        """
        with self._lock:
            self._shut = True
            self._idle.wait_for(lambda: self._active == 0, timeout=timeout)

    @property
    def is_shutdown(self) -> bool:
        return self._shut

    def __enter__(self) -> TaskExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


class SequentialExecutor(TaskExecutor):
    """One task at a time, in order (with per-task timeout and retries)."""

    mode = "sequential"

    def __init__(self, *, timeout: float | None = None, retries: int = 0, **options: Any) -> None:
        super().__init__(concurrency=1, timeout=timeout, retries=retries, **options)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TaskExecutor:
        cfg = dict(config)
        cfg.pop("max_workers", None)
        return super().from_config(cfg)


class ThreadExecutor(TaskExecutor):
    """Up to `max_workers` tasks at once; sync tasks run on threads."""

    mode = "parallel"

    def __init__(
        self,
        max_workers: int = 4,
        *,
        timeout: float | None = None,
        retries: int = 0,
        **options: Any,
    ) -> None:
        super().__init__(concurrency=max_workers, timeout=timeout, retries=retries, **options)


class AsyncExecutor(TaskExecutor):
    """Up to `max_concurrency` async tasks at once on the event loop."""

    mode = "parallel"
    _concurrency_key = "max_concurrency"
    _concurrency_range = (1, 100_000)
    _config_keys: ClassVar[dict[str, str]] = {
        "max_concurrency": "a whole number of tasks in flight at once",
        "timeout": "seconds per task (> 0), or null for none",
        "retries": "extra attempts for transient errors (>= 0)",
    }

    def __init__(
        self,
        max_concurrency: int = 100,
        *,
        timeout: float | None = None,
        retries: int = 0,
        **options: Any,
    ) -> None:
        super().__init__(concurrency=max_concurrency, timeout=timeout, retries=retries, **options)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TaskExecutor:
        cfg = dict(config)
        mc = cfg.pop("max_concurrency", None)
        ex = super().from_config(cfg)
        if mc is not None:
            return cls(max_concurrency=mc, timeout=ex.timeout, retries=ex._options["retries"])
        return ex
