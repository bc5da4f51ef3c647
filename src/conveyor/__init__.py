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
#   ray/         the Ray backend: driver, worker actors, the cluster-wide limiter
#   _api.py      run / arun / stream / astream, the front end over the engine
#   executors.py the TaskExecutor family over the engine
#   openai/      HTTP transport, Batch API files in/out, templates, tokens, cache
#   commands/    shell jobs (CommandTask) and batches of them (`conveyor exec`)
#   mock/        the simulated OpenAI-compatible server
#   cli/         the `conveyor` command, its subcommands and the terminal display

from ._api import AsyncStream, Stream, arun, astream, run, stream
from ._base._exceptions import (
    AggregateExecutionError,
    ConfigError,
    ConveyorError,
    FatalError,
    InputError,
    Interrupted,
    PreflightFailed,
    QuotaExceeded,
    RetryableError,
)
from ._base._types import ErrorInfo, Result, Status, Usage
from ._base._version import __version__
from ._core._attempt import (
    Attempt,
    RateLimitHint,
    current_attempt,
    report_cached,
    report_limits,
    report_usage,
)
from ._core._callbacks import BatchInfo, ProgressCallback
from ._core._options import Breaker
from ._core._report import BatchReport
from ._core._retry import RetryPolicy
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

__all__ = [
    "AggregateExecutionError",
    "AsyncExecutor",
    "AsyncStream",
    "Attempt",
    "BatchInfo",
    "BatchReport",
    "Breaker",
    "ConfigError",
    "ConfigurationError",
    "ConveyorError",
    "ErrorInfo",
    "ExecutionContext",
    "FatalError",
    "InputError",
    "Interrupted",
    "IsolationLevel",
    "ParallelTaskExecutor",
    "PreflightFailed",
    "ProgressCallback",
    "QuotaExceeded",
    "RateLimitHint",
    "Result",
    "RetryPolicy",
    "RetryableError",
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
    "report_cached",
    "report_limits",
    "report_usage",
    "run",
    "stream",
]
