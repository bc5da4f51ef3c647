"""Every error conveyor raises, under one base.

```
ConveyorError
├── ConfigError              an option or config value is not allowed (names it)
├── AggregateExecutionError  an executor ran tasks and every one of them failed
├── FatalError               stops the whole run (a rejected API key, a full disk)
├── Interrupted              Ctrl+C / SIGTERM stopped the run (carries the report)
├── RetryableError           raised by a user function: "try this item again"
└── InputError               an input line or record could not be read (names file, line)
```

Every message says what happened and what to do next. Lower-layer errors
(aiohttp, sqlite3, OSError) are translated at the boundary that meets them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .._core._report import BatchReport
    from ._types import Result

__all__ = [
    "AggregateExecutionError",
    "ConfigError",
    "ConveyorError",
    "FatalError",
    "InputError",
    "Interrupted",
    "RetryableError",
]


class ConveyorError(Exception):
    """Base of every error conveyor raises on purpose.

    An error that ends a run early carries what finished in `report`.
    """

    report: BatchReport | None = None


class ConfigError(ConveyorError, ValueError):
    """An option has a value conveyor cannot run with.

    Raised when the call is made, before any item runs.
    """

    def __init__(self, option: str, value: Any, allowed: str) -> None:
        self.option = option
        self.value = value
        self.allowed = allowed
        super().__init__(f"invalid {option}={value!r}: {allowed}")


class AggregateExecutionError(ConveyorError):
    """Every task given to an executor failed; `results` holds each failure."""

    def __init__(self, results: Sequence[Result[Any]]) -> None:
        self.results = list(results)
        kinds: dict[str, int] = {}
        for r in self.results:
            name = r.error.type if r.error else r.status.value
            kinds[name] = kinds.get(name, 0) + 1
        summary = ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items()))
        first = self.results[0].error if self.results and self.results[0].error else None
        hint = f"; first error: {first.type}: {first.message}" if first else ""
        super().__init__(
            f"all {len(self.results)} tasks failed ({summary}){hint}. "
            "Inspect .results for each task's error and traceback."
        )


class FatalError(ConveyorError):
    """An error that makes every further item pointless: the run stops early.

    Raise it from a task function (for example on HTTP 401) to stop admitting
    work; `run()` then raises it again with `report` set to what finished.
    """


class Interrupted(ConveyorError):
    """The run was stopped by Ctrl+C or a stop request.

    `report` holds every item that reached a terminal result (in-flight items
    that were cut off are `cancelled`); items never started are not in it.
    It is deliberately not a `KeyboardInterrupt`: asyncio treats those as
    fatal to the event loop, and the run has already stopped cleanly.
    """

    report: BatchReport

    def __init__(self, report: BatchReport, hint: str = "") -> None:
        self.report = report
        c = report.counts
        done = sum(c.values())
        msg = (
            f"interrupted: {done} items reached a result "
            f"({c.get('ok', 0)} ok, {c.get('failed', 0)} failed, "
            f"{c.get('cancelled', 0)} cancelled in flight)"
        )
        super().__init__(msg + (f". {hint}" if hint else ""))


class RetryableError(ConveyorError):
    """Raise from a task function to ask for another attempt.

    `retry_after` (seconds) is honoured as the minimum wait before it; a
    `status_code` is kept in the result's error for the report. With
    `overload=True` (a rate-limit budget is spent) every item pauses for
    `retry_after`, not just this one; 429s without it pause everyone only
    when they become frequent.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        status_code: int | None = None,
        overload: bool = False,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.status_code = status_code
        self.overload = overload


class InputError(ConveyorError):
    """An input could not be read: says which file and line, and why."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        self.path = path
        self.line = line
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        elif line is not None:
            where = f"line {line}: "
        super().__init__(where + message)
