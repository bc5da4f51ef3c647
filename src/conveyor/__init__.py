"""conveyor: run large batches of AI calls and other I/O-bound jobs concurrently.

    import conveyor

    report = conveyor.run(items, fn, concurrency=32, timeout=30, retries=3)
    for r in report:               # input order; errors are results, not raised
        print(r.key, r.status, r.value if r.ok else r.error.message)

Everything public is here; modules whose names start with `_` are private.
"""

# The layout, one folder per part; layers import downward only (tests/test_layers.py):
#
#   _base/       result types, the ConveyorError tree, clocks: imports nothing of ours
#   _core/       the engine: admission, limits, retry, breaker, attempts, options,
#                output stream, progress snapshot, report model (imports _base)
#   _journal/    SQLite journal and the exactly-once output sink
#   _render/     report text, HTML, SVG charts, timeline, pricing, formatting
#   _monitor/    resource probes (psutil, nvidia-smi, your gauges) for monitor=
#   ray/         the Ray backend: driver, worker actors, the cluster-wide limiter
#   _pipeline.py one journaled run: plan (the resume rule) -> run stream -> journal
#   _api.py      run / arun / stream / astream, the front end over the engine
#   executors/   the TaskExecutor family over the engine
#   openai/      HTTP transport, Batch API files in/out, templates, tokens, cache
#   commands/    shell jobs (CommandTask) and batches of them (`conveyor exec`)
#   mock/        the simulated OpenAI-compatible server
#   cli/         the `conveyor` command, its subcommands and the terminal display

import typing as _typing

from ._base._clock import Clock, FakeClock
from ._base._exceptions import (
    AggregateExecutionError,
    ConfigError,
    ConveyorError,
    FatalError,
    InputError,
    Interrupted,
    InvalidAnswer,
    JournalError,
    JournalLocked,
    JournalMismatch,
    PreflightFailed,
    QuotaExceeded,
    ResourceLimitExceeded,
    RetryableError,
    SchemaInvalid,
)
from ._base._lazy import LazyExports as _LazyExports
from ._base._types import ErrorInfo, Result, Status, Usage
from ._base._version import __version__

if _typing.TYPE_CHECKING:
    from ._api import AsyncStream, Stream, arun, astream, run, stream
    from ._core._attempt import (
        Attempt,
        RateLimitHint,
        current_attempt,
        report_cached,
        report_limits,
        report_usage,
    )
    from ._core._callbacks import BatchInfo, ProgressCallback
    from ._core._memo import Memo, MemoStats
    from ._core._options import Breaker
    from ._core._progress import ProgressSnapshot
    from ._core._report import BatchReport
    from ._core._retry import RetryPolicy, default_retryable
    from ._core._validation import Issue, Reask
    from ._monitor import Monitor
    from .executors import (
        AsyncExecutor,
        ConfigurationError,
        ExecutionContext,
        IsolationLevel,
        ParallelTaskExecutor,
        SequentialExecutor,
        TaskExecutor,
        TaskProgressCallback,
        TaskResult,
        ThreadExecutor,
    )

# Everything else is imported on first use (PEP 562): `import conveyor` costs
# ~20 ms instead of ~100, and a `conveyor` command loads only what it uses.
# name -> the private module defining it.
_LAZY: dict[str, str] = {
    "AsyncExecutor": ".executors",
    "AsyncStream": "._api",
    "Attempt": "._core._attempt",
    "BatchInfo": "._core._callbacks",
    "BatchReport": "._core._report",
    "Breaker": "._core._options",
    "ConfigurationError": ".executors",
    "ExecutionContext": ".executors",
    "IsolationLevel": ".executors",
    "Issue": "._core._validation",
    "Memo": "._core._memo",
    "MemoStats": "._core._memo",
    "Monitor": "._monitor",
    "ParallelTaskExecutor": ".executors",
    "ProgressCallback": "._core._callbacks",
    "ProgressSnapshot": "._core._progress",
    "RateLimitHint": "._core._attempt",
    "Reask": "._core._validation",
    "RetryPolicy": "._core._retry",
    "SequentialExecutor": ".executors",
    "Stream": "._api",
    "TaskExecutor": ".executors",
    "TaskProgressCallback": ".executors",
    "TaskResult": ".executors",
    "ThreadExecutor": ".executors",
    "arun": "._api",
    "astream": "._api",
    "current_attempt": "._core._attempt",
    "default_retryable": "._core._retry",
    "report_cached": "._core._attempt",
    "report_limits": "._core._attempt",
    "report_usage": "._core._attempt",
    "run": "._api",
    "stream": "._api",
}

__all__ = [
    "AggregateExecutionError",
    "AsyncExecutor",
    "AsyncStream",
    "Attempt",
    "BatchInfo",
    "BatchReport",
    "Breaker",
    "Clock",
    "ConfigError",
    "ConfigurationError",
    "ConveyorError",
    "ErrorInfo",
    "ExecutionContext",
    "FakeClock",
    "FatalError",
    "InputError",
    "Interrupted",
    "InvalidAnswer",
    "IsolationLevel",
    "Issue",
    "JournalError",
    "JournalLocked",
    "JournalMismatch",
    "Memo",
    "MemoStats",
    "Monitor",
    "ParallelTaskExecutor",
    "PreflightFailed",
    "ProgressCallback",
    "ProgressSnapshot",
    "QuotaExceeded",
    "RateLimitHint",
    "Reask",
    "ResourceLimitExceeded",
    "Result",
    "RetryPolicy",
    "RetryableError",
    "SchemaInvalid",
    "SequentialExecutor",
    "Status",
    "Stream",
    "TaskExecutor",
    "TaskProgressCallback",
    "TaskResult",
    "ThreadExecutor",
    "Usage",
    "__version__",
    "arun",
    "astream",
    "current_attempt",
    "default_retryable",
    "report_cached",
    "report_limits",
    "report_usage",
    "run",
    "stream",
]


# Reprs and tracebacks say `conveyor.ConfigError`, not where it is defined.
_lazy = _LazyExports(__name__, globals(), _LAZY, rename=True)
for _name in __all__:
    if _name not in _LAZY:
        _lazy.rename(globals()[_name])
del _name, _LAZY


def __getattr__(name: str) -> _typing.Any:
    return _lazy.load(name)


def __dir__() -> list[str]:
    return _lazy.names(__all__)
